"""Azure App Configuration key-values, one store per path: `https://127.0.0.1:P/stores/NAME`.

Driven by the real `AzureAppConfigurationClient` with an Entra token credential. On a loopback
endpoint the SDK cannot infer a sovereign audience and asks for `https://appconfig.azure.com/.default`
(the public cloud's); `https://azconfig.io` and the store endpoint itself are accepted too, as
the service accepts them. Access is RBAC per store: App Configuration Data Owner reads and
writes, Data Reader reads; anyone else gets 403. Errors are problem+json
(`https://azconfig.io/errors/...`); 401 carries `WWW-Authenticate: HMAC-SHA256, Bearer ...`.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .entra import InvalidToken, validate_access_token
from .faults import appconfig_problem
from .state import AppConfigStore, FakeState, KeyValue, utcnow

PREFIX = "/stores"
router = APIRouter(prefix=PREFIX)

KV_TYPE = "application/vnd.microsoft.appconfig.kv+json; charset=utf-8"
KV_SET_TYPE = "application/vnd.microsoft.appconfig.kvset+json; charset=utf-8"
PROBLEM_TYPE = "application/problem+json; charset=utf-8"
KEY_VAULT_REFERENCE = "application/vnd.microsoft.appconfig.keyvaultref+json;charset=utf-8"
AUDIENCES = ("https://appconfig.azure.com", "https://azconfig.io")
NULL_LABEL = "\0"


class ConfigError(Exception):
    def __init__(
        self, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body
        self.headers = headers or {}


def _answer(status: int, body: Any, content_type: str, headers: dict[str, str] | None = None) -> Response:
    payload = b"" if body is None else json.dumps(body).encode()
    return Response(
        payload, status_code=status, media_type=content_type if body is not None else None, headers=headers
    )


def _error(exc: ConfigError) -> Response:
    return _answer(exc.status, exc.body, PROBLEM_TYPE, exc.headers)


def _invalid(name: str, detail: str) -> ConfigError:
    return ConfigError(
        400,
        {
            **appconfig_problem("invalid-argument", f"Invalid request parameter '{name}'", 400, name),
            "detail": detail,
        },
    )


def _challenge(description: str) -> str:
    return f'HMAC-SHA256, Bearer error="invalid_token", error_description="{description}"'


def _store(request: Request, name: str, action: str) -> tuple[FakeState, AppConfigStore]:
    """The store, after the token and RBAC checks for `action` ("read" or "write")."""
    state: FakeState = request.app.state.azure
    with state.lock:
        store = state.app_config_stores.get(name.lower())
    if store is None:
        raise ConfigError(
            404, appconfig_problem("not-found", f"No App Configuration store named {name}", 404)
        )
    if not request.query_params.get("api-version"):
        raise _invalid("api-version", "The 'api-version' parameter is required.")
    endpoint = f"{state.base_url}{PREFIX}/{store.name}"
    auth = request.headers.get("authorization")
    if not auth or not auth.lower().startswith("bearer "):
        raise ConfigError(401, None, {"WWW-Authenticate": "HMAC-SHA256, Bearer"})
    try:
        claims = validate_access_token(state, auth, {*AUDIENCES, endpoint})
    except InvalidToken as exc:
        description = (
            "The access token has expired"
            if exc.kind == "expired"
            else "Authorization token failed validation"
        )
        raise ConfigError(
            401,
            None,
            {"WWW-Authenticate": _challenge(description)},
        ) from exc
    if claims.get("tid") != store.tenant_id:
        raise ConfigError(
            401,
            None,
            {"WWW-Authenticate": _challenge("Invalid issuer")},
        )
    with state.lock:
        allowed = store.allows(str(claims.get("oid")), action)
    if not allowed:
        raise ConfigError(403, None)
    return state, store


def _label(request: Request) -> str | None:
    label = request.query_params.get("label")
    return None if label in (None, "", NULL_LABEL) else label


def _check_key(key: str) -> None:
    if not key or key in (".", "..") or "%" in key:
        raise _invalid("key", f"key: '{key}' is not a valid key name")


def to_json(kv: KeyValue) -> dict[str, Any]:
    return {
        "etag": kv.etag,
        "key": kv.key,
        "label": kv.label,
        "content_type": kv.content_type,
        "value": kv.value,
        "tags": dict(kv.tags),
        "locked": kv.locked,
        "last_modified": kv.last_modified.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
    }


def _kv_headers(kv: KeyValue) -> dict[str, str]:
    return {"ETag": f'"{kv.etag}"', "Last-Modified": kv.last_modified.strftime("%a, %d %b %Y %H:%M:%S GMT")}


def _etag_matches(header: str | None, kv: KeyValue | None) -> bool | None:
    """None if no header; else whether the condition's etag (or `*`) matches the current value."""
    if header is None:
        return None
    wanted = {e.strip().strip('"') for e in header.split(",")}
    if "*" in wanted:
        return kv is not None
    return kv is not None and kv.etag in wanted


