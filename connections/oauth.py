"""OAuth 2.0 authorization code + PKCE (S256) for every Azure connection kind, through ONE callback.

`start_authorization` records a pending request (kind, its parameters, the caller) under the hash
of a random `state`, keeps the PKCE verifier in the secret store, and returns Entra's authorize
URL. The callback (`complete_authorization`) claims the state with an ETag write (single use, 10
minutes), exchanges the code with the kind's operator app, and hands the tokens to the kind's
registered completion, which validates them and creates the connection.

Table `OAuthStates`: PartitionKey = "state", RowKey = SHA-256 of the state (hex). Properties: pending
(JSON: kind, params with the tenant, caller, redirectUri; no secrets), createdAt, expiresAt, consumedAt,
verifierRef (secret store name). The state value itself is never stored.

Delegated access afterwards goes through `RefreshTokenCredential`, which redeems the stored
refresh token and stores the new one whenever Entra rotates it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from pydantic import BaseModel

from connections import oauth_state, store
from connections.fields import GUID
from connections.oauth_state import STATE_TTL as STATE_TTL
from connections.oauth_state import PendingAuthorization as PendingAuthorization
from connections.store import ConnectionRecord
from core import audit, azure_gateway
from core.auth import Caller, unverified_claims
from core.azure_failure import AzureFailure
from core.azure_problems import aadsts_code
from core.errors import BadRequest, FieldError, Problem, Unprocessable
from core.secret_store import SecretMissing, secret_store
from core.settings import get_settings

if TYPE_CHECKING:
    pass

CALLBACK_PATH = "/organization/app-connections/azure/oauth/callback"
# Refresh a delegated access token this long before it expires.
REFRESH_MARGIN_SECONDS = 300


@dataclass(frozen=True)
class OperatorApp:
    """The operator's app registration that a kind's OAuth flow signs users in to."""

    client_id: str
    client_secret: str


@dataclass(frozen=True)
class TokenSet:
    """What the token endpoint returned (values are secrets: never log, store in a table, or return)."""

    access_token: str
    refresh_token: str | None
    expires_on: int
    scope: str
    claims: dict[str, Any]


@dataclass(frozen=True)
class OAuthKind:
    """How one connection kind uses the shared OAuth machinery."""

    kind: str
    scope: Callable[[], str]  # the resource's .default scope
    complete: Callable[[PendingAuthorization, TokenSet], Awaitable[ConnectionRecord]]  # validate, create


_KINDS: dict[str, OAuthKind] = {}


def register(kind: OAuthKind) -> None:
    """Plug a connection kind into the one callback."""
    _KINDS[kind.kind] = kind


def kind_of(name: str) -> OAuthKind:
    return _KINDS[name]


def operator_app(kind: OAuthKind) -> OperatorApp:
    """The kind's operator app from its settings (INF_APP_CONNECTION_<KIND>_CLIENT_ID and _CLIENT_SECRET),
    or a 4xx naming the missing variable."""
    settings = get_settings()
    setting = f"INF_APP_CONNECTION_{kind.kind.upper().replace('-', '_')}"
    id_setting, secret_setting = f"{setting}_CLIENT_ID", f"{setting}_CLIENT_SECRET"
    client_id, secret = getattr(settings, id_setting.lower()), getattr(settings, secret_setting.lower())
    missing = [
        name
        for name, value in ((id_setting, client_id), (secret_setting, secret))
        if not value or (hasattr(value, "get_secret_value") and not value.get_secret_value())
    ]
    if missing:
        raise Unprocessable(
            f"OAuth is not configured on this broker: set the app setting(s) {', '.join(missing)} "
            "to the operator app registration's client ID and secret.",
            [FieldError(name, "is not set") for name in missing],
            code="oauth-not-configured",
        )
    return OperatorApp(str(client_id), secret.get_secret_value())


def redirect_uri() -> str:
    return f"{get_settings().site_url}{CALLBACK_PATH}"


def _authority(tenant: str) -> str:
    # `tenant` is a validated GUID or domain name (connections.fields), safe in a URL path.
    return f"{get_settings().azure_authority_host}/{tenant}/oauth2/v2.0"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier (43-128 unreserved chars) and its S256 challenge."""
    verifier = _b64url(secrets.token_bytes(48))
    return verifier, _b64url(hashlib.sha256(verifier.encode()).digest())


def _full_scope(kind: OAuthKind) -> str:
    return f"{kind.scope()} offline_access openid profile"


async def start_connection(kind_name: str, body: BaseModel, caller: Caller) -> str:
    """Start the sign-in that creates a connection: its name is checked now (and claimed at the
    callback); the body's other fields wait with the pending request (`params`) until then."""
    params = body.model_dump(by_alias=True)
    tenant = str(params.pop("tenantId"))
    await store.ensure_name_free(kind_name, params["name"])
    return await start_authorization(kind_name, tenant, params, caller)


async def start_authorization(kind_name: str, tenant: str, params: dict[str, Any], caller: Caller) -> str:
    """Record a pending request and return the authorize URL the user opens in a browser."""
    kind = _KINDS[kind_name]
    app = operator_app(kind)
    state = secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair()
    pending = PendingAuthorization(kind=kind.kind, params=params, caller=caller, redirect_uri=redirect_uri())
    await oauth_state.record(state, tenant, pending, verifier)
    query = {
        "client_id": app.client_id,
        "response_type": "code",
        "redirect_uri": redirect_uri(),
        "response_mode": "query",
        "scope": _full_scope(kind),
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "prompt": "select_account",
    }
    return f"{_authority(tenant)}/authorize?{urlencode(query)}"


