"""Azure Client Secrets connections (client secret and certificate) through HTTP, against the stand-in.

OAuth connections are in tests/test_oauth.py; the malformed-body sweep in test_connection_input.py.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from connections import client_secrets, store
from core import azure_gateway
from tests.azure_fake import make_self_signed_certificate
from tests.conn_support import (
    CS_PATH,
    assert_no_secret,
    audit_entries,
    client_secret_body,
    new_app,
    table_rows,
    unique,
)
from tests.harness import ServerHandle, assert_problem
from tests.rotation_helpers import read_client_secret


@pytest.fixture(scope="module")
def tenant(fake_azure: Any) -> Any:
    return fake_azure.add_tenant(domain="contoso-cs.example.com")


@pytest.fixture
def fast_deadline(monkeypatch: pytest.MonkeyPatch) -> float:
    """Azure steps give up after 1 s (the server runs in this process), so timeouts test quickly."""
    monkeypatch.setattr(azure_gateway, "DEFAULT_BUDGET_SECONDS", 1.0)
    return 1.0


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def create(api: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return api.post(CS_PATH, json=body)


# --------------- happy paths


def test_client_secret_connection_round_trip(
    api: httpx.Client,
    fake_azure: Any,
    tenant: Any,
    broker: ServerHandle,
    captured_logs: pytest.LogCaptureFixture,
) -> None:
    app, _, secret = new_app(fake_azure, tenant)
    name = unique("graph")
    created = create(api, client_secret_body(name, tenant, app, secret, description="prod tenant"))
    assert created.status_code == 201, created.text
    body = created.json()
    assert created.headers["location"] == f"{CS_PATH}/{body['id']}"
    assert body["name"] == name
    assert body["method"] == "client-secret"
    assert body["tenantId"] == tenant.id
    assert body["clientId"] == app.app_id
    assert body["description"] == "prod tenant"
    assert body["status"] == "active"
    assert body["rotation"] is None
    assert body["certificate"] is None

    read = api.get(f"{CS_PATH}/{body['id']}")
    assert read.status_code == 200
    assert read.headers["etag"]
    assert read.json() == body
    listed = api.get(CS_PATH).json()["items"]
    assert body["id"] in [c["id"] for c in listed]

    # the tenant may also be named by a verified domain
    by_domain = create(
        api,
        {
            **client_secret_body(unique("graph"), tenant, app, secret),
            "credentials": {
                "tenantId": tenant.default_domain,
                "clientId": app.app_id,
                "clientSecret": secret,
            },
        },
    )
    assert by_domain.status_code == 201, by_domain.text

    entries = audit_entries(api, body["id"])
    assert [e["action"] for e in entries] == ["connection.create"]
    assert entries[0]["result"] == "success"

    assert_no_secret(
        [secret], created, read, listed, by_domain, entries, table_rows(broker), captured_logs.text
    )


def test_certificate_connection_signs_with_x5t_s256(
    api: httpx.Client,
    fake_azure: Any,
    tenant: Any,
    broker: ServerHandle,
    captured_logs: pytest.LogCaptureFixture,
) -> None:
    app = fake_azure.add_application(tenant, unique("cert-app"), permissions=["Application.ReadWrite.All"])
    cert_pem, key_pem = make_self_signed_certificate("broker-cert-test")
    fake_azure.add_certificate(app, cert_pem)
    body = {
        "name": unique("cert"),
        "method": "certificate",
        "credentials": {
            "tenantId": tenant.id,
            "clientId": app.app_id,
            "certificate": cert_pem,
            "privateKey": key_pem,
        },
    }
    created = create(api, body)
    assert created.status_code == 201, created.text
    shown = created.json()
    assert shown["method"] == "certificate"
    assert shown["certificate"]["subject"] == "CN=broker-cert-test"
    assert shown["certificate"]["thumbprint"] == app.key_credentials[0].x5t_s256
    assert shown["certificate"]["notAfter"].endswith("Z")
    # the stand-in matched the assertion's x5t#S256 to the registered certificate (azpacr 2)
    tokens = fake_azure.state.tokens_for(client_id=app.app_id, kind="app")
    assert tokens

    # the Graph client of the connection works with the stored key
    async def read_app() -> str:
        client = await client_secrets.graph_client_for(shown["id"])
        found = await client.applications_with_app_id(app.app_id).get()
        assert found is not None
        return str(found.app_id)

    assert broker.run(read_app()) == app.app_id
    assert_no_secret([key_pem], created, api.get(CS_PATH), table_rows(broker), captured_logs.text)


def test_owned_by_permission_is_enough_when_the_app_owns_itself(
    api: httpx.Client, fake_azure: Any, tenant: Any
) -> None:
    app, _, secret = new_app(fake_azure, tenant, ["Application.ReadWrite.OwnedBy"], owned_by_itself=True)
    created = create(api, client_secret_body(unique("owned"), tenant, app, secret))
    assert created.status_code == 201, created.text


# --------------- validation failures


def _failure_cases(fake: Any, tenant: Any) -> dict[str, tuple[dict[str, Any], str, str, str]]:
    """case -> (credentials, step, azureCode, field)."""
    app, _, secret = new_app(fake, tenant)
    expired_app = fake.add_application(tenant, unique("expired"), permissions=["Application.ReadWrite.All"])
    _, expired = fake.add_password(expired_app, end=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    bare, _, bare_secret = new_app(fake, tenant, permissions=[])
    owned_not_owner, _, owned_secret = new_app(fake, tenant, ["Application.ReadWrite.OwnedBy"])
    unknown_client = "0b5d3c1e-1111-4222-8333-944455556666"
    return {
        "unknown tenant id": (
            {
                "tenantId": "7c0c0b1e-0000-4000-8000-000000000000",
                "clientId": app.app_id,
                "clientSecret": secret,
            },
            "token-acquisition",
            "AADSTS90002",
            "credentials.tenantId",
        ),
        "unknown tenant domain": (
            {"tenantId": "nobody.example.org", "clientId": app.app_id, "clientSecret": secret},
            "token-acquisition",
            "AADSTS90002",
            "credentials.tenantId",
        ),
        "wrong secret": (
            {"tenantId": tenant.id, "clientId": app.app_id, "clientSecret": "not-the-secret~value"},
            "token-acquisition",
            "AADSTS7000215",
            "credentials.clientSecret",
        ),
        "expired secret": (
            {"tenantId": tenant.id, "clientId": expired_app.app_id, "clientSecret": expired},
            "token-acquisition",
            "AADSTS7000222",
            "credentials.clientSecret",
        ),
        "unknown app": (
            {"tenantId": tenant.id, "clientId": unknown_client, "clientSecret": secret},
            "token-acquisition",
            "AADSTS700016",
            "credentials.clientId",
        ),
        "missing Graph permission": (
            {"tenantId": tenant.id, "clientId": bare.app_id, "clientSecret": bare_secret},
            "graph-call",
            "Authorization_RequestDenied",
            "credentials.clientId",
        ),
        "OwnedBy without owning itself": (
            {"tenantId": tenant.id, "clientId": owned_not_owner.app_id, "clientSecret": owned_secret},
            "graph-call",
            "Authorization_RequestDenied",
            "credentials.clientId",
        ),
    }


def test_validation_failures_name_the_step_and_azure_code(
    api: httpx.Client,
    fake_azure: Any,
    tenant: Any,
    broker: ServerHandle,
    captured_logs: pytest.LogCaptureFixture,
) -> None:
    responses = []
    secrets_used = []
    for case, (credentials, step, code, field) in _failure_cases(fake_azure, tenant).items():
        name = unique("bad")
        answer = create(api, {"name": name, "method": "client-secret", "credentials": credentials})
        body = assert_problem(answer, 422, field)
        assert body["step"] == step, case
        assert body["azureCode"] == code, case
        assert code in body["detail"], case
        assert body["type"].endswith("#azure-validation-failed")
        if step == "graph-call":
            assert "Application.ReadWrite.All" in body["detail"], case
        responses.append(answer)
        secrets_used.append(credentials["clientSecret"])
        # audited as a failed validation, naming the step and code; the name is free again
        failures = audit_entries(api, name)
        assert [(e["action"], e["result"]) for e in failures] == [("connection.validate", "failure")], case
        assert code in failures[0]["detail"]
        assert step in failures[0]["detail"]
        assert name not in [c["name"] for c in api.get(CS_PATH).json()["items"]]
    assert_no_secret(secrets_used, *responses, table_rows(broker), captured_logs.text)


def test_unregistered_certificate_is_aadsts700027(api: httpx.Client, fake_azure: Any, tenant: Any) -> None:
    app = fake_azure.add_application(tenant, unique("cert-app"), permissions=["Application.ReadWrite.All"])
    cert_pem, key_pem = make_self_signed_certificate("not-registered")
    answer = create(
        api,
        {
            "name": unique("cert"),
            "method": "certificate",
            "credentials": {
                "tenantId": tenant.id,
                "clientId": app.app_id,
                "certificate": cert_pem,
                "privateKey": key_pem,
            },
        },
    )
    body = assert_problem(answer, 422, "credentials.certificate")
    assert (body["step"], body["azureCode"]) == ("token-acquisition", "AADSTS700027")


def _cert_body(tenant: Any, app_id: str, cert: str, key: str) -> dict[str, Any]:
    return {
        "name": unique("cert"),
        "method": "certificate",
        "credentials": {"tenantId": tenant.id, "clientId": app_id, "certificate": cert, "privateKey": key},
    }


def test_certificate_problems_are_422s_before_any_azure_call(
    api: httpx.Client, fake_azure: Any, tenant: Any
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    app_id = "1b5d3c1e-1111-4222-8333-944455556666"
    cert, key = make_self_signed_certificate("one")
    other_cert, other_key = make_self_signed_certificate("two")
    expired_cert, expired_key = make_self_signed_certificate(
        "old", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    )
    encrypted = (
        serialization.load_pem_private_key(key.encode(), None)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
        .decode()
    )
    ec_key = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    cases = {
        "key of another certificate": (cert, other_key, "credentials.privateKey", "does not match"),
        "expired certificate": (expired_cert, expired_key, "credentials.certificate", "expired"),
        "not a PEM certificate": ("hello", key, "credentials.certificate", "PEM"),
        "broken PEM certificate": (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            key,
            "credentials.certificate",
            "parsable",
        ),
        "key in the certificate field": (cert + key, key, "credentials.certificate", "only the certificate"),
        "not a PEM key": (cert, "hello", "credentials.privateKey", "PEM"),
        "broken PEM key": (
            cert,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "credentials.privateKey",
            "parsable",
        ),
        "encrypted key": (cert, encrypted, "credentials.privateKey", "encrypted"),
        "EC key": (cert, ec_key, "credentials.privateKey", "RSA"),
    }
    before = fake_azure.request_count("token")
    for case, (certificate, private_key, field, words) in cases.items():
        answer = create(api, _cert_body(tenant, app_id, certificate, private_key))
        body = assert_problem(answer, 422, field)
        assert words in body["detail"], case
        assert_no_secret([private_key, key, other_key], answer)
    assert fake_azure.request_count("token") == before
    _ = other_cert


# --------------- transient failures


def test_throttling_and_5xx_are_retried_honouring_retry_after(
    api: httpx.Client, fake_azure: Any, tenant: Any
) -> None:
    app, _, secret = new_app(fake_azure, tenant)
    token_path = f"/{tenant.id}/oauth2/v2.0/token"
    fake_azure.reset_counters()
    fake_azure.inject("token", "429", count=2, path_pattern=token_path, retry_after=1)
    fake_azure.inject("graph", "503", count=1, path_pattern="applications", retry_after=1)
    created = create(api, client_secret_body(unique("retry"), tenant, app, secret))
    assert created.status_code == 201, created.text
    assert fake_azure.request_count("token", path_pattern=token_path) == 3
    assert fake_azure.request_count("graph", path_pattern="applications") == 2


def test_persistent_throttling_is_503_with_retry_after(
    api: httpx.Client, fake_azure: Any, tenant: Any
) -> None:
    app, _, secret = new_app(fake_azure, tenant)
    fake_azure.inject("graph", "429", count=None, path_pattern="applications", retry_after=1)
    answer = create(api, client_secret_body(unique("throttled"), tenant, app, secret))
    body = assert_problem(answer, 503)
    assert body["step"] == "graph-call"
    assert body["azureCode"] == "TooManyRequests"
    assert answer.headers["retry-after"]


def test_persistent_server_errors_are_502_naming_the_step(
    api: httpx.Client, fake_azure: Any, tenant: Any
) -> None:
    app, _, secret = new_app(fake_azure, tenant)
    fake_azure.inject("token", "500", count=None, path_pattern=f"/{tenant.id}/oauth2/v2.0/token")
    answer = create(api, client_secret_body(unique("down"), tenant, app, secret))
    body = assert_problem(answer, 502)
    assert body["step"] == "token-acquisition"
    assert body["azureCode"] == "AADSTS50000"


@pytest.mark.parametrize(
    ("service", "pattern", "step"),
    [("token", "/oauth2/v2.0/token", "token-acquisition"), ("graph", "applications", "graph-call")],
)
def test_a_silent_azure_is_a_504_not_a_hang(
    api: httpx.Client,
    fake_azure: Any,
    tenant: Any,
    fast_deadline: float,
    service: str,
    pattern: str,
    step: str,
) -> None:
    app, _, secret = new_app(fake_azure, tenant)
    fake_azure.inject(
        service,
        "timeout",
        count=None,
        path_pattern=f"{tenant.id}{pattern}" if service == "token" else pattern,
        seconds=5,
    )
    name = unique("slow")
    answer = create(api, client_secret_body(name, tenant, app, secret))
    body = assert_problem(answer, 504)
    assert body["step"] == step
    fake_azure.reset_faults()
    assert create(api, client_secret_body(name, tenant, app, secret)).status_code == 201


def test_graph_validation_honours_retry_after_and_stops_at_its_deadline(
    api: httpx.Client, fake_azure: Any, tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the gateway: the 429's Retry-After is waited out before the one retry, and a Graph
    that then stops answering is cut at the call's deadline (504), not left to hang."""
    monkeypatch.setattr(azure_gateway, "DEFAULT_BUDGET_SECONDS", 4.0)
    app, _, secret = new_app(fake_azure, tenant)
    fake_azure.inject("graph", "429", count=1, path_pattern=app.app_id, retry_after=2)
    fake_azure.inject("graph", "timeout", count=None, path_pattern=app.app_id, seconds=15)
    started = time.monotonic()
    name = unique("deadline")
    answer = create(api, client_secret_body(name, tenant, app, secret))
    elapsed = time.monotonic() - started
    fake_azure.reset_faults()
    body = assert_problem(answer, 504)
    assert body["step"] == "graph-call"
    sent = [r for r in fake_azure.request_log("graph") if app.app_id in r.path]
    assert len(sent) == 2  # the throttled request and one retry, not the SDK's own retries on top
    assert sent[1].at - sent[0].at >= 1.9  # Retry-After: 2 honoured
    assert elapsed < 4.0 + 2.0  # stopped at the deadline, not at the silent Graph's 15 s
    assert name not in [c["name"] for c in api.get(CS_PATH).json()["items"]]


