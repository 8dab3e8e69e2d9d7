# ruff: noqa: F811 - the shared fixtures are imported and then named as test arguments
"""The stand-in's destination services, driven through the real SDKs: named vaults by path
(SecretClient), App Configuration stores (AzureAppConfigurationClient), DevOps variable groups
(httpx, as the broker calls them)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.identity.aio import ClientSecretCredential

from tests.azure_fake import FakeAzure, Tenant
from tests.azure_fake.fixtures import fake, healthy_fake, http, tenant  # noqa: F401 (pytest fixtures)
from tests.azure_fake.state import Application

KV_REF = "application/vnd.microsoft.appconfig.keyvaultref+json;charset=utf-8"


@pytest.fixture
async def identity(fake: FakeAzure, tenant: Tenant) -> AsyncIterator[Any]:
    """Make (app, credential) pairs; credentials are closed afterwards."""
    made: list[ClientSecretCredential] = []

    def make(name: str) -> tuple[Application, ClientSecretCredential]:
        app = fake.add_application(tenant, f"{name}-{uuid.uuid4().hex[:6]}")
        _, secret = fake.add_password(app)
        cred = ClientSecretCredential(tenant.id, app.app_id, secret, authority=fake.authority_host)
        made.append(cred)
        return app, cred

    yield make
    for cred in made:
        await cred.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ Key Vault: many vaults by path


async def test_two_vaults_by_path_with_different_access(fake: FakeAzure, identity: Any) -> None:
    from azure.keyvault.secrets.aio import SecretClient

    writer, writer_cred = identity("writer")
    reader, reader_cred = identity("reader")
    apps_vault, ops_vault = fake.add_vault(unique("apps")), fake.add_vault(unique("ops"))
    fake.grant_vault(apps_vault, writer, "Key Vault Secrets Officer")
    fake.grant_vault(ops_vault, writer, "Key Vault Secrets User")
    fake.grant_vault(apps_vault, reader, "Key Vault Secrets User")
    clients = [
        SecretClient(fake.vault_url(apps_vault.name), writer_cred, verify_challenge_resource=False),
        SecretClient(fake.vault_url(ops_vault.name), writer_cred, verify_challenge_resource=False),
        SecretClient(fake.vault_url(apps_vault.name), reader_cred, verify_challenge_resource=False),
    ]
    apps, ops, apps_as_reader = clients
    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=60)
    try:
        first = await apps.set_secret(
            "web-client-secret",
            "s3cret-1",
            content_type="client-secret",
            tags={"app": "web", "keyId": "k1"},
            expires_on=expires,
        )
        second = await apps.set_secret("web-client-secret", "s3cret-2", content_type="client-secret")
        # The SDK keeps the vault path for requests; the ids it parses name the secret and version.
        assert first.name == "web-client-secret"
        assert first.properties.version
        assert first.properties.version != second.properties.version
        assert first.properties.tags == {"app": "web", "keyId": "k1"}
        assert first.properties.expires_on == expires
        assert (await apps_as_reader.get_secret("web-client-secret")).value == "s3cret-2"
        old = await apps.get_secret("web-client-secret", first.properties.version)
        assert (old.value, old.properties.content_type) == ("s3cret-1", "client-secret")
        versions = [p.version async for p in apps.list_properties_of_secret_versions("web-client-secret")]
        assert set(versions) == {first.properties.version, second.properties.version}
        stored = fake.vault_secret(apps_vault, "web-client-secret")
        assert stored is not None
        assert stored.value == "s3cret-2"
        assert fake.vault_secret(ops_vault, "web-client-secret") is None  # vaults do not share secrets
        assert "web-client-secret" not in fake.state.secrets  # nor with the broker's own vault

        # Secrets User may read but not write; a principal without a role gets nothing.
        fake.set_vault_secret(ops_vault, "shared", "from-ops")
        assert (await ops.get_secret("shared")).value == "from-ops"
        with pytest.raises(HttpResponseError) as denied:
            await ops.set_secret("shared", "overwrite")
        assert denied.value.status_code == 403
        assert denied.value.error is not None
        assert denied.value.error.code == "Forbidden"
        assert "ForbiddenByRbac" in str(denied.value.response.text())
        assert "setSecret" in str(denied.value.message)
        with pytest.raises(HttpResponseError) as reader_write:
            await apps_as_reader.set_secret("web-client-secret", "nope")
        assert reader_write.value.status_code == 403
        assert fake.vault_secret(apps_vault, "web-client-secret").value == "s3cret-2"  # type: ignore[union-attr]
    finally:
        for client in clients:
            await client.close()


async def test_named_vault_soft_delete_blocks_the_name_until_recovered(
    fake: FakeAzure, identity: Any
) -> None:
    from azure.keyvault.secrets.aio import SecretClient

    app, cred = identity("kv")
    vault = fake.add_vault(unique("soft"))
    fake.grant_vault(vault, app, "Key Vault Secrets Officer")
    client = SecretClient(fake.vault_url(vault.name), cred, verify_challenge_resource=False)
    try:
        await client.set_secret("db-password", "v1")
        deleted = await client.delete_secret("db-password")
        assert deleted.name == "db-password"
        assert fake.vault_secret(vault, "db-password") is None
        with pytest.raises(ResourceExistsError) as conflict:
            await client.set_secret("db-password", "v2")
        assert conflict.value.status_code == 409
        assert "ObjectIsDeletedButRecoverable" in conflict.value.response.text()
        deleted_names = [d.name async for d in client.list_deleted_secrets()]
        assert deleted_names == ["db-password"]
        await client.recover_deleted_secret("db-password")
        assert (await client.set_secret("db-password", "v2")).value == "v2"
        assert len([v async for v in client.list_properties_of_secret_versions("db-password")]) == 2
        for i in range(30):
            fake.set_vault_secret(vault, f"bulk-{i:02d}", "x")
        names = [p.name async for p in client.list_properties_of_secrets(max_page_size=7)]  # 5 pages
        assert len(names) == 31
        assert fake.request_count("keyvault", f"^/vaults/{vault.name}/secrets$", "GET") == 5
        with pytest.raises(HttpResponseError) as bad_name:
            await client.set_secret("has_underscore", "x")
        assert bad_name.value.status_code == 400
    finally:
        await client.close()


async def test_named_vault_faults_counts_and_unknown_vault(
    fake: FakeAzure, identity: Any, tenant: Tenant
) -> None:
    from azure.keyvault.secrets.aio import SecretClient

    app, cred = identity("kv-faults")
    vault = fake.add_vault(unique("flaky"))
    other = fake.add_tenant()
    foreign = fake.add_vault(unique("foreign"), other)
    fake.grant_vault(vault, app, "Key Vault Secrets Officer")
    client = SecretClient(fake.vault_url(vault.name), cred, verify_challenge_resource=False)
    try:
        await client.set_secret("warm", "up")  # the challenge round trip happens once
        fake.reset_counters()
        fake.inject("keyvault", "429", count=1, retry_after=1, path_pattern=f"^/vaults/{vault.name}/")
        await client.set_secret("after-throttle", "ok")
        assert fake.request_count("keyvault", f"^/vaults/{vault.name}/secrets/after-throttle", "PUT") == 2
        assert fake.vault_secret(vault, "after-throttle") is not None
    finally:
        await client.close()
    async with httpx.AsyncClient() as http:
        missing = await http.get(f"{fake.base_url}/vaults/nowhere/secrets/x?api-version=7.5")
        assert missing.status_code == 404
        token = fake.mint_caller_token(tenant.id, "https://vault.azure.net")
        wrong_tenant = await http.get(
            f"{fake.vault_url(foreign.name)}/secrets/x?api-version=7.5",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert wrong_tenant.status_code == 401
        assert f"/{other.id}" in wrong_tenant.headers["WWW-Authenticate"]


# ------------------------------------------------------------------ App Configuration stores


async def test_app_configuration_store_with_if_match_and_roles(fake: FakeAzure, identity: Any) -> None:
    from azure.appconfiguration import ConfigurationSetting
    from azure.appconfiguration.aio import AzureAppConfigurationClient

    owner, owner_cred = identity("appcfg-owner")
    reader, reader_cred = identity("appcfg-reader")
    _, stranger_cred = identity("appcfg-stranger")
    store = fake.add_app_config_store(unique("store"))
    fake.grant_app_config(store, owner, "App Configuration Data Owner")
    fake.grant_app_config(store, reader, "App Configuration Data Reader")
    endpoint = fake.app_config_endpoint(store.name)
    clients = [
        AzureAppConfigurationClient(endpoint, owner_cred),
        AzureAppConfigurationClient(endpoint, reader_cred),
        AzureAppConfigurationClient(endpoint, stranger_cred),
    ]
    client, read_only, stranger = clients
    reference = '{"uri":"https://127.0.0.1/vaults/apps/secrets/web-client-secret"}'
    try:
        written = await client.set_configuration_setting(
            ConfigurationSetting(key="Web:ClientSecret", label="prod", value=reference, content_type=KV_REF)
        )
        assert written.etag
        got = await read_only.get_configuration_setting("Web:ClientSecret", label="prod")
        # The SDK turns a Key Vault reference into a SecretReferenceConfigurationSetting.
        assert (json.loads(got.value), got.content_type, got.etag) == (
            json.loads(reference),
            KV_REF,
            written.etag,
        )
        stored = fake.app_config_value(store, "Web:ClientSecret", "prod")
        assert stored is not None
        assert stored.content_type == KV_REF
        assert stored.etag == written.etag
        # The SDK asked Entra for the public cloud's audience (it cannot infer one for loopback).
        tokens = fake.state.tokens_for(owner.app_id, "app")
        assert "https://appconfig.azure.com" in {t.aud for t in tokens}

        # Unchanged since this etag: a conditional get answers 304 (the SDK returns None).
        unchanged = await client.get_configuration_setting(
            "Web:ClientSecret", label="prod", etag=written.etag, match_condition=MatchConditions.IfModified
        )
        assert unchanged is None
        # Someone else changes it: a write conditioned on the old etag is refused (412).
        fake.set_app_config_value(store, "Web:ClientSecret", "changed", label="prod")
        with pytest.raises(ResourceModifiedError):
            await client.set_configuration_setting(written, match_condition=MatchConditions.IfNotModified)
        assert fake.app_config_value(store, "Web:ClientSecret", "prod").value == "changed"  # type: ignore[union-attr]
        latest = await client.get_configuration_setting("Web:ClientSecret", label="prod")
        latest.value = "mine"
        updated = await client.set_configuration_setting(
            latest, match_condition=MatchConditions.IfNotModified
        )
        assert updated.value == "mine"
        assert updated.etag != latest.etag

        with pytest.raises(ResourceNotFoundError):
            await client.get_configuration_setting("Web:ClientSecret")  # the null label holds nothing
        with pytest.raises(HttpResponseError) as reader_write:
            await read_only.set_configuration_setting(ConfigurationSetting(key="x", value="y"))
        assert reader_write.value.status_code == 403
        with pytest.raises(HttpResponseError) as no_role:
            await stranger.get_configuration_setting("Web:ClientSecret", label="prod")
        assert no_role.value.status_code == 403
        listed = [
            s.key async for s in client.list_configuration_settings(key_filter="Web:*", label_filter="*")
        ]
        assert listed == ["Web:ClientSecret"]
    finally:
        for c in clients:
            await c.close()


async def test_app_configuration_faults_and_bad_tokens(fake: FakeAzure, identity: Any) -> None:
    from azure.appconfiguration import ConfigurationSetting
    from azure.appconfiguration.aio import AzureAppConfigurationClient

    owner, cred = identity("appcfg-faults")
    store = fake.add_app_config_store(unique("flaky"))
    fake.grant_app_config(store, owner, "App Configuration Data Owner")
    client = AzureAppConfigurationClient(fake.app_config_endpoint(store.name), cred)
    try:
        fake.inject("appconfig", "503", count=1, retry_after=1)
        await client.set_configuration_setting(ConfigurationSetting(key="k", value="v"))
        assert fake.request_count("appconfig", f"^/stores/{store.name}/kv/k$", "PUT") == 2
    finally:
        await client.close()
    async with httpx.AsyncClient() as http:
        url = f"{fake.app_config_endpoint(store.name)}/kv/k?api-version=2023-11-01"
        anonymous = await http.get(url)
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"].startswith("HMAC-SHA256, Bearer")
        vault_token = fake.mint_caller_token(store.tenant_id, "https://vault.azure.net")
        wrong_audience = await http.get(url, headers={"Authorization": f"Bearer {vault_token}"})
        assert wrong_audience.status_code == 401
        assert 'error="invalid_token"' in wrong_audience.headers["WWW-Authenticate"]


# ------------------------------------------------------------------ DevOps variable groups


def basic(pat: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f":{pat}".encode()).decode()}


def test_variable_groups_hide_secrets_and_replace_on_put(fake: FakeAzure, http: httpx.Client) -> None:
    org = fake.add_devops_org(unique("org"), projects=["web", "ops"])
    fake.add_variable_group(org, "web", "web-secrets", {"Region": "westeurope"}, {"DbPassword": "db-1"})
    pat = fake.add_pat(org, ["vso.variablegroups_manage"])
    base = f"{fake.devops_endpoint}/{org.name}"
    found = http.get(
        f"{base}/web/_apis/distributedtask/variablegroups",
        params={"groupName": "web-secrets", "api-version": "7.1"},
        headers=basic(pat),
    )
    assert found.status_code == 200
    assert found.json()["count"] == 1
    group = found.json()["value"][0]
    assert group["variables"] == {
        "Region": {"value": "westeurope"},
        "DbPassword": {"value": None, "isSecret": True},
    }
    assert "db-1" not in found.text
    before = fake.variable_group(org, "web-secrets")
    assert before is not None
    revision, modified = before.revision, group["modifiedOn"]

    # Read-modify-write: the broker adds its secret and sends the other variables back as read.
    group["variables"]["ClientSecret"] = {"value": "rotated-1", "isSecret": True}
    put = http.put(
        f"{base}/_apis/distributedtask/variablegroups/{group['id']}",
        params={"api-version": "7.1"},
        json=group,
        headers=basic(pat),
    )
    assert put.status_code == 200
    assert put.json()["variables"]["ClientSecret"] == {"value": None, "isSecret": True}
    assert put.json()["modifiedOn"] > modified
    after = fake.variable_group(org, group["id"])
    assert after is not None
    assert after.revision == revision + 1
    assert after.variables["DbPassword"].value == "db-1"  # a secret sent back as null keeps its value
    assert after.variables["ClientSecret"].value == "rotated-1"
    assert after.variables["Region"].value == "westeurope"

    # PUT replaces: a variable left out is gone (why the broker must read first).
    only_ours = {**group, "variables": {"ClientSecret": {"value": None, "isSecret": True}}}
    http.put(
        f"{base}/_apis/distributedtask/variablegroups/{group['id']}",
        params={"api-version": "7.1"},
        json=only_ours,
        headers=basic(pat),
    ).raise_for_status()
    wiped = fake.variable_group(org, group["id"])
    assert wiped is not None
    assert set(wiped.variables) == {"ClientSecret"}
    assert wiped.variables["ClientSecret"].value == "rotated-1"

    # A lost answer: DevOps applied the write, the client saw 504 (only a read-back tells).
    fake.inject("devops", "lost", path_pattern="variablegroups", method="PUT")
    lost = http.put(
        f"{base}/_apis/distributedtask/variablegroups/{group['id']}",
        params={"api-version": "7.1"},
        json={**group, "variables": {"ClientSecret": {"value": "rotated-2", "isSecret": True}}},
        headers=basic(pat),
    )
    assert lost.status_code == 504
    assert fake.variable_group(org, group["id"]).variables["ClientSecret"].value == "rotated-2"  # type: ignore[union-attr]


def test_variable_groups_create_lookup_and_refusals(fake: FakeAzure, http: httpx.Client) -> None:
    org = fake.add_devops_org(unique("org"), projects=["web"])
    manage = fake.add_pat(org, ["vso.variablegroups_manage", "vso.project"])
    read_only = fake.add_pat(org, ["vso.variablegroups_read"])
    base = f"{fake.devops_endpoint}/{org.name}"
    project = http.get(f"{base}/_apis/projects/web", params={"api-version": "7.1"}, headers=basic(manage))
    assert project.status_code == 200
    created = http.post(
        f"{base}/_apis/distributedtask/variablegroups",
        params={"api-version": "7.1"},
        json={
            "name": "pipeline",
            "type": "Vsts",
            "variables": {"ClientId": {"value": "abc"}},
            "variableGroupProjectReferences": [
                {"projectReference": {"id": project.json()["id"]}, "name": "pipeline"}
            ],
        },
        headers=basic(manage),
    )
    assert created.status_code == 200
    group_id = created.json()["id"]
    by_id = http.get(
        f"{base}/web/_apis/distributedtask/variablegroups/{group_id}",
        params={"api-version": "7.1"},
        headers=basic(read_only),
    )
    assert by_id.json()["name"] == "pipeline"
    url = f"{base}/_apis/distributedtask/variablegroups/{group_id}?api-version=7.1"
    no_write = http.put(url, json=by_id.json(), headers=basic(read_only))
    assert no_write.status_code == 401
    assert "TF400813" in no_write.json()["message"]
    unknown_pat = http.put(url, json=by_id.json(), headers=basic("x" * 52))
    assert unknown_pat.status_code == 203
    assert "Sign In" in unknown_pat.text
    missing = http.get(
        f"{base}/web/_apis/distributedtask/variablegroups/999",
        params={"api-version": "7.1"},
        headers=basic(manage),
    )
    assert missing.status_code == 404
    assert missing.json()["typeKey"] == "VariableGroupNotFoundException"
    no_project = http.get(
        f"{base}/nope/_apis/distributedtask/variablegroups",
        params={"api-version": "7.1"},
        headers=basic(manage),
    )
    assert no_project.status_code == 404
    assert "TF200016" in no_project.json()["message"]
    none_found = http.get(
        f"{base}/web/_apis/distributedtask/variablegroups",
        params={"groupName": "absent", "api-version": "7.1"},
        headers=basic(manage),
    )
    assert none_found.json() == {"count": 0, "value": []}
    fake.inject("devops", "429", count=1, retry_after=2, path_pattern="variablegroups")
    throttled = http.get(
        f"{base}/web/_apis/distributedtask/variablegroups",
        params={"api-version": "7.1"},
        headers=basic(manage),
    )
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "2"


def test_control_api_seeds_destinations_without_showing_secrets(
    fake: FakeAzure, tenant: Tenant, http: httpx.Client
) -> None:
    control = f"{fake.base_url}/_control"
    app = fake.add_application(tenant, unique("ctl"))
    vault = http.post(f"{control}/vaults", json={"name": unique("ctl")})
    assert vault.status_code == 201
    assert vault.json()["url"] == fake.vault_url(vault.json()["name"])
    role = {"principal": app.app_id, "role": "Key Vault Secrets Officer"}
    assert http.post(f"{control}/vaults/{vault.json()['name']}/roles", json=role).status_code == 204
    bad_role = http.post(f"{control}/vaults/{vault.json()['name']}/roles", json={**role, "role": "Owner"})
    assert bad_role.status_code == 400
    store = http.post(f"{control}/stores", json={"name": unique("ctl")}).json()
    owner = {"principal": app.app_id, "role": "App Configuration Data Owner"}
    assert http.post(f"{control}/stores/{store['name']}/roles", json=owner).status_code == 204
    org = fake.add_devops_org(unique("ctl"), projects=["web"])
    group = http.post(
        f"{control}/devops/organizations/{org.name}/variablegroups",
        json={"project": "web", "name": "g", "variables": {"A": "1"}, "secrets": {"S": "hidden-value"}},
    )
    assert group.status_code == 201
    fake.set_vault_secret(vault.json()["name"], "kv-secret", "hidden-kv-value")
    summary = http.get(f"{control}/state")
    sp = fake.service_principal(app)
    (listed_vault,) = [v for v in summary.json()["vaults"] if v["name"] == vault.json()["name"]]
    assert listed_vault["roles"] == {sp.id: ["Key Vault Secrets Officer"]}
    assert listed_vault["secrets"] == ["kv-secret"]
    assert any(g["name"] == "g" and g["variables"] == ["A", "S"] for g in summary.json()["variableGroups"])
    assert "hidden-value" not in summary.text
    assert "hidden-kv-value" not in summary.text


async def test_demo_seed_gives_the_rotated_app_its_destinations() -> None:
    from azure.appconfiguration import ConfigurationSetting
    from azure.appconfiguration.aio import AzureAppConfigurationClient
    from azure.keyvault.secrets.aio import SecretClient

    from tests.azure_fake import start_fake_azure
    from tests.azure_fake.__main__ import seed_demo

    demo_fake = start_fake_azure()
    try:
        demo = seed_demo(demo_fake)
        rotated = demo["rotated app (Application.ReadWrite.All)"]
        places = demo["destinations (the rotated app holds the roles)"]
        cred = ClientSecretCredential(
            demo["tenant"]["id"],
            rotated["clientId"],
            rotated["clientSecret"],
            authority=demo_fake.authority_host,
        )
        vault = SecretClient(places["vaultUrl"], cred, verify_challenge_resource=False)
        config = AzureAppConfigurationClient(places["appConfigEndpoint"], cred)
        try:
            await vault.set_secret("web-app-secret", "demo")
            await config.set_configuration_setting(ConfigurationSetting(key="web", value="demo"))
        finally:
            await vault.close()
            await config.close()
            await cred.close()
        assert demo_fake.vault_secret("apps", "web-app-secret") is not None
        assert demo_fake.app_config_value("config", "web") is not None
        group = demo_fake.variable_group(demo["devops"]["organization"], "web-secrets")
        assert group is not None
        assert group.variables["Region"].value == "westeurope"
    finally:
        demo_fake.stop()