def new_etag() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(21)).decode().rstrip("=")


def put_key_value(
    store: AppConfigStore,
    key: str,
    label: str | None,
    value: str | None,
    content_type: str | None,
    tags: dict[str, str] | None = None,
) -> KeyValue:
    """Set a key-value (new etag); the caller holds the state lock."""
    kv = KeyValue(key, label, value, content_type, dict(tags or {}), new_etag(), utcnow())
    store.values[(key, label)] = kv
    return kv


@router.get("/{store_name}/kv/{key:path}")
async def get_key_value(store_name: str, key: str, request: Request) -> Response:
    try:
        state, store = _store(request, store_name, "read")
        with state.lock:
            kv = store.values.get((key, _label(request)))
            if kv is None:
                raise ConfigError(404, None)
            if _etag_matches(request.headers.get("if-none-match"), kv):
                return Response(status_code=304, headers=_kv_headers(kv))
            if _etag_matches(request.headers.get("if-match"), kv) is False:
                raise ConfigError(412, None)
            return _answer(200, to_json(kv), KV_TYPE, _kv_headers(kv))
    except ConfigError as exc:
        return _error(exc)


@router.put("/{store_name}/kv/{key:path}")
async def set_key_value(store_name: str, key: str, request: Request) -> Response:
    try:
        state, store = _store(request, store_name, "write")
        _check_key(key)
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise _invalid("body", "The request body is not valid JSON.") from exc
        if not isinstance(body, dict):
            raise _invalid("body", "The request body must be a JSON object.")
        label = _label(request)
        with state.lock:
            current = store.values.get((key, label))
            if _etag_matches(request.headers.get("if-match"), current) is False:
                raise ConfigError(412, None)
            if _etag_matches(request.headers.get("if-none-match"), current):
                raise ConfigError(412, None)
            if current is not None and current.locked:
                raise ConfigError(
                    409, appconfig_problem("key-locked", "Modifing key-value is not allowed", 409, key)
                )
            tags = body.get("tags") if isinstance(body.get("tags"), dict) else {}
            kv = put_key_value(store, key, label, body.get("value"), body.get("content_type"), tags)
            return _answer(200, to_json(kv), KV_TYPE, _kv_headers(kv))
    except ConfigError as exc:
        return _error(exc)


@router.delete("/{store_name}/kv/{key:path}")
async def delete_key_value(store_name: str, key: str, request: Request) -> Response:
    try:
        state, store = _store(request, store_name, "write")
        label = _label(request)
        with state.lock:
            current = store.values.get((key, label))
            if _etag_matches(request.headers.get("if-match"), current) is False:
                raise ConfigError(412, None)
            if current is None:
                return Response(status_code=204)
            if current.locked:
                raise ConfigError(
                    409, appconfig_problem("key-locked", "Deleting key-value is not allowed", 409, key)
                )
            del store.values[(key, label)]
            return _answer(200, to_json(current), KV_TYPE, _kv_headers(current))
    except ConfigError as exc:
        return _error(exc)


def _filter_match(value: str | None, spec: str | None) -> bool:
    """`*` = any, `abc*` = prefix, `\\0` = null label, commas = any of."""
    if spec is None or spec == "*":
        return True
    for part in spec.split(","):
        if part == NULL_LABEL and value is None:
            return True
        if part.endswith("*") and value is not None and value.startswith(part[:-1]):
            return True
        if value is not None and part == value:
            return True
    return False


@router.get("/{store_name}/kv")
async def list_key_values(store_name: str, request: Request) -> Response:
    try:
        state, store = _store(request, store_name, "read")
        q = request.query_params
        with state.lock:
            ordered = sorted(store.values.values(), key=lambda kv: (kv.key, kv.label or ""))
            items = [
                to_json(kv)
                for kv in ordered
                if _filter_match(kv.key, q.get("key")) and _filter_match(kv.label, q.get("label"))
            ]
        return _answer(200, {"items": items}, KV_SET_TYPE)
    except ConfigError as exc:
        return _error(exc)
