"""Helpers shared by the lease and dynamic secret tests (no tests here).

Each test gets its own Entra tenant in the stand-in: an app with User.ReadWrite.All (+
Application.Read.All so it can read its role memberships) and the User Administrator role, users
with known first passwords, and a public client app to prove a password signs in (ROPC).
"""

from __future__ import annotations

import secrets
import string
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from core import tables
from leases.records import DynamicSecret, IndexEntry, Lease, UserClaim, split_lease_id
from tests.harness import ServerHandle

LEASE_TABLES = (DynamicSecret.TABLE, UserClaim.TABLE, Lease.TABLE, IndexEntry.TABLE)


def first_password() -> str:
    return "Init-" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(16)) + "1a!"


def unique_prefix() -> str:
    return "t" + uuid.uuid4().hex[:8]


@dataclass
class EntraSetup:
    """One tenant of the stand-in, ready for dynamic secrets."""

    fake: Any
    tenant: Any
    app: Any
    secret: str
    public_client: Any
    users: list[Any] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)  # upn -> the password set at seeding
    prefix: str = field(default_factory=unique_prefix)

    def add_user(self, local: str | None = None) -> Any:
        local = local or f"user{len(self.users) + 1}"
        upn = f"{local}@{self.tenant.default_domain}"
        password = first_password()
        user = self.fake.add_user(self.tenant, upn, password)
        self.users.append(user)
        self.passwords[upn] = password
        return user

    def body(self, users: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prefix": self.prefix,
            "defaultTtl": "1h",
            "maxTtl": "4h",
            "tenantId": self.tenant.id,
            "applicationId": self.app.app_id,
            "clientSecret": self.secret,
            "users": users if users is not None else [u.id for u in self.users],
        }
        body.update(overrides)
        return body

    def signs_in(self, upn: str, password: str) -> bool:
        """Resource-owner password sign-in at the stand-in's token endpoint."""
        response = httpx.post(
            self.fake.token_endpoint(self.tenant),
            data={
                "grant_type": "password",
                "client_id": self.public_client.app_id,
                "username": upn,
                "password": password,
                "scope": f"{self.fake.graph_endpoint}/.default",
            },
            verify=str(self.fake.ca_file),
            timeout=30,
        )
        return response.status_code == 200

    def user(self, upn_or_id: str) -> Any:
        return next(u for u in self.users if upn_or_id in (u.id, u.user_principal_name))

    def password_changes(self, upn_or_id: str) -> int:
        with self.fake.state.lock:
            return int(self.user(upn_or_id).password_change_count)


def entra_setup(
    fake: Any,
    users: int = 2,
    permissions: tuple[str, ...] = ("User.ReadWrite.All", "Application.Read.All"),
    roles: tuple[str, ...] = ("User Administrator",),
) -> EntraSetup:
    tenant = fake.add_tenant(domain=f"{uuid.uuid4().hex[:10]}.example.com")
    app = fake.add_application(
        tenant, "lease-broker", permissions=list(permissions), directory_roles=list(roles)
    )
    _, secret = fake.add_password(app, display_name="broker")
    public = fake.add_application(tenant, "sign-in-check", public_client=True)
    setup = EntraSetup(fake, tenant, app, secret, public)
    for _ in range(users):
        setup.add_user()
    return setup


def create_dynamic_secrets(api: httpx.Client, setup: EntraSetup, **overrides: Any) -> list[dict[str, Any]]:
    response = api.post("/api/v1/dynamic-secrets", json=setup.body(**overrides))
    assert response.status_code == 201, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def lease(api: httpx.Client, name: str, ttl: str | None = None) -> dict[str, Any]:
    response = api.post(f"/api/v1/dynamic-secrets/{name}/leases", json={"ttl": ttl} if ttl else {})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def all_rows(broker: ServerHandle, table: str) -> list[tables.Row]:
    async def collect() -> list[tables.Row]:
        return [row async for row in tables.query(table, "PartitionKey ne ''")]

    return broker.run(collect())


def lease_row(broker: ServerHandle, lease_id: str) -> dict[str, Any]:
    """A lease's properties as stored (the layout docs/ARCHITECTURE.md documents)."""
    name, _ = split_lease_id(lease_id) or ("", "")
    row = broker.run(tables.get(Lease.TABLE, name, lease_id))
    assert row is not None
    return row.data
