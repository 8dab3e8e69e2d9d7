"""Key Vault destinations: a new secret version per delivery (azure-keyvault-secrets, aio).

Content type `client-secret`, tags `appId`/`keyId`, `expires_on` = the credential's end. A name
that is soft-deleted (409) is recovered first, waiting until the recovery completes, then set;
never purged. Setting a version again with the same value is harmless, so the set is retried on
5xx like an idempotent call. SDK retries are off: the gateway's policy is the only one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from core import azure_gateway
from core.azure_clients import is_loopback
from core.azure_failure import AzureFailure
from rotation.destinations.access import AzureAccess, AzureRole, Held, SecretToDeliver
from rotation.destinations.models import KeyVaultDestination

if TYPE_CHECKING:
    from azure.keyvault.secrets.aio import SecretClient

CONTENT_TYPE = "client-secret"
ROLE = AzureRole("Key Vault Secrets Officer", "Key Vault")
RECOVERY_POLL_SECONDS = 1


@contextlib.asynccontextmanager
async def _client(dest: KeyVaultDestination, access: AzureAccess) -> AsyncIterator[SecretClient]:
    from azure.keyvault.secrets.aio import SecretClient

    client = SecretClient(
        dest.vault_url,
        access.credential,
        # a loopback stand-in cannot match the challenge's resource; a real vault must
        verify_challenge_resource=not is_loopback(dest.vault_url),
        retry_total=0,
    )
    async with client:
        yield client


def _fix(dest: KeyVaultDestination, access: AzureAccess) -> str:
    return ROLE.fix(f"{dest.vault_url} (or a scope above it)", access)


def _unreachable(dest: KeyVaultDestination) -> str:
    return f"no vault answers at {dest.vault_url}; check the vault's URL (https://NAME.vault.azure.net)"


async def validate(dest: KeyVaultDestination, access: AzureAccess, at: str = "destination") -> None:
    """Reach the vault once with the credential that will write: a read of the secret (absent is
    fine; a read-only role passes, see `AzureRole`)."""
    async with _client(dest, access) as client:
        try:
            await azure_gateway.call(
                "readSecret", lambda: client.get_secret(dest.secret_name), kind="keyvault"
            )
        except AzureFailure as failure:
            if failure.code == "SecretNotFound":
                return
            if failure.status in (0, 404):  # a vault host that does not resolve, or no such vault
                raise ROLE.refusal(failure, f"{at}.vaultUrl", _unreachable(dest)) from None
            raise ROLE.validating(failure, f"{at}.vaultUrl", _fix(dest, access)) from None


async def deliver(dest: KeyVaultDestination, access: AzureAccess, secret: SecretToDeliver) -> Held:
    """Set a new version (recovering a soft-deleted name first) and read it back."""
    try:
        return await _deliver(dest, access, secret)
    except AzureFailure as failure:
        raise ROLE.delivering(failure, _fix(dest, access)) from None


async def _deliver(dest: KeyVaultDestination, access: AzureAccess, secret: SecretToDeliver) -> Held:
    async with _client(dest, access) as client:

        async def send() -> object:
            return await client.set_secret(
                dest.secret_name,
                secret.value.get_secret_value(),
                content_type=CONTENT_TYPE,
                tags={"appId": secret.app_id, "keyId": secret.key_id},
                expires_on=secret.expires_on,
            )

        try:
            await azure_gateway.call("setSecret", send, kind="keyvault")
        except AzureFailure as failure:
            if failure.status != 409:
                raise
            await azure_gateway.call(
                "recoverDeletedSecret",
                lambda: client.recover_deleted_secret(
                    dest.secret_name, _polling_interval=RECOVERY_POLL_SECONDS
                ),
                kind="keyvault",
                idempotent=False,
            )
            await azure_gateway.call("setSecret", send, kind="keyvault")
        return await _read(client, dest, secret)


async def read_back(dest: KeyVaultDestination, access: AzureAccess, secret: SecretToDeliver) -> Held:
    """The latest version, its `keyId` tag, and whether its value is the one delivered."""
    async with _client(dest, access) as client:
        return await _read(client, dest, secret)


async def _read(client: SecretClient, dest: KeyVaultDestination, secret: SecretToDeliver) -> Held:
    try:
        found = await azure_gateway.call(
            "readSecret", lambda: client.get_secret(dest.secret_name), kind="keyvault"
        )
    except AzureFailure as failure:
        if failure.status == 404:  # absent or soft-deleted: someone removed it
            return Held(present=False, matches=False)
        raise
    tags = found.properties.tags or {}
    return Held(
        present=True,
        version=found.properties.version,
        key_id=tags.get("keyId"),
        matches=secret.same_value(found.value) and tags.get("keyId") == secret.key_id,
    )


def reference_uri(dest: KeyVaultDestination, version: str | None) -> str:
    """The secret id an App Configuration reference carries; built from configuration, never from
    a returned id (the stand-in's named vaults answer ids at the host root)."""
    base = f"{dest.vault_url.rstrip('/')}/secrets/{dest.secret_name}"
    return f"{base}/{version}" if version else base