# --------------- names


def test_names_are_unique_even_when_created_at_once(api: httpx.Client, fake_azure: Any, tenant: Any) -> None:
    app, _, secret = new_app(fake_azure, tenant)
    name = unique("twin")
    results: list[httpx.Response] = []

    def attempt() -> None:
        results.append(create(api, client_secret_body(name, tenant, app, secret)))

    threads = [threading.Thread(target=attempt) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in results) == [201, 409, 409]
    for conflict in (r for r in results if r.status_code == 409):
        assert_problem(conflict, 409, "name")
    again = create(api, client_secret_body(name, tenant, app, secret))
    assert assert_problem(again, 409, "name")["type"].endswith("#name-taken")


# --------------- update, delete


@pytest.fixture
def connection(api: httpx.Client, fake_azure: Any, tenant: Any) -> dict[str, Any]:
    app, key_id, secret = new_app(fake_azure, tenant)
    created = create(api, client_secret_body(unique("patch"), tenant, app, secret))
    assert created.status_code == 201, created.text
    return {**created.json(), "app": app, "keyId": key_id, "secret": secret}


def test_patch_renames_and_redescribes(api: httpx.Client, connection: dict[str, Any]) -> None:
    url = f"{CS_PATH}/{connection['id']}"
    new_name = unique("renamed")
    patched = api.patch(url, json={"name": new_name, "description": "after"})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["name"], patched.json()["description"]) == (new_name, "after")
    assert api.get(url).json()["name"] == new_name
    # the old name is free, the new one taken
    other = api.patch(url, json={"description": None})
    assert other.json()["description"] is None
    assert [e["action"] for e in audit_entries(api, connection["id"])][:2] == ["connection.update"] * 2


