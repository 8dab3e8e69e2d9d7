"""Caller authentication: Entra ID access tokens for the broker's API app, or a local static token.

Entra tokens are verified against the tenant's signing keys, found by OIDC discovery under
AZURE_AUTHORITY_HOST and cached for an hour; an unknown `kid` (key rollover) refreshes them, and
no refresh is tried more than once per `JWKS_MIN_REFRESH_SECONDS`. A refresh that fails keeps
the cached keys (stale while error): an Entra blip must not turn every request into a 503.
Only RS256 is accepted, whatever the token's header says, and only access tokens: an ID token
of the same app registration (same `aud`) carries no `azp` and no `scp`/`roles`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fastapi import Request

from core.errors import Forbidden, Unauthorized, Unavailable
from core.settings import get_settings

JWKS_TTL_SECONDS = 3600
JWKS_MIN_REFRESH_SECONDS = 30
CLOCK_SKEW_SECONDS = 60
log = logging.getLogger(__name__)


class Role(StrEnum):
    ADMIN = "Broker.Admin"
    OPERATOR = "Broker.Operator"
    READER = "Broker.Reader"


# What each role may do, as the set of roles that satisfy a requirement.
_SATISFIES: dict[Role, set[Role]] = {
    Role.READER: {Role.READER, Role.OPERATOR, Role.ADMIN},
    Role.OPERATOR: {Role.OPERATOR, Role.ADMIN},
    Role.ADMIN: {Role.ADMIN},
}


@dataclass(frozen=True)
class Caller:
    """Who is calling: a stable id for audit, a display name, and app roles."""

    id: str
    name: str
    roles: frozenset[Role] = field(default_factory=frozenset)

    def has(self, role: Role) -> bool:
        return bool(self.roles & _SATISFIES[role])


def _challenge(detail: str) -> Unauthorized:
    return Unauthorized(detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


@dataclass
class _Keys:
    issuer: str = ""
    keys: dict[str, Any] = field(default_factory=dict)
    fetched_at: float = 0.0  # last successful refresh
    attempted_at: float = -JWKS_MIN_REFRESH_SECONDS  # last refresh tried, successful or not
    lock: asyncio.Lock | None = None


_cache = _Keys()


async def _fetch_keys() -> None:
    import jwt

    from core.azure_clients import http_client

    settings = get_settings()
    client = await http_client()
    base = f"{settings.azure_authority_host}/{settings.auth_tenant_id}/v2.0/.well-known/openid-configuration"
    try:
        discovery = (await client.get(base)).raise_for_status().json()
        jwks = (await client.get(discovery["jwks_uri"])).raise_for_status().json()
        issuer = str(discovery["issuer"])
        keys = {
            jwk["kid"]: jwt.PyJWK(jwk, algorithm="RS256").key
            for jwk in jwks.get("keys", [])
            if jwk.get("kty") == "RSA" and jwk.get("kid")
        }
    except Exception as error:
        raise Unavailable(
            f"cannot load the token signing keys from Entra ID ({type(error).__name__})"
        ) from None
    _cache.issuer = issuer
    _cache.keys = keys
    _cache.fetched_at = time.monotonic()


async def _signing_key(kid: str) -> Any:
    if _cache.lock is None:
        _cache.lock = asyncio.Lock()
    async with _cache.lock:
        now = time.monotonic()
        stale = not _cache.keys or now - _cache.fetched_at > JWKS_TTL_SECONDS
        rollover = kid not in _cache.keys
        may_try = now - _cache.attempted_at > JWKS_MIN_REFRESH_SECONDS
        if (stale or rollover) and may_try:
            _cache.attempted_at = now
            try:
                await _fetch_keys()
            except Unavailable:
                if not _cache.keys:
                    raise
                log.warning(
                    "signing key refresh failed; using the keys cached %.0fs ago", now - _cache.fetched_at
                )
        elif not _cache.keys:
            wait = int(JWKS_MIN_REFRESH_SECONDS - (now - _cache.attempted_at)) + 1
            raise Unavailable(
                "cannot load the token signing keys from Entra ID; try again shortly",
                headers={"Retry-After": str(wait)},
            )
    if kid not in _cache.keys:
        raise _challenge("the token is signed by a key the tenant does not publish")
    return _cache.keys[kid]


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a token the broker itself just received from Entra over TLS ({} if it is not a
    JWT): read for facts such as `tid` or `roles`, never to trust a caller (see `_entra_caller`)."""
    import jwt

    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}


def _access_token_only(claims: dict[str, Any]) -> None:
    """Refuse ID tokens: Entra access tokens name the client (`azp`, v1 `appid`) and carry
    delegated scopes (`scp`) or app roles (`roles`); an ID token carries neither client claim."""
    if not (claims.get("azp") or claims.get("appid")) or not (claims.get("scp") or claims.get("roles")):
        raise _challenge("this is not an access token (an ID token?); request an access token for this API")


async def _entra_caller(token: str) -> Caller:
    import jwt

    settings = get_settings()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _challenge("the bearer token is not a JWT") from None
    if header.get("alg") != "RS256":
        raise _challenge("the token must be signed with RS256")
    key = await _signing_key(str(header.get("kid", "")))
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=settings.auth_audience,
            issuer=_cache.issuer,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": ["exp", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise _challenge("the token has expired; get a new one") from None
    except jwt.InvalidAudienceError:
        raise _challenge(
            f"the token is not for this API (audience must be {settings.auth_audience})"
        ) from None
    except jwt.InvalidIssuerError:
        raise _challenge("the token was issued by another tenant or authority") from None
    except jwt.PyJWTError:
        raise _challenge("the token signature or claims are invalid") from None
    _access_token_only(claims)
    roles = frozenset(Role(r) for r in claims.get("roles", []) if r in Role._value2member_map_)
    subject = str(claims.get("oid") or claims.get("sub"))
    name = str(claims.get("preferred_username") or claims.get("name") or claims.get("azp") or subject)
    return Caller(id=subject, name=name, roles=roles)


def _local_caller(token: str) -> Caller:
    expected = get_settings().local_api_token
    if expected is None or not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise _challenge("the bearer token is not the LOCAL_API_TOKEN")
    return Caller(id="local-admin", name="local admin", roles=frozenset({Role.ADMIN}))


async def authenticate(request: Request) -> Caller:
    """The caller of this request, or 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "send 'Authorization: Bearer <token>' (an Entra ID access token for the broker's API)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = token.strip()
    if get_settings().auth_mode == "local":
        caller = _local_caller(token)
    else:
        caller = await _entra_caller(token)
    request.state.caller = caller
    return caller


def require(role: Role) -> Any:
    """A FastAPI dependency: the caller, who must hold `role` (or a stronger one)."""

    async def dependency(request: Request) -> Caller:
        caller = await authenticate(request)
        if not caller.has(role):
            raise Forbidden(
                f"this needs the app role {role.value}; the caller has {sorted(caller.roles) or 'none'}"
            )
        return caller

    return dependency
