"""The Azure DevOps connection: one organization, by OAuth, a personal access token or an app's client secret.

Validated on create (and on credential change) by listing the organization's projects; the
connection lists projects afterwards, page by page (DevOps continuation tokens). Only
`AZURE_DEVOPS_ENDPOINT` + a validated organization name is ever called, without following
redirects (a redirect is DevOps sending a bad credential to its sign-in page).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Query

from connections import lifecycle, oauth, oauth_credentials, store
from connections.azure_errors import send_with_retries, within_deadline
from connections.fields import DevOpsAccessTokenCredentials, DevOpsClientSecretCredentials
from connections.lifecycle import ConnectionChanges, KindSpec, Material
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
from core.azure_clients import client_secret_credential, http_client
from core.azure_problems import (
    DEVOPS_SCOPES,
    AzureRejected,
    Explanation,
    credential_problem,
    rejected,
    transient_problem,
)
from core.deps import Reader
from core.errors import Conflict, FieldError, Problem, Unprocessable
from core.models import ApiModel
from core.retry_after import retry_after_seconds
from core.settings import get_settings

if TYPE_CHECKING:
    import httpx
    from azure.core.credentials_async import AsyncTokenCredential

KIND = "azure-devops"
RESOURCE = "azure-devops-connection"
AUTHORIZE_PATH = "/api/v1/app-connections/azure-devops/oauth/authorize"
# Azure DevOps as an Entra resource (its well-known application id).
DEVOPS_RESOURCE = "499b84ac-1321-427f-aa17-267ca6975798"
DEVOPS_SCOPE = f"{DEVOPS_RESOURCE}/.default"
API_VERSION = "7.1"
TOKEN_RETRIES = 3
CONTINUATION = re.compile(r"^[A-Za-z0-9+/=_.~-]{1,512}$")
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


class Project(ApiModel):
    id: str
    name: str
    description: str | None = None
    state: str | None = None
    visibility: str | None = None
    last_update_time: str | None = None


class ProjectPage(ApiModel):
    items: list[Project]
    continuation_token: str | None = None


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


def _credential_field(method: str) -> str:
    return {"access-token": "accessToken", "client-secret": "clientId"}.get(method, "token")


def devops_problem(response: httpx.Response, method: str, org: str) -> Problem:
    """A DevOps answer other than a page of projects, as a problem naming the cause."""
    status = response.status_code
    content_type = response.headers.get("content-type", "")
    field_prefix = "credentials." if method != "oauth" else ""
    location = response.headers.get("location", "")
    if status == 203 or 300 <= status < 400 or (status == 200 and "html" in content_type):
        where = f" (redirected to {location.split('?')[0][:100]})" if location else ""
        return rejected(
            "devops-call",
            Explanation(
                _credential_field(method),
                "Azure DevOps answered with its sign-in page: the token is invalid, revoked or not for "
                f"organization {org}{where}",
            ),
            azure_code="SignInRedirect",
            azure_status=status,
            field_prefix=field_prefix,
        )
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    type_key = str(body.get("typeKey", "")) if isinstance(body, dict) else ""
    tf_code = re.search(r"TF\d+", message)
    azure_code = tf_code.group(0) if tf_code else (type_key or None)
    transient = transient_problem("devops-call", status, azure_code, retry_after_seconds(response.headers))
    if transient is not None:
        return transient
    lowered = message.lower()
    if status == 404:
        explanation = Explanation("orgName", f"organization not found: {org} does not exist in Azure DevOps")
    elif status == 403 or (status == 401 and "scope" in lowered):
        explanation = Explanation(
            _credential_field(method), f"the token is missing a required scope; grant {DEVOPS_SCOPES}"
        )
    elif status == 401 and "expired" in lowered:
        explanation = Explanation(
            _credential_field(method), "token invalid or expired: the token has expired"
        )
    elif status == 401 and method == "client-secret":
        explanation = Explanation(
            "clientId",
            f"token invalid or expired, or the app is not a member of organization {org} "
            "(add its service principal to the organization)",
        )
    elif status == 401:
        explanation = Explanation(_credential_field(method), "token invalid or expired")
    else:
        explanation = Explanation("orgName", "Azure DevOps refused the request; see azureCode")
    return rejected(
        "devops-call",
        explanation,
        azure_code=azure_code,
        azure_status=status,
        azure_message=message[:300],
        field_prefix=field_prefix,
    )


async def _projects(
    org: str, authorization: str, method: str, *, top: int, continuation: str | None
) -> ProjectPage:
    """One page of the organization's projects."""
    client = await http_client()
    url = f"{get_settings().azure_devops_endpoint}/{org}/_apis/projects"
    params: dict[str, str] = {"api-version": API_VERSION, "$top": str(top)}
    if continuation:
        params["continuationToken"] = continuation
    headers = {"Authorization": authorization, "Accept": "application/json"}

    async def send() -> httpx.Response:
        return await client.get(url, params=params, headers=headers)

    response = await within_deadline(send_with_retries(send, step="devops-call"), "devops-call")
    if response.status_code != 200 or "json" not in response.headers.get("content-type", ""):
        raise devops_problem(response, method, org)
    body = response.json()
    items = [
        Project(
            id=str(p.get("id", "")),
            name=str(p.get("name", "")),
            description=p.get("description"),
            state=p.get("state"),
            visibility=p.get("visibility"),
            last_update_time=p.get("lastUpdateTime"),
        )
        for p in body.get("value", [])
        if isinstance(p, dict)
    ]
    token = response.headers.get("x-ms-continuationtoken")
    return ProjectPage(items=items, continuation_token=token if token and CONTINUATION.match(token) else None)


def _basic(pat: str) -> str:
    return "Basic " + base64.b64encode(f":{pat}".encode()).decode()


async def _bearer(credential: AsyncTokenCredential, redact: list[str]) -> str:
    try:
        token = await within_deadline(
            credential.get_token(DEVOPS_SCOPE, retry_total=TOKEN_RETRIES), "token-acquisition"
        )
    except Problem:
        raise
    except Exception as error:
        raise credential_problem(error, redact=redact) from None
    return f"Bearer {token.token}"


# ---------------------------------------------------------------------------------------------- credentials


def _material(method: str, credentials: Any) -> Material:
    if isinstance(credentials, DevOpsAccessTokenCredentials):
        token = credentials.access_token.get_secret_value()
        return {"accessToken": token}, {}, [token]
    assert isinstance(credentials, DevOpsClientSecretCredentials)
    secret = credentials.client_secret.get_secret_value()
    return {"clientSecret": secret}, {}, [secret]


async def _validate(
    record: ConnectionRecord, secrets: dict[str, str], redact: list[str], *, require_key_id: str | None = None
) -> None:
    org = record.org_name or ""
    if record.method == "access-token":
        await _projects(org, _basic(secrets["accessToken"]), record.method, top=1, continuation=None)
        return
    credential = client_secret_credential(
        record.tenant_id or "", record.client_id or "", secrets["clientSecret"]
    )
    try:
        authorization = await _bearer(credential, redact)
        await _projects(org, authorization, record.method, top=1, continuation=None)
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
        return _basic(await store.read_secret(record, "accessToken"))
    material, build = await _material_of(record)
    access = await azure_credentials.for_credential(
        record.tenant_id or "", record.client_id or "", material, build
    )
    return await _bearer(access.credential, [])


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
        return await _projects(
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
    await _projects(org, f"Bearer {tokens.access_token}", "oauth", top=1, continuation=None)
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
