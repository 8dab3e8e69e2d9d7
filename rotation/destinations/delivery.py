"""What the rotation engine calls: validate a list, deliver to all, re-check all.

Each destination runs on its own: one failing never raises out of `Delivery.deliver_all`/`recheck`, it is
recorded in its `DestinationState` (status, lastError, backoff) and raised as an event. Key Vault
destinations go first, because an App Configuration reference points at the version just written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from core import clock, events
from core.azure_failure import AzureFailure
from core.errors import FieldError, Problem, Unprocessable
from rotation.destinations import app_configuration, devops_group, key_vault
from rotation.destinations.access import Access, AzureAccess, DevOpsAccess, Held, SecretToDeliver
from rotation.destinations.models import (
    AppConfigurationDestination,
    Destination,
    DestinationState,
    DevOpsVariableGroupDestination,
    KeyVaultDestination,
    check_destinations,
    destination_id,
    host_refusal,
    reference_vault,
)

log = logging.getLogger(__name__)

AccessFor = Callable[[Destination], Awaitable[Access]]

BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=6)


def backoff(failures: int) -> timedelta:
    """1, 2, 4 ... minutes after consecutive failures, at most 6 hours."""
    step: timedelta = BACKOFF_BASE * (2 ** max(0, failures - 1))
    return min(step, BACKOFF_CAP)


def _azure(access: Access) -> AzureAccess:
    if not isinstance(access, AzureAccess):
        raise TypeError("Key Vault and App Configuration need an AzureAccess")
    return access


def _devops(access: Access) -> DevOpsAccess:
    if not isinstance(access, DevOpsAccess):
        raise TypeError("a variable group needs a DevOpsAccess")
    return access


async def validate_one(dest: Destination, access: Access, at: str) -> None:
    """Reach one destination with the credentials it will use (a 422 naming the fix on refusal)."""
    if isinstance(dest, KeyVaultDestination):
        await key_vault.validate(dest, _azure(access), at)
    elif isinstance(dest, AppConfigurationDestination):
        await app_configuration.validate(dest, _azure(access), at)
    else:
        await devops_group.validate(dest, _devops(access), at)


async def validate_all(
    destinations: list[Destination], access_for: AccessFor, field_name: str = "destinations"
) -> None:
    """Reach every destination once, concurrently; all refusals in one 422 (else the first problem)."""

    check_destinations(destinations, field_name)  # never send a token to a host not allowed

    async def one(index: int, dest: Destination) -> None:
        await validate_one(dest, await access_for(dest), f"{field_name}[{index}]")

    results = await asyncio.gather(*(one(i, d) for i, d in enumerate(destinations)), return_exceptions=True)
    errors: list[FieldError] = []
    for result in results:
        if isinstance(result, Unprocessable):
            errors.extend(result.errors)
        elif isinstance(result, BaseException):
            raise result
    if errors:
        raise Unprocessable("A destination refused the broker; see errors.", errors, code="azure-refused")


async def _held(
    dest: Destination, access: Access, secret: SecretToDeliver, reference: str | None, *, write: bool
) -> Held:
    """Deliver and read back (`write`), or only read back."""
    if isinstance(dest, KeyVaultDestination):
        vault_op = key_vault.deliver if write else key_vault.read_back
        return await vault_op(dest, _azure(access), secret)
    if isinstance(dest, AppConfigurationDestination):
        store_op = app_configuration.deliver if write else app_configuration.read_back
        return await store_op(dest, _azure(access), secret, reference)
    group_op = devops_group.deliver if write else devops_group.read_back
    return await group_op(dest, _devops(access), secret)


def _describe(error: BaseException) -> str:
    if isinstance(error, AzureFailure):
        return error.describe()
    if isinstance(error, Problem):
        return error.detail[:400]
    return f"unexpected error: {type(error).__name__}"  # never the text: it might echo a request


@dataclass
class _Run:
    rotation_id: str
    destinations: list[Destination]
    access_for: AccessFor
    secret: SecretToDeliver
    now: datetime
    states: dict[str, DestinationState]
    drifted: list[str] = field(default_factory=list)

    def reference(self, dest: Destination) -> str | None:
        if not (isinstance(dest, AppConfigurationDestination) and dest.key_vault_reference):
            return None
        vault = reference_vault(self.destinations)
        if vault is None:
            raise AzureFailure(
                "keyVaultReference", 422, "NoVault", "the rotation has no key-vault destination"
            )
        state = self.states.get(destination_id(vault))
        if state is None or state.status != "synced" or state.last_synced_key_id != self.secret.key_id:
            raise AzureFailure(
                "keyVaultReference", 424, "VaultNotSynced", "the referenced vault is not synced yet"
            )
        return key_vault.reference_uri(vault, state.last_synced_version)

    def failed(self, dest: Destination, state: DestinationState, error: BaseException, drifted: bool) -> None:
        failures = state.failures + 1
        message = _describe(error)
        self.states[state.id] = state.model_copy(
            update={
                "status": "drifted" if drifted else "failed",
                "last_error": message,
                "failures": failures,
                "next_attempt_at": self.now + backoff(failures),
            }
        )
        log.warning("delivery to %s %s failed: %s", dest.type, state.id, message)
        self.event("delivery.failed", dest, error=message)

    def event(self, name: str, dest: Destination, **fields: str) -> None:
        events.emit(
            name,
            level=logging.WARNING,
            secretRotationId=self.rotation_id,
            destination=destination_id(dest),
            destinationType=dest.type,
            **fields,
        )

    def synced(self, state: DestinationState, held: Held) -> None:
        self.states[state.id] = state.model_copy(
            update={
                "status": "synced",
                "last_synced_at": self.now,
                "last_synced_key_id": self.secret.key_id,
                "last_synced_version": held.version,
                "last_error": None,
                "failures": 0,
                "next_attempt_at": None,
            }
        )

    async def deliver(self, dest: Destination, *, drifted: bool = False) -> None:
        state = self.state(dest)
        try:
            _guard(dest)
            access = await self.access_for(dest)
            held = await _held(dest, access, self.secret, self.reference(dest), write=True)
            if not held.present or held.matches is False:
                raise AzureFailure(
                    "readBack", 409, "NotConfirmed", "the read-back did not show the delivered secret"
                )
        except Exception as error:  # one destination never fails the others or the caller
            self.failed(dest, state, error, drifted)
            return
        self.synced(state, held)

    async def check(self, dest: Destination) -> None:
        state = self.state(dest)
        if state.status != "synced" or state.last_synced_key_id != self.secret.key_id:
            if state.next_attempt_at is None or state.next_attempt_at <= self.now:
                await self.deliver(dest, drifted=state.status == "drifted")
            return
        try:
            _guard(dest)
            access = await self.access_for(dest)
            held = await _held(dest, access, self.secret, self.reference(dest), write=False)
        except Exception as error:
            self.failed(dest, state, error, drifted=False)
            return
        reason = _drift(dest, state, held)
        if reason is None:
            return
        self.drifted.append(state.id)
        self.event("delivery.drifted", dest, reason=reason)
        await self.deliver(dest, drifted=True)

    def state(self, dest: Destination) -> DestinationState:
        key = destination_id(dest)
        return self.states.get(key) or DestinationState(id=key, type=dest.type)

    async def each(self, action: Callable[[Destination], Awaitable[None]]) -> list[DestinationState]:
        """Key Vault first (references point at its new version), then the rest, concurrently."""
        first = [d for d in self.destinations if isinstance(d, KeyVaultDestination)]
        rest = [d for d in self.destinations if not isinstance(d, KeyVaultDestination)]
        for batch in (first, rest):
            await asyncio.gather(*(action(d) for d in batch))
        return [self.states[destination_id(d)] for d in self.destinations]


def _guard(dest: Destination) -> None:
    refusal = host_refusal(dest)
    if refusal is not None:
        raise AzureFailure("checkHost", 422, "HostNotAllowed", refusal)


def _drift(dest: Destination, state: DestinationState, held: Held) -> str | None:
    """Why a synced destination no longer holds what we delivered, or None."""
    if not held.present:
        return "missing"
    if held.matches is False:
        return "changed"
    if isinstance(dest, DevOpsVariableGroupDestination) and held.version != state.last_synced_version:
        return "group-modified"  # DevOps cannot show the value: any later edit may have changed it
    return None


@dataclass(frozen=True)
class Recheck:
    states: list[DestinationState]
    drifted: list[str]  # ids whose value was found changed or gone (each raised an event)

    @property
    def failed(self) -> list[str]:
        return [s.id for s in self.states if s.status in ("failed", "drifted")]

    @property
    def synced(self) -> list[str]:
        return [s.id for s in self.states if s.status == "synced"]


@dataclass(frozen=True)
class Delivery:
    """One secret for one rotation's destinations, each written with the access `access_for` gives.

    `states` are the destinations' states from the last run (None: all pending)."""

    rotation_id: str
    destinations: list[Destination]
    access_for: AccessFor
    secret: SecretToDeliver

    async def deliver_all(
        self, states: list[DestinationState] | None = None, *, now: datetime | None = None
    ) -> list[DestinationState]:
        """Deliver the secret to every destination and read it back; one state per destination, in order.

        Never raises for a destination: a failure is its state (`failed`, lastError, backoff) and a
        `delivery.failed` event. The secret may become current once every state is `synced`."""
        run = self._run(states, now)
        return await run.each(run.deliver)

    async def recheck(
        self, states: list[DestinationState] | None = None, *, now: datetime | None = None
    ) -> Recheck:
        """Read every synced destination back and re-deliver where it drifted; re-deliver failed or
        pending ones whose backoff has passed. Raises `delivery.drifted` / `delivery.failed` events."""
        run = self._run(states, now)
        return Recheck(await run.each(run.check), run.drifted)

    def _run(self, states: list[DestinationState] | None, now: datetime | None) -> _Run:
        known = {s.id: s for s in states or []}
        return _Run(
            self.rotation_id, self.destinations, self.access_for, self.secret, now or clock.now(), known
        )
