"""Dynamic secrets over HTTP: validation against Entra ID (the stand-in), naming, update, delete."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from tests.harness import ServerHandle, assert_problem
from tests.test_leases_support import (
    EntraSetup,
    all_rows,
    create_dynamic_secrets,
    entra_setup,
    lease,
    lease_row,
)

URL = "/api/v1/dynamic-secrets"


@pytest.fixture
def setup(fake_azure: Any) -> EntraSetup:
    return entra_setup(fake_azure, users=2)


def test_create_lists_reads_and_stores_the_secret_in_the_vault(
    api: httpx.Client, setup: EntraSetup, fake_azure: Any, broker: ServerHandle
) -> None:
    response = api.post(URL, json=setup.body())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["warnings"] == []
    items = body["items"]
    assert len(items) == 2
    for item, user in zip(items, setup.users, strict=True):
        assert item["tenantId"] == setup.tenant.id
        assert item["applicationId"] == setup.app.app_id
        assert item["userPrincipalName"] == user.user_principal_name
        assert (item["defaultTtl"], item["maxTtl"]) == ("1h", "4h")
        assert api.get(f"{URL}/{item['name']}").json() == item
    listed = {item["name"] for item in api.get(URL).json()["items"]}
    assert {item["name"] for item in items} <= listed
    with fake_azure.state.lock:
        vault = {name: s.latest.value for name, s in fake_azure.state.secrets.items()}
    for item in items:  # one copy per dynamic secret, under a name of its own
        stored = [name for name in vault if name.startswith(f"dynsecret-{item['id']}-client-secret-")]
        assert len(stored) == 1
        assert vault[stored[0]] == setup.secret
    assert all(setup.secret not in str(row.data) for row in all_rows(broker, "DynamicSecrets"))


def test_names_are_derived_lower_case_and_safe(api: httpx.Client, fake_azure: Any) -> None:
    setup = entra_setup(fake_azure, users=0)
    setup.prefix = "Ops-" + setup.prefix.upper()
    setup.add_user("Jane.Doe_x")
    setup.add_user("BOB")
    names = [item["name"] for item in create_dynamic_secrets(api, setup)]
    base = setup.prefix.lower()
    assert names == [f"{base}-jane-doe-x", f"{base}-bob"]


@pytest.mark.parametrize(
    ("permissions", "roles", "field", "words"),
    [
        (
            ("User.Read.All", "Application.Read.All"),
            ("User Administrator",),
            "applicationId",
            "User.ReadWrite.All",
        ),
        (("User.ReadWrite.All", "Application.Read.All"), (), "applicationId", "User Administrator"),
    ],
)
def test_an_app_without_the_rights_is_a_422_that_says_which(
    api: httpx.Client,
    fake_azure: Any,
    permissions: tuple[str, ...],
    roles: tuple[str, ...],
    field: str,
    words: str,
) -> None:
    setup = entra_setup(fake_azure, users=1, permissions=permissions, roles=roles)
    body = assert_problem(api.post(URL, json=setup.body()), 422, field)
    assert words in body["detail"]
    assert body["step"] in ("permissions", "directoryRole")


def test_a_role_the_app_cannot_read_is_a_warning(api: httpx.Client, fake_azure: Any) -> None:
    setup = entra_setup(fake_azure, users=1, permissions=("User.ReadWrite.All",))
    response = api.post(URL, json=setup.body())
    assert response.status_code == 201, response.text
    assert "User Administrator" in response.json()["warnings"][0]
    assert lease(api, response.json()["items"][0]["name"])["lease"]["status"] == "active"


def test_sign_in_failures_name_the_field_and_the_aadsts_code(api: httpx.Client, setup: EntraSetup) -> None:
    fake = setup.fake
    cases = [
        ({"clientSecret": "not-the-secret"}, "clientSecret", "AADSTS7000215"),
        ({"tenantId": "00000000-0000-0000-0000-00000000dead"}, "tenantId", "AADSTS90002"),
        ({"applicationId": "00000000-0000-0000-0000-00000000beef"}, "applicationId", "AADSTS700016"),
    ]
    _, expired = fake.add_password(setup.app, end=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    cases.append(({"clientSecret": expired}, "clientSecret", "AADSTS7000222"))
    for override, field, code in cases:
        body = assert_problem(api.post(URL, json=setup.body(**override)), 422, field)
        assert body["step"] == "token"
        assert body["azureCode"] == code
        for value in override.values():
            if field == "clientSecret":
                assert value not in str(body)


def test_unknown_and_repeated_users_are_422_naming_the_entry(api: httpx.Client, setup: EntraSetup) -> None:
    first = setup.users[0]
    body = assert_problem(
        api.post(URL, json=setup.body(users=[first.id, f"ghost@{setup.tenant.default_domain}"])),
        422,
        "users.1",
    )
    assert "ghost" in body["errors"][0]["message"]
    assert_problem(
        api.post(URL, json=setup.body(users=[first.id, first.user_principal_name])), 422, "users.1"
    )
    assert api.get(URL).json()["items"] == [] or all(
        i["userId"] != first.id for i in api.get(URL).json()["items"]
    )


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"defaultTtl": "5h"}, "defaultTtl"),
        ({"defaultTtl": "1y"}, "defaultTtl"),
        ({"maxTtl": "30s", "defaultTtl": "30s"}, "maxTtl"),
        ({"prefix": "9lives"}, "prefix"),
        ({"prefix": "has space"}, "prefix"),
        ({"applicationId": "not-a-guid"}, "applicationId"),
        ({"users": []}, "users"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_input_is_422_naming_the_field(
    api: httpx.Client, setup: EntraSetup, override: dict[str, Any], field: str
) -> None:
    assert_problem(api.post(URL, json=setup.body(**override)), 422, field)


def test_one_dynamic_secret_per_user_and_names_are_unique(api: httpx.Client, setup: EntraSetup) -> None:
    first, second = setup.users
    create_dynamic_secrets(api, setup, users=[first.id])
    # the same user again (another prefix): 409 naming the dynamic secret that serves it; all or nothing
    setup_again = setup.body(users=[second.id, first.id], prefix=setup.prefix + "x")
    body = assert_problem(api.post(URL, json=setup_again), 409)
    assert body["dynamicSecretName"] == f"{setup.prefix}-user1"
    assert all(i["userId"] != second.id for i in api.get(URL).json()["items"])
    # another tenant's user whose name derives the same: 409 on the name, pointing at the prefix
    other = entra_setup(setup.fake, users=1)
    other.prefix = setup.prefix
    body = assert_problem(api.post(URL, json=other.body()), 409, "prefix")
    assert f"{setup.prefix}-user1" in body["detail"]
    # the second user is still free
    assert create_dynamic_secrets(api, setup, users=[second.id])[0]["userId"] == second.id


def test_patch_ttls_and_client_secret(api: httpx.Client, setup: EntraSetup, fake_azure: Any) -> None:
    name = create_dynamic_secrets(api, setup, users=[setup.users[0].id])[0]["name"]
    changed = api.patch(f"{URL}/{name}", json={"defaultTtl": "2h", "maxTtl": "8h"})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["defaultTtl"], changed.json()["maxTtl"]) == ("2h", "8h")
    assert_problem(api.patch(f"{URL}/{name}", json={"defaultTtl": "9h"}), 422, "defaultTtl")
    assert_problem(api.patch(f"{URL}/{name}", json={}), 422)
    assert_problem(api.patch(f"{URL}/{name}", json={"clientSecret": "wrong"}), 422, "clientSecret")

    # rotate the app's secret: the new one is validated and stored, the old one removed in Entra
    old_key = setup.app.password_credentials[0].key_id
    _, new_secret = fake_azure.add_password(setup.app)
    assert api.patch(f"{URL}/{name}", json={"clientSecret": new_secret}).status_code == 200
    fake_azure.remove_password(setup.app, old_key)
    created = lease(api, name)
    assert setup.signs_in(setup.users[0].user_principal_name, created["credentials"]["password"])
    audit = api.get("/api/v1/audit-logs", params={"resourceId": name, "action": "dynamic_secret.update"})
    assert "clientSecret" in audit.json()["items"][0]["detail"]


def test_a_secret_replaced_elsewhere_is_reread_from_the_vault(
    api: httpx.Client, setup: EntraSetup, fake_azure: Any
) -> None:
    """Another instance PATCHed the secret: this one's cached value stops working and is re-read."""
    item = create_dynamic_secrets(api, setup, users=[setup.users[0].id])[0]
    first = lease(api, item["name"])["lease"]["id"]
    api.delete(f"/api/v1/leases/{first}")
    old_key = setup.app.password_credentials[0].key_id
    _, new_secret = fake_azure.add_password(setup.app)
    fake_azure.set_secret(f"dynsecret-{item['id']}-client-secret", new_secret)  # as another instance
    fake_azure.remove_password(setup.app, old_key)
    assert lease(api, item["name"])["lease"]["status"] == "active"


