"""The Azure Client Secrets connection: Graph access to a tenant by OAuth, client secret or certificate.

Other packages reach it only through core.connection_seam (connections.access provides it):
facts, a Graph client acting as the connection, and the one conditional secret switch.

Credentials are validated on create and on every credential change: a token is acquired
(step `token-acquisition`) and Graph is called (step `graph-call`: the app itself by appId for
app credentials, `/me` for OAuth). Nothing is stored unless both work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from connections import lifecycle, oauth, oauth_credentials, store
from connections.certificates import check_certificate
from connections.fields import CertificateCredentials, ClientSecretCredentials
from connections.kinds import ConnectionChanges, KindSpec, Material
from connections.models import (
    AuthorizeClientSecretsBody,
    CreateCertificateConnection,
    CreateClientSecretConnection,
    UpdateConnectionBody,
)
from connections.routes import KindApi
from connections.store import ConnectionRecord
from core import azure_credentials, azure_gateway, clock
from core.auth import Caller
from core.azure_clients import certificate_credential, client_secret_credential, graph_client, graph_scope
from core.azure_credentials import AppAccess
from core.azure_failure import AzureFailure, classify
from core.azure_problems import DELEGATED_GRAPH_REFUSED
from core.errors import Conflict, Problem
from core.models import ApiModel

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from msgraph.graph_service_client import GraphServiceClient

KIND = "azure-client-secrets"
RESOURCE = "azure-client-secrets-connection"
AUTHORIZE_PATH = "/api/v1/app-connections/azure-client-secrets/oauth/authorize"
Method = Literal["oauth", "client-secret", "certificate"]

__all__ = [
    "ClientSecretConnection",
    "ConnectionChanges",
    "get_connection",
    "graph_client_for",
    "invalidate_client",
]


class CertificateInfo(ApiModel):
    """The public facts of a certificate connection (never the key)."""

    thumbprint: str  # SHA-256, base64url: the x5t#S256 the client assertion carries
    thumbprint_sha1: str  # as the Portal shows it
    subject: str
    not_after: str


class ClientSecretConnection(ApiModel):
    """An Azure Client Secrets connection as services and responses see it (no secret material)."""

    id: str
    name: str
    description: str | None = None
    method: Method
    tenant_id: str
    client_id: str
    status: str = "active"
    certificate: CertificateInfo | None = None
    authorized_user: str | None = None  # OAuth: who consented
    created_at: str
    updated_at: str
    created_by: str = ""


def to_connection(record: ConnectionRecord) -> ClientSecretConnection:
    cert = None
    if record.method == "certificate" and record.meta:
        cert = CertificateInfo(
            thumbprint=record.meta.get("thumbprint", ""),
            thumbprint_sha1=record.meta.get("thumbprintSha1", ""),
            subject=record.meta.get("subject", ""),
            not_after=record.meta.get("notAfter", ""),
        )
    return ClientSecretConnection(
        id=record.id,
        name=record.name,
        description=record.description,
        method=record.method,
        tenant_id=record.tenant_id or "",
        client_id=record.client_id or "",
        status=record.status,
        certificate=cert,
        authorized_user=record.meta.get("user") if record.method == "oauth" else None,
        created_at=record.created_at,
        updated_at=record.updated_at,
        created_by=record.created_by,
    )


# ---------------------------------------------------------------------------------------------- reads


async def get_connection(connection_id: str) -> ClientSecretConnection:
    """The connection, or a 404 problem."""
    return to_connection(await store.get_record(KIND, connection_id))


async def get_connection_with_etag(connection_id: str) -> tuple[ClientSecretConnection, str | None]:
    record = await store.get_record(KIND, connection_id)
    return to_connection(record), record.etag


async def list_connections() -> list[ClientSecretConnection]:
    return [to_connection(r) for r in await store.list_records(KIND)]


# ---------------------------------------------------------------------------------------------- credentials


def _material(method: str, credentials: Any) -> Material:
    if isinstance(credentials, ClientSecretCredentials):
        secret = credentials.client_secret.get_secret_value()
        return {"clientSecret": secret}, {}, [secret]
    assert isinstance(credentials, CertificateCredentials)
    key = credentials.private_key.get_secret_value()
    checked = check_certificate(credentials.certificate, key)
    meta = {
        "thumbprint": checked.thumbprint_sha256,
        "thumbprintSha1": checked.thumbprint_sha1,
        "subject": checked.subject,
        "notAfter": clock.isoformat(checked.not_after),
    }
    return {"certificate": checked.bundle.decode()}, meta, [key]


def _credential(tenant_id: str, client_id: str, method: str, secrets: dict[str, str]) -> AsyncTokenCredential:
    if method == "certificate":
        return certificate_credential(tenant_id, client_id, secrets["certificate"].encode())
    return client_secret_credential(tenant_id, client_id, secrets["clientSecret"])


async def close_graph(client: GraphServiceClient, credential: AsyncTokenCredential | None = None) -> None:
    """Close a Graph client we built: the httpx client under it, and its credential's session."""
    try:
        http = getattr(client.request_adapter, "_http_client", None)
        if http is not None:
            await http.aclose()
    finally:
        if credential is not None:
            await credential.close()


