"""A sweep of malformed input to every connection route.

Always a 4xx problem+json naming the field, never a 500, and never a call to Azure with it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.azure_fake import make_self_signed_certificate
from tests.conn_support import CALLBACK_PATH, CS_PATH, DEVOPS_PATH, new_app, unique
from tests.harness import assert_problem

GUID = "3f2c5e1a-1b2c-4d3e-8f90-123456789abc"
CERT, KEY = make_self_signed_certificate("sweep")
HUGE = "x" * 70_000


def cs(**credentials: Any) -> dict[str, Any]:
    base = {"tenantId": GUID, "clientId": GUID, "clientSecret": "s3cret~value"}
    return {"name": "sweep", "method": "client-secret", "credentials": {**base, **credentials}}


def cert(**credentials: Any) -> dict[str, Any]:
    base = {"tenantId": GUID, "clientId": GUID, "certificate": CERT, "privateKey": KEY}
    return {"name": "sweep", "method": "certificate", "credentials": {**base, **credentials}}


def pat(**credentials: Any) -> dict[str, Any]:
    base = {"accessToken": "t" * 52, "orgName": "contoso"}
    return {"name": "sweep", "method": "access-token", "credentials": {**base, **credentials}}


def without(body: dict[str, Any], *path: str) -> dict[str, Any]:
    copy: dict[str, Any] = {**body, "credentials": {**body["credentials"]}}
    target = copy
    for key in path[:-1]:
        target = target[key]
    target.pop(path[-1])
    return copy


# (body, status, field) for POST /azure-client-secrets
CLIENT_SECRETS_CASES: list[tuple[str, Any, int, str | None]] = [
    ("empty object", {}, 422, "method"),
    ("missing method", {"name": "a", "credentials": {}}, 422, "method"),
    ("unknown method", {**cs(), "method": "password"}, 422, "method"),
    ("oauth by POST", {**cs(), "method": "oauth"}, 422, "method"),
    ("method of another kind", {**cs(), "method": "access-token"}, 422, "method"),
    ("method not a string", {**cs(), "method": 5}, 422, "method"),
    ("missing credentials", {"name": "a", "method": "client-secret"}, 422, "credentials"),
    (
        "credentials a string",
        {"name": "a", "method": "client-secret", "credentials": "secret"},
        422,
        "credentials",
    ),
    ("credentials a list", {"name": "a", "method": "client-secret", "credentials": []}, 422, "credentials"),
    ("missing tenantId", without(cs(), "credentials", "tenantId"), 422, "credentials.tenantId"),
    ("missing clientId", without(cs(), "credentials", "clientId"), 422, "credentials.clientId"),
    ("missing clientSecret", without(cs(), "credentials", "clientSecret"), 422, "credentials.clientSecret"),
    ("bad GUID client id", cs(clientId="not-a-guid"), 422, "credentials.clientId"),
    ("GUID with junk", cs(clientId=GUID + "x"), 422, "credentials.clientId"),
    ("bad tenant", cs(tenantId="contoso"), 422, "credentials.tenantId"),
    ("tenant with a path", cs(tenantId="evil.example.com/../x"), 422, "credentials.tenantId"),
    ("tenant with a query", cs(tenantId="a.com?x=1"), 422, "credentials.tenantId"),
    ("tenant 'common'", cs(tenantId="common"), 422, "credentials.tenantId"),
    ("tenant a number", cs(tenantId=42), 422, "credentials.tenantId"),
    ("secret a number", cs(clientSecret=12345), 422, "credentials.clientSecret"),
    ("empty secret", cs(clientSecret=""), 422, "credentials.clientSecret"),
    ("secret with a newline", cs(clientSecret="ab\ncd"), 422, "credentials.clientSecret"),
    ("huge secret", cs(clientSecret="s" * 5000), 422, "credentials.clientSecret"),
    ("unknown credential field", cs(password="x"), 422, "credentials.password"),
    ("certificate fields on client-secret", cs(certificate=CERT), 422, "credentials.certificate"),
    ("unknown top-level field", {**cs(), "secret": "x"}, 422, "secret"),
    ("bad name (upper case)", {**cs(), "name": "Prod"}, 422, "name"),
    ("bad name (space)", {**cs(), "name": "my conn"}, 422, "name"),
    ("bad name (65 chars)", {**cs(), "name": "a" * 65}, 422, "name"),
    ("empty name", {**cs(), "name": ""}, 422, "name"),
    ("name a list", {**cs(), "name": ["a"]}, 422, "name"),
    ("huge description", {**cs(), "description": "d" * 501}, 422, "description"),
    ("description an object", {**cs(), "description": {"a": 1}}, 422, "description"),
    ("rotation wrong type", {**cs(), "rotation": "yes"}, 422, "rotation"),
    (
        "rotation bad time",
        {**cs(), "rotation": {"enabled": True, "rotateAt": "25:00"}},
        422,
        "rotation.rotateAt",
    ),
    (
        "rotation bad zone",
        {**cs(), "rotation": {"enabled": True, "timeZone": "Mars/Base"}},
        422,
        "rotation.timeZone",
    ),
    (
        "rotation bad interval",
        {**cs(), "rotation": {"enabled": True, "intervalDays": 0}},
        422,
        "rotation.intervalDays",
    ),
    ("rotation on certificate", {**cert(), "rotation": {"enabled": False}}, 422, "rotation"),
    ("missing certificate", without(cert(), "credentials", "certificate"), 422, "credentials.certificate"),
    ("missing private key", without(cert(), "credentials", "privateKey"), 422, "credentials.privateKey"),
    (
        "bad PEM certificate",
        cert(certificate="-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"),
        422,
        "credentials.certificate",
    ),
    (
        "bad PEM key",
        cert(privateKey="-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----"),
        422,
        "credentials.privateKey",
    ),
    ("certificate a number", cert(certificate=1), 422, "credentials.certificate"),
    ("huge certificate", cert(certificate=HUGE), 422, "credentials.certificate"),
    ("body a list", [cs()], 422, None),
    ("body a string", "client-secret", 422, None),
    ("body null", None, 422, None),
]


def azure_calls(fake: Any) -> int:
    """Calls that would carry a connection's input to Azure (token endpoint, Graph, DevOps)."""
    return sum(
        (
            fake.request_count("token", path_pattern="oauth2/v2.0/token"),
            fake.request_count("graph"),
            fake.request_count("devops"),
        )
    )


