"""Delivery of a rotated secret to Key Vault, App Configuration and DevOps variable groups, through
the real SDKs (azure-keyvault-secrets, azure-appconfiguration, httpx) against the stand-in."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from azure.identity.aio import ClientSecretCredential
from pydantic import SecretStr

from core import clock
from core.errors import Unprocessable
from rotation.destinations import (
    AppConfigurationDestination,
    AzureAccess,
    Delivery,
    Destination,
    DevOpsAccess,
    DevOpsVariableGroupDestination,
    KeyVaultDestination,
    SecretToDeliver,
    check_destinations,
    destination_id,
    validate_all,
)


@dataclass
class Vault:
    name: str


KV_REF = "application/vnd.microsoft.appconfig.keyvaultref+json;charset=utf-8"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def stand_in_hosts(broker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The stand-in serves every vault and store on 127.0.0.1, as DESIGN.md sets it for tests."""
    from core.settings import get_settings

    monkeypatch.setenv("DESTINATION_HOSTS", "127.0.0.1:*")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def tenant(fake_azure: Any) -> Any:
    return fake_azure.add_tenant(domain=f"{unique('dest')}.example")


@pytest.fixture(scope="module")
async def writer(fake_azure: Any, tenant: Any) -> AsyncIterator[tuple[Any, AzureAccess]]:
    """An app (a connection's, or the broker's identity) and its credential."""
    app = fake_azure.add_application(tenant, unique("writer"))
    _, secret = fake_azure.add_password(app)
    credential = ClientSecretCredential(tenant.id, app.app_id, secret, authority=fake_azure.authority_host)
    yield app, AzureAccess(credential, "connection c1's app")
    await credential.close()


def rotated(value: str | None = None, key_id: str | None = None) -> SecretToDeliver:
    return SecretToDeliver(
        value=SecretStr(value or f"s3cr3t-{uuid.uuid4().hex}"),
        key_id=key_id or str(uuid.uuid4()),
        app_id="11111111-2222-3333-4444-555555555555",
        expires_on=clock.now() + timedelta(days=60),
    )


def vault_for(fake: Any, tenant: Any, app: Any, role: str | None = "Key Vault Secrets Officer") -> Any:
    vault = fake.add_vault(unique("apps"), tenant)
    if role:
        fake.grant_vault(vault, app, role)
    return vault


def store_for(fake: Any, tenant: Any, app: Any, role: str | None = "App Configuration Data Owner") -> Any:
    store = fake.add_app_config_store(unique("config"), tenant)
    if role:
        fake.grant_app_config(store, app, role)
    return store


def kv(fake: Any, vault: Any, name: str = "web-client-secret") -> KeyVaultDestination:
    return KeyVaultDestination(type="key-vault", vault_url=fake.vault_url(vault.name), secret_name=name)


def basic(pat: str) -> DevOpsAccess:
    async def header() -> str:
        return "Basic " + base64.b64encode(f":{pat}".encode()).decode()

    return DevOpsAccess("", header)


def devops_access(org: Any, pat: str) -> DevOpsAccess:
    return DevOpsAccess(org.name, basic(pat).authorization)


# ------------------------------------------------------------------------- checks without network


