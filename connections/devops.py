"""The Azure DevOps connection: one organization, by OAuth, a personal access token or an app's client secret.

Validated on create (and on credential change) by listing the organization's projects
(connections.devops_rest); the connection lists projects afterwards, page by page.
"""

from __future__ import annotations

from collections.abc import Callable
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
from connections.kinds import ConnectionChanges, KindSpec, Material
from connections.models import (
    AuthorizeDevOpsBody,
    CreateDevOpsAccessTokenConnection,
    CreateDevOpsClientSecretConnection,
    UpdateConnectionBody,
)
from connections.routes import KindApi
from connections.routing import ConnectionId
from connections.store import ConnectionRecord
from core import azure_credentials
from core.auth import Caller
from core.azure_clients import client_secret_credential
from core.azure_problems import (
    AzureRejected,
)
from core.deps import Reader
from core.errors import Conflict, FieldError, Problem, Unprocessable
from core.models import ApiModel

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

KIND = "azure-devops"
RESOURCE = "azure-devops-connection"
AUTHORIZE_PATH = "/api/v1/app-connections/azure-devops/oauth/authorize"
Method = Literal["oauth", "access-token", "client-secret"]

__all__ = ["ConnectionChanges", "DevOpsConnection", "Project", "ProjectPage"]


class DevOpsConnection(ApiModel):
    """An Azure DevOps connection (no secret material)."""

    id: str
    name: str
    description: str | None = None
    method: Method
    org_name: str
    tenant_id: str | None = None
    client_id: str | None = None
    status: str = "active"
    authorized_user: str | None = None
    created_at: str
    updated_at: str
    created_by: str = ""


def to_connection(record: ConnectionRecord) -> DevOpsConnection:
    return DevOpsConnection(
        id=record.id,
        name=record.name,
        description=record.description,
        method=record.method,
        org_name=record.org_name or "",
        tenant_id=record.tenant_id,
        client_id=record.client_id,
        status=record.status,
        authorized_user=record.meta.get("user") if record.method == "oauth" else None,
        created_at=record.created_at,
        updated_at=record.updated_at,
        created_by=record.created_by,
    )


# ---------------------------------------------------------------------------------------------- REST


# ---------------------------------------------------------------------------------------------- credentials


def _material(method: str, credentials: Any) -> Material:
    if isinstance(credentials, DevOpsAccessTokenCredentials):
        token = credentials.access_token.get_secret_value()
        return {"accessToken": token}, {}, [token]
    assert isinstance(credentials, DevOpsClientSecretCredentials)
    secret = credentials.client_secret.get_secret_value()
    return {"clientSecret": secret}, {}, [secret]


async def _validate(
    record: ConnectionRecord,
    secrets: dict[str, str],
    redact: list[str],
    *,
    check_app: Callable[[Any], None] | None = None,
) -> None:
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
    material, build = await _material_of(record)
    access = await azure_credentials.for_credential(
        record.tenant_id or "", record.client_id or "", material, build
    )
    return await bearer(access.credential, [])


async def _material_of(record: ConnectionRecord) -> tuple[str, Callable[[], AsyncTokenCredential]]:
    tenant, client = record.tenant_id or "", record.client_id or ""
    if record.method == "oauth":
        ref = record.secret_refs["refreshToken"]
        return ref, lambda: oauth_credentials.RefreshTokenCredential(oauth.kind_of(KIND), tenant, ref)
    secret = await store.read_secret(record, "clientSecret")
    return secret, lambda: client_secret_credential(tenant, client, secret)


async def invalidate_client(record: ConnectionRecord) -> None:
    """Close the cached credential of this record (it is being replaced or removed)."""
    if record.method == "access-token":
        return
    try:
        material, _ = await _material_of(record)
    except Problem:
        return
    await azure_credentials.drop(record.tenant_id or "", record.client_id or "", material)


# ---------------------------------------------------------------------------------------------- service


def method_of(credentials: DevOpsAccessTokenCredentials | DevOpsClientSecretCredentials) -> str:
    return "access-token" if isinstance(credentials, DevOpsAccessTokenCredentials) else "client-secret"


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


async def start_oauth(body: AuthorizeDevOpsBody, caller: Caller) -> str:
    await store.ensure_name_free(KIND, body.name)
    return await oauth.start_authorization(
        KIND,
        body.tenant_id,
        {"name": body.name, "description": body.description, "orgName": body.org_name},
        caller,
    )


async def _complete_oauth(pending: oauth.PendingAuthorization, tokens: oauth.TokenSet) -> DevOpsConnection:
    """The callback's last step for this kind: list projects with the delegated token, then create."""
    tenant, org = str(pending.params["tenantId"]), str(pending.params["orgName"])
    token_tenant = oauth.check_grant(tokens, tenant)
    await projects(org, f"Bearer {tokens.access_token}", "oauth", top=1, continuation=None)
    user = str(tokens.claims.get("preferred_username") or tokens.claims.get("upn") or "")
    created = await lifecycle.insert_oauth(SPEC, pending, tokens, token_tenant or tenant, user, org_name=org)
    return to_connection(created)


SPEC = KindSpec(
    kind=KIND,
    resource=RESOURCE,
    credential_models={
        "access-token": DevOpsAccessTokenCredentials,
        "client-secret": DevOpsClientSecretCredentials,
    },
    material=_material,
    validate=_validate,
    current_credentials=_current_credentials,
    invalidate=invalidate_client,
    reauthorize_hint=f"sign in again with POST {AUTHORIZE_PATH} (a new connection)",
)

oauth.register(
    oauth.OAuthKind(
        kind=KIND,
        client_id_setting="INF_APP_CONNECTION_AZURE_DEVOPS_CLIENT_ID",
        client_secret_setting="INF_APP_CONNECTION_AZURE_DEVOPS_CLIENT_SECRET",  # noqa: S106
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
    prefix="/api/v1/app-connections/azure-devops",
    methods=("access-token", "client-secret"),
    create_models=(CreateDevOpsAccessTokenConnection, CreateDevOpsClientSecretConnection),
    update_model=UpdateConnectionBody,
    authorize_model=AuthorizeDevOpsBody,
    view_model=DevOpsConnection,
    to_view=to_connection,
    method_of=method_of,
    start_oauth=start_oauth,
    create_summary="Create an access-token or client-secret connection (validated by listing projects)",
    extra_routes=_project_routes,
)
