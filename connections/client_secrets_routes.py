"""HTTP routes of the Azure Client Secrets connection (create/list/read/update/delete, OAuth start).

The rotation block is rotation/'s: create and PATCH hand it to `rotation.service.configure_rotation`
after the connection is saved (a refused block on create rolls the new connection back), reads show
`describe_rotation`, and delete calls `delete_rotation` first.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Response, status

from connections import client_secrets, oauth
from connections.client_secrets import ClientSecretConnection
from connections.lifecycle import ConnectionChanges
from connections.models import (
    AuthorizationStarted,
    AuthorizeClientSecretsBody,
    ClientSecretConnectionList,
    ClientSecretConnectionView,
    CreateClientSecretConnection,
    CreateClientSecretsBody,
    UpdateClientSecretsBody,
)
from connections.routing import tagged_union_route
from core.auth import Caller, Role, require
from core.errors import FieldError, Problem, Unprocessable
from rotation import service as rotation

PREFIX = "/api/v1/app-connections/azure-client-secrets"
ConnectionId = Annotated[str, Path(min_length=1, max_length=64, description="The connection's id")]
IfMatch = Annotated[str | None, Header(alias="If-Match", max_length=256, description="ETag from a GET")]

router = APIRouter(
    prefix=PREFIX,
    tags=["azure-client-secrets"],
    route_class=tagged_union_route(
        ("client-secret", "certificate"),
        {"oauth": f"oauth connections are created by signing in: POST {PREFIX}/oauth/authorize"},
    ),
)


async def view(connection: ClientSecretConnection) -> ClientSecretConnectionView:
    """The connection as the API shows it, with its rotation block."""
    return ClientSecretConnectionView(
        **connection.model_dump(), rotation=await rotation.describe_rotation(connection.id)
    )


def _etag(response: Response, etag: str | None) -> None:
    if etag:
        response.headers["ETag"] = etag


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
    return ClientSecretConnectionList(items=[await view(c) for c in await client_secrets.list_connections()])


@router.post(
    "/oauth/authorize",
    response_model=AuthorizationStarted,
    summary="Start an OAuth connection: returns the Entra ID authorize URL to open in a browser",
)
async def authorize(
    body: AuthorizeClientSecretsBody,
    caller: Annotated[Caller, Depends(require(Role.ADMIN))],
) -> AuthorizationStarted:
    url = await client_secrets.start_oauth(body.name, body.tenant_id, body.description, caller)
    return AuthorizationStarted(
        authorization_url=url,
        expires_in=int(oauth.STATE_TTL.total_seconds()),
        redirect_uri=oauth.redirect_uri(),
    )


@router.get("/{connection_id}", response_model=ClientSecretConnectionView, summary="Read a connection")
async def get_connection(
    connection_id: ConnectionId,
    caller: Annotated[Caller, Depends(require(Role.READER))],
    response: Response,
) -> ClientSecretConnectionView:
    connection, etag = await client_secrets.get_connection_with_etag(connection_id)
    _etag(response, etag)
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
    fields = body.model_fields_set
    changes = ConnectionChanges(
        name=body.name,
        description=body.description,
        description_set="description" in fields,
        credentials=body.credentials,
    )
    connection = await client_secrets.get_connection(connection_id)
    if body.rotation is not None and connection.method != "client-secret":
        raise Unprocessable(
            "automatic rotation needs the client-secret method",
            [FieldError("rotation", f"is only available for method client-secret, not {connection.method}")],
        )
    changed = changes.name is not None or changes.description_set or changes.credentials is not None
    if changed or if_match is not None:
        connection = await client_secrets.update_connection(connection_id, changes, caller, if_match=if_match)
    if body.rotation is not None:
        try:
            rotation_view = await rotation.configure_rotation(
                connection, body.rotation, caller, on_create=False
            )
        except Problem as problem:
            if changed:
                problem.detail = (
                    f"The connection was updated, but its rotation settings were not: {problem.detail}"
                )
            raise
    else:
        rotation_view = await rotation.describe_rotation(connection.id)
    _, etag = await client_secrets.get_connection_with_etag(connection_id)
    _etag(response, etag)
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
