"""Where secret material lives: Azure Key Vault, or an AES-GCM file store for `make run`.

Table rows hold only secret *names*. Names follow `{kind}-{id}-{purpose}` in Key Vault's
alphabet (letters, digits, dashes; at most 127). Deleting is soft in Key Vault; writing a
name that is soft-deleted recovers it first and then writes a new version, which works with
purge protection on (purging would not).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets as random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from core.errors import NotFound, Unavailable
from core.loop_cache import PerLoop
from core.settings import get_settings

if TYPE_CHECKING:
    from azure.keyvault.secrets.aio import SecretClient

_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")


class SecretMissing(NotFound, code="secret-missing"):
    """The named secret does not exist (never written, or deleted)."""


class SecretStore(Protocol):
    async def set(self, name: str, value: str) -> None: ...
    async def get(self, name: str) -> str: ...
    async def delete(self, name: str) -> None: ...
    async def ping(self) -> None: ...


def secret_name(kind: str, item_id: str, purpose: str) -> str:
    """The store name for one piece of material of one resource."""
    name = re.sub(r"[^0-9A-Za-z-]", "-", f"{kind}-{item_id}-{purpose}")
    if not _NAME.match(name):
        raise ValueError(f"secret name {name!r} is not valid in Key Vault")
    return name


class LocalSecretStore:
    """AES-256-GCM files under LOCAL_SECRETS_DIR; the key is made on first use (mode 0600).

    For `make run` on a laptop: the name is bound to the ciphertext (associated data), so a
    file copied to another name does not decrypt.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._cached_key: bytes | None = None

    def _key(self) -> bytes:
        """The store's key, made on first use so that concurrent first uses agree on one.

        The key is written whole to a private temporary file and then hard-linked to `.key`,
        which fails if `.key` exists: no reader ever sees a partial key, exactly one creator
        wins, and the others read the winner's.
        """
        if self._cached_key is not None:
            return self._cached_key
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._dir / ".key"
        if not path.exists():
            tmp = self._dir / f".key-{random.token_hex(8)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(random.token_bytes(32))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process or task won; use its key
            finally:
                tmp.unlink()
        key = path.read_bytes()
        if len(key) != 32:
            raise Unavailable(f"the local secret store key {path} is damaged (not 32 bytes)")
        self._cached_key = key
        return key

    def _path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError("invalid secret name")
        return self._dir / f"{name}.bin"

    def _set(self, name: str, value: str) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = random.token_bytes(12)
        sealed = nonce + AESGCM(self._key()).encrypt(nonce, value.encode(), name.encode())
        tmp = self._path(name).with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(sealed)
        tmp.replace(self._path(name))

    def _get(self, name: str) -> str:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            sealed = self._path(name).read_bytes()
        except FileNotFoundError:
            raise SecretMissing(f"secret {name} does not exist") from None
        return AESGCM(self._key()).decrypt(sealed[:12], sealed[12:], name.encode()).decode()

    async def set(self, name: str, value: str) -> None:
        await asyncio.to_thread(self._set, name, value)

    async def get(self, name: str) -> str:
        return await asyncio.to_thread(self._get, name)

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self._path(name).unlink, missing_ok=True)

    async def ping(self) -> None:
        await asyncio.to_thread(self._key)


async def _vault_client() -> SecretClient:
    from azure.keyvault.secrets.aio import SecretClient

    from core.azure_clients import HTTP_TIMEOUT_SECONDS, broker_credential, is_loopback

    settings = get_settings()
    assert settings.key_vault_url
    return SecretClient(
        settings.key_vault_url,
        await broker_credential(),
        # A loopback vault (the stand-in) cannot match the challenge's resource host.
        verify_challenge_resource=not is_loopback(settings.key_vault_url),
        connection_timeout=HTTP_TIMEOUT_SECONDS,
        read_timeout=HTTP_TIMEOUT_SECONDS,
        retry_total=3,
    )


_vault: PerLoop[SecretClient] = PerLoop(_vault_client)


class KeyVaultSecretStore:
    """Secrets in Azure Key Vault through the broker's managed identity."""

    async def set(self, name: str, value: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        client = await _vault.get()
        try:
            await client.set_secret(name, value, content_type="text/plain")
        except ResourceExistsError:
            # Soft-deleted under this name: bring it back, then write the new value over it.
            await client.recover_deleted_secret(name)  # the aio client waits for the recovery
            await _retry_until_recovered(lambda: client.set_secret(name, value, content_type="text/plain"))

    async def get(self, name: str) -> str:
        from azure.core.exceptions import ResourceNotFoundError

        client = await _vault.get()
        try:
            secret = await client.get_secret(name)
        except ResourceNotFoundError:
            raise SecretMissing(f"secret {name} does not exist") from None
        if secret.value is None:
            raise SecretMissing(f"secret {name} has no value")
        return secret.value

    async def delete(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        client = await _vault.get()
        try:
            await client.delete_secret(name)
        except ResourceNotFoundError:
            return

    async def ping(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        client = await _vault.get()
        try:
            await client.get_secret("broker-readiness-probe")
        except ResourceNotFoundError:
            return


async def _retry_until_recovered(write: Callable[[], Awaitable[object]]) -> None:
    """A recovered secret can take a moment to accept writes; retry briefly (bounded)."""
    from azure.core.exceptions import ResourceExistsError

    for attempt in range(10):
        try:
            await write()
            return
        except ResourceExistsError:
            await asyncio.sleep(0.2 * (attempt + 1))
    raise Unavailable("Key Vault kept refusing to write a recovered secret; try again")


_local: dict[Path, LocalSecretStore] = {}


def secret_store() -> SecretStore:
    """The configured store: Key Vault when KEY_VAULT_URL is set, else the local file store."""
    settings = get_settings()
    if settings.key_vault_url:
        return KeyVaultSecretStore()
    directory = settings.local_secrets_dir.resolve()
    return _local.setdefault(directory, LocalSecretStore(directory))


def reset_clients() -> None:
    _vault.clear()
    _local.clear()