def test_checks_name_the_field_and_send_nothing(fake_azure: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import get_settings

    before = fake_azure.request_count("*")
    destinations: list[Destination] = [
        KeyVaultDestination(type="key-vault", vault_url="https://evil.example.com", secret_name="web_secret"),
        AppConfigurationDestination(
            type="app-configuration", endpoint="http://x.azconfig.io", key="k", key_vault_reference=True
        ),
        KeyVaultDestination(type="key-vault", vault_url="https://evil.example.com", secret_name="web_secret"),
    ]
    with pytest.raises(Unprocessable) as refused:
        check_destinations(destinations)
    fields = {e.field: e.message for e in refused.value.errors}
    assert "DESTINATION_HOSTS" in fields["destinations[0].vaultUrl"]
    assert "letters, digits and '-'" in fields["destinations[0].secretName"]
    assert "https" in fields["destinations[1].endpoint"]
    assert "duplicates destinations[0]" in fields["destinations[2]"]
    only_reference = [
        AppConfigurationDestination(
            type="app-configuration", endpoint="https://a.azconfig.io", key="k", key_vault_reference=True
        )
    ]
    with pytest.raises(Unprocessable) as no_vault:
        check_destinations(only_reference)
    assert "destinations[0].keyVaultReference" in {e.field for e in no_vault.value.errors}

    # The default patterns: a stand-in URL is refused with the setting named, and nothing is sent.
    monkeypatch.setenv("DESTINATION_HOSTS", "*.vault.azure.net,*.azconfig.io")
    get_settings.cache_clear()
    stand_in = [
        KeyVaultDestination(type="key-vault", vault_url=fake_azure.vault_url("apps"), secret_name="a")
    ]
    with pytest.raises(Unprocessable) as outside:
        check_destinations(stand_in)
    assert "add the host to the DESTINATION_HOSTS setting" in outside.value.errors[0].message
    assert fake_azure.request_count("*") == before


async def test_a_host_no_longer_allowed_gets_no_request(
    fake_azure: Any, tenant: Any, writer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESTINATION_HOSTS narrowed after a destination was accepted: delivery and validation refuse
    before any token or secret leaves (the stand-in sees no request at all)."""
    from core.settings import get_settings

    app, access = writer
    dest = kv(fake_azure, vault_for(fake_azure, tenant, app))
    monkeypatch.setenv("DESTINATION_HOSTS", "*.vault.azure.net")
    get_settings.cache_clear()
    before = fake_azure.request_count("*")
    [state] = await Delivery("r1", [dest], _fixed(access), rotated()).deliver_all()
    assert state.status == "failed"
    assert "DESTINATION_HOSTS" in (state.last_error or "")
    with pytest.raises(Unprocessable) as refused:
        await validate_all([dest], _fixed(access))
    assert refused.value.errors[0].field == "destinations[0].vaultUrl"
    assert fake_azure.request_count("*") == before


def _fixed(access: Any) -> Any:
    async def access_for(_: Destination) -> Any:
        return access

    return access_for


# ------------------------------------------------------------------------- Key Vault


async def test_key_vault_delivers_reads_back_and_repairs_drift(
    fake_azure: Any, tenant: Any, writer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app, access = writer
    vault = vault_for(fake_azure, tenant, app)
    dest = kv(fake_azure, vault)
    secret = rotated()
    await validate_all([dest], _fixed(access))
    [state] = await Delivery("r1", [dest], _fixed(access), secret).deliver_all()
    assert state.status == "synced"
    assert state.last_synced_key_id == secret.key_id
    held = fake_azure.vault_secret(vault, dest.secret_name)
    assert held.value == secret.value.get_secret_value()
    assert held.content_type == "client-secret"
    assert held.tags == {"appId": secret.app_id, "keyId": secret.key_id}
    assert held.expires is not None
    assert abs(held.expires - secret.expires_on.timestamp()) < 1
    assert state.last_synced_version == held.version

    quiet = await Delivery("r1", [dest], _fixed(access), secret).recheck([state])
    assert quiet.drifted == []
    assert quiet.synced == [state.id]

    fake_azure.set_vault_secret(vault, dest.secret_name, "someone-else")
    repaired = await Delivery("r1", [dest], _fixed(access), secret).recheck(quiet.states)
    assert repaired.drifted == [destination_id(dest)]
    assert repaired.states[0].status == "synced"
    assert fake_azure.vault_secret(vault, dest.secret_name).value == secret.value.get_secret_value()
    assert "delivery.drifted" in caplog.text
    assert secret.value.get_secret_value() not in caplog.text


async def test_a_soft_deleted_name_is_recovered_then_set(fake_azure: Any, tenant: Any, writer: Any) -> None:
    from azure.keyvault.secrets.aio import SecretClient

    app, access = writer
    vault = vault_for(fake_azure, tenant, app)
    dest = kv(fake_azure, vault, "deleted-one")
    async with SecretClient(dest.vault_url, access.credential, verify_challenge_resource=False) as client:
        await client.set_secret("deleted-one", "old")
        await client.delete_secret("deleted-one")
    assert fake_azure.vault_secret(vault, "deleted-one") is None
    secret = rotated()
    [state] = await Delivery("r1", [dest], _fixed(access), secret).deliver_all()
    assert state.status == "synced", state.last_error
    assert fake_azure.vault_secret(vault, "deleted-one").value == secret.value.get_secret_value()
    assert fake_azure.request_count("keyvault", path_pattern="deletedsecrets/deleted-one/recover") == 1
    assert fake_azure.request_count("keyvault", path_pattern="purge|DELETE") == 0


async def test_no_role_is_a_422_naming_the_role(fake_azure: Any, tenant: Any, writer: Any) -> None:
    app, access = writer
    vault = vault_for(fake_azure, tenant, app, role=None)
    store = store_for(fake_azure, tenant, app, role=None)
    destinations: list[Destination] = [
        kv(fake_azure, vault),
        AppConfigurationDestination(
            type="app-configuration", endpoint=fake_azure.app_config_endpoint(store.name), key="Web:Secret"
        ),
    ]
    with pytest.raises(Unprocessable) as refused:
        await validate_all(destinations, _fixed(access))
    fields = {e.field: e.message for e in refused.value.errors}
    assert "'Key Vault Secrets Officer' role" in fields["destinations[0].vaultUrl"]
    with pytest.raises(Unprocessable) as no_vault:
        await validate_all([kv(fake_azure, Vault("no-such-vault"))], _fixed(access))
    assert "no vault answers" in no_vault.value.errors[0].message
    assert "'App Configuration Data Owner' role" in fields["destinations[1].endpoint"]
    assert "connection c1's app" in fields["destinations[0].vaultUrl"]

    # Delivery records the same fix, fails only these two, and backs off.
    states = await Delivery("r1", destinations, _fixed(access), rotated()).deliver_all()
    assert [s.status for s in states] == ["failed", "failed"]
    assert "Key Vault Secrets Officer" in (states[0].last_error or "")
    assert "App Configuration Data Owner" in (states[1].last_error or "")
    before = fake_azure.request_count("*")
    waiting = await Delivery("r1", destinations, _fixed(access), rotated()).recheck(states)
    assert waiting.failed == [s.id for s in states]
    assert fake_azure.request_count("*") == before


# ------------------------------------------------------------------------- App Configuration


async def test_app_configuration_value_and_key_vault_reference(
    fake_azure: Any, tenant: Any, writer: Any
) -> None:
    app, access = writer
    vault, store = vault_for(fake_azure, tenant, app), store_for(fake_azure, tenant, app)
    endpoint = fake_azure.app_config_endpoint(store.name)
    destinations: list[Destination] = [
        AppConfigurationDestination(
            type="app-configuration",
            endpoint=endpoint,
            key="Web:SecretRef",
            label="prod",
            key_vault_reference=True,
        ),
        AppConfigurationDestination(type="app-configuration", endpoint=endpoint, key="Web:Secret"),
        kv(fake_azure, vault),
    ]
    check_destinations(destinations)
    secret = rotated()
    states = await Delivery("r1", destinations, _fixed(access), secret).deliver_all()
    assert [s.status for s in states] == ["synced"] * 3, [s.last_error for s in states]
    version = fake_azure.vault_secret(vault, "web-client-secret").version
    reference = fake_azure.app_config_value(store, "Web:SecretRef", label="prod")
    assert reference.content_type == KV_REF
    assert json.loads(reference.value) == {
        "uri": f"{fake_azure.vault_url(vault.name)}/secrets/web-client-secret/{version}"
    }
    assert fake_azure.app_config_value(store, "Web:Secret").value == secret.value.get_secret_value()
    assert states[1].last_synced_version == fake_azure.app_config_value(store, "Web:Secret").etag

    fake_azure.set_app_config_value(store, "Web:Secret", "drifted")
    result = await Delivery("r1", destinations, _fixed(access), secret).recheck(states)
    assert result.drifted == [states[1].id]
    assert result.synced == [s.id for s in states]
    assert fake_azure.app_config_value(store, "Web:Secret").value == secret.value.get_secret_value()

    # A newer secret: the vault gets a new version and the reference follows it.
    newer = rotated()
    states = await Delivery("r1", destinations, _fixed(access), newer).deliver_all(result.states)
    newest = fake_azure.vault_secret(vault, "web-client-secret").version
    assert newest != version
    assert (
        newest in json.loads(fake_azure.app_config_value(store, "Web:SecretRef", label="prod").value)["uri"]
    )


async def test_429_and_503_are_retried_through_the_gateway(fake_azure: Any, tenant: Any, writer: Any) -> None:
    app, access = writer
    vault, store = vault_for(fake_azure, tenant, app), store_for(fake_azure, tenant, app)
    destinations: list[Destination] = [
        kv(fake_azure, vault),
        AppConfigurationDestination(
            type="app-configuration", endpoint=fake_azure.app_config_endpoint(store.name), key="Web:Secret"
        ),
    ]
    fake_azure.inject(
        "keyvault", "429", count=1, retry_after=1, path_pattern=f"^/vaults/{vault.name}/", method="PUT"
    )
    fake_azure.inject(
        "appconfig", "503", count=1, retry_after=1, path_pattern=f"^/stores/{store.name}/", method="PUT"
    )
    states = await Delivery("r1", destinations, _fixed(access), rotated()).deliver_all()
    assert [s.status for s in states] == ["synced", "synced"], [s.last_error for s in states]
    assert (
        fake_azure.request_count("keyvault", path_pattern=f"^/vaults/{vault.name}/secrets", method="PUT") == 2
    )
    assert fake_azure.request_count("appconfig", path_pattern=f"^/stores/{store.name}/kv", method="PUT") == 2


# ------------------------------------------------------------------------- DevOps variable groups


@pytest.fixture
def devops(fake_azure: Any) -> tuple[Any, str]:
    org = fake_azure.add_devops_org(unique("org"), projects=["web", "ops"])
    fake_azure.add_variable_group(
        org, "web", "web-secrets", {"Region": "westeurope"}, secrets={"DbPassword": "db-secret-1"}
    )
    return org, fake_azure.add_pat(org, ["vso.variablegroups_manage"])


def test_the_client_id_variable_must_differ_from_the_secret() -> None:
    with pytest.raises(Unprocessable) as refused:
        check_destinations([group_dest(client_id_variable="ClientSecret")])
    assert refused.value.errors[0].field == "destinations[0].clientIdVariable"


def group_dest(**overrides: Any) -> DevOpsVariableGroupDestination:
    fields = {
        "type": "devops-variable-group",
        "connection_id": "c-devops",
        "project": "web",
        "variable_group": "web-secrets",
        "variable": "ClientSecret",
        "client_id_variable": "ClientId",
    }
    return DevOpsVariableGroupDestination(**(fields | overrides))


async def test_devops_sets_ours_and_keeps_every_other_variable(
    fake_azure: Any, devops: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    org, pat = devops
    dest, access = group_dest(), devops_access(org, pat)
    await validate_all([dest], _fixed(access))
    secret = rotated()
    [state] = await Delivery("r1", [dest], _fixed(access), secret).deliver_all()
    assert state.status == "synced", state.last_error
    group = fake_azure.variable_group(org, "web-secrets")
    assert group.variables["ClientSecret"].value == secret.value.get_secret_value()
    assert group.variables["ClientSecret"].is_secret
    assert (group.variables["ClientId"].value, group.variables["ClientId"].is_secret) == (
        secret.app_id,
        False,
    )
    assert group.variables["Region"].value == "westeurope"
    assert not group.variables["Region"].is_secret
    assert group.variables["DbPassword"].value == "db-secret-1"
    assert group.variables["DbPassword"].is_secret

    quiet = await Delivery("r1", [dest], _fixed(access), secret).recheck([state])
    assert quiet.drifted == []

    # Someone removes our variable: drift, re-delivered; their other edit stays.
    fake_azure.set_group_variable(org, "web-secrets", "Region", "northeurope")
    result = await Delivery("r1", [dest], _fixed(access), secret).recheck(quiet.states)
    assert result.drifted == [state.id]
    assert result.synced == [state.id]
    group = fake_azure.variable_group(org, "web-secrets")
    assert group.variables["Region"].value == "northeurope"
    assert group.variables["DbPassword"].value == "db-secret-1"
    assert group.variables["ClientSecret"].value == secret.value.get_secret_value()
    assert "group-modified" in caplog.text
    assert secret.value.get_secret_value() not in caplog.text
    assert "db-secret-1" not in caplog.text


async def test_devops_concurrent_edit_is_read_again_not_overwritten(
    fake_azure: Any, devops: tuple[Any, str]
) -> None:
    org, pat = devops
    dest, access = group_dest(), devops_access(org, pat)
    group_id = fake_azure.variable_group(org, "web-secrets").id
    # The re-read right before the PUT is slow; someone edits the group meanwhile.
    fake_azure.inject(
        "devops",
        "delay",
        count=1,
        seconds=1.0,
        path_pattern=rf"/{org.name}/.*variablegroups/{group_id}$",
        method="GET",
    )
    delivery = asyncio.create_task(Delivery("r1", [dest], _fixed(access), rotated()).deliver_all())
    await asyncio.sleep(0.5)
    fake_azure.set_group_variable(org, "web-secrets", "Region", "edited-meanwhile")
    [state] = await delivery
    assert state.status == "synced", state.last_error
    group = fake_azure.variable_group(org, "web-secrets")
    assert group.variables["Region"].value == "edited-meanwhile"
    assert (
        fake_azure.request_count(
            "devops", path_pattern=rf"/{org.name}/.*variablegroups/{group_id}$", method="PUT"
        )
        == 1
    )
    # the slow re-read saw the edit, so the first body was dropped and the group read again
    assert (
        fake_azure.request_count(
            "devops", path_pattern=rf"/{org.name}/.*variablegroups/{group_id}$", method="GET"
        )
        == 3
    )


async def test_devops_refusals_name_the_field(fake_azure: Any, devops: tuple[Any, str]) -> None:
    org, pat = devops
    access = devops_access(org, pat)
    cases = [
        (group_dest(variable_group="nope"), access, "destinations[0].variableGroup", "never creates"),
        (group_dest(project="missing"), access, "destinations[0].project", "does not exist"),
        (group_dest(), devops_access(org, "not-a-pat"), "destinations[0].connectionId", "invalid, expired"),
        (
            group_dest(),
            devops_access(org, fake_azure.add_pat(org, ["vso.project"])),
            "destinations[0].connectionId",
            "vso.variablegroups_manage",
        ),
    ]
    for dest, how, field, words in cases:
        with pytest.raises(Unprocessable) as refused:
            await validate_all([dest], _fixed(how))
        assert refused.value.errors[0].field == field
        assert words in refused.value.errors[0].message
    assert fake_azure.variable_group(org, "nope") is None


async def test_one_failing_destination_does_not_stop_the_others(
    fake_azure: Any, tenant: Any, writer: Any, devops: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app, azure = writer
    org, pat = devops
    vault = vault_for(fake_azure, tenant, app)
    destinations: list[Destination] = [kv(fake_azure, vault), group_dest(variable_group="gone")]

    async def access_for(dest: Destination) -> Any:
        return devops_access(org, pat) if isinstance(dest, DevOpsVariableGroupDestination) else azure

    secret = rotated()
    states = await Delivery("r1", destinations, access_for, secret).deliver_all()
    assert [s.status for s in states] == ["synced", "failed"]
    assert states[1].next_attempt_at is not None
    assert states[1].failures == 1
    assert "delivery.failed" in caplog.text
    assert secret.value.get_secret_value() not in caplog.text

    fake_azure.add_variable_group(org, "web", "gone", {"Other": "x"})
    later = await Delivery("r1", destinations, access_for, secret).recheck(
        states, now=clock.now() + timedelta(minutes=2)
    )
    assert later.synced == [s.id for s in states]
    assert fake_azure.variable_group(org, "gone").variables["Other"].value == "x"


async def test_devops_lost_update_is_read_again_before_writing_again(
    fake_azure: Any, devops: tuple[Any, str]
) -> None:
    """A PUT whose answer is lost may have landed: the group is read (and re-checked) before the
    next write, so the second body is built from what is there now, never replayed."""
    org, pat = devops
    dest, access = group_dest(), devops_access(org, pat)
    group_id = fake_azure.variable_group(org, "web-secrets").id
    path = rf"/{org.name}/.*variablegroups/{group_id}$"
    fake_azure.inject("devops", "lost", count=1, path_pattern=path, method="PUT")
    secret = rotated()
    [state] = await Delivery("r1", [dest], _fixed(access), secret).deliver_all()
    assert state.status == "synced", state.last_error
    assert fake_azure.request_count("devops", path_pattern=path, method="PUT") == 2
    log = [(r.method, r.path) for r in fake_azure.request_log("devops") if org.name in r.path]
    put_at = [i for i, (method, _) in enumerate(log) if method == "PUT"]
    assert any(method == "GET" for method, _ in log[put_at[0] + 1 : put_at[1]])
    group = fake_azure.variable_group(org, "web-secrets")
    assert group.variables["DbPassword"].value == "db-secret-1"
    assert group.variables["ClientSecret"].value == secret.value.get_secret_value()
