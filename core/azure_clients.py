"""Factories for Azure clients, importing each heavy SDK only on first use.

The cold start of a Functions worker pays for every import in `function_app`; azure.identity,
msgraph and azure.keyvault are imported here, inside functions, and nowhere at module level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from core.loop_cache import PerLoop
from core.settings import get_settings

if TYPE_CHECKING:
    import httpx
    from azure.core.credentials_async import AsyncTokenCredential
    from msgraph.graph_service_client import GraphServiceClient

HTTP_TIMEOUT_SECONDS = 20.0
GRAPH_MAX_RETRIES = 3


def is_loopback(url: str) -> bool:
    """The local stand-in for Azure is served on loopback."""
    host = urlsplit(url).hostname or ""
    return host in {"localhost", "::1"} or host.startswith("127.")


def _identity_options() -> dict[str, Any]:
    authority = get_settings().azure_authority_host
    # MSAL validates unknown authorities against the public cloud's discovery host, which a
    # loopback stand-in can never pass; sovereign clouds are known authorities and keep it.
    return {"authority": authority, "disable_instance_discovery": is_loopback(authority)}


async def _broker_credential() -> AsyncTokenCredential:
    from azure.identity.aio import DefaultAzureCredential

    options = _identity_options()
    return DefaultAzureCredential(
        authority=options["authority"],
        disable_instance_discovery=options["disable_instance_discovery"],
        managed_identity_client_id=get_settings().azure_client_id,
        exclude_interactive_browser_credential=True,
    )


_broker: PerLoop[AsyncTokenCredential] = PerLoop(_broker_credential)


async def broker_credential() -> AsyncTokenCredential:
    """The broker's own identity (managed identity in Azure) for Tables and Key Vault."""
    return await _broker.get()


def client_secret_credential(tenant_id: str, client_id: str, client_secret: str) -> AsyncTokenCredential:
    """A credential for an app registration's client secret, on the configured authority."""
    from azure.identity.aio import ClientSecretCredential

    return ClientSecretCredential(tenant_id, client_id, client_secret, **_identity_options())


def certificate_credential(tenant_id: str, client_id: str, pem: bytes) -> AsyncTokenCredential:
    """A credential that signs client assertions with a certificate's key (PEM: cert + key)."""
    from azure.identity.aio import CertificateCredential

    return CertificateCredential(tenant_id, client_id, certificate_data=pem, **_identity_options())


def graph_base_url() -> str:
    return f"{get_settings().graph_endpoint}/v1.0"


def graph_scope() -> str:
    return f"{get_settings().graph_endpoint}/.default"


def graph_client(
    credential: AsyncTokenCredential,
    *,
    max_retries: int = GRAPH_MAX_RETRIES,
    http: httpx.AsyncClient | None = None,
) -> GraphServiceClient:
    """A Graph client on GRAPH_ENDPOINT whose retry honours Retry-After, bounded in count and time.

    `max_retries=0` for clients used through `core.azure_gateway` (its policy is the only one);
    `http`: the transport, for a caller that closes it itself (the gateway's credential cache).
    """
    import httpx
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from kiota_http.middleware.options import RetryHandlerOption
    from msgraph.graph_request_adapter import GraphRequestAdapter
    from msgraph.graph_request_adapter import options as graph_defaults
    from msgraph.graph_service_client import GraphServiceClient
    from msgraph_core import GraphClientFactory

    host = urlsplit(get_settings().graph_endpoint).hostname or ""
    auth = AzureIdentityAuthenticationProvider(credential, scopes=[graph_scope()], allowed_hosts=[host])
    http = GraphClientFactory.create_with_default_middleware(
        client=http or httpx.AsyncClient(timeout=httpx.Timeout(HTTP_TIMEOUT_SECONDS), http2=False),
        # msgraph's own options too (e.g. `/users/me-token-to-replace` -> `/me`, which `client.me` needs)
        options={
            **graph_defaults,
            RetryHandlerOption.get_key(): RetryHandlerOption(delay=1, max_retries=max_retries),
        },
    )
    adapter = GraphRequestAdapter(auth, http)
    adapter.base_url = graph_base_url()
    return GraphServiceClient(request_adapter=adapter)


async def _http() -> httpx.AsyncClient:
    import httpx

    return httpx.AsyncClient(timeout=httpx.Timeout(HTTP_TIMEOUT_SECONDS), follow_redirects=False)


_http_clients: PerLoop[httpx.AsyncClient] = PerLoop(_http)


async def http_client() -> httpx.AsyncClient:
    """A shared httpx client (OIDC discovery, token exchange, Azure DevOps REST)."""
    return await _http_clients.get()


def reset_clients() -> None:
    """Forget cached clients (settings changed, e.g. in tests)."""
    _broker.clear()
    _http_clients.clear()
