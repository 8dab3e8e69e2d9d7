"""Test set-up: Azurite for tables, the Azure stand-in over loopback HTTPS, and the broker as a real server.

Everything starts once per session. The broker runs with AUTH_MODE=entra against the
stand-in's tenant, so tests call it with real signed tokens (`token(...)`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.table_stats  # noqa: F401  (installs the table operation counters)
from tests.azurite import Azurite, free_port, start_azurite
from tests.harness import ServerHandle, serve_in_thread

API_AUDIENCE = "api://azure-credential-broker"
ALL_ROLES = ["Broker.Admin"]


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    with tempfile.TemporaryDirectory(prefix="azurite-") as location:
        instance = start_azurite(Path(location), log_file=Path(location) / "azurite.log")
        yield instance
        instance.stop()


@pytest.fixture(scope="session")
def fake_azure() -> Iterator[Any]:
    from tests.azure_fake import start_fake_azure

    fake = start_fake_azure()
    os.environ["SSL_CERT_FILE"] = str(fake.ca_file)
    os.environ["REQUESTS_CA_BUNDLE"] = str(fake.ca_file)
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def broker_tenant(fake_azure: Any) -> Any:
    """The tenant the broker itself lives in (its API app, its own identity for Key Vault)."""
    tenant = fake_azure.add_tenant(domain="broker.example.com")
    fake_azure.set_vault_tenant(tenant)  # the vault trusts the broker's own tenant only
    return tenant


@pytest.fixture(scope="session")
def broker_env(azurite: Azurite, fake_azure: Any, broker_tenant: Any) -> dict[str, str]:
    """App settings as Bicep would set them, pointed at the local stand-ins."""
    identity = fake_azure.add_application(broker_tenant, "broker-identity", permissions=[])
    _, identity_secret = fake_azure.add_password(identity, display_name="broker identity")
    port = free_port()
    env = {
        "TABLES_CONNECTION_STRING": azurite.connection_string,
        "KEY_VAULT_URL": fake_azure.key_vault_url,
        "AZURE_AUTHORITY_HOST": fake_azure.authority_host,
        "GRAPH_ENDPOINT": fake_azure.graph_endpoint,
        "AZURE_DEVOPS_ENDPOINT": fake_azure.devops_endpoint,
        "SITE_URL": f"http://127.0.0.1:{port}",
        "AUTH_MODE": "entra",
        "AUTH_TENANT_ID": broker_tenant.id,
        "AUTH_AUDIENCE": API_AUDIENCE,
        "AZURE_TENANT_ID": broker_tenant.id,
        "AZURE_CLIENT_ID": identity.app_id,
        "AZURE_CLIENT_SECRET": identity_secret,
        "BROKER_TEST_PORT": str(port),
    }
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
def broker(broker_env: dict[str, str]) -> Iterator[ServerHandle]:
    """The broker API as a real HTTP server (uvicorn in a thread)."""
    from core.settings import get_settings

    get_settings.cache_clear()
    import function_app

    handle = serve_in_thread(function_app.api, int(broker_env["BROKER_TEST_PORT"]))
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def token(fake_azure: Any, broker_tenant: Any) -> Callable[..., str]:
    """Mint a caller token for the broker's API app: token(roles=[...], **overrides)."""

    def mint(roles: list[str] | None = None, **overrides: Any) -> str:
        options: dict[str, Any] = {"tenant_id": broker_tenant.id, "audience": API_AUDIENCE}
        options.update(overrides)
        return str(fake_azure.mint_caller_token(roles=ALL_ROLES if roles is None else roles, **options))

    return mint


@pytest.fixture(scope="session")
def api(broker: ServerHandle, token: Callable[..., str]) -> Iterator[httpx.Client]:
    """An Admin client of the broker API."""
    with httpx.Client(
        base_url=broker.url, headers={"Authorization": f"Bearer {token()}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture
def anonymous(broker: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=broker.url, timeout=60) as client:
        yield client


@pytest.fixture
def as_role(broker: ServerHandle, token: Callable[..., str]) -> Iterator[Callable[[str], httpx.Client]]:
    """A client holding only the given app role."""
    clients: list[httpx.Client] = []

    def make(role: str) -> httpx.Client:
        client = httpx.Client(
            base_url=broker.url, headers={"Authorization": f"Bearer {token([role])}"}, timeout=60
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture(autouse=True)
def _reset_clock_and_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    from core import clock

    yield
    clock.reset()
    if "fake_azure" in request.fixturenames:
        request.getfixturevalue("fake_azure").reset_faults()
