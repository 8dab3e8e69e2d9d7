"""The pending OAuth authorizations: one typed `OAuthState` row per authorize request.

`OAuthStates`: PartitionKey `state`, RowKey the SHA-256 of the state value (the value itself is
never stored). The PKCE verifier is a secret in the secret store; the row names it. A state is
single use (claimed by an ETag write of `consumedAt`), expires after STATE_TTL, and is purged
STATE_RETENTION after it expired (replays in between are reported as replays).
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from core import clock, records, tables
from core.auth import Caller
from core.errors import BadRequest, Conflict, FieldError, Problem
from core.secret_store import secret_name, secret_store

STATE_TTL = timedelta(minutes=10)
STATE_RETENTION = timedelta(hours=1)
STATES_PK = "state"


class PendingAuthorization(BaseModel):
    """A pending authorize request, as recorded when it started (its tenant is in `params`)."""

    model_config = ConfigDict(frozen=True)

    kind: str
    params: dict[str, Any]
    caller: Caller
    redirect_uri: str


class OAuthState(records.Record, table="OAuthStates", pk="partition", rk="key"):
    """One pending (or consumed) authorization."""

    partition: str = STATES_PK
    key: str
    pending: PendingAuthorization
    created_at: datetime
    expires_at: datetime
    consumed_at: datetime | None = None
    verifier_ref: str = ""


def _key(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


async def record(state: str, tenant: str, pending: PendingAuthorization, verifier: str) -> None:
    """Store the verifier (a secret) and the state row; purge old states in the background."""
    key = _key(state)
    verifier_ref = secret_name("oauth", key[:32], "pkce")
    now = clock.now()
    await secret_store().set(verifier_ref, verifier)
    pending = pending.model_copy(update={"params": {**pending.params, "tenantId": tenant}})
    record = OAuthState(
        key=key, pending=pending, created_at=now, expires_at=now + STATE_TTL, verifier_ref=verifier_ref
    )
    await records.insert(record)
    asyncio.ensure_future(_purge_old_states())  # noqa: RUF006 - housekeeping, best effort


async def _purge_old_states(limit: int = 50) -> None:
    """Delete states (and any verifier left) that expired over STATE_RETENTION ago."""
    try:
        cutoff = records.iso(clock.now() - STATE_RETENTION)
        rows = tables.query(
            OAuthState.TABLE,
            "PartitionKey eq @pk and expiresAt lt @cutoff",
            {"pk": STATES_PK, "cutoff": cutoff},
            limit=limit,
        )
        for old in [OAuthState.from_row(row) async for row in rows]:
            if old.consumed_at is None and old.verifier_ref:
                await secret_store().delete(old.verifier_ref)
            await records.delete(old)
    except Exception:  # noqa: S110 - the next authorize purges again
        pass


def state_problem(message: str, code: str, status: int = 400) -> Problem:
    problem: Problem = Conflict(message, code=code) if status == 409 else BadRequest(message, code=code)
    problem.errors = [FieldError("state", message)]
    return problem


async def claim(state: str) -> tuple[OAuthState, PendingAuthorization]:
    """Consume the state: unknown, expired and replayed states are refused, each by name."""
    if not state or len(state) > 512:
        raise state_problem(
            "the callback has no valid state parameter; start again with .../oauth/authorize",
            "oauth-state-unknown",
        )
    found = await records.get(OAuthState, STATES_PK, _key(state))
    if found is None:
        raise state_problem(
            "unknown state: the broker did not issue it (or it was purged); "
            "start again with .../oauth/authorize",
            "oauth-state-unknown",
        )
    if found.consumed_at is not None:
        raise state_problem(
            "this authorization was already used (state replayed); start again with .../oauth/authorize",
            "oauth-state-used",
            409,
        )
    now = clock.now()
    try:
        claimed = await records.replace(found.model_copy(update={"consumed_at": now}))
    except tables.ConcurrencyConflict:
        raise state_problem(
            "this authorization is being completed by another request (state replayed)",
            "oauth-state-used",
            409,
        ) from None
    if claimed.expires_at < now:
        await drop_verifier(claimed)
        raise state_problem(
            f"the authorization expired: finish sign-in within {int(STATE_TTL.total_seconds() // 60)} "
            "minutes; start again with .../oauth/authorize",
            "oauth-state-expired",
        )
    return claimed, claimed.pending


async def drop_verifier(claimed: OAuthState) -> None:
    if claimed.verifier_ref:
        await secret_store().delete(claimed.verifier_ref)
