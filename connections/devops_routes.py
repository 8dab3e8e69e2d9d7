"""HTTP routes of the Azure DevOps connection (create/list/read/update/delete, OAuth start, projects)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Response, status

from connections import devops
from connections.devops import DevOpsConnection, ProjectPage
from connections.models import (
    AuthorizationStarted,
    AuthorizeDevOpsBody,
    CreateDevOpsBody,
    DevOpsConnectionList,
    UpdateDevOpsBody,
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

PREFIX = "/api/v1/app-connections/azure-devops"
router = connection_router(PREFIX, "azure-devops", ("access-token", "client-secret"))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DevOpsConnection,
    summary="Create an access-token or client-secret connection (validated by listing projects)",
)
async def create_connection(
    body: CreateDevOpsBody,
    caller: Annotated[Caller, Depends(require(Role.ADMIN))],
    response: Response,
) -> DevOpsConnection:
    connection = await devops.create_connection(body.name, body.description, body.credentials, caller)
    response.headers["Location"] = f"{PREFIX}/{connection.id}"
    return connection


@router.get("", response_model=DevOpsConnectionList, summary="List connections")
async def list_connections(caller: Annotated[Caller, Depends(require(Role.READER))]) -> DevOpsConnectionList:
    return DevOpsConnectionList(items=await devops.list_connections())


@router.post(
    "/oauth/authorize",
    response_model=AuthorizationStarted,
    summary="Start an OAuth connection: returns the Entra ID authorize URL to open in a browser",
)
async def authorize(
    body: AuthorizeDevOpsBody,
    caller: Annotated[Caller, Depends(require(Role.ADMIN))],
) -> AuthorizationStarted:
    return authorization_started(
        await devops.start_oauth(body.name, body.tenant_id, body.org_name, body.description, caller)
    )


@router.get("/{connection_id}", response_model=DevOpsConnection, summary="Read a connection")
async def get_connection(
    connection_id: ConnectionId,
    caller: Annotated[Caller, Depends(require(Role.READER))],
    response: Response,
) -> DevOpsConnection:
    connection, etag = await devops.get_connection_with_etag(connection_id)
    set_etag(response, etag)
    return connection


@router.patch(
    "/{connection_id}",
    response_model=DevOpsConnection,
    summary="Update a connection (new credentials are validated first; If-Match honoured)",
)
async def update_connection(
    connection_id: ConnectionId,
    body: UpdateDevOpsBody,
    caller: Annotated[Caller, Depends(require(Role.ADMIN))],
    response: Response,
    if_match: IfMatch = None,
) -> DevOpsConnection:
    connection, etag = await devops.update_connection(
        connection_id, changes_of(body), caller, if_match=if_match
    )
    set_etag(response, etag)
    return connection


@router.delete("/{connection_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a connection")
async def delete_connection(
    connection_id: ConnectionId,
    caller: Annotated[Caller, Depends(require(Role.ADMIN))],
    if_match: IfMatch = None,
) -> Response:
    await devops.delete_connection(connection_id, caller, if_match=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{connection_id}/projects",
    response_model=ProjectPage,
    summary="The organization's projects, a page at a time (pass continuationToken for the next page)",
)
async def list_projects(
    connection_id: ConnectionId,
    caller: Annotated[Caller, Depends(require(Role.READER))],
    top: Annotated[int, Query(ge=1, le=500, description="page size")] = 100,
    continuation_token: Annotated[str | None, Query(alias="continuationToken", max_length=512)] = None,
) -> ProjectPage:
    return await devops.list_projects(connection_id, top=top, continuation=continuation_token)
