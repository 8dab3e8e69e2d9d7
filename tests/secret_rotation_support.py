"""Shared set-up for the secret-rotation tests: a connection whose app owns a target app."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.harness import ServerHandle
from tests.rotation_helpers import PREFIX as CONNECTIONS
from tests.rotation_helpers import RotatingApp, create_body, make_app

PREFIX = "/api/v1/secret-rotations"
MARK = "azure-credential-broker secret-rotation "


@dataclass
class Setup:
    fake: Any
    api: httpx.Client
    rotated: RotatingApp  # the connection's app (owner of the target)
    connection_id: str
    target: Any
    hand_key_id: str  # a secret on the target the broker never touches
    made: list[str] = field(default_factory=list)

    def body(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": f"web-{uuid.uuid4().hex[:6]}",
            "connectionId": self.connection_id,
            "applicationId": self.target.app_id,
            "intervalDays": 30,
            "rotateAt": "02:00",
            "timeZone": "Europe/Berlin",
        }
        body.update(overrides)
        return body

    def create(self, **overrides: Any) -> dict[str, Any]:
        response = self.api.post(PREFIX, json=self.body(**overrides))
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        self.made.append(created["id"])
        return created

    def get(self, rotation_id: str) -> dict[str, Any]:
        response = self.api.get(f"{PREFIX}/{rotation_id}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def rotate(self, rotation_id: str) -> dict[str, Any]:
        response = self.api.post(f"{PREFIX}/{rotation_id}/rotate")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def current(self, rotation_id: str) -> httpx.Response:
        return self.api.get(f"{PREFIX}/{rotation_id}/current")

    def broker_keys(self, rotation_id: str | None = None) -> set[str]:
        mark = MARK + (f"{rotation_id} " if rotation_id else "")
        return {c.key_id for c in self.target.password_credentials if (c.display_name or "").startswith(mark)}

    def key_ids(self) -> set[str]:
        return {c.key_id for c in self.target.password_credentials}


@pytest.fixture
def setup(fake_azure: Any, api: httpx.Client, broker: ServerHandle) -> Iterator[Setup]:
    rotated = make_app(fake_azure)
    response = api.post(CONNECTIONS, json=create_body(rotated, None))
    assert response.status_code == 201, response.text
    connection_id = response.json()["id"]
    target = fake_azure.add_application(rotated.tenant, f"web-{uuid.uuid4().hex[:6]}")
    fake_azure.add_owner(target, rotated.app)
    hand_key_id, _ = fake_azure.add_password(target, display_name="made by hand")
    made = Setup(fake_azure, api, rotated, connection_id, target, hand_key_id)
    yield made
    for rotation_id in made.made:
        api.delete(f"{PREFIX}/{rotation_id}")
    api.delete(f"{CONNECTIONS}/{connection_id}")


@pytest.fixture
def destination_hosts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The stand-in serves every vault and store on 127.0.0.1 (DESTINATION_HOSTS as tests set it).

    The Key Vault SDK caches each host's auth challenge (its tenant) process-wide; real vaults each
    have their own host, but the stand-in's share one, so a vault of another tenant seen earlier in
    the session would send our token request to that tenant. Start from an empty cache."""
    from azure.keyvault.secrets._shared import http_challenge_cache

    from core.settings import get_settings

    http_challenge_cache.clear()

    monkeypatch.setenv("DESTINATION_HOSTS", "127.0.0.1:*")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def run_timer(broker: ServerHandle) -> dict[str, Any]:
    from rotation.timer import rotate_due_secret_rotations

    return broker.run(rotate_due_secret_rotations())


def run_reconciler(broker: ServerHandle) -> dict[str, Any]:
    from rotation.secret_runs import reconcile_secret_rotations

    return broker.run(reconcile_secret_rotations())
