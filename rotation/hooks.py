"""Rotation as a hook of the client-secret connection kind, registered in core.connection_seam.

The generic connection service calls these; nothing in a route orchestrates rotation. The
order of a PATCH that sends a new client secret (one writer per connection):

1. `prepare_update` (before any side effect): a rotation in flight is a 409; with rotation on, the
   body must name the new secret's Key ID (checked against the app with the new credentials).
2. the connection row is replaced with its ETag (a rotation that switched first makes this a 409).
3. `updated`: a run that began before step 2 fails at its own switch (the revision moved) and
   removes only what it added; we wait for it, then record the new Key ID and revision.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from core import managed_keys, tables
from core.connection_seam import ConnectionFacts, KindHooks, UpdatePlan, provide_hooks
from core.errors import FieldError, Unavailable, Unprocessable
from rotation import azure_steps, service
from rotation.service import CLIENT_SECRET_METHOD, RotationSettings, RotationView

if TYPE_CHECKING:
    from core.auth import Caller

KIND = "azure-client-secrets"
# How long a PATCH waits for a run that began before it to fail at its switch and undo itself.
RUN_WAIT_SECONDS = 120.0
CONFIGURE_ATTEMPTS = 5  # row races lost in a row by a PATCH's rotation update before it answers 409


def _settings(value: BaseModel | None) -> RotationSettings | None:
    assert value is None or isinstance(value, RotationSettings)
    return value


async def _describe(connection_id: str) -> BaseModel | None:
    return await service.describe_rotation(connection_id)


async def _created(facts: ConnectionFacts, settings: BaseModel | None, caller: Caller) -> BaseModel | None:
    return await service.configure_rotation(facts, _settings(settings), caller, on_create=True)


async def _prepare_update(
    facts: ConnectionFacts, settings: BaseModel | None, credentials: dict[str, Any] | None
) -> UpdatePlan:
    chosen = _settings(settings)
    if chosen is not None and facts.method != CLIENT_SECRET_METHOD:
        raise Unprocessable(
            "automatic rotation needs the client-secret method",
            [FieldError("rotation", f"is only available for method client-secret, not {facts.method}")],
        )
    key_id = await service.key_id_for_new_secret(facts.id, chosen, credentials)
    secret_changed = bool(credentials) and "clientSecret" in (credentials or {})
    check = (
        None
        if key_id is None
        else partial(azure_steps.require_key_id, key_id=key_id, client_id=facts.client_id)
    )
    return UpdatePlan(
        check_app=check,
        secret_key_id=(key_id or "") if secret_changed else None,
        data={"secret_changed": secret_changed},
    )


async def _wait_for_run(connection_id: str) -> None:
    """Until no run of this connection is in flight (one that planned before our write fails soon)."""
    from rotation import store
    from rotation.rotator import in_flight

    deadline = time.monotonic() + RUN_WAIT_SECONDS
    while (record := await store.load(connection_id)) is not None and in_flight(record):
        if time.monotonic() > deadline:
            raise Unavailable(
                "the connection was updated, but a rotation that started before it is still running; "
                "send the rotation block again when it has finished",
                code="rotation-in-flight",
            )
        await asyncio.sleep(0.2)


async def _updated(
    facts: ConnectionFacts, settings: BaseModel | None, plan: UpdatePlan, caller: Caller
) -> BaseModel | None:
    secret_changed = bool(plan.data.get("secret_changed"))
    if not secret_changed:
        return await service.configure_rotation(facts, _settings(settings), caller, on_create=False)
    await _wait_for_run(facts.id)
    # Two PATCHes of the secret may both get here: the one whose revision the connection holds
    # must leave its Key ID and revision on the row, so a lost row race is re-read and re-applied
    # (the other one then finds its revision gone and writes nothing).
    attempts = CONFIGURE_ATTEMPTS
    while True:
        try:
            return await service.configure_rotation(
                facts, _settings(settings), caller, on_create=False, secret_changed=True
            )
        except tables.ConcurrencyConflict:
            attempts -= 1
            if attempts == 0:
                raise


async def _deleting(facts: ConnectionFacts, caller: Caller) -> None:
    from rotation import cleanup

    await cleanup.forget(facts.id, facts.client_id)


HOOKS = KindHooks(
    field="rotation",
    settings_model=RotationSettings,
    view_model=RotationView,
    methods=frozenset({CLIENT_SECRET_METHOD}),
    describe=_describe,
    created=_created,
    prepare_update=_prepare_update,
    updated=_updated,
    deleting=_deleting,
)

provide_hooks(KIND, HOOKS)


async def _managed_key_ids() -> list[str]:
    from rotation import store

    return await store.managed_key_ids()


async def _secret_rotation_key_ids() -> list[str]:
    from rotation import secret_records

    return await secret_records.managed_key_ids()


# The inventory's `managedBy`: the Key IDs a connection rotation or a secret rotation will replace.
managed_keys.provide("connection-rotation", _managed_key_ids)
managed_keys.provide("secret-rotation", _secret_rotation_key_ids)