def _post(api: httpx.Client, path: str, body: Any) -> httpx.Response:
    return api.post(path, json=body)


@pytest.mark.parametrize(
    ("case", "body", "status", "field"), CLIENT_SECRETS_CASES, ids=[c[0] for c in CLIENT_SECRETS_CASES]
)
def test_client_secrets_create_refuses_malformed_bodies(
    api: httpx.Client, fake_azure: Any, case: str, body: Any, status: int, field: str | None
) -> None:
    before = azure_calls(fake_azure)
    answer = _post(api, CS_PATH, body)
    assert_problem(answer, status, field)
    assert azure_calls(fake_azure) == before, case


DEVOPS_CASES: list[tuple[str, Any, int, str | None]] = [
    ("empty object", {}, 422, "method"),
    ("missing name", {k: v for k, v in pat().items() if k != "name"}, 422, "name"),
    ("unknown method", {**pat(), "method": "certificate"}, 422, "method"),
    ("oauth by POST", {**pat(), "method": "oauth"}, 422, "method"),
    ("missing org", without(pat(), "credentials", "orgName"), 422, "credentials.orgName"),
    ("org with a slash", pat(orgName="contoso/_apis"), 422, "credentials.orgName"),
    ("org with a dot", pat(orgName="evil.com"), 422, "credentials.orgName"),
    ("org starting with a dash", pat(orgName="-contoso"), 422, "credentials.orgName"),
    ("org too long", pat(orgName="a" * 51), 422, "credentials.orgName"),
    ("org with unicode", pat(orgName="cöntoso"), 422, "credentials.orgName"),
    ("org a number", pat(orgName=7), 422, "credentials.orgName"),
    ("missing token", without(pat(), "credentials", "accessToken"), 422, "credentials.accessToken"),
    ("token a list", pat(accessToken=["x"]), 422, "credentials.accessToken"),
    ("huge token", pat(accessToken="t" * 5000), 422, "credentials.accessToken"),
    (
        "client-secret without tenant",
        {
            "name": "a",
            "method": "client-secret",
            "credentials": {"clientId": GUID, "clientSecret": "x", "orgName": "c"},
        },
        422,
        "credentials.tenantId",
    ),
    (
        "client-secret bad client id",
        {
            "name": "a",
            "method": "client-secret",
            "credentials": {"tenantId": GUID, "clientId": "x", "clientSecret": "x", "orgName": "c"},
        },
        422,
        "credentials.clientId",
    ),
    (
        "access token on client-secret",
        {
            "name": "a",
            "method": "client-secret",
            "credentials": {
                "tenantId": GUID,
                "clientId": GUID,
                "clientSecret": "x",
                "orgName": "c",
                "accessToken": "t",
            },
        },
        422,
        "credentials.accessToken",
    ),
    ("body a list", [], 422, None),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), DEVOPS_CASES, ids=[c[0] for c in DEVOPS_CASES])