async def validate_app_credentials(
    tenant_id: str,
    client_id: str,
    method: str,
    secrets: dict[str, str],
    redact: list[str],
    *,
    check_app: Callable[[Any], None] | None = None,
) -> None:
    """Prove app credentials work: acquire a Graph token, then read the app itself from Graph.

    `check_app` (a hook's, e.g. the rotation's "the new secret's Key ID is on the app") sees the app read.
    """
    try:
        credential = _credential(tenant_id, client_id, method, secrets)
    except ValueError as error:
        raise classify("token", "token-acquisition", error).validation_problem() from None
    client: GraphServiceClient | None = None
    pace = (tenant_id, client_id)
    try:
        try:
            await azure_gateway.call(
                "token-acquisition",
                # enable_cae as the Graph client asks, so the Graph call reuses this cached token;
                # no SDK retries: the gateway's policy is the only one
                lambda: credential.get_token(graph_scope(), enable_cae=True, retry_total=0),
                kind="token",
            )
            client = graph_client(credential, max_retries=0)
            graph = client
            app = await azure_gateway.call(
                "graph-call", lambda: graph.applications_with_app_id(client_id).get(), pace=pace
            )
        except AzureFailure as failure:
            raise failure.validation_problem(redact=redact) from None
    finally:
        if client is None:
            await credential.close()
        else:
            await close_graph(client, credential)
    if check_app is not None and app is not None:
        check_app(app)


async def _validate(
    record: ConnectionRecord,
    secrets: dict[str, str],
    redact: list[str],
    *,
    check_app: Callable[[Any], None] | None = None,
) -> None:
    await validate_app_credentials(
        record.tenant_id or "", record.client_id or "", record.method, secrets, redact, check_app=check_app
    )


async def _current_credentials(record: ConnectionRecord) -> dict[str, Any]:
    current: dict[str, Any] = {"tenantId": record.tenant_id, "clientId": record.client_id}
    if record.method == "client-secret":
        current["clientSecret"] = await store.read_secret(record, "clientSecret")
    elif record.method == "certificate":
        bundle = await store.read_secret(record, "certificate")
        end = bundle.index("-----END PRIVATE KEY-----") + len("-----END PRIVATE KEY-----")
        current["privateKey"], current["certificate"] = bundle[:end].strip(), bundle[end:].strip()
    return current


# ---------------------------------------------------------------------------------------------- writes


def method_of(credentials: ClientSecretCredentials | CertificateCredentials) -> str:
    return "client-secret" if isinstance(credentials, ClientSecretCredentials) else "certificate"


# ------------------------------------------------------------------------------------- Graph for others


async def _cache_key(record: ConnectionRecord) -> tuple[str, Callable[[], AsyncTokenCredential]]:
    """What keys the connection's cached credential (its secret, bundle or refresh token name)."""
    tenant, client = record.tenant_id or "", record.client_id or ""
    if record.method == "oauth":
        ref = record.secret_refs["refreshToken"]
        return ref, lambda: oauth_credentials.RefreshTokenCredential(oauth.kind_of(KIND), tenant, ref)
    purpose = "certificate" if record.method == "certificate" else "clientSecret"
    value = await store.read_secret(record, purpose)
    return value, lambda: _credential(tenant, client, record.method, {purpose: value})


