"""Azure DevOps connections (access token, client secret, OAuth) through HTTP, against the stand-in."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from core import azure_gateway
from tests.conn_support import (
    DEVOPS_PATH,
    app_settings,
    assert_no_secret,
    audit_entries,
    browser_sign_in,
    new_app,
    operator_app,
    query_of,
    table_rows,
    unique,
)
from tests.harness import ServerHandle, assert_problem

DEVOPS_SETTINGS = (
    "INF_APP_CONNECTION_AZURE_DEVOPS_CLIENT_ID",
    "INF_APP_CONNECTION_AZURE_DEVOPS_CLIENT_SECRET",
)


@pytest.fixture(scope="module")
def tenant(fake_azure: Any) -> Any:
    return fake_azure.add_tenant(domain="contoso-devops.example.com")


@pytest.fixture(scope="module")
def org(fake_azure: Any, tenant: Any) -> Any:
    return fake_azure.add_devops_org(unique("Contoso"), projects=7, tenant=tenant)


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def pat_body(name: str, token: str, org_name: str) -> dict[str, Any]:
    return {
        "name": name,
        "method": "access-token",
        "credentials": {"accessToken": token, "orgName": org_name},
    }


def all_project_names(api: httpx.Client, connection_id: str, top: int) -> tuple[list[str], int]:
    names: list[str] = []
    pages = 0
    params: dict[str, Any] = {"top": top}
    while True:
        page = api.get(f"{DEVOPS_PATH}/{connection_id}/projects", params=params)
        assert page.status_code == 200, page.text
        pages += 1
        names += [p["name"] for p in page.json()["items"]]
        token = page.json()["continuationToken"]
        if not token:
            return names, pages
        params = {"top": top, "continuationToken": token}


def test_access_token_connection_lists_projects_page_by_page(
    api: httpx.Client,
    fake_azure: Any,
    org: Any,
    broker: ServerHandle,
    captured_logs: pytest.LogCaptureFixture,
) -> None:
    token = fake_azure.add_pat(
        org, scopes=["vso.project", "vso.variablegroups_manage", "vso.release_execute"]
    )
    created = api.post(DEVOPS_PATH, json=pat_body(unique("ado"), token, org.name))
    assert created.status_code == 201, created.text
    connection = created.json()
    assert (connection["method"], connection["orgName"]) == ("access-token", org.name)
    assert connection["tenantId"] is None
    names, pages = all_project_names(api, connection["id"], top=3)
    assert names == [f"project-{i:03d}" for i in range(1, 8)]
    assert pages == 3
    single = api.get(f"{DEVOPS_PATH}/{connection['id']}/projects").json()
    assert len(single["items"]) == 7
    assert single["continuationToken"] is None
    assert single["items"][0]["id"]
    assert api.get(f"{DEVOPS_PATH}/{connection['id']}").json() == connection
    assert connection["id"] in [c["id"] for c in api.get(DEVOPS_PATH).json()["items"]]
    assert_no_secret(
        [token], created, single, table_rows(broker), audit_entries(api, connection["id"]), captured_logs.text
    )


def test_client_secret_connection_uses_an_entra_token(
    api: httpx.Client, fake_azure: Any, tenant: Any, org: Any, broker: ServerHandle
) -> None:
    app, _, secret = new_app(fake_azure, tenant, permissions=[])
    fake_azure.add_devops_member(org, app)
    body = {
        "name": unique("ado-sp"),
        "method": "client-secret",
        "credentials": {
            "tenantId": tenant.id,
            "clientId": app.app_id,
            "clientSecret": secret,
            "orgName": org.name,
        },
    }
    created = api.post(DEVOPS_PATH, json=body)
    assert created.status_code == 201, created.text
    connection = created.json()
    assert (connection["tenantId"], connection["clientId"]) == (tenant.id, app.app_id)
    names, _ = all_project_names(api, connection["id"], top=100)
    assert len(names) == 7
    assert fake_azure.state.tokens_for(client_id=app.app_id, kind="app")[-1].aud.startswith("499b84ac")
    assert_no_secret([secret], created, table_rows(broker))


def test_oauth_connection_round_trip(
    api: httpx.Client,
    anonymous: httpx.Client,
    fake_azure: Any,
    tenant: Any,
    org: Any,
    broker_tenant: Any,
    broker: ServerHandle,
) -> None:
    user = fake_azure.add_user(tenant, f"{unique('dev')}@contoso-devops.example.com", "Passw0rd!long")
    fake_azure.add_devops_member(org, user)
    operator, operator_secret = operator_app(fake_azure, broker_tenant, broker, ["User.Read"])
    fake_azure.set_authorize_behaviour(user=user)
    with app_settings(**dict(zip(DEVOPS_SETTINGS, (operator.app_id, operator_secret), strict=True))):
        started = api.post(
            f"{DEVOPS_PATH}/oauth/authorize",
            json={"name": unique("ado-oauth"), "tenantId": tenant.id, "orgName": org.name},
        )
        assert started.status_code == 200, started.text
        scope = query_of(started.json()["authorizationUrl"])["scope"].split()
        assert "499b84ac-1321-427f-aa17-267ca6975798/.default" in scope
        assert "offline_access" in scope
        done = anonymous.get(browser_sign_in(started.json()["authorizationUrl"]))
        assert done.status_code == 200, done.text
        connection = done.json()
        assert connection["method"] == "oauth"
        assert connection["orgName"] == org.name
        assert connection["authorizedUser"] == user.user_principal_name
        names, pages = all_project_names(api, connection["id"], top=4)  # through the stored refresh token
        assert (len(names), pages) == (7, 2)


def _failure_cases(fake: Any, tenant: Any, org: Any) -> dict[str, tuple[dict[str, Any], str, str, str]]:
    """case -> (body, step, field, words in detail)."""
    revoked = fake.add_pat(org)
    fake.revoke_pat(revoked)
    outsider, _, outsider_secret = new_app(fake, tenant, permissions=[])
    member, _, _ = new_app(fake, tenant, permissions=[])
    fake.add_devops_member(org, member)
    return {
        "unknown PAT (sign-in page)": (
            pat_body(unique("bad"), "a" * 52, org.name),
            "devops-call",
            "credentials.accessToken",
            "sign-in page",
        ),
        "revoked PAT": (
            pat_body(unique("bad"), revoked, org.name),
            "devops-call",
            "credentials.accessToken",
            "sign-in",
        ),
        "expired PAT": (
            pat_body(unique("bad"), fake.add_pat(org, expired=True), org.name),
            "devops-call",
            "credentials.accessToken",
            "token invalid or expired",
        ),
        "PAT without the scope": (
            pat_body(unique("bad"), fake.add_pat(org, scopes=["vso.build"]), org.name),
            "devops-call",
            "credentials.accessToken",
            "Project and Team (read)",
        ),
        "unknown organization": (
            pat_body(unique("bad"), fake.add_pat(org), "no-such-org-42"),
            "devops-call",
            "credentials.orgName",
            "organization not found",
        ),
        "app not in the organization": (
            {
                "name": unique("bad"),
                "method": "client-secret",
                "credentials": {
                    "tenantId": tenant.id,
                    "clientId": outsider.app_id,
                    "clientSecret": outsider_secret,
                    "orgName": org.name,
                },
            },
            "devops-call",
            "credentials.clientId",
            "not a member",
        ),
        "wrong client secret": (
            {
                "name": unique("bad"),
                "method": "client-secret",
                "credentials": {
                    "tenantId": tenant.id,
                    "clientId": member.app_id,
                    "clientSecret": "wrong~secret",
                    "orgName": org.name,
                },
            },
            "token-acquisition",
            "credentials.clientSecret",
            "AADSTS7000215",
        ),
    }


def test_validation_failures_say_why(
    api: httpx.Client,
    fake_azure: Any,
    tenant: Any,
    org: Any,
    broker: ServerHandle,
    captured_logs: pytest.LogCaptureFixture,
) -> None:
    answers = []
    secrets_used = []
    for case, (body, step, field, words) in _failure_cases(fake_azure, tenant, org).items():
        answer = api.post(DEVOPS_PATH, json=body)
        problem = assert_problem(answer, 422, field)
        assert problem["step"] == step, case
        assert words in problem["detail"], (case, problem["detail"])
        failures = audit_entries(api, body["name"])
        assert [(e["action"], e["result"]) for e in failures] == [("connection.validate", "failure")], case
        answers.append(answer)
        credentials = body["credentials"]
        secrets_used.append(credentials.get("accessToken") or credentials["clientSecret"])
    assert_no_secret(secrets_used, *answers, table_rows(broker), captured_logs.text)


def test_devops_throttling_is_retried(api: httpx.Client, fake_azure: Any, org: Any) -> None:
    token = fake_azure.add_pat(org)
    fake_azure.reset_counters()
    fake_azure.inject("devops", "429", count=1, path_pattern="_apis/projects", retry_after=1)
    fake_azure.inject("devops", "503", count=1, path_pattern="_apis/projects", retry_after=1)
    created = api.post(DEVOPS_PATH, json=pat_body(unique("retry"), token, org.name))
    assert created.status_code == 201, created.text
    assert fake_azure.request_count("devops", path_pattern="_apis/projects") == 3


def test_devops_persistent_failures(
    api: httpx.Client, fake_azure: Any, org: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = fake_azure.add_pat(org)
    fake_azure.inject("devops", "500", count=None, path_pattern="_apis/projects")
    body = assert_problem(api.post(DEVOPS_PATH, json=pat_body(unique("down"), token, org.name)), 502)
    assert body["step"] == "devops-call"
    fake_azure.reset_faults()
    monkeypatch.setattr(azure_gateway, "DEFAULT_BUDGET_SECONDS", 1.0)
    fake_azure.inject("devops", "timeout", count=None, path_pattern="_apis/projects", seconds=5)
    assert assert_problem(api.post(DEVOPS_PATH, json=pat_body(unique("slow"), token, org.name)), 504)[
        "step"
    ] == ("devops-call")


@pytest.fixture
def pat_connection(api: httpx.Client, fake_azure: Any, org: Any) -> dict[str, Any]:
    token = fake_azure.add_pat(org)
    created = api.post(DEVOPS_PATH, json=pat_body(unique("ado"), token, org.name))
    assert created.status_code == 201, created.text
    return {**created.json(), "token": token}


def test_patch_and_delete(
    api: httpx.Client, fake_azure: Any, org: Any, pat_connection: dict[str, Any], broker: ServerHandle
) -> None:
    url = f"{DEVOPS_PATH}/{pat_connection['id']}"
    bad = api.patch(url, json={"credentials": {"accessToken": "b" * 52}})
    assert assert_problem(bad, 422, "credentials.accessToken")["azureCode"] == "SignInRedirect"
    new_token = fake_azure.add_pat(org)
    fake_azure.revoke_pat(pat_connection["token"])
    patched = api.patch(url, json={"credentials": {"accessToken": new_token}, "description": "rotated PAT"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["description"] == "rotated PAT"
    assert api.get(f"{url}/projects").status_code == 200  # the new token is in use
    renamed = api.patch(url, json={"name": unique("ado-renamed")})
    assert renamed.status_code == 200
    assert api.delete(url).status_code == 204
    assert_problem(api.get(url), 404)
    assert_problem(api.get(f"{url}/projects"), 404)
    assert_no_secret([new_token, pat_connection["token"]], bad, patched, renamed, table_rows(broker))


def test_projects_listing_reports_a_revoked_token(
    api: httpx.Client, fake_azure: Any, pat_connection: dict[str, Any]
) -> None:
    fake_azure.revoke_pat(pat_connection["token"])
    answer = api.get(f"{DEVOPS_PATH}/{pat_connection['id']}/projects")
    body = assert_problem(answer, 409, "credentials.accessToken")
    assert body["azureCode"] == "SignInRedirect"
    assert body["type"].endswith("#connection-credentials-refused")
    assert "PATCH" in body["detail"]


def test_projects_listing_refuses_a_forged_continuation_token(
    api: httpx.Client, pat_connection: dict[str, Any]
) -> None:
    url = f"{DEVOPS_PATH}/{pat_connection['id']}/projects"
    assert_problem(api.get(url, params={"continuationToken": "../../x?y=1"}), 422, "continuationToken")
    assert_problem(api.get(url, params={"top": 0}), 422, "top")


def test_roles(as_role: Any, pat_connection: dict[str, Any], org: Any) -> None:
    reader = as_role("Broker.Reader")
    assert reader.get(f"{DEVOPS_PATH}/{pat_connection['id']}/projects").status_code == 200
    assert_problem(reader.post(DEVOPS_PATH, json=pat_body("x", "y", org.name)), 403)
    assert_problem(reader.delete(f"{DEVOPS_PATH}/{pat_connection['id']}"), 403)


def test_oauth_needs_the_devops_operator_settings(api: httpx.Client, tenant: Any, org: Any) -> None:
    with app_settings(**dict.fromkeys(DEVOPS_SETTINGS)):
        answer = api.post(
            f"{DEVOPS_PATH}/oauth/authorize",
            json={"name": unique("x"), "tenantId": tenant.id, "orgName": org.name},
        )
        assert_problem(answer, 422, DEVOPS_SETTINGS[0])


def test_oauth_method_is_refused_on_create(api: httpx.Client, org: Any) -> None:
    answer = api.post(
        DEVOPS_PATH, json={"name": "x", "method": "oauth", "credentials": {"orgName": org.name}}
    )
    body = assert_problem(answer, 422, "method")
    assert "oauth/authorize" in body["errors"][0]["message"]