def test_devops_create_refuses_malformed_bodies(
    api: httpx.Client, fake_azure: Any, case: str, body: Any, status: int, field: str | None
) -> None:
    before = azure_calls(fake_azure)
    assert_problem(_post(api, DEVOPS_PATH, body), status, field)
    assert azure_calls(fake_azure) == before, case


AUTHORIZE_CASES: list[tuple[str, str, Any, str | None]] = [
    ("cs empty", CS_PATH, {}, "name"),
    ("cs bad tenant", CS_PATH, {"name": "a", "tenantId": "https://evil"}, "tenantId"),
    (
        "cs extra field",
        CS_PATH,
        {"name": "a", "tenantId": GUID, "redirectUri": "https://evil"},
        "redirectUri",
    ),
    ("devops missing org", DEVOPS_PATH, {"name": "a", "tenantId": GUID}, "orgName"),
    ("devops bad org", DEVOPS_PATH, {"name": "a", "tenantId": GUID, "orgName": "a/b"}, "orgName"),
]


@pytest.mark.parametrize(
    ("case", "base", "body", "field"), AUTHORIZE_CASES, ids=[c[0] for c in AUTHORIZE_CASES]
)
def test_authorize_refuses_malformed_bodies(
    api: httpx.Client, case: str, base: str, body: Any, field: str | None
) -> None:
    assert_problem(api.post(f"{base}/oauth/authorize", json=body), 422, field)


def test_non_json_and_oversized_bodies(api: httpx.Client) -> None:
    for path in (CS_PATH, DEVOPS_PATH, f"{CS_PATH}/oauth/authorize"):
        assert_problem(
            api.post(path, content=b"{not json", headers={"Content-Type": "application/json"}), 400
        )
        assert_problem(api.post(path, content=b"\xff\xfe", headers={"Content-Type": "application/json"}), 400)
        assert_problem(api.post(path, json={"name": HUGE * 4}), 413)


@pytest.fixture(scope="module")
def existing(api: httpx.Client, fake_azure: Any) -> dict[str, str]:
    tenant = fake_azure.add_tenant(domain="contoso-sweep.example.com")
    app, _, secret = new_app(fake_azure, tenant)
    created = api.post(
        CS_PATH,
        json={
            "name": unique("sweep"),
            "method": "client-secret",
            "credentials": {"tenantId": tenant.id, "clientId": app.app_id, "clientSecret": secret},
        },
    )
    assert created.status_code == 201, created.text
    org = fake_azure.add_devops_org(unique("Sweep"), projects=1)
    devops = api.post(
        DEVOPS_PATH,
        json={
            "name": unique("sweep"),
            "method": "access-token",
            "credentials": {"accessToken": fake_azure.add_pat(org), "orgName": org.name},
        },
    )
    assert devops.status_code == 201, devops.text
    return {"cs": f"{CS_PATH}/{created.json()['id']}", "devops": f"{DEVOPS_PATH}/{devops.json()['id']}"}


