"""OAuth (authorization code + PKCE) connections via the one callback and the stand-in's authorize page."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from connections import client_secrets, kinds, store
from core import clock
from tests.conn_support import (
    CALLBACK_PATH,
    CS_PATH,
    app_settings,
    assert_no_secret,
    audit_entries,
    browser_sign_in,
    operator_app,
    query_of,
    table_rows,
    unique,
    with_query,
)
from tests.harness import ServerHandle, assert_problem

CS_SETTINGS = (
    "INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_ID",
    "INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_SECRET",
)
DELEGATED = ["User.Read", "Application.ReadWrite.All", "Directory.ReadWrite.All"]


@pytest.fixture(scope="module")
def tenant(fake_azure: Any) -> Any:
    return fake_azure.add_tenant(domain="contoso-oauth.example.com")


@pytest.fixture(scope="module")
def user(fake_azure: Any, tenant: Any) -> Any:
    return fake_azure.add_user(
        tenant,
        "admin@contoso-oauth.example.com",
        "Passw0rd!long",
        directory_roles=["Application Administrator"],
    )


@pytest.fixture(scope="module")
def operator(fake_azure: Any, broker_tenant: Any, broker: ServerHandle) -> tuple[Any, str]:
    return operator_app(fake_azure, broker_tenant, broker, DELEGATED)


@pytest.fixture
def configured(operator: tuple[Any, str]) -> Iterator[Any]:
    app, secret = operator
    with app_settings(**dict(zip(CS_SETTINGS, (app.app_id, secret), strict=True))):
        yield app


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def start(api: httpx.Client, tenant: Any, name: str | None = None) -> httpx.Response:
    return api.post(
        f"{CS_PATH}/oauth/authorize", json={"name": name or unique("oauth"), "tenantId": tenant.id}
    )


def authorized_callback(api: httpx.Client, tenant: Any, name: str | None = None) -> str:
    started = start(api, tenant, name)
    assert started.status_code == 200, started.text
    return browser_sign_in(started.json()["authorizationUrl"])


def test_full_round_trip_creates_a_delegated_connection(
    api: httpx.Client,
    anonymous: httpx.Client,
    fake_azure: Any,
    broker: ServerHandle,
    tenant: Any,
    user: Any,
    configured: Any,
    captured_logs: pytest.LogCaptureFixture,
) -> None:
    name = unique("oauth")
    started = api.post(
        f"{CS_PATH}/oauth/authorize", json={"name": name, "tenantId": tenant.id, "description": "me"}
    )
    assert started.status_code == 200, started.text
    url = started.json()["authorizationUrl"]
    assert started.json()["expiresIn"] == 600
    assert url.startswith(f"{fake_azure.authority_host}/{tenant.id}/oauth2/v2.0/authorize?")
    query = query_of(url)
    assert query["client_id"] == configured.app_id
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert query["redirect_uri"] == broker.url + CALLBACK_PATH
    assert "offline_access" in query["scope"].split()
    assert len(query["state"]) >= 32

    callback = browser_sign_in(url)
    assert callback.startswith(broker.url + CALLBACK_PATH)
    done = anonymous.get(callback)
    assert done.status_code == 200, done.text
    connection = done.json()
    assert connection["method"] == "oauth"
    assert connection["name"] == name
    assert connection["description"] == "me"
    assert connection["tenantId"] == tenant.id
    assert connection["authorizedUser"] == user.user_principal_name
    assert connection["rotation"] is None
    assert api.get(f"{CS_PATH}/{connection['id']}").json() == connection

    # the refresh token is in Key Vault, named by the row; it rotates on use
    row = next(r for r in table_rows(broker, ["AppConnections"]) if r["rk"] == connection["id"])
    ref = json.loads(row["secretRefs"])["refreshToken"]
    first_refresh = fake_azure.state.secrets[ref.lower()].latest.value

    async def read_me() -> str:
        client = await client_secrets.graph_client_for(connection["id"])
        me = await client.me.get()
        assert me is not None
        return str(me.user_principal_name)

    assert broker.run(read_me()) == user.user_principal_name
    second_refresh = fake_azure.state.secrets[ref.lower()].latest.value
    assert second_refresh != first_refresh
    assert fake_azure.state.refresh_tokens[first_refresh].revoked_reason == "rotated"
    record = broker.run(store.get_record(client_secrets.KIND, connection["id"]))
    broker.run(kinds.invalidate(client_secrets.SPEC, record))
    assert broker.run(read_me()) == user.user_principal_name  # works with the stored, rotated token
    assert fake_azure.state.secrets[ref.lower()].latest.value != second_refresh

    entries = audit_entries(api, connection["id"])
    assert ("connection.create", "success") in [(e["action"], e["result"]) for e in entries]
    tokens = [first_refresh, second_refresh, fake_azure.state.secrets[ref.lower()].latest.value]
    assert_no_secret(tokens, done, table_rows(broker), entries, captured_logs.text)
    # the (redeemed) code is in this test's own request log line, so it is scanned in the stores only
    assert_no_secret([query_of(callback)["code"]], done, table_rows(broker), entries)


def test_callback_answers_a_browser_with_html(
    api: httpx.Client, anonymous: httpx.Client, tenant: Any, user: Any, configured: Any
) -> None:
    callback = authorized_callback(api, tenant)
    page = anonymous.get(callback, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Connection created" in page.text
    replay = anonymous.get(callback, headers={"Accept": "text/html"})
    assert replay.status_code == 409
    assert "already used" in replay.text
    assert "<script" not in replay.text


def test_state_is_single_use(
    api: httpx.Client, anonymous: httpx.Client, tenant: Any, user: Any, configured: Any
) -> None:
    callback = authorized_callback(api, tenant)
    assert anonymous.get(callback).status_code == 200
    replay = anonymous.get(callback)
    body = assert_problem(replay, 409, "state")
    assert body["type"].endswith("#oauth-state-used")
    assert "replayed" in body["detail"]


def test_unknown_state_is_400(anonymous: httpx.Client, configured: Any) -> None:
    body = assert_problem(
        anonymous.get(CALLBACK_PATH, params={"state": "made-up", "code": "abc"}), 400, "state"
    )
    assert body["type"].endswith("#oauth-state-unknown")
    assert_problem(anonymous.get(CALLBACK_PATH), 400, "state")


def test_state_expires_after_ten_minutes(
    api: httpx.Client, anonymous: httpx.Client, tenant: Any, user: Any, configured: Any
) -> None:
    callback = authorized_callback(api, tenant)
    clock.advance(timedelta(minutes=11))
    body = assert_problem(anonymous.get(callback), 400, "state")
    assert body["type"].endswith("#oauth-state-expired")
    clock.reset()
    assert_problem(anonymous.get(callback), 409, "state")  # and it stays used


def test_pkce_mismatch_is_refused_by_entra(
    api: httpx.Client, anonymous: httpx.Client, tenant: Any, user: Any, configured: Any
) -> None:
    started = start(api, tenant)
    url = started.json()["authorizationUrl"]
    # someone swaps the challenge on the way to Entra: the broker's verifier no longer matches
    forged = base64.urlsafe_b64encode(hashlib.sha256(b"attacker-verifier").digest()).decode().rstrip("=")
    callback = browser_sign_in(with_query(url, code_challenge=forged))
    body = assert_problem(anonymous.get(callback), 422, "code")
    assert body["step"] == "code-exchange"
    assert body["azureCode"] == "AADSTS501481"


def test_access_denied_is_a_clear_400(
    api: httpx.Client, anonymous: httpx.Client, fake_azure: Any, tenant: Any, user: Any, configured: Any
) -> None:
    name = unique("denied")
    started = start(api, tenant, name)
    fake_azure.set_authorize_behaviour(deny=True)
    callback = browser_sign_in(started.json()["authorizationUrl"])
    assert query_of(callback)["error"] == "access_denied"
    body = assert_problem(anonymous.get(callback), 400, "error")
    assert body["type"].endswith("#oauth-access-denied")
    assert "declined consent" in body["detail"]
    assert body["azureCode"] == "AADSTS65004"
    assert_problem(anonymous.get(callback), 409, "state")  # consumed
    assert name not in [c["name"] for c in api.get(CS_PATH).json()["items"]]
    assert [(e["action"], e["result"]) for e in audit_entries(api, name)] == [
        ("connection.create", "failure")
    ]


def test_missing_operator_settings_name_the_variable(api: httpx.Client, tenant: Any) -> None:
    with app_settings(**dict.fromkeys(CS_SETTINGS)):
        body = assert_problem(start(api, tenant), 422, CS_SETTINGS[0])
        assert CS_SETTINGS[0] in body["detail"]
        assert CS_SETTINGS[1] in body["detail"]
        assert body["type"].endswith("#oauth-not-configured")


def test_missing_operator_secret_at_callback_time(
    api: httpx.Client, anonymous: httpx.Client, tenant: Any, user: Any, operator: tuple[Any, str]
) -> None:
    app, secret = operator
    with app_settings(**dict(zip(CS_SETTINGS, (app.app_id, secret), strict=True))):
        callback = authorized_callback(api, tenant)
    with app_settings(**{CS_SETTINGS[0]: app.app_id, CS_SETTINGS[1]: None}):
        assert_problem(anonymous.get(callback), 422, CS_SETTINGS[1])


def test_a_taken_name_is_refused_at_authorize(
    api: httpx.Client, anonymous: httpx.Client, tenant: Any, user: Any, configured: Any
) -> None:
    name = unique("taken")
    assert anonymous.get(authorized_callback(api, tenant, name)).status_code == 200
    assert_problem(start(api, tenant, name), 409, "name")


def test_authorize_needs_admin(as_role: Any, tenant: Any, configured: Any) -> None:
    operator = as_role("Broker.Operator")
    assert_problem(
        operator.post(f"{CS_PATH}/oauth/authorize", json={"name": "x", "tenantId": tenant.id}), 403
    )


def test_oauth_connections_take_no_credentials_by_patch(
    api: httpx.Client, anonymous: httpx.Client, tenant: Any, user: Any, configured: Any
) -> None:
    connection = anonymous.get(authorized_callback(api, tenant)).json()
    url = f"{CS_PATH}/{connection['id']}"
    body = assert_problem(api.patch(url, json={"credentials": {"clientSecret": "x"}}), 422, "credentials")
    assert "oauth/authorize" in body["detail"]
    assert_problem(api.patch(url, json={"rotation": {"enabled": False}}), 422, "rotation")
    renamed = api.patch(url, json={"name": unique("renamed")})
    assert renamed.status_code == 200, renamed.text
    assert api.delete(url).status_code == 204


def test_code_exchange_is_retried_on_throttling(
    api: httpx.Client, anonymous: httpx.Client, fake_azure: Any, tenant: Any, user: Any, configured: Any
) -> None:
    callback = authorized_callback(api, tenant)
    fake_azure.inject("token", "429", count=1, path_pattern=f"/{tenant.id}/oauth2/v2.0/token", retry_after=1)
    assert anonymous.get(callback).status_code == 200


@pytest.mark.parametrize("fault", ["500", "lost"])
def test_code_exchange_is_sent_once_on_a_server_error_or_lost_answer(
    api: httpx.Client,
    anonymous: httpx.Client,
    fake_azure: Any,
    tenant: Any,
    user: Any,
    configured: Any,
    fault: str,
) -> None:
    """Redeeming a code is not idempotent: the gateway never repeats it after a 5xx or a lost answer."""
    callback = authorized_callback(api, tenant)
    token_path = f"/{tenant.id}/oauth2/v2.0/token"
    before = fake_azure.request_count("token", path_pattern=token_path)
    fake_azure.inject("token", fault, count=1, path_pattern=token_path)
    body = assert_problem(anonymous.get(callback), 502)
    assert body["step"] == "code-exchange"
    assert fake_azure.request_count("token", path_pattern=token_path) == before + 1
