"""The Azure Client Secrets connection: Graph access to a tenant by OAuth, client secret or certificate.

Other packages reach it only through core.connection_seam (connections.access provides it):
facts, a Graph client acting as the connection, and the one conditional secret switch.

Credentials are validated on create and on every credential change: a token is acquired
(step `token-acquisition`) and Graph is called (step `graph-call`: the app itself by appId for
app credentials, `/me` for OAuth). Nothing is stored unless both work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from connections import lifecycle, oauth, oauth_credentials, store, switch
from connections.certificates import check_certificate
from connections.fields import CertificateCredentials, ClientSecretCredentials
from connections.kinds import CacheKey, ConnectionChanges, KindSpec, Material, cached_access, secret_material
from connections.models import (
    AuthorizeClientSecretsBody,
    ConnectionView,
    CreateCertificateConnection,
    CreateClientSecretConnection,
)
from connections.routes import KindApi
from connections.store import ConnectionRecord
from core import azure_gateway, clock
from core.azure_clients import certificate_credential, client_secret_credential, graph_client, graph_scope
from core.azure_failure import AzureFailure, classify
from core.azure_problems import DELEGATED_GRAPH_REFUSED
from core.errors import Conflict
from core.models import ApiModel

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from msgraph.graph_service_client import GraphServiceClient

KIND = "azure-client-secrets"
Method = Literal["oauth", "client-secret", "certificate"]

__all__ = ["ClientSecretConnection", "ConnectionChanges", "graph_client_for"]


class CertificateInfo(ApiModel):
    """The public facts of a certificate connection (never the key)."""

    thumbprint: str  # SHA-256, base64url: the x5t#S256 the client assertion carries
    thumbprint_sha1: str  # as the Portal shows it
    subject: str
    not_after: str


class ClientSecretConnection(ConnectionView):
    """An Azure Client Secrets connection as services and responses see it (no secret material)."""

    method: Method
    tenant_id: str
    client_id: str
    certificate: CertificateInfo | None = None


def to_connection(record: ConnectionRecord) -> ClientSecretConnection:
    cert = None
    if record.method == "certificate" and record.meta:
        cert = CertificateInfo(
            thumbprint=record.meta.get("thumbprint", ""),
            thumbprint_sha1=record.meta.get("thumbprintSha1", ""),
            subject=record.meta.get("subject", ""),
            not_after=record.meta.get("notAfter", ""),
        )
    return ClientSecretConnection.of(
        record, tenant_id=record.tenant_id or "", client_id=record.client_id or "", certificate=cert
    )


# ---------------------------------------------------------------------------------------------- credentials


def _material(method: str, credentials: Any) -> Material:
    """A certificate is stored as one PEM bundle (key, then certificate), its public facts as metadata."""
    if not isinstance(credentials, CertificateCredentials):
        return secret_material(method, credentials)
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
    tenant_id: str, client_id: str, method: str, secrets: dict[str, str], redact: list[str]
) -> Any:
    """Prove app credentials work: acquire a Graph token, then read the app itself from Graph.

    Returns the app as Graph read it (a hook's `check_app`, e.g. the rotation's "the new secret's Key ID
    is on the app", looks at it).
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
    return app


async def _validate(record: ConnectionRecord, secrets: dict[str, str], redact: list[str]) -> Any:
    tenant_id, client_id = record.tenant_id or "", record.client_id or ""
    return await validate_app_credentials(tenant_id, client_id, record.method, secrets, redact)


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


# ------------------------------------------------------------------------------------- Graph for others


async def _cache_key(record: ConnectionRecord) -> CacheKey:
    if record.method == "oauth":
        return oauth_credentials.refresh_token_key(record)
    tenant, client = record.tenant_id or "", record.client_id or ""
    purpose = "certificate" if record.method == "certificate" else "clientSecret"
    value = await store.read_secret(record, purpose)
    return value, lambda: _credential(tenant, client, record.method, {purpose: value})


async def graph_client_for(connection_id: str) -> GraphServiceClient:
    """A Graph client acting as the connection with its CURRENT credential (no SDK retries)."""
    return (await cached_access(SPEC, await store.get_record(KIND, connection_id))).graph()


async def switch_client_secret(connection_id: str, secret: str, *, from_rev: str, key_id: str = "") -> str:
    """Make `secret` the connection's client secret if it is still at `from_rev` (see lifecycle)."""
    record = await store.get_record(KIND, connection_id)
    if record.method != "client-secret":
        raise Conflict(
            f"connection {record.id} uses method {record.method}; "
            "only client-secret connections have a client secret",
            code="wrong-method",
        )
    return await switch.switch_secret(
        SPEC, connection_id, "clientSecret", secret, from_rev=from_rev, key_id=key_id
    )


# ---------------------------------------------------------------------------------------------- OAuth


async def _complete_oauth(pending: oauth.PendingAuthorization, tokens: oauth.TokenSet) -> ConnectionRecord:
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
    return await lifecycle.insert_oauth(SPEC, pending, tokens, token_tenant or tenant, user)


SPEC = KindSpec(
    kind=KIND,
    credential_models={"client-secret": ClientSecretCredentials, "certificate": CertificateCredentials},
    material=_material,
    validate=_validate,
    current_credentials=_current_credentials,
    cache_key=_cache_key,
    paired_fields={"certificate": ("certificate", "privateKey")},
)

oauth.register(
    oauth.OAuthKind(
        kind=KIND,
        scope=graph_scope,
        complete=_complete_oauth,
    )
)

API = KindApi(
    spec=SPEC,
    create_models=(CreateClientSecretConnection, CreateCertificateConnection),
    authorize_model=AuthorizeClientSecretsBody,
    view_model=ClientSecretConnection,
    to_view=to_connection,
    create_summary="Create a client-secret or certificate connection (validated against Entra ID and Graph)",
)
