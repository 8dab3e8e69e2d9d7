"""App Configuration destinations: one key-value (with label) per destination (azure-appconfiguration aio).

The value is the secret, or with `keyVaultReference` a Key Vault reference
`{"uri": "<vault>/secrets/<name>/<version>"}` to the rotation's key-vault destination, so the store
never holds the secret itself and every rotation changes the key-value (and its etag) that apps
watch. The write is a plain PUT of our own key: repeating it is harmless. SDK retries are off.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from core import azure_gateway
from core.azure_failure import AzureFailure
from rotation.destinations.access import AzureAccess, AzureRole, Held, SecretToDeliver
from rotation.destinations.models import AppConfigurationDestination

if TYPE_CHECKING:
    from azure.appconfiguration import ConfigurationSetting
    from azure.appconfiguration.aio import AzureAppConfigurationClient

KEY_VAULT_REFERENCE = "application/vnd.microsoft.appconfig.keyvaultref+json;charset=utf-8"
ROLE = AzureRole("App Configuration Data Owner", "App Configuration")


@contextlib.asynccontextmanager
async def _client(
    dest: AppConfigurationDestination, access: AzureAccess
) -> AsyncIterator[AzureAppConfigurationClient]:
    from azure.appconfiguration.aio import AzureAppConfigurationClient

    client = AzureAppConfigurationClient(dest.endpoint, access.credential, retry_total=0)
    async with client:
        yield client


def _fix(dest: AppConfigurationDestination, access: AzureAccess) -> str:
    return ROLE.fix(f"the store {dest.endpoint}", access)


def expected(secret: SecretToDeliver, reference: str | None) -> tuple[str, str | None]:
    """The value and content type we write: the reference JSON, or the secret itself."""
    if reference is not None:
        return json.dumps({"uri": reference}), KEY_VAULT_REFERENCE
    return secret.value.get_secret_value(), None


async def _get(
    client: AzureAppConfigurationClient, dest: AppConfigurationDestination
) -> ConfigurationSetting | None:
    try:
        return await azure_gateway.call(
            "readKeyValue",
            lambda: client.get_configuration_setting(key=dest.key, label=dest.label),
            kind="appconfig",
        )
    except AzureFailure as failure:
        if failure.status == 404:
            return None
        raise


async def validate(dest: AppConfigurationDestination, access: AzureAccess, at: str = "destination") -> None:
    """Read our key once with the credential that will write (absent is fine). A Data Reader
    passes this and fails the first delivery; App Configuration has no "may I write" call."""
    async with _client(dest, access) as client:
        try:
            await _get(client, dest)
        except AzureFailure as failure:
            raise ROLE.validating(failure, f"{at}.endpoint", _fix(dest, access)) from None


async def deliver(
    dest: AppConfigurationDestination,
    access: AzureAccess,
    secret: SecretToDeliver,
    reference: str | None = None,
) -> Held:
    """Set the key-value (or the reference when `reference` is given) and read it back."""
    from azure.appconfiguration import ConfigurationSetting

    value, content_type = expected(secret, reference)
    setting = ConfigurationSetting(key=dest.key, label=dest.label, value=value, content_type=content_type)
    async with _client(dest, access) as client:
        try:
            await azure_gateway.call(
                "setKeyValue", lambda: client.set_configuration_setting(setting), kind="appconfig"
            )
        except AzureFailure as failure:
            raise ROLE.delivering(failure, _fix(dest, access)) from None
        return await _read(client, dest, secret, reference)


async def read_back(
    dest: AppConfigurationDestination,
    access: AzureAccess,
    secret: SecretToDeliver,
    reference: str | None = None,
) -> Held:
    """The key-value's etag and whether it holds what we delivered (value and content type)."""
    async with _client(dest, access) as client:
        return await _read(client, dest, secret, reference)


async def _read(
    client: AzureAppConfigurationClient,
    dest: AppConfigurationDestination,
    secret: SecretToDeliver,
    reference: str | None,
) -> Held:
    found = await _get(client, dest)
    if found is None:
        return Held(present=False, matches=False)
    value, content_type = expected(secret, reference)
    if reference is None:
        same = secret.same_value(found.value) and not found.content_type
    else:
        same = found.value == value and (found.content_type or "").lower() == (content_type or "").lower()
    return Held(present=True, version=found.etag, key_id=secret.key_id if same else None, matches=same)