def test_patch_credentials_are_validated_and_switch_the_graph_client(
    api: httpx.Client,
    fake_azure: Any,
    broker: ServerHandle,
    connection: dict[str, Any],
    captured_logs: pytest.LogCaptureFixture,
) -> None:
    url = f"{CS_PATH}/{connection['id']}"
    app = connection["app"]

    async def graph_reads_app() -> int:
        client = await client_secrets.graph_client_for(connection["id"])
        await client.applications_with_app_id(app.app_id).get()
        return id(client)

    first_client = broker.run(graph_reads_app())
    assert broker.run(graph_reads_app()) == first_client  # cached

    wrong = api.patch(url, json={"credentials": {"clientSecret": "wrong~secret~value"}})
    assert assert_problem(wrong, 422, "credentials.clientSecret")["azureCode"] == "AADSTS7000215"
    assert broker.run(graph_reads_app()) == first_client  # nothing changed

    new_key, new_secret = fake_azure.add_password(app, display_name="second")
    patched = api.patch(url, json={"credentials": {"clientSecret": new_secret}})
    assert patched.status_code == 200, patched.text
    assert broker.run(read_client_secret(connection["id"])) == new_secret
    # the old secret is gone at Azure: only the new one can still work
    fake_azure.remove_password(app, connection["keyId"])
    assert broker.run(graph_reads_app()) != first_client
    assert_no_secret(
        [connection["secret"], new_secret], wrong, patched, table_rows(broker), captured_logs.text
    )
    _ = new_key


