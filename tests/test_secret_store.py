"""Both secret stores: the local AES-GCM files, and Key Vault through the real SecretClient."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from core.secret_store import KeyVaultSecretStore, LocalSecretStore, SecretMissing, secret_name, secret_store
from tests.harness import ServerHandle


def test_local_store_round_trip_and_encrypts(tmp_path: Path) -> None:
    store = LocalSecretStore(tmp_path)
    name = secret_name("conn", "abc", "client-secret")

    async def scenario() -> str:
        await store.set(name, "s3cr3t-value")
        return await store.get(name)

    assert asyncio.run(scenario()) == "s3cr3t-value"
    files = {p.name: p for p in tmp_path.iterdir()}
    assert ".key" in files
    assert oct(files[".key"].stat().st_mode)[-3:] == "600"
    assert b"s3cr3t-value" not in files[f"{name}.bin"].read_bytes()


def test_local_store_binds_ciphertext_to_its_name(tmp_path: Path) -> None:
    from cryptography.exceptions import InvalidTag

    store = LocalSecretStore(tmp_path)
    asyncio.run(store.set("one", "value"))
    (tmp_path / "one.bin").rename(tmp_path / "two.bin")
    with pytest.raises(InvalidTag):
        asyncio.run(store.get("two"))


def test_local_store_delete_and_missing(tmp_path: Path) -> None:
    store = LocalSecretStore(tmp_path)
    asyncio.run(store.set("gone", "v"))
    asyncio.run(store.delete("gone"))
    asyncio.run(store.delete("gone"))
    with pytest.raises(SecretMissing):
        asyncio.run(store.get("gone"))


def test_two_first_uses_at_once_agree_on_one_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two stores on one directory (two processes) both making the key: both pause right after
    deciding to create it, so each has seen no key; exactly one key wins and each reads the other's."""
    import contextlib
    import secrets
    import threading

    from core import secret_store

    both_creating = threading.Barrier(2, timeout=2)
    made: list[bytes] = []
    token_bytes = secrets.token_bytes

    def key_bytes(n: int) -> bytes:
        value = token_bytes(n)
        if n == 32:
            made.append(value)
            with contextlib.suppress(threading.BrokenBarrierError):  # the other saw a key already
                both_creating.wait()
        return value

    monkeypatch.setattr(secret_store.random, "token_bytes", key_bytes)
    first, second = LocalSecretStore(tmp_path), LocalSecretStore(tmp_path)
    errors: list[BaseException] = []

    def write(store: LocalSecretStore, name: str) -> None:
        try:
            asyncio.run(store.set(name, f"value of {name}"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=a) for a in ((first, "one"), (second, "two"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert len(made) == 2  # both really raced to create it
    assert (tmp_path / ".key").read_bytes() in made
    assert asyncio.run(second.get("one")) == "value of one"
    assert asyncio.run(first.get("two")) == "value of two"
    assert asyncio.run(LocalSecretStore(tmp_path).get("one")) == "value of one"  # a third process
    assert sorted(p.name for p in tmp_path.iterdir()) == [".key", "one.bin", "two.bin"]


def test_secret_names_fit_key_vault() -> None:
    assert secret_name("conn", "a_b.c", "refresh-token") == "conn-a-b-c-refresh-token"
    with pytest.raises(ValueError, match="not valid"):
        secret_name("x" * 100, "y" * 30, "z")


def test_key_vault_store_through_secret_client(broker: ServerHandle) -> None:
    store = secret_store()
    assert isinstance(store, KeyVaultSecretStore)
    name = f"test-{uuid.uuid4().hex}"

    async def scenario() -> tuple[str, str]:
        await store.set(name, "first")
        first = await store.get(name)
        await store.set(name, "second")
        return first, await store.get(name)

    assert broker.run(scenario()) == ("first", "second")


def test_key_vault_store_recreates_a_soft_deleted_name(broker: ServerHandle, fake_azure: object) -> None:
    store = secret_store()
    name = f"test-{uuid.uuid4().hex}"
    broker.run(store.set(name, "old"))
    broker.run(store.delete(name))
    with pytest.raises(SecretMissing):
        broker.run(store.get(name))
    broker.run(store.set(name, "new"))
    assert broker.run(store.get(name)) == "new"
    broker.run(store.delete(name))
    broker.run(store.delete(name))  # idempotent
