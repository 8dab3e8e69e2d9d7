"""Caller authentication against the stand-in tenant: Entra ID tokens, roles, and local mode."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest

from tests.harness import ServerHandle, assert_problem

PROTECTED = "/api/v1/audit-logs"


def call(broker: ServerHandle, token: str | None, path: str = PROTECTED) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(broker.url + path, headers=headers, timeout=30)


def test_missing_token_is_401_with_a_challenge(broker: ServerHandle) -> None:
    response = call(broker, None)
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in body["detail"]


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "token abc"])
def test_other_schemes_are_401(broker: ServerHandle, header: str) -> None:
    assert_problem(httpx.get(broker.url + PROTECTED, headers={"Authorization": header}), 401)


def test_a_valid_admin_token_is_accepted(broker: ServerHandle, token: Callable[..., str]) -> None:
    assert call(broker, token()).status_code == 200


def test_garbage_is_401(broker: ServerHandle) -> None:
    assert "not a JWT" in assert_problem(call(broker, "not-a-jwt"), 401)["detail"]


def test_expired_token_is_401(broker: ServerHandle, token: Callable[..., str]) -> None:
    assert "expired" in assert_problem(call(broker, token(expires_in=-3600)), 401)["detail"]


def test_wrong_audience_is_401(broker: ServerHandle, token: Callable[..., str]) -> None:
    assert "audience" in assert_problem(call(broker, token(audience="api://someone-else")), 401)["detail"]


def test_wrong_issuer_is_401(broker: ServerHandle, token: Callable[..., str]) -> None:
    forged = token(issuer="https://login.example.net/other-tenant/v2.0")
    assert "issued by another" in assert_problem(call(broker, forged), 401)["detail"]


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_401(broker: ServerHandle, token: Callable[..., str]) -> None:
    good = token()
    header = jwt.get_unverified_header(good)
    claims = jwt.decode(good, options={"verify_signature": False})
    unsigned = f"{_b64({**header, 'alg': 'none'})}.{_b64(claims)}."
    assert "RS256" in assert_problem(call(broker, unsigned), 401)["detail"]


def test_hs256_signed_with_the_public_key_is_401(broker: ServerHandle, token: Callable[..., str]) -> None:
    good = token()
    header = jwt.get_unverified_header(good)
    claims = jwt.decode(good, options={"verify_signature": False})
    jwks = httpx.get(_jwks_uri(broker), timeout=30).json()
    public = json.dumps(next(k for k in jwks["keys"] if k["kid"] == header["kid"]))
    forged = _hs256(claims, header["kid"], public.encode())
    assert "RS256" in assert_problem(call(broker, forged), 401)["detail"]


def _hs256(claims: dict[str, Any], kid: str, secret: bytes) -> str:
    import hashlib
    import hmac

    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{_b64(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def _jwks_uri(broker: ServerHandle) -> str:
    authority = os.environ["AZURE_AUTHORITY_HOST"]
    tenant = os.environ["AUTH_TENANT_ID"]
    discovery = httpx.get(f"{authority}/{tenant}/v2.0/.well-known/openid-configuration", timeout=30).json()
    return str(discovery["jwks_uri"])


def test_key_rollover_refreshes_the_keys_once(
    broker: ServerHandle, token: Callable[..., str], fake_azure: Any
) -> None:
    from core import auth

    assert call(broker, token()).status_code == 200  # keys cached
    fake_azure.rotate_signing_key()
    auth._cache.fetched_at -= auth.JWKS_MIN_REFRESH_SECONDS + 1  # the last refresh was a while ago
    before = fake_azure.request_count("token", path_pattern="keys")
    fresh = token()
    assert call(broker, fresh).status_code == 200
    assert call(broker, fresh).status_code == 200
    assert fake_azure.request_count("token", path_pattern="keys") == before + 1


def test_unknown_kid_does_not_refetch_on_every_request(
    broker: ServerHandle, token: Callable[..., str], fake_azure: Any
) -> None:
    assert call(broker, token()).status_code == 200
    good = token()
    header = jwt.get_unverified_header(good)
    claims = jwt.decode(good, options={"verify_signature": False})
    bogus = f"{_b64({**header, 'kid': 'no-such-key'})}.{_b64(claims)}.{good.rsplit('.', 1)[1]}"
    before = fake_azure.request_count("token", path_pattern="keys")
    for _ in range(5):
        assert_problem(call(broker, bogus), 401)
    assert fake_azure.request_count("token", path_pattern="keys") <= before + 1


@pytest.mark.parametrize(
    ("role", "status"),
    [("Broker.Admin", 200), ("Broker.Operator", 403), ("Broker.Reader", 403), ("Some.Other", 403)],
)
def test_audit_log_needs_admin(
    broker: ServerHandle, token: Callable[..., str], role: str, status: int
) -> None:
    response = call(broker, token([role]))
    assert response.status_code == status
    if status == 403:
        assert "Broker.Admin" in assert_problem(response, 403)["detail"]


@pytest.fixture
def local_mode(broker: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from core.settings import get_settings

    monkeypatch.setenv("AUTH_MODE", "local")
    monkeypatch.setenv("LOCAL_API_TOKEN", "local-test-token-value-at-least-32-chars")
    get_settings.cache_clear()
    yield "local-test-token-value-at-least-32-chars"
    monkeypatch.undo()
    get_settings.cache_clear()


def test_local_mode_accepts_only_the_static_token_as_admin(broker: ServerHandle, local_mode: str) -> None:
    assert call(broker, local_mode).status_code == 200
    assert "LOCAL_API_TOKEN" in assert_problem(call(broker, local_mode + "x"), 401)["detail"]
