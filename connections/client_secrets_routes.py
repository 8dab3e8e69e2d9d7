"""HTTP routes of the Azure Client Secrets connection (create/list/read/update/delete, OAuth start).

The rotation block is rotation/'s: create and PATCH hand it to `rotation.service.configure_rotation`
after the connection is saved (a refused block on create rolls the new connection back), reads show
`describe_rotation`, and delete calls `delete_rotation` first.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Response, status

from connections import client_secrets
from connections.client_secrets import ClientSecretConnection
from connections.models import (
    AuthorizationStarted,
    AuthorizeClientSecretsBody,
    ClientSecretConnectionList,
    ClientSecretConnectionView,
    CreateClientSecretConnection,
    CreateClientSecretsBody,
    UpdateClientSecretsBody,
)
from connections.routing import (
    ConnectionId,
    IfMatch,
    authorization_started,
    changes_of,
    connection_router,
    set_etag,
)
from core.auth import Caller, Role, require
from core.errors import FieldError, Problem, Unprocessable
from rotation import service as rotation

PREFIX = "/api/v1/app-connections/azure-client-secrets"
router = connection_router(PREFIX, "azure-client-secrets", ("client-secret", "certificate"))


async def view(connection: ClientSecretConnection) -> ClientSecretConnectionView:
    """The connection as the API shows it, with its rotation block."""
    return ClientSecretConnectionView(
        **connection.model_dump(), rotation=await rotation.describe_rotation(connection.id)
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ClientSecretConnectionView,
    summary="Create a client-secret or certificate connection (validated against Entra ID and Graph)",
)
async def create_connection(
    body: CreateClientSecretsBody,
    caller: Annotated[Caller, Depends(require(Role.ADMIN))],
    response: Response,
) -> ClientSecretConnectionView:
    connection = await client_secrets.create_connection(body.name, body.description, body.credentials, caller)
    settings = body.rotation if isinstance(body, CreateClientSecretConnection) else None
    try:
        rotation_view = await rotation.configure_rotation(connection, settings, caller, on_create=True)
    except Problem as problem:
        await client_secrets.rollback_create(connection.id, caller, f"rotation refused: {problem.detail}")
        raise
    except BaseException:
        await client_secrets.rollback_create(connection.id, caller, "rotation failed")
        raise
    response.headers["Location"] = f"{PREFIX}/{connection.id}"
    return ClientSecretConnectionView(**connection.model_dump(), rotation=rotation_view)


@router.get("", response_model=ClientSecretConnectionList, summary="List connections")
async def list_connections(
    caller: Annotated[Caller, Depends(require(Role.READER))],
) -> ClientSecretConnectionList:
    connections = await client_secrets.list_connections()
    return ClientSecretConnectionList(items=list(await asyncio.gather(*(view(c) for c in connections))))


@router.post(
    "/oauth/authorize",
    response_model=AuthorizationStarted,
    summary="Start an OAuth connection: returns the Entra ID authorize URL to open in a browser",
)
async def authorize(
    body: AuthorizeClientSecretsBody,
    caller: Annotated[Caller, Depends(require(Role.ADMIN))],
) -> AuthorizationStarted:
    return authorization_started(
        await client_secrets.start_oauth(body.name, body.tenant_id, body.description, caller)
    )


@router.get("/{connection_id}", response_model=ClientSecretConnectionView, summary="Read a connection")
async def get_connection(
    connection_id: ConnectionId,
    caller: Annotated[Caller, Depends(require(Role.READER))],
    response: Response,
) -> ClientSecretConnectionView:
    connection, etag = await client_secrets.get_connection_with_etag(connection_id)
    set_etag(response, etag)
    return await view(connection)


@router.patch(
    "/{connection_id}",
    response_model=ClientSecretConnectionView,
    summary="Update a connection (new credentials are validated first; If-Match honoured)",
)
async def update_connection(
    connection_id: ConnectionId,
    body: UpdateClientSecretsBody,
    caller: Annotated[Caller, Depends(require(Role.ADMIN))],
    response: Response,
    if_match: IfMatch = None,
) -> ClientSecretConnectionView:
    changes = changes_of(body)
    connection, etag = await client_secrets.get_connection_with_etag(connection_id)
    if body.rotation is not None and connection.method != "client-secret":
        raise Unprocessable(
            "automatic rotation needs the client-secret method",
            [FieldError("rotation", f"is only available for method client-secret, not {connection.method}")],
        )
    # A new client secret under rotation needs the new secret's Key ID (checked with the new
    # credentials, before anything is saved), so the rotation never tracks the previous one.
    key_id = await rotation.key_id_for_new_secret(connection_id, body.rotation, changes.credentials)
    changed = changes.name is not None or changes.description_set or changes.credentials is not None
    if changed or if_match is not None:
        connection, etag = await client_secrets.update_connection(
            connection_id, changes, caller, if_match=if_match, rotation_key_id=key_id
        )
    secret_changed = changes.credentials is not None and "clientSecret" in changes.credentials
    try:
        rotation_view = await rotation.configure_rotation(
            connection, body.rotation, caller, on_create=False, secret_changed=secret_changed
        )
    except Problem as problem:
        if changed:
            problem.detail = (
                f"The connection was updated, but its rotation settings were not: {problem.detail}"
            )
        raise
    set_etag(response, etag)
    return ClientSecretConnectionView(**connection.model_dump(), rotation=rotation_view)


@router.delete(
    "/{connection_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a connection and its stored credentials (broker-made app secrets are removed first)",
)
async def delete_connection(
    connection_id: ConnectionId,
    caller: Annotated[Caller, Depends(require(Role.ADMIN))],
    if_match: IfMatch = None,
) -> Response:
    await client_secrets.get_connection(connection_id)  # 404 before touching rotation
    await rotation.delete_rotation(connection_id)
    await client_secrets.delete_connection(connection_id, caller, if_match=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
