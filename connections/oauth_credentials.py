"""Token credentials of OAuth (delegated) connections: a token we hold, and a stored refresh token.

Both follow azure-core's AsyncTokenCredential protocol, so Graph clients and the gateway's
credential cache take them like any app credential.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Self

from connections.kinds import CacheKey
from connections.oauth import REFRESH_MARGIN_SECONDS, OAuthKind, kind_of, refresh_tokens
from connections.store import ConnectionRecord
from core.secret_store import secret_store

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken


class _SessionlessCredential:
    """The AsyncTokenCredential protocol's lifecycle for a credential that holds no HTTP session."""

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


class StaticTokenCredential(_SessionlessCredential):
    """An AsyncTokenCredential over one access token (validating a fresh OAuth grant)."""

    def __init__(self, token: str, expires_on: int) -> None:
        self._token = token
        self._expires_on = expires_on

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, self._expires_on)


class RefreshTokenCredential(_SessionlessCredential):
    """An AsyncTokenCredential for a delegated connection: redeems its stored refresh token.

    The access token is cached until shortly before it expires; when Entra returns a new
    refresh token, it replaces the stored one (refresh tokens rotate).
    """

    def __init__(self, kind: OAuthKind, tenant: str, refresh_token_ref: str) -> None:
        self._kind = kind
        self._tenant = tenant
        self._ref = refresh_token_ref
        self._token: tuple[str, int] | None = None
        self._lock = asyncio.Lock()  # one refresh at a time (Entra rotates the refresh token)

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        from azure.core.credentials import AccessToken

        async with self._lock:
            if self._token is None or self._token[1] - REFRESH_MARGIN_SECONDS < time.time():
                store = secret_store()
                current = await store.get(self._ref)
                tokens = await refresh_tokens(self._kind, self._tenant, current)
                if tokens.refresh_token and tokens.refresh_token != current:
                    await store.set(self._ref, tokens.refresh_token)
                self._token = (tokens.access_token, tokens.expires_on)
            return AccessToken(*self._token)


def refresh_token_key(record: ConnectionRecord) -> CacheKey:
    """An OAuth connection's cache key: the name of its stored refresh token, which redeems it."""
    ref = record.secret_refs["refreshToken"]
    return ref, lambda: RefreshTokenCredential(kind_of(record.kind), record.tenant_id or "", ref)
