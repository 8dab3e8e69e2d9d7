"""Shared set-up for the rotation tests: an app that may rotate its own secret, and checks on it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.harness import ServerHandle

PREFIX = "/api/v1/app-connections/azure-client-secrets"
KIND = "azure-client-secrets"
BROKER_MARK = "azure-credential-broker"


@dataclass
class RotatingApp:
    """An app registration in its own tenant whose connection rotates its secret."""

    tenant: Any
    app: Any
    original_key_id: str
    original_secret: str

    def passwords(self) -> list[Any]:
        return list(self.app.password_credentials)

    def key_ids(self) -> set[str]:
        return {c.key_id for c in self.passwords()}

    def broker_keys(self) -> list[Any]:
        return [c for c in self.passwords() if (c.display_name or "").startswith(BROKER_MARK)]


def make_app(fake: Any, *, permissions: tuple[str, ...] = ("Application.ReadWrite.OwnedBy",)) -> RotatingApp:
    tenant = fake.add_tenant()
    app = fake.add_application(
        tenant, f"rotating-{uuid.uuid4().hex[:6]}", permissions=list(permissions), owned_by_itself=True
    )
    key_id, secret = fake.add_password(app, display_name="set up by hand")
    return RotatingApp(tenant, app, key_id, secret)


def rotation_block(app: RotatingApp, **overrides: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "enabled": True,
        "clientSecretKeyId": app.original_key_id,
        "intervalDays": 30,
        "rotateAt": "02:00",
        "timeZone": "Europe/Berlin",
    }
    block.update(overrides)
    return block


def create_body(app: RotatingApp, rotation: dict[str, Any] | None, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name or f"rot-{uuid.uuid4().hex[:8]}",
        "method": "client-secret",
        "credentials": {
            "tenantId": app.tenant.id,
            "clientId": app.app.app_id,
            "clientSecret": app.original_secret,
        },
    }
    if rotation is not None:
        body["rotation"] = rotation
    return body


class Connections:
    """Creates connections over HTTP and deletes them after the test (so timers in later tests skip them)."""

    def __init__(self, api: httpx.Client) -> None:
        self.api = api
        self.ids: list[str] = []

    def create(
        self, app: RotatingApp, rotation: dict[str, Any] | None = None, **rotation_overrides: Any
    ) -> dict[str, Any]:
        block = rotation if rotation is not None else rotation_block(app, **rotation_overrides)
        response = self.api.post(PREFIX, json=create_body(app, block))
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        self.ids.append(body["id"])
        return body

    def get(self, connection_id: str) -> dict[str, Any]:
        response = self.api.get(f"{PREFIX}/{connection_id}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def cleanup(self) -> None:
        for connection_id in self.ids:
            self.api.delete(f"{PREFIX}/{connection_id}")


@pytest.fixture
def connections(api: httpx.Client) -> Iterator[Connections]:
    made = Connections(api)
    yield made
    made.cleanup()


async def read_client_secret(connection_id: str) -> str:
    """The connection's stored client secret (as the broker holds it; tests only)."""
    from connections import store

    return await store.read_secret(await store.get_record(KIND, connection_id), "clientSecret")


def current_secret(broker: ServerHandle, connection_id: str) -> str:
    return broker.run(read_client_secret(connection_id))


def assert_validates(broker: ServerHandle, connection_id: str) -> None:
    """The connection's stored secret gets a token and reads its app from Graph."""
    from connections import store
    from connections.client_secrets import validate_app_credentials

    async def check() -> None:
        connection = await store.get_record(KIND, connection_id)
        secret = await read_client_secret(connection_id)
        await validate_app_credentials(
            connection.tenant_id or "",
            connection.client_id or "",
            "client-secret",
            {"clientSecret": secret},
            [secret],
        )

    broker.run(check())


def assert_one_working_broker_secret(
    fake: Any, broker: ServerHandle, app: RotatingApp, connection_id: str
) -> Any:
    """Exactly one broker-made secret on the app, the original gone, and it is the connection's."""
    keys = app.broker_keys()
    assert len(keys) == 1, [(c.key_id, c.display_name) for c in app.passwords()]
    assert app.original_key_id not in app.key_ids()
    assert app.key_ids() == {keys[0].key_id}, "no other secret (no orphan) is left on the app"
    secret = current_secret(broker, connection_id)
    matched = fake.state.check_secret(app.app, secret)
    assert matched is not None
    assert matched.key_id == keys[0].key_id
    assert_validates(broker, connection_id)
    return keys[0]


def pending_vault_secrets(fake: Any) -> list[str]:
    with fake.state.lock:
        return [name for name in fake.state.secrets if "-pending-" in name and name.startswith("rotation-")]


def run_timer(broker: ServerHandle) -> dict[str, Any]:
    from rotation.timer import rotate_due_connections

    return broker.run(rotate_due_connections())


def run_reconciler(broker: ServerHandle) -> dict[str, Any]:
    from rotation.reconciler import reconcile_rotations

    return broker.run(reconcile_rotations())


def rotation_row(broker: ServerHandle, connection_id: str) -> Any:
    from rotation import store

    return broker.run(store.load(connection_id))


Factory = Callable[..., RotatingApp]
