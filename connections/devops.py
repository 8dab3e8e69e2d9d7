"""The Azure DevOps connection: one organization, by OAuth, a personal access token or an app's client secret.

Validated on create (and on credential change) by listing the organization's projects
(connections.devops_rest); the connection lists projects afterwards, page by page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Query

from connections import lifecycle, oauth, oauth_credentials, store
from connections.devops_rest import (
    CONTINUATION,
    DEVOPS_SCOPE,
    Project,
    ProjectPage,
    basic,
    bearer,
    projects,
)
from connections.fields import DevOpsAccessTokenCredentials, DevOpsClientSecretCredentials
from connections.kinds import CacheKey, ConnectionChanges, KindSpec, cached_access
from connections.models import (
    AuthorizeDevOpsBody,
    ConnectionView,
    CreateDevOpsAccessTokenConnection,
    CreateDevOpsClientSecretConnection,
)
from connections.routes import KindApi
from connections.routing import ConnectionId
from connections.store import ConnectionRecord
from core.azure_clients import client_secret_credential
from core.azure_problems import (
    AzureRejected,
)
from core.deps import Reader
from core.errors import Conflict, FieldError, Unprocessable

if TYPE_CHECKING:
    pass

KIND = "azure-devops"
Method = Literal["oauth", "access-token", "client-secret"]

__all__ = ["ConnectionChanges", "DevOpsConnection", "Project", "ProjectPage"]


class DevOpsConnection(ConnectionView):
    """An Azure DevOps connection (no secret material)."""

    method: Method
    org_name: str
    tenant_id: str | None = None
    client_id: str | None = None


def to_connection(record: ConnectionRecord) -> DevOpsConnection:
    return DevOpsConnection.of(record, org_name=record.org_name or "")


# ---------------------------------------------------------------------------------------------- credentials


async def _validate(record: ConnectionRecord, secrets: dict[str, str], redact: list[str]) -> None:
    org = record.org_name or ""
    if record.method == "access-token":
        await projects(org, basic(secrets["accessToken"]), record.method, top=1, continuation=None)
        return
    credential = client_secret_credential(
        record.tenant_id or "", record.client_id or "", secrets["clientSecret"]
    )
    try:
        authorization = await bearer(credential, redact)
        await projects(org, authorization, record.method, top=1, continuation=None)
    finally:
        await credential.close()


async def _current_credentials(record: ConnectionRecord) -> dict[str, Any]:
    current: dict[str, Any] = {"orgName": record.org_name}
    if record.method == "access-token":
        current["accessToken"] = await store.read_secret(record, "accessToken")
    elif record.method == "client-secret":
        current.update({"tenantId": record.tenant_id, "clientId": record.client_id})
        current["clientSecret"] = await store.read_secret(record, "clientSecret")
    return current


async def _authorization(record: ConnectionRecord) -> str:
    """The Authorization header of a stored connection (bearer tokens from the one credential cache)."""
    if record.method == "access-token":
        return basic(await store.read_secret(record, "accessToken"))
    return await bearer((await cached_access(SPEC, record)).credential, [])


async def _cache_key(record: ConnectionRecord) -> CacheKey | None:
    if record.method == "access-token":
        return None  # a PAT is sent as it is: no token credential to cache
    if record.method == "oauth":
        return oauth_credentials.refresh_token_key(record)
    tenant, client = record.tenant_id or "", record.client_id or ""
    secret = await store.read_secret(record, "clientSecret")
    return secret, lambda: client_secret_credential(tenant, client, secret)


# ---------------------------------------------------------------------------------------------- service


async def list_projects(
    connection_id: str, *, top: int = 100, continuation: str | None = None
) -> ProjectPage:
    """One page of the organization's projects, through the connection's credential."""
    if continuation is not None and not CONTINUATION.match(continuation):
        raise Unprocessable(
            "continuationToken is not one Azure DevOps issued",
            [FieldError("continuationToken", "use the continuationToken of the previous page")],
        )
    record = await store.get_record(KIND, connection_id)
    try:
        return await projects(
            record.org_name or "",
            await _authorization(record),
            record.method,
            top=top,
            continuation=continuation,
        )
    except AzureRejected as refused:
        # Nothing in this request was wrong: the stored credential no longer works.
        raise Conflict(
            f"The connection's credentials were refused: {refused.detail} Update them with PATCH.",
            refused.errors,
            extra=refused.extra,
            code="connection-credentials-refused",
        ) from None


# ---------------------------------------------------------------------------------------------- OAuth


async def _complete_oauth(pending: oauth.PendingAuthorization, tokens: oauth.TokenSet) -> ConnectionRecord:
    """The callback's last step for this kind: list projects with the delegated token, then create."""
    tenant, org = str(pending.params["tenantId"]), str(pending.params["orgName"])
    token_tenant = oauth.check_grant(tokens, tenant)
    await projects(org, f"Bearer {tokens.access_token}", "oauth", top=1, continuation=None)
    user = str(tokens.claims.get("preferred_username") or tokens.claims.get("upn") or "")
    return await lifecycle.insert_oauth(SPEC, pending, tokens, token_tenant or tenant, user, org_name=org)


SPEC = KindSpec(
    kind=KIND,
    credential_models={
        "access-token": DevOpsAccessTokenCredentials,
        "client-secret": DevOpsClientSecretCredentials,
    },
    validate=_validate,
    current_credentials=_current_credentials,
    cache_key=_cache_key,
)

oauth.register(
    oauth.OAuthKind(
        kind=KIND,
        scope=lambda: DEVOPS_SCOPE,
        complete=_complete_oauth,
    )
)


def _project_routes(router: APIRouter) -> None:
    @router.get(
        "/{connection_id}/projects",
        response_model=ProjectPage,
        summary="The organization's projects, a page at a time (pass continuationToken for the next page)",
    )
    async def list_projects_route(
        connection_id: ConnectionId,
        caller: Reader,
        top: Annotated[int, Query(ge=1, le=500, description="page size")] = 100,
        continuation_token: Annotated[str | None, Query(alias="continuationToken", max_length=512)] = None,
    ) -> ProjectPage:
        return await list_projects(connection_id, top=top, continuation=continuation_token)


API = KindApi(
    spec=SPEC,
    create_models=(CreateDevOpsAccessTokenConnection, CreateDevOpsClientSecretConnection),
    authorize_model=AuthorizeDevOpsBody,
    view_model=DevOpsConnection,
    to_view=to_connection,
    create_summary="Create an access-token or client-secret connection (validated by listing projects)",
    extra_routes=_project_routes,
)