PATCH_CASES: list[tuple[str, str, Any, int, str | None]] = [
    ("cs bad name", "cs", {"name": "UPPER"}, 422, "name"),
    ("cs credentials a string", "cs", {"credentials": "x"}, 422, "credentials"),
    ("cs credentials unknown field", "cs", {"credentials": {"password": "x"}}, 422, "credentials.password"),
    ("cs credentials bad guid", "cs", {"credentials": {"clientId": "nope"}}, 422, "credentials.clientId"),
    ("cs credentials bad tenant", "cs", {"credentials": {"tenantId": "a/b"}}, 422, "credentials.tenantId"),
    (
        "cs credentials certificate on client-secret",
        "cs",
        {"credentials": {"certificate": CERT}},
        422,
        "credentials.certificate",
    ),
    ("cs method change", "cs", {"method": "certificate"}, 422, "method"),
    ("cs rotation bad", "cs", {"rotation": {"enabled": "maybe"}}, 422, "rotation.enabled"),
    ("cs body a list", "cs", [], 422, None),
    ("devops bad org", "devops", {"credentials": {"orgName": "a b"}}, 422, "credentials.orgName"),
    ("devops token a number", "devops", {"credentials": {"accessToken": 5}}, 422, "credentials.accessToken"),
    ("devops rotation", "devops", {"rotation": {"enabled": True}}, 422, "rotation"),
]


@pytest.mark.parametrize(
    ("case", "which", "body", "status", "field"), PATCH_CASES, ids=[c[0] for c in PATCH_CASES]
)
def test_patch_refuses_malformed_bodies(
    api: httpx.Client,
    fake_azure: Any,
    existing: dict[str, str],
    case: str,
    which: str,
    body: Any,
    status: int,
    field: str | None,
) -> None:
    before = azure_calls(fake_azure)
    assert_problem(api.patch(existing[which], json=body), status, field)
    assert azure_calls(fake_azure) == before, case


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"state": "s" * 600},
        {"state": "x", "code": "c" * 5000},
        {"state": "<script>", "error": "access_denied"},
        {"error": "x" * 300},
    ],
)
def test_callback_refuses_junk(anonymous: httpx.Client, params: dict[str, str]) -> None:
    answer = anonymous.get(CALLBACK_PATH, params=params)
    assert 400 <= answer.status_code < 500
    assert answer.headers["content-type"].startswith("application/problem+json")
    page = anonymous.get(CALLBACK_PATH, params=params, headers={"Accept": "text/html"})
    assert 400 <= page.status_code < 500
    assert "<script>" not in page.text


def test_bad_path_ids_are_refused_before_any_lookup(api: httpx.Client) -> None:
    for base in (CS_PATH, DEVOPS_PATH):
        assert_problem(api.get(f"{base}/{'x' * 65}"), 422, "connection_id")
        assert_problem(api.get(f"{base}/..%2F..%2Fx"), 404)
        for bad in ("%00", "a%23b", "a%3Fb", "a%5Cb"):  # control character, #, ?, backslash
            assert_problem(api.get(f"{base}/{bad}"), 422, "connection_id")


def test_openapi_documents_each_method(anonymous: httpx.Client) -> None:
    spec = anonymous.get("/api/openapi.json").json()
    paths = spec["paths"]
    for path in (CS_PATH, f"{CS_PATH}/{{connection_id}}", f"{CS_PATH}/oauth/authorize", DEVOPS_PATH,
                 f"{DEVOPS_PATH}/{{connection_id}}/projects", CALLBACK_PATH):  # fmt: skip
        assert path in paths, path
    schemas = spec["components"]["schemas"]
    assert {
        "CreateClientSecretConnection",
        "CreateCertificateConnection",
        "CreateDevOpsAccessTokenConnection",
    } <= set(schemas)
    create = paths[CS_PATH]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create["discriminator"]["propertyName"] == "method"