async def app_access(record: ConnectionRecord) -> AppAccess:
    """The connection's credential and Graph client, from the gateway's one credential cache."""
    material, build = await _cache_key(record)
    return await azure_credentials.for_credential(
        record.tenant_id or "", record.client_id or "", material, build
    )


async def graph_client_for(connection_id: str) -> GraphServiceClient:
    """A Graph client acting as the connection with its CURRENT credential (no SDK retries)."""
    return (await app_access(await store.get_record(KIND, connection_id))).graph()


async def invalidate_client(record: ConnectionRecord) -> None:
    """Close the cached access of this record's credential (it is being replaced or removed)."""
    try:
        material, _ = await _cache_key(record)
    except Problem:
        return  # its secret is gone already: nothing cached can be reached by it any more
    await azure_credentials.drop(record.tenant_id or "", record.client_id or "", material)


async def switch_client_secret(connection_id: str, secret: str, *, from_rev: str, key_id: str = "") -> str:
    """Make `secret` the connection's client secret if it is still at `from_rev` (see lifecycle)."""
    record = await store.get_record(KIND, connection_id)
    if record.method != "client-secret":
        raise Conflict(
            f"connection {record.id} uses method {record.method}; "
            "only client-secret connections have a client secret",
            code="wrong-method",
        )
    return await lifecycle.switch_secret(
        SPEC, connection_id, "clientSecret", secret, from_rev=from_rev, key_id=key_id
    )


# ---------------------------------------------------------------------------------------------- OAuth


async def start_oauth(body: AuthorizeClientSecretsBody, caller: Caller) -> str:
    """The authorize URL for a new OAuth connection (the name is checked now, claimed at the callback)."""
    await store.ensure_name_free(KIND, body.name)
    return await oauth.start_authorization(
        KIND, body.tenant_id, {"name": body.name, "description": body.description}, caller
    )


async def _complete_oauth(
    pending: oauth.PendingAuthorization, tokens: oauth.TokenSet
) -> ClientSecretConnection:
    """The callback's last step for this kind: check `/me` with the delegated token, then create."""
    tenant = str(pending.params["tenantId"])
    token_tenant = oauth.check_grant(tokens, tenant)
    credential = oauth_credentials.StaticTokenCredential(tokens.access_token, tokens.expires_on)
    client = graph_client(credential, max_retries=0)
    try:
        me = await azure_gateway.call("graph-call", client.me.get)
    except AzureFailure as failure:
        delegated = DELEGATED_GRAPH_REFUSED if failure.status == 403 else None
        raise failure.validation_problem(field_prefix="", explained=delegated) from None
    finally:
        await close_graph(client)
    user = str(getattr(me, "user_principal_name", "") or "")
    return to_connection(await lifecycle.insert_oauth(SPEC, pending, tokens, token_tenant or tenant, user))


SPEC = KindSpec(
    kind=KIND,
    resource=RESOURCE,
    credential_models={"client-secret": ClientSecretCredentials, "certificate": CertificateCredentials},
    material=_material,
    validate=_validate,
    current_credentials=_current_credentials,
    invalidate=invalidate_client,
    reauthorize_hint=f"sign in again with POST {AUTHORIZE_PATH} (a new connection)",
    paired_fields={"certificate": ("certificate", "privateKey")},
)

oauth.register(
    oauth.OAuthKind(
        kind=KIND,
        client_id_setting="INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_ID",
        client_secret_setting="INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_SECRET",  # noqa: S106
        scope=graph_scope,
        complete=_complete_oauth,
    )
)

API = KindApi(
    spec=SPEC,
    prefix="/api/v1/app-connections/azure-client-secrets",
    methods=("client-secret", "certificate"),
    create_models=(CreateClientSecretConnection, CreateCertificateConnection),
    update_model=UpdateConnectionBody,
    authorize_model=AuthorizeClientSecretsBody,
    view_model=ClientSecretConnection,
    to_view=to_connection,
    method_of=method_of,
    start_oauth=start_oauth,
    create_summary="Create a client-secret or certificate connection (validated against Entra ID and Graph)",
)
