"""The Azure calls of a rotation: read the app, add and remove a password, prove a secret.

Everything here acts through `core.connection_seam`, as the connection whose app is rotated, so
rotation/ never imports connections/. Errors are described here (never with a secret) for
`lastError`, the audit log and events.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING
from uuid import UUID

from core import azure_gateway, azure_passwords
from core.azure_failure import AzureFailure
from core.connection_seam import ConnectionFacts, access
from core.errors import FieldError, Problem, Unprocessable, UpstreamError

if TYPE_CHECKING:
    from msgraph.generated.models.application import Application

    from core.azure_credentials import AppAccess
    from rotation.store import RotationRecord

KIND = "azure-client-secrets"
# How long a new secret may take to get a token (Entra replication), with backoff between tries.
VERIFY_TIMEOUT_SECONDS = 60.0
VERIFY_FIRST_DELAY_SECONDS = 0.5
VERIFY_MAX_DELAY_SECONDS = 8.0
MAX_ERROR = 300


class RotationError(Exception):
    """A step failed; `message` is safe to store and show (no secret, no raw exception text)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def facts(connection_id: str) -> ConnectionFacts:
    """The connection whose secret rotates (a NotFound problem if it is gone)."""
    return await access().facts(KIND, connection_id)


async def _access(connection_id: str) -> AppAccess:
    return await access().app_access(KIND, connection_id)


def graph_status(error: BaseException) -> int | None:
    """The HTTP status of a failed Azure call (the gateway classified it), else None."""
    return error.status if isinstance(error, AzureFailure) else None


def describe_error(error: BaseException, *known_secrets: str | None) -> str:
    """A short, secret-free account of an error for `lastError`, audit and events.

    Azure's answers were classified by the gateway (`AzureFailure.describe`); this adds only
    the rotation's own failures and problems.
    """
    if isinstance(error, RotationError):
        text = error.message
    elif isinstance(error, Problem):
        text = error.detail
    elif isinstance(error, AzureFailure):
        text = error.describe()
    else:
        text = f"unexpected {type(error).__name__}"
    for secret in known_secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:MAX_ERROR]


async def get_application(connection_id: str, client_id: str) -> Application:
    """The connection's app registration (by its appId), with its password credentials."""
    app_access = await _access(connection_id)
    builder = app_access.graph().applications_with_app_id(client_id)
    app = await azure_gateway.call("readApplication", builder.get, pace=app_access.pace_key)
    if app is None or not app.id:
        raise RotationError(f"Microsoft Graph returned no application for appId {client_id}")
    return app


async def check_key_id(connection: ConnectionFacts, key_id: str) -> str:
    """422 unless `key_id` is a password credential of the connection's app; the app's object id."""
    try:
        app = await get_application(connection.id, connection.client_id)
    except Exception as error:
        status = graph_status(error)
        detail = describe_error(error)
        if status in (401, 403):
            raise Unprocessable(
                "the connection's app cannot read its own registration, so it cannot rotate its secret",
                [
                    FieldError(
                        "rotation",
                        "grant the app Application.ReadWrite.OwnedBy (and make it an owner of itself) "
                        f"or Application.ReadWrite.All: {detail}",
                    )
                ],
            ) from None
        if status == 404:
            raise Unprocessable(
                "the app registration was not found in the connection's tenant",
                [FieldError("rotation", f"app {connection.client_id} has no registration here: {detail}")],
            ) from None
        raise UpstreamError(f"could not read the app registration from Microsoft Graph: {detail}") from None
    require_key_id(app, key_id=key_id, client_id=connection.client_id)
    assert app.id
    return str(app.id)


def require_key_id(app: Application, *, key_id: str, client_id: str) -> None:
    """422 naming `rotation.clientSecretKeyId` unless `key_id` is one of the app's client secrets."""
    keys = {str(c.key_id).lower() for c in app.password_credentials or [] if c.key_id}
    if key_id.lower() not in keys:
        raise Unprocessable(
            "the Key ID is not a client secret of the connection's app",
            [
                FieldError(
                    "rotation.clientSecretKeyId",
                    f"is not the Secret ID of a client secret of app {client_id}; "
                    "copy it from the app's Certificates & secrets page",
                )
            ],
        )


async def add_password(record: RotationRecord) -> tuple[str, str]:
    """addPassword exactly once (core.azure_passwords): a lost answer is never re-sent.

    A credential adopted after a lost answer has no value we could use, so the step fails and
    the rollback removes it (found by the run's display name, the broker's marker).
    """
    assert record.new_display_name
    assert record.new_end_at
    app_access = await _access(record.connection_id)
    added = await azure_passwords.add_password(
        app_access, record.app_object_id, record.new_display_name, datetime.fromisoformat(record.new_end_at)
    )
    if added.secret is None:
        record.new_key_id = added.key_id
        raise RotationError(
            f"addPassword's answer was lost; the secret it made ({added.key_id}) is removed and the "
            "rotation retried"
        )
    return added.key_id, added.secret


async def remove_password(record: RotationRecord, key_id: str) -> None:
    """removePassword; a key that is already gone counts as removed (so the step is idempotent)."""
    from msgraph.generated.applications.item.remove_password.remove_password_post_request_body import (
        RemovePasswordPostRequestBody,
    )

    app_access = await _access(record.connection_id)
    builder = app_access.graph().applications.by_application_id(record.app_object_id).remove_password
    body = RemovePasswordPostRequestBody(key_id=UUID(key_id))
    try:
        # Removing a Key ID twice is harmless (the second finds it gone), so it may be retried.
        await azure_gateway.call("removePassword", lambda: builder.post(body), pace=app_access.pace_key)
    except AzureFailure as error:
        if error.status not in (400, 404):
            raise
        # Graph refuses to remove an unknown key id; make sure that is why (on the app rotated).
        from rotation.flavours import flavour_of

        _, client_id = await flavour_of(record).app_of(record)
        app = await get_application(record.connection_id, client_id)
        if any(str(c.key_id).lower() == key_id.lower() for c in app.password_credentials or []):
            raise


async def verify_secret(tenant_id: str, client_id: str, secret: str) -> None:
    """Prove the secret gets a Graph token, retrying through replication delay (bounded)."""
    from core.azure_clients import client_secret_credential, graph_scope

    deadline = time.monotonic() + VERIFY_TIMEOUT_SECONDS
    delay = VERIFY_FIRST_DELAY_SECONDS
    while True:
        credential = client_secret_credential(tenant_id, client_id, secret)
        try:
            async with credential:
                await azure_gateway.call(
                    "verifyToken", partial(credential.get_token, graph_scope()), kind="token"
                )
            return
        except AzureFailure as error:
            if error.transient or time.monotonic() + delay > deadline:
                raise RotationError(
                    f"the new secret did not get a token within {VERIFY_TIMEOUT_SECONDS:.0f}s: "
                    + describe_error(error, secret)
                ) from None
        await asyncio.sleep(delay)
        delay = min(delay * 2, VERIFY_MAX_DELAY_SECONDS)
