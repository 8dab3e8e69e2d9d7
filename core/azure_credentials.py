"""The one cache of app credentials (and their Graph clients), per event loop.

An entry is keyed by who it signs in as and a digest of the credential material, so a changed
secret or certificate never reuses the old credential; `drop` forgets one at once (its secret
stopped working). Entries beyond `MAX_ENTRIES` are closed least recently used first, and
`core.loop_cache.close_all` closes the rest when the loop ends: no HTTP session is left open.
Graph clients made here have kiota's retry handler at 0 retries: `core.azure_gateway` retries.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.azure_clients import HTTP_TIMEOUT_SECONDS, client_secret_credential, graph_client
from core.loop_cache import PerLoop

if TYPE_CHECKING:
    import httpx
    from azure.core.credentials_async import AsyncTokenCredential
    from msgraph.graph_service_client import GraphServiceClient

MAX_ENTRIES = 256
Key = tuple[str, str, str]  # (tenant, client id, digest of the credential material)


@dataclass
class AppAccess:
    """One app's credential and its Graph client on one event loop."""

    tenant_id: str
    client_id: str
    credential: AsyncTokenCredential
    _graph: GraphServiceClient | None = None
    _http: httpx.AsyncClient | None = field(default=None, repr=False)

    @property
    def pace_key(self) -> tuple[str, str]:
        """The gateway's pacing key: Graph throttles per (tenant, app)."""
        return self.tenant_id.lower(), self.client_id.lower()

    def graph(self) -> GraphServiceClient:
        """The app's Graph client (no SDK retries: the gateway's policy is the only one)."""
        if self._graph is None:
            import httpx

            self._http = httpx.AsyncClient(timeout=httpx.Timeout(HTTP_TIMEOUT_SECONDS), http2=False)
            self._graph = graph_client(self.credential, max_retries=0, http=self._http)
        return self._graph

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # closing is best effort; the entry is gone either way
            if self._http is not None:
                await self._http.aclose()
            await self.credential.close()


class _Entries(OrderedDict[Key, AppAccess]):
    async def close(self) -> None:
        while self:
            _, access = self.popitem()
            await access.close()


async def _new_entries() -> _Entries:
    return _Entries()


_loops: PerLoop[_Entries] = PerLoop(_new_entries)


def _key(tenant_id: str, client_id: str, material: str | bytes) -> Key:
    raw = material.encode() if isinstance(material, str) else material
    return tenant_id.lower(), client_id.lower(), hashlib.sha256(raw).hexdigest()


async def for_secret(tenant_id: str, client_id: str, secret: str) -> AppAccess:
    """The cached access of an app signing in with a client secret, made on first use."""
    return await for_credential(
        tenant_id, client_id, secret, lambda: client_secret_credential(tenant_id, client_id, secret)
    )


async def for_credential(
    tenant_id: str, client_id: str, material: str | bytes, build: Callable[[], AsyncTokenCredential]
) -> AppAccess:
    """The cached access for any credential: `material` (secret, PEM, refresh token...) keys it."""
    entries = await _loops.get()
    key = _key(tenant_id, client_id, material)
    found = entries.get(key)
    if found is not None:
        entries.move_to_end(key)
        return found
    access = entries[key] = AppAccess(tenant_id, client_id, build())
    while len(entries) > MAX_ENTRIES:
        _, old = entries.popitem(last=False)
        await old.close()
    return access


async def drop(tenant_id: str, client_id: str, material: str | bytes) -> None:
    """Forget (and close) the access made from this credential."""
    old = (await _loops.get()).pop(_key(tenant_id, client_id, material), None)
    if old is not None:
        await old.close()