def test_delete_revokes_the_active_lease_first(
    api: httpx.Client, setup: EntraSetup, fake_azure: Any, broker: ServerHandle
) -> None:
    user = setup.users[0]
    item = create_dynamic_secrets(api, setup, users=[user.id])[0]
    created = lease(api, item["name"])
    response = api.delete(f"{URL}/{item['name']}")
    assert response.status_code == 204, response.text
    assert not setup.signs_in(user.user_principal_name, created["credentials"]["password"])
    assert lease_row(broker, created["lease"]["id"])["status"] == "revoked"
    assert_problem(api.get(f"{URL}/{item['name']}"), 404)
    assert_problem(api.post(f"{URL}/{item['name']}/leases", json={}), 404)
    with fake_azure.state.lock:
        assert f"dynsecret-{item['id']}-client-secret" not in fake_azure.state.secrets
    # the user and the name are free again
    again = create_dynamic_secrets(api, setup, users=[user.id])[0]
    assert again["name"] == item["name"]
    assert lease(api, again["name"])["lease"]["status"] == "active"
    assert [i["id"] for i in api.get(f"{URL}/{again['name']}/leases").json()["items"]] != [
        created["lease"]["id"]
    ]


def test_delete_keeps_the_secret_when_its_lease_cannot_be_revoked(
    api: httpx.Client, setup: EntraSetup, fake_azure: Any
) -> None:
    item = create_dynamic_secrets(api, setup, users=[setup.users[0].id])[0]
    lease(api, item["name"])
    fake_azure.remove_directory_role(setup.app, "User Administrator")
    body = assert_problem(api.delete(f"{URL}/{item['name']}"), 502)
    assert body["azureCode"] == "Authorization_RequestDenied"
    assert api.get(f"{URL}/{item['name']}").status_code == 200
    fake_azure.assign_directory_role(setup.app, "User Administrator")
    assert api.delete(f"{URL}/{item['name']}").status_code == 204


def test_a_transient_graph_error_during_validation_is_503(
    api: httpx.Client, setup: EntraSetup, fake_azure: Any
) -> None:
    # A 500 on a read is retried by the gateway; one that persists is a 503 naming the step.
    fake_azure.inject("graph", "500", count=None, path_pattern=r"/users/", method="GET")
    body = assert_problem(api.post(URL, json=setup.body()), 503)
    assert body["step"] == "readUser"
    fake_azure.reset_faults()
    assert create_dynamic_secrets(api, setup)  # nothing was left claimed


def test_only_admins_manage_dynamic_secrets(api: httpx.Client, setup: EntraSetup, as_role: Any) -> None:
    name = create_dynamic_secrets(api, setup, users=[setup.users[0].id])[0]["name"]
    reader, operator = as_role("Broker.Reader"), as_role("Broker.Operator")
    assert reader.get(f"{URL}/{name}").status_code == 200
    assert reader.get(URL).status_code == 200
    for client in (reader, operator):
        assert_problem(client.post(URL, json=setup.body()), 403)
        assert_problem(client.patch(f"{URL}/{name}", json={"defaultTtl": "2h"}), 403)
        assert_problem(client.delete(f"{URL}/{name}"), 403)
