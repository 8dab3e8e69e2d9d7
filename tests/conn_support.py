"""Helpers shared by the connection tests (tests/test_client_secrets.py, test_oauth.py, test_devops.py,
test_connection_input.py): seeding the stand-in, the OAuth browser dance, and secret scans.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx

from tests.harness import ServerHandle

CS_PATH = "/api/v1/app-connections/azure-client-secrets"
DEVOPS_PATH = "/api/v1/app-connections/azure-devops"
CALLBACK_PATH = "/organization/app-connections/azure/oauth/callback"
CONNECTION_TABLES = ("AppConnections", "AppConnectionNames", "OAuthStates", "AuditLog")

GRAPH_APP_PERMISSIONS = ["Application.ReadWrite.All"]


def unique(prefix: str) -> str:
    """A connection name no other test uses."""
    return f"{prefix}-{secrets.token_hex(4)}"


def new_app(
    fake: Any, tenant: Any, permissions: Iterable[str] = GRAPH_APP_PERMISSIONS, **options: Any
) -> tuple[Any, str, str]:
    """An app registration with one client secret: (app, key_id, secret)."""
    app = fake.add_application(tenant, unique("app"), permissions=list(permissions), **options)
    key_id, secret = fake.add_password(app, display_name="given to the broker")
    return app, key_id, secret


def client_secret_body(name: str, tenant: Any, app: Any, secret: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "method": "client-secret",
        "credentials": {"tenantId": tenant.id, "clientId": app.app_id, "clientSecret": secret},
        **extra,
    }


@contextmanager
def app_settings(**values: str | None) -> Iterator[None]:
    """Set (or unset, with None) app settings for the in-process broker, and restore them after."""
    from core.settings import get_settings

    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


def operator_app(
    fake: Any, home_tenant: Any, broker: ServerHandle, delegated: Iterable[str]
) -> tuple[Any, str]:
    """A multi-tenant operator app whose redirect URI is the broker's callback: (app, secret)."""
    app = fake.add_application(
        home_tenant,
        unique("operator"),
        permissions=[],
        multi_tenant=True,
        redirect_uris=[broker.url + CALLBACK_PATH],
        delegated_permissions=list(delegated),
    )
    _, secret = fake.add_password(app, display_name="operator")
    return app, secret


def browser_sign_in(authorization_url: str) -> str:
    """Follow the authorize URL at the stand-in as a browser would; returns the redirect (callback) URL."""
    with httpx.Client(timeout=30) as browser:
        answer = browser.get(authorization_url, follow_redirects=False)
    assert answer.status_code == 302, answer.text
    return str(answer.headers["location"])


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def query_of(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}


def table_rows(broker: ServerHandle, tables: Iterable[str] = CONNECTION_TABLES) -> list[dict[str, Any]]:
    """Every row of the given tables (read through core.tables on the broker's loop)."""
    from core import tables as core_tables

    async def read() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for table in tables:
            async for row in core_tables.query(table, "PartitionKey ne @none", {"none": ""}):
                rows.append({"table": table, "pk": row.pk, "rk": row.rk, **row.data})
        return rows

    return broker.run(read())


def assert_no_secret(values: Iterable[str], *haystacks: Any) -> None:
    """None of the secret values appears in any haystack (responses, rows, log text)."""
    texts = []
    for haystack in haystacks:
        if isinstance(haystack, httpx.Response):
            texts.append(haystack.text + json.dumps(dict(haystack.headers)))
        elif isinstance(haystack, str):
            texts.append(haystack)
        else:
            texts.append(json.dumps(haystack, default=str))
    blob = "\n".join(texts)
    for value in values:
        assert value, "empty secret in the scan list"
        assert value not in blob, f"a secret value leaked (starts {value[:4]}...)"
        # PEM bodies: any long line of the key must not appear either
        for line in value.splitlines():
            if len(line) >= 40:
                assert line not in blob, "a line of a PEM secret leaked"


def audit_entries(api: httpx.Client, resource_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get("/api/v1/audit-logs", params={"resourceId": resource_id}).json()[
        "items"
    ]
    return items