def test_store_client_secret_flips_the_connection_to_the_new_secret(
    api: httpx.Client, fake_azure: Any, broker: ServerHandle, connection: dict[str, Any]
) -> None:
    app = connection["app"]
    _, new_secret = fake_azure.add_password(app, display_name="rotated")

    async def scenario() -> str:
        before = await client_secrets.graph_client_for(connection["id"])
        rev = (await store.get_record(client_secrets.KIND, connection["id"])).credential_rev
        await client_secrets.switch_client_secret(connection["id"], new_secret, from_rev=rev)
        after = await client_secrets.graph_client_for(connection["id"])
        assert after is not before
        fake_azure.remove_password(app, connection["keyId"])
        await after.applications_with_app_id(app.app_id).get()
        return await read_client_secret(connection["id"])

    assert broker.run(scenario()) == new_secret
    got = broker.run(store.get_record(client_secrets.KIND, connection["id"]))
    assert (got.id, got.method, got.client_id) == (connection["id"], "client-secret", app.app_id)


def test_a_secret_switch_planned_from_an_older_revision_overwrites_nothing(
    api: httpx.Client, fake_azure: Any, broker: ServerHandle, connection: dict[str, Any]
) -> None:
    """One writer per connection: a switch planned before a PATCH changed the credentials is refused."""
    from core.connection_seam import RevisionMoved

    _, stale_secret = fake_azure.add_password(connection["app"], display_name="stale")
    rev = broker.run(store.get_record(client_secrets.KIND, connection["id"])).credential_rev
    _, patched_secret = fake_azure.add_password(connection["app"], display_name="patched")
    patched = api.patch(
        f"{CS_PATH}/{connection['id']}", json={"credentials": {"clientSecret": patched_secret}}
    )
    assert patched.status_code == 200, patched.text
    with pytest.raises(RevisionMoved):
        broker.run(client_secrets.switch_client_secret(connection["id"], stale_secret, from_rev=rev))
    assert broker.run(read_client_secret(connection["id"])) == patched_secret