async def complete_authorization(
    state: str, code: str | None, error: str | None, error_description: str | None
) -> ConnectionRecord:
    """The callback's work: claim the state, exchange the code, let the kind create its connection."""
    row, pending = await oauth_state.claim(state)
    kind = _KINDS[pending.kind]
    resource = f"{pending.kind}-connection"
    subject = str(pending.params.get("name", ""))
    try:
        if error:
            raise _callback_error(error, error_description)
        if not code or len(code) > 4096:
            raise BadRequest(
                "the callback has no authorization code",
                [FieldError("code", "is required")],
                code="oauth-no-code",
            )
        try:
            verifier = await secret_store().get(row.verifier_ref)
        except SecretMissing:
            raise oauth_state.state_problem(
                "the PKCE verifier of this authorization is gone; start again", "oauth-state-unknown"
            ) from None
        tokens = await exchange_code(
            kind, str(pending.params["tenantId"]), code, verifier, pending.redirect_uri
        )
        created = await kind.complete(pending, tokens)
    except Problem as problem:
        step = " ".join(str(problem.extra.get(k, "")) for k in ("step", "azureCode")).strip()
        await audit.record(
            pending.caller,
            "connection.create",
            resource,
            subject,
            "failure",
            detail=f"oauth {step}: {problem.detail}",
        )
        raise
    finally:
        await oauth_state.drop_verifier(row)
    return created


def _callback_error(error: str, description: str | None) -> Problem:
    """Entra sent the user back with an error instead of a code."""
    safe = "".join(ch for ch in error if ch.isalnum() or ch in "_-")[:64]
    if safe == "access_denied":
        message = "the user (or an admin policy) declined consent, so no connection was created"
    elif safe == "consent_required" or safe == "interaction_required":
        message = "an administrator must consent to the operator app in this tenant first"
    else:
        message = "Entra ID refused the authorization"
    extra: dict[str, Any] = {"step": "authorization", "azureError": safe}
    number = aadsts_code((description or "")[:2000])
    if number:
        extra["azureCode"] = f"AADSTS{number}"
    return BadRequest(
        f"Authorization failed ({safe}): {message}.",
        [FieldError("error", message)],
        extra=extra,
        code="oauth-access-denied" if safe == "access_denied" else "oauth-error",
    )


async def _token_request(
    kind: OAuthKind, tenant: str, grant: dict[str, str], *, step: str, secrets: list[str], default_field: str
) -> TokenSet:
    """Redeem `grant` with the kind's operator app; `secrets` (and the app's) are kept out of errors."""
    import httpx

    from core.azure_clients import http_client

    app = operator_app(kind)
    form = {
        "client_id": app.client_id,
        "client_secret": app.client_secret,
        **grant,
        "scope": _full_scope(kind),
    }
    redact = [app.client_secret, *secrets]
    client = await http_client()
    url = f"{_authority(tenant)}/token"

    async def send() -> dict[str, Any]:
        response = await client.post(url, data=form, headers={"Accept": "application/json"})
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
            # the gateway classifies Entra's answer (AADSTS code, Retry-After, field at fault)
            raise httpx.HTTPStatusError("no token", request=response.request, response=response)
        return body

    try:
        # A code is redeemed once: a lost answer or a 5xx is not sent again (a 429 is: Entra did
        # not process it). A refresh may be repeated: a refresh token stays valid after redemption.
        body = await azure_gateway.call(
            step, send, kind="token", idempotent=form.get("grant_type") != "authorization_code"
        )
    except AzureFailure as failure:
        raise failure.validation_problem(
            field_prefix="", redact=redact, default_field=default_field
        ) from None
    access = str(body["access_token"])
    return TokenSet(
        access_token=access,
        refresh_token=str(body["refresh_token"]) if body.get("refresh_token") else None,
        expires_on=int(time.time()) + int(body.get("expires_in", 3599)),
        scope=str(body.get("scope", "")),
        claims=unverified_claims(access),
    )


async def exchange_code(kind: OAuthKind, tenant: str, code: str, verifier: str, redirect: str) -> TokenSet:
    """Redeem the authorization code (with the PKCE verifier) at the operator app."""
    grant = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect,
        "code_verifier": verifier,
    }
    return await _token_request(
        kind, tenant, grant, step="code-exchange", secrets=[code, verifier], default_field="code"
    )


async def refresh_tokens(kind: OAuthKind, tenant: str, refresh_token: str) -> TokenSet:
    """Redeem a refresh token for a new access token (and, usually, a new refresh token)."""
    grant = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return await _token_request(
        kind, tenant, grant, step="token-refresh", secrets=[refresh_token], default_field="refreshToken"
    )


def check_grant(tokens: TokenSet, tenant: str) -> str:
    """The grant is usable for a connection: it has a refresh token and is for the requested tenant.

    Returns the token's tenant id (the GUID, also when the request named a domain).
    """
    if not tokens.refresh_token:
        raise Unprocessable(
            "Entra ID returned no refresh token, so the connection could not keep access; "
            "the operator app must be allowed offline_access",
            [FieldError("scope", "offline_access was not granted")],
            code="azure-validation-failed",
            extra={"step": "code-exchange"},
        )
    token_tenant = str(tokens.claims.get("tid", ""))
    if GUID.match(tenant) and token_tenant and token_tenant.lower() != tenant.lower():
        raise Unprocessable(
            "the user signed in to a different tenant than the one the authorization was started for",
            [
                FieldError(
                    "tenantId",
                    f"the sign-in was for tenant {token_tenant}; start again with the right tenant",
                )
            ],
            code="azure-validation-failed",
            extra={"step": "code-exchange"},
        )
    return token_tenant
