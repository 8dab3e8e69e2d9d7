"""Azure Key Vault secrets REST API (soft-delete enabled, 90 days recoverable).

Two ways in, one set of routes (internally mounted under `/__vault`):
- the broker's vault, at the root of its own port (`key_vault_url`);
- named vaults by path on the main port, `https://127.0.0.1:P/vaults/NAME`, each with its own
  tenant, RBAC role assignments and soft-deleted secrets. `SecretClient` keeps the path for its
  requests, but parses the ids in answers as `{scheme}://{host}/secrets/{name}/{version}` and
  refuses any other path; so a named vault's ids are written at the host root
  (`https://127.0.0.1:P/secrets/NAME/VERSION`): name and version parse right, the parsed
  `vault_url` is the host, not the vault. Paging links keep the vault path.
Unauthenticated requests get the 401 challenge real vaults send, naming the vault's tenant.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .entra import InvalidToken, validate_access_token
from .faults import keyvault_error
from .state import KEYVAULT_APP_ID, KEYVAULT_RESOURCE, FakeState, SecretVersion, Vault, VaultSecret

PREFIX = "/__vault"
VAULT_SCOPE_KEY = "azure_fake.vault"  # the request scope's named vault (absent: the broker vault)
router = APIRouter(prefix=PREFIX)

# The RBAC data action each kind of call needs (shown in 403 answers).
ACTIONS = {
    "list": "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
    "read": "Microsoft.KeyVault/vaults/secrets/getSecret/action",
    "write": "Microsoft.KeyVault/vaults/secrets/setSecret/action",
    "purge": "Microsoft.KeyVault/vaults/secrets/purge/action",
}

NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
API_VERSION = re.compile(r"^(7\.\d+(-preview(\.\d+)?)?|\d{4}-\d{2}-\d{2}(-preview)?)$")
RECOVERABLE_DAYS = 90
MAX_VALUE_BYTES = 25 * 1024


class VaultError(Exception):
    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner


def _not_found(name: str) -> VaultError:
    return VaultError(
        404,
        "SecretNotFound",
        f"A secret with (name/id) {name} was not found in this key vault. If you recently deleted this "
        "secret you may be able to recover it using the correct recovery command. For help resolving this "
        "issue, please see https://go.microsoft.com/fwlink/?linkid=2125182",
    )


def _deleted_not_found(name: str) -> VaultError:
    return VaultError(404, "SecretNotFound", f"Deleted Secret not found: {name}")


def _attributes(version: SecretVersion) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "enabled": version.enabled,
        "created": version.created,
        "updated": version.updated,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": RECOVERABLE_DAYS,
    }
    if version.not_before is not None:
        attrs["nbf"] = version.not_before
    if version.expires is not None:
        attrs["exp"] = version.expires
    return attrs


@dataclass
class VaultCall:
    """One authorized request: the vault and the URLs its answers use."""

    state: FakeState
    vault: Vault
    id_base: str  # where ids point (the host root for named vaults: the SDK's id parser)
    url: str  # the vault URL as the client uses it (paging links)


def _bundle(
    state: VaultCall, secret: VaultSecret, version: SecretVersion, *, value: bool = True
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if value:
        body["value"] = version.value
    if version.content_type is not None:
        body["contentType"] = version.content_type
    body["id"] = f"{state.id_base}/secrets/{secret.name}/{version.version}"
    body["attributes"] = _attributes(version)
    if version.tags:
        body["tags"] = version.tags
    return body


def _deleted_bundle(state: VaultCall, secret: VaultSecret) -> dict[str, Any]:
    return {
        "recoveryId": f"{state.id_base}/deletedsecrets/{secret.name}",
        "deletedDate": secret.deleted_date,
        "scheduledPurgeDate": secret.scheduled_purge_date,
        **_bundle(state, secret, secret.latest, value=False),
    }


def _item(state: VaultCall, secret: VaultSecret, version: SecretVersion | None = None) -> dict[str, Any]:
    v = version or secret.latest
    suffix = f"/{v.version}" if version else ""
    item: dict[str, Any] = {
        "id": f"{state.id_base}/secrets/{secret.name}{suffix}",
        "attributes": _attributes(v),
    }
    if v.content_type is not None:
        item["contentType"] = v.content_type
    if v.tags:
        item["tags"] = v.tags
    return item


def put_secret_version(
    state: FakeState,
    vault: Vault,
    name: str,
    value: str,
    content_type: str | None,
    tags: dict[str, str] | None,
    attributes: dict[str, Any],
) -> SecretVersion:
    """Add a version to a secret (creating it); raises VaultError as the service would."""
    if not NAME.match(name):
        raise VaultError(
            400,
            "BadParameter",
            f"The request URI contains an invalid name: {name}. Secret names may contain only 0-9, a-z, "
            "A-Z and -.",
        )
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise VaultError(400, "BadParameter", "Secret value is too long (max 25 KB).")
    now = int(time.time())
    version = SecretVersion(
        version=uuid.uuid4().hex,
        value=value,
        content_type=content_type,
        tags=tags,
        enabled=bool(attributes.get("enabled", True)),
        not_before=attributes.get("nbf"),
        expires=attributes.get("exp"),
        created=now,
        updated=now,
    )
    key = name.lower()
    with state.lock:
        if key in vault.deleted_secrets:
            raise VaultError(
                409,
                "Conflict",
                f"Secret {name} is currently in a deleted but recoverable state, and its name cannot be "
                "reused; in this state, the secret can only be recovered or purged.",
                "ObjectIsDeletedButRecoverable",
            )
        secret = vault.secrets.get(key)
        if secret is None:
            secret = VaultSecret(name=name)
            vault.secrets[key] = secret
        secret.versions[version.version] = version
    return version


# ------------------------------------------------------------------ plumbing


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json; charset=utf-8")


def _check(request: Request, action: str) -> VaultCall:
    """api-version, bearer token and RBAC checks for `action` (list, read, write, purge)."""
    state: FakeState = request.app.state.azure
    version = request.query_params.get("api-version")
    if not version or not API_VERSION.match(version):
        raise VaultError(
            400, "BadParameter", f"The request URI contains an invalid API version: {version or '(none)'}."
        )
    name = request.scope.get(VAULT_SCOPE_KEY)
    try:
        vault = state.vault(name or "")
    except KeyError as exc:
        raise VaultError(
            404, "VaultNotFound", f"No vault named {name} (in Azure its host name would not resolve)."
        ) from exc
    call = (
        VaultCall(state, vault, state.base_url, f"{state.base_url}/vaults/{vault.name}")
        if vault.name
        else VaultCall(state, vault, state.key_vault_url, state.key_vault_url)
    )
    auth = request.headers.get("authorization")
    tenant = vault.tenant_id or "common"
    challenge = f'Bearer authorization="{state.authority_host}/{tenant}", resource="{KEYVAULT_RESOURCE}"'
    if not auth:
        raise _Unauthorized("AKV10000: Request is missing a Bearer or PoP token.", challenge)
    try:
        claims = validate_access_token(state, auth, {KEYVAULT_RESOURCE, KEYVAULT_APP_ID})
    except InvalidToken as exc:
        message = {
            "audience": "AKV10022: Invalid audience.",
            "issuer": "AKV10032: Invalid issuer.",
            "expired": "AKV10013: Token expired.",
        }.get(exc.kind, f"AKV10000: Request is missing a Bearer or PoP token. {exc.reason}")
        raise _Unauthorized(message, challenge) from exc
    if claims.get("tid") != vault.tenant_id:
        raise _Unauthorized(
            f"AKV10032: Invalid issuer. Expected one of {state.authority_host}/{tenant}/v2.0, found "
            f"{claims.get('iss')}.",
            challenge,
        )
    with state.lock:
        allowed = vault.allows(str(claims.get("oid")), action)
    if not allowed:
        raise VaultError(
            403,
            "Forbidden",
            "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny "
            "assignments or role definitions were changed recently, please observe propagation time.\r\n"
            f"Caller: appid={claims.get('azp')};oid={claims.get('oid')};iss={claims.get('iss')}\r\n"
            f"Action: '{ACTIONS[action]}'\r\nAssignment: (not found)\r\n"
            "DecisionReason: 'DeniedWithNoValidRBAC' \r\n"
            f"Vault: {vault.name or 'broker'};location=loopback\r\n",
            "ForbiddenByRbac",
        )
    return call


class _Unauthorized(VaultError):
    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(401, "Unauthorized", message)
        self.challenge = challenge


def _error(exc: VaultError) -> Response:
    response = JSONResponse(keyvault_error(exc.code, exc.message, exc.inner), status_code=exc.status)
    if isinstance(exc, _Unauthorized):
        response.headers["WWW-Authenticate"] = exc.challenge
    return response


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise VaultError(400, "BadParameter", "The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise VaultError(400, "BadParameter", "The request body must be a JSON object.")
    return body


def _page(request: Request, call: VaultCall, items: list[dict[str, Any]], path: str) -> dict[str, Any]:
    q = request.query_params
    try:
        size = max(1, min(25, int(q.get("maxresults", "25"))))
        skip = int(q.get("$skiptoken", "0"))
    except ValueError as exc:
        raise VaultError(400, "BadParameter", "Invalid maxresults or $skiptoken.") from exc
    page = items[skip : skip + size]
    next_link = None
    if skip + size < len(items):
        query = f"api-version={q.get('api-version')}&$skiptoken={skip + size}&maxresults={size}"
        next_link = f"{call.url}{path}?{query}"
    return {"value": page, "nextLink": next_link}


# ------------------------------------------------------------------ routes


@router.put("/secrets/{name}")
async def set_secret(name: str, request: Request) -> Response:
    try:
        call = _check(request, "write")
        body = await _body(request)
        value = body.get("value")
        if not isinstance(value, str):
            raise VaultError(400, "BadParameter", "Property 'value' is required.")
        attributes = body.get("attributes") or {}
        tags = body.get("tags")
        version = put_secret_version(
            call.state, call.vault, name, value, body.get("contentType"), tags, attributes
        )
        with call.state.lock:
            secret = call.vault.secrets[name.lower()]
            return _json(_bundle(call, secret, version))
    except VaultError as exc:
        return _error(exc)


@router.get("/secrets")
async def list_secrets(request: Request) -> Response:
    try:
        call = _check(request, "list")
        with call.state.lock:
            ordered = sorted(call.vault.secrets.values(), key=lambda s: s.name.lower())
            items = [_item(call, s) for s in ordered]
        return _json(_page(request, call, items, "/secrets"))
    except VaultError as exc:
        return _error(exc)


@router.get("/secrets/{name}/versions")
async def list_versions(name: str, request: Request) -> Response:
    try:
        call = _check(request, "list")
        with call.state.lock:
            secret = call.vault.secrets.get(name.lower())
            if secret is None:
                raise _not_found(name)
            items = [_item(call, secret, v) for v in secret.versions.values()]
        return _json(_page(request, call, items, f"/secrets/{secret.name}/versions"))
    except VaultError as exc:
        return _error(exc)


@router.get("/secrets/{name}")
@router.get("/secrets/{name}/")
@router.get("/secrets/{name}/{version}")
async def get_secret(name: str, request: Request, version: str = "") -> Response:
    try:
        call = _check(request, "read")
        with call.state.lock:
            secret = call.vault.secrets.get(name.lower())
            found = (secret.versions.get(version) if version else secret.latest) if secret else None
            if secret is None or found is None:
                raise _not_found(name)
            if not found.enabled:
                raise VaultError(
                    403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled"
                )
            return _json(_bundle(call, secret, found))
    except VaultError as exc:
        return _error(exc)


@router.patch("/secrets/{name}/{version}")
@router.patch("/secrets/{name}")
async def update_secret(name: str, request: Request, version: str = "") -> Response:
    try:
        call = _check(request, "write")
        body = await _body(request)
        with call.state.lock:
            secret = call.vault.secrets.get(name.lower())
            found = (secret.versions.get(version) if version else secret.latest) if secret else None
            if secret is None or found is None:
                raise _not_found(name)
            attributes = body.get("attributes") or {}
            if "enabled" in attributes:
                found.enabled = bool(attributes["enabled"])
            if "nbf" in attributes:
                found.not_before = attributes["nbf"]
            if "exp" in attributes:
                found.expires = attributes["exp"]
            if "contentType" in body:
                found.content_type = body["contentType"]
            if "tags" in body:
                found.tags = body["tags"]
            found.updated = int(time.time())
            return _json(_bundle(call, secret, found, value=False))
    except VaultError as exc:
        return _error(exc)


@router.delete("/secrets/{name}")
async def delete_secret(name: str, request: Request) -> Response:
    try:
        call = _check(request, "write")
        with call.state.lock:
            secret = call.vault.secrets.pop(name.lower(), None)
            if secret is None:
                raise _not_found(name)
            now = int(time.time())
            secret.deleted_date = now
            secret.scheduled_purge_date = now + RECOVERABLE_DAYS * 86400
            call.vault.deleted_secrets[name.lower()] = secret
            return _json(_deleted_bundle(call, secret))
    except VaultError as exc:
        return _error(exc)


@router.get("/deletedsecrets")
async def list_deleted(request: Request) -> Response:
    try:
        call = _check(request, "list")
        with call.state.lock:
            items = [
                {
                    "recoveryId": f"{call.id_base}/deletedsecrets/{s.name}",
                    "deletedDate": s.deleted_date,
                    "scheduledPurgeDate": s.scheduled_purge_date,
                    **_item(call, s),
                }
                for s in sorted(call.vault.deleted_secrets.values(), key=lambda s: s.name.lower())
            ]
        return _json(_page(request, call, items, "/deletedsecrets"))
    except VaultError as exc:
        return _error(exc)


@router.get("/deletedsecrets/{name}")
async def get_deleted(name: str, request: Request) -> Response:
    try:
        call = _check(request, "list")
        with call.state.lock:
            secret = call.vault.deleted_secrets.get(name.lower())
            if secret is None:
                raise _deleted_not_found(name)
            return _json(_deleted_bundle(call, secret))
    except VaultError as exc:
        return _error(exc)


@router.delete("/deletedsecrets/{name}")
async def purge_deleted(name: str, request: Request) -> Response:
    try:
        call = _check(request, "purge")
        with call.state.lock:
            if call.vault.deleted_secrets.pop(name.lower(), None) is None:
                raise _deleted_not_found(name)
        return Response(status_code=204)
    except VaultError as exc:
        return _error(exc)


@router.post("/deletedsecrets/{name}/recover")
async def recover_deleted(name: str, request: Request) -> Response:
    try:
        call = _check(request, "write")
        with call.state.lock:
            secret = call.vault.deleted_secrets.pop(name.lower(), None)
            if secret is None:
                raise _deleted_not_found(name)
            secret.deleted_date = None
            secret.scheduled_purge_date = None
            call.vault.secrets[name.lower()] = secret
            return _json(_bundle(call, secret, secret.latest, value=False))
    except VaultError as exc:
        return _error(exc)