def test_concurrent_patches_one_wins_the_other_409(
    api: httpx.Client, fake_azure: Any, connection: dict[str, Any]
) -> None:
    url = f"{CS_PATH}/{connection['id']}"
    app = connection["app"]
    secrets = [fake_azure.add_password(app)[1] for _ in range(2)]
    # both requests read the row, then spend a moment validating, then write: one must lose
    fake_azure.inject("graph", "delay", count=2, path_pattern="applications", seconds=1.0)
    results: dict[int, httpx.Response] = {}
    barrier = threading.Barrier(2)

    def patch(i: int) -> None:
        barrier.wait()
        results[i] = api.patch(
            url, json={"credentials": {"clientSecret": secrets[i]}, "description": f"by {i}"}
        )

    threads = [threading.Thread(target=patch, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(r.status_code for r in results.values())
    assert statuses == [200, 409], [r.text for r in results.values()]
    winner = next(i for i, r in results.items() if r.status_code == 200)
    loser = results[1 - winner]
    assert assert_problem(loser, 409)["type"].endswith("#concurrency-conflict")
    assert api.get(url).json()["description"] == f"by {winner}"


def test_if_match_with_a_stale_etag_is_412(api: httpx.Client, connection: dict[str, Any]) -> None:
    url = f"{CS_PATH}/{connection['id']}"
    etag = api.get(url).headers["etag"]
    first = api.patch(url, json={"description": "one"}, headers={"If-Match": etag})
    assert first.status_code == 200, first.text
    second = api.patch(url, json={"description": "two"}, headers={"If-Match": etag})
    assert_problem(second, 412)
    assert api.get(url).json()["description"] == "one"
    assert_problem(api.delete(url, headers={"If-Match": etag}), 412)


def test_delete_forgets_the_connection_its_secret_and_name(
    api: httpx.Client, fake_azure: Any, broker: ServerHandle, connection: dict[str, Any], tenant: Any
) -> None:
    url = f"{CS_PATH}/{connection['id']}"
    stored = next(r for r in table_rows(broker, ["AppConnections"]) if r["rk"] == connection["id"])
    refs = list(json.loads(stored["secretRefs"]).values())
    assert refs
    assert all(ref.lower() in fake_azure.state.secrets for ref in refs)
    deleted = api.delete(url)
    assert deleted.status_code == 204
    assert_problem(api.get(url), 404)
    assert_problem(api.delete(url), 404)
    assert all(ref.lower() not in fake_azure.state.secrets for ref in refs)
    again = create(
        api, client_secret_body(connection["name"], tenant, connection["app"], connection["secret"])
    )
    assert again.status_code == 201, again.text
    assert "connection.delete" in [e["action"] for e in audit_entries(api, connection["id"])]


def test_roles(as_role: Callable[[str], httpx.Client], connection: dict[str, Any], tenant: Any) -> None:
    reader = as_role("Broker.Reader")
    operator = as_role("Broker.Operator")
    assert reader.get(f"{CS_PATH}/{connection['id']}").status_code == 200
    assert reader.get(CS_PATH).status_code == 200
    body = client_secret_body(unique("x"), tenant, connection["app"], connection["secret"])
    assert_problem(reader.post(CS_PATH, json=body), 403)
    assert_problem(operator.post(CS_PATH, json=body), 403)
    assert_problem(operator.patch(f"{CS_PATH}/{connection['id']}", json={"description": "x"}), 403)
    assert_problem(operator.delete(f"{CS_PATH}/{connection['id']}"), 403)


def test_unknown_connection_is_404(api: httpx.Client) -> None:
    assert_problem(api.get(f"{CS_PATH}/00000000-0000-0000-0000-000000000000"), 404)
    assert_problem(api.patch(f"{CS_PATH}/nope", json={"description": "x"}), 404)
    assert_problem(api.delete(f"{CS_PATH}/nope"), 404)


# --------------- rotation wiring


def test_rotation_block_on_a_certificate_connection_is_422(api: httpx.Client, tenant: Any) -> None:
    cert, key = make_self_signed_certificate("rot")
    body = _cert_body(tenant, "1b5d3c1e-1111-4222-8333-944455556666", cert, key)
    body["rotation"] = {"enabled": True, "intervalDays": 30, "rotateAt": "02:00"}
    assert_problem(create(api, body), 422, "rotation")


def test_refused_rotation_settings_roll_the_new_connection_back(
    api: httpx.Client, fake_azure: Any, tenant: Any
) -> None:
    app, _, secret = new_app(fake_azure, tenant)
    name = unique("rot")
    body = client_secret_body(
        name,
        tenant,
        app,
        secret,
        rotation={
            "enabled": True,
            "clientSecretKeyId": "2b5d3c1e-1111-4222-8333-944455556666",  # not a secret of this app
            "intervalDays": 30,
            "rotateAt": "02:00",
        },
    )
    answer = create(api, body)
    assert_problem(answer, 422, "rotation.clientSecretKeyId")
    assert name not in [c["name"] for c in api.get(CS_PATH).json()["items"]]
    body.pop("rotation")
    assert create(api, body).status_code == 201  # the name was released


def test_rotation_settings_are_applied_and_shown(api: httpx.Client, fake_azure: Any, tenant: Any) -> None:
    app, key_id, secret = new_app(fake_azure, tenant)
    rotation = {"enabled": True, "clientSecretKeyId": key_id, "intervalDays": 30, "rotateAt": "02:00"}
    created = create(api, client_secret_body(unique("rot"), tenant, app, secret, rotation=rotation))
    assert created.status_code == 201, created.text
    shown = created.json()["rotation"]
    assert shown["enabled"] is True
    assert shown["intervalDays"] == 30
    assert shown["timeZone"] == "UTC"
    assert api.get(f"{CS_PATH}/{created.json()['id']}").json()["rotation"]["enabled"] is True
    patched = api.patch(f"{CS_PATH}/{created.json()['id']}", json={"rotation": {"enabled": False}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["rotation"]["enabled"] is False
    assert api.delete(f"{CS_PATH}/{created.json()['id']}").status_code == 204


def test_rotation_block_on_patch_of_a_certificate_connection_is_422(
    api: httpx.Client, fake_azure: Any, tenant: Any
) -> None:
    app = fake_azure.add_application(tenant, unique("cert-app"), permissions=["Application.ReadWrite.All"])
    cert, key = make_self_signed_certificate("patch-rot")
    fake_azure.add_certificate(app, cert)
    created = create(api, _cert_body(tenant, app.app_id, cert, key))
    assert created.status_code == 201, created.text
    answer = api.patch(f"{CS_PATH}/{created.json()['id']}", json={"rotation": {"enabled": False}})
    assert_problem(answer, 422, "rotation")


def test_an_abandoned_name_claim_is_taken_over_a_fresh_one_is_not(
    api: httpx.Client, fake_azure: Any, tenant: Any, broker: ServerHandle
) -> None:
    from connections import store
    from core import clock, tables

    app, _, secret = new_app(fake_azure, tenant)
    stale, fresh = unique("stale"), unique("fresh")
    long_ago = clock.isoformat(clock.now() - store.STALE_CLAIM - dt.timedelta(minutes=1))
    # a create that died after claiming its name, before inserting its row
    broker.run(
        tables.insert(
            store.NAMES_TABLE, client_secrets.KIND, stale, {"connectionId": "dead", "claimedAt": long_ago}
        )
    )
    now = clock.isoformat(clock.now())
    broker.run(
        tables.insert(
            store.NAMES_TABLE, client_secrets.KIND, fresh, {"connectionId": "busy", "claimedAt": now}
        )
    )
    assert create(api, client_secret_body(stale, tenant, app, secret)).status_code == 201
    assert_problem(create(api, client_secret_body(fresh, tenant, app, secret)), 409, "name")


@pytest.mark.slow
def test_a_secret_store_failure_mid_write_changes_nothing(
    api: httpx.Client, fake_azure: Any, tenant: Any, broker: ServerHandle, connection: dict[str, Any]
) -> None:
    app, _, secret = new_app(fake_azure, tenant)
    name = unique("kv-down")
    fake_azure.inject(
        "keyvault", "503", count=None, path_pattern="/secrets/azcs-", method="PUT", retry_after=0
    )
    answer = create(api, client_secret_body(name, tenant, app, secret))
    assert assert_problem(answer, 503)["type"].endswith("#secret-store-unavailable")
    url = f"{CS_PATH}/{connection['id']}"
    before = api.get(url).json()
    _, new_secret = fake_azure.add_password(connection["app"])
    assert_problem(api.patch(url, json={"credentials": {"clientSecret": new_secret}}), 503)
    fake_azure.reset_faults()
    assert api.get(url).json() == before
    assert broker.run(read_client_secret(connection["id"])) == connection["secret"]
    assert name not in [c["name"] for c in api.get(CS_PATH).json()["items"]]
    assert create(api, client_secret_body(name, tenant, app, secret)).status_code == 201  # name released
