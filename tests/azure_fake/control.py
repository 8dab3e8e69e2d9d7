"""HTTP control API under `/_control` (the same operations as the Python handle), for curl.

Bodies are JSON; keys may be camelCase or snake_case. Examples:

    curl -k https://127.0.0.1:8443/_control/state
    curl -k -XPOST https://127.0.0.1:8443/_control/faults -d '{"service":"graph","kind":"429","count":2}'
    curl -k -XDELETE https://127.0.0.1:8443/_control/faults
    curl -k -XPOST https://127.0.0.1:8443/_control/replication-delay -d '{"seconds":10}'
    curl -k "https://127.0.0.1:8443/_control/requests?service=graph&path_pattern=addPassword"
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .ca import make_self_signed_certificate
from .state import FakeState, parse_iso

if TYPE_CHECKING:
    from .server import FakeAzure

router = APIRouter(prefix="/_control")


def _handle(request: Request) -> FakeAzure:
    handle: FakeAzure = request.app.state.handle
    return handle


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return {_snake(k): v for k, v in data.items()}


def _bad(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _state(request: Request) -> FakeState:
    state: FakeState = request.app.state.azure
    return state


ROUTES_HELP = {
    "GET /_control": "endpoints and this list",
    "GET /_control/state": "tenants, apps, users, orgs, vault (no secret values)",
    "POST /_control/faults": "{service, kind, count?, pathPattern?, method?, retryAfter?, seconds?}",
    "GET /_control/faults": "active fault rules",
    "DELETE /_control/faults": "reset faults, rate limit, replication delay, authorize behaviour",
    "POST /_control/replication-delay": "{seconds}",
    "POST /_control/graph-rate-limit": "{requestsPerSecond, burst?} (null switches it off)",
    "GET /_control/requests": "?service=&path_pattern=&method= -> {count}",
    "GET /_control/requests/log": "?service=&limit= recent requests",
    "DELETE /_control/requests": "reset counters",
    "POST /_control/tenants": "{tenantId?, domain?, displayName?}",
    "POST /_control/applications": (
        "{tenant, displayName, permissions?, directoryRoles?, multiTenant?, redirectUris?, ...}"
    ),
    "POST /_control/applications/{appId}/passwords": "{displayName?, endDateTime?} -> {keyId, secretText}",
    "DELETE /_control/applications/{appId}/passwords/{keyId}": "remove a secret",
    "POST /_control/applications/{appId}/certificates": "{certificatePem?} (none: one is made, key returned)",
    "POST /_control/applications/{appId}/grants": "{permissions, directoryRoles?}",
    "POST /_control/users": "{tenant, userPrincipalName, password, displayName?, directoryRoles?}",
    "POST /_control/devops/organizations": "{name, projects?, tenant?, members?: [appId|userId]}",
    "POST /_control/devops/organizations/{name}/pats": "{scopes?, expired?} -> {token}",
    "POST /_control/caller-tokens": (
        "{tenantId, audience, roles?, expiresIn?, issuer?, alg?, extraClaims?} -> {token}"
    ),
    "POST /_control/signing-keys/rotate": "{dropOld?} -> {kid}",
    "POST /_control/authorize": "{user?: id|upn, deny?}",
}


@router.get("")
async def index(request: Request) -> Response:
    fake = _handle(request)
    return JSONResponse(
        {
            "authorityHost": fake.authority_host,
            "graphEndpoint": fake.graph_endpoint,
            "devopsEndpoint": fake.devops_endpoint,
            "keyVaultUrl": fake.key_vault_url,
            "caFile": str(fake.ca_file),
            "routes": ROUTES_HELP,
        }
    )


@router.get("/state")
async def state_summary(request: Request) -> Response:
    return JSONResponse(_state(request).summary())


@router.post("/faults")
async def add_fault(request: Request) -> Response:
    body = await _body(request)
    try:
        rule = _handle(request).inject(
            service=str(body.get("service", "*")),
            kind=str(body["kind"]),
            count=body.get("count", 1),
            path_pattern=body.get("path_pattern"),
            method=body.get("method"),
            retry_after=int(body.get("retry_after", 1)),
            seconds=float(body.get("seconds", 5.0)),
        )
    except (KeyError, ValueError, re.error) as exc:
        return _bad(f"invalid fault: {exc}")
    return JSONResponse(rule.describe(), status_code=201)


@router.get("/faults")
async def list_faults(request: Request) -> Response:
    return JSONResponse([r.describe() for r in _handle(request).faults.rules()])


@router.delete("/faults")
async def reset_faults(request: Request) -> Response:
    _handle(request).reset_faults()
    return Response(status_code=204)


@router.post("/replication-delay")
async def replication_delay(request: Request) -> Response:
    body = await _body(request)
    _handle(request).set_replication_delay(float(body.get("seconds", 0)))
    return Response(status_code=204)


@router.post("/graph-rate-limit")
async def graph_rate_limit(request: Request) -> Response:
    body = await _body(request)
    rps = body.get("requests_per_second")
    _handle(request).set_graph_rate_limit(float(rps) if rps else None, body.get("burst"), body.get("tenant"))
    return Response(status_code=204)


@router.get("/requests")
async def request_count(request: Request) -> Response:
    q = request.query_params
    try:
        count = _handle(request).request_count(
            q.get("service", "*"), q.get("path_pattern") or q.get("pathPattern"), q.get("method")
        )
    except (ValueError, re.error) as exc:
        return _bad(str(exc))
    return JSONResponse({"count": count})


@router.get("/requests/log")
async def request_log(request: Request) -> Response:
    q = request.query_params
    limit = int(q.get("limit", "100"))
    records = _handle(request).request_log(q.get("service"))[-limit:]
    return JSONResponse(
        [
            {"at": r.at, "service": r.service, "method": r.method, "path": r.path, "status": r.status}
            for r in records
        ]
    )


@router.delete("/requests")
async def reset_counters(request: Request) -> Response:
    _handle(request).reset_counters()
    return Response(status_code=204)


@router.post("/tenants")
async def add_tenant(request: Request) -> Response:
    body = await _body(request)
    tenant = _handle(request).add_tenant(body.get("tenant_id"), body.get("domain"), body.get("display_name"))
    return JSONResponse(
        {"id": tenant.id, "domains": tenant.domains, "displayName": tenant.display_name}, status_code=201
    )


@router.post("/applications")
async def add_application(request: Request) -> Response:
    body = await _body(request)
    fake = _handle(request)
    try:
        app = fake.add_application(
            body["tenant"],
            body.get("display_name", "app"),
            body.get("permissions", []),
            body.get("directory_roles", []),
            multi_tenant=bool(body.get("multi_tenant", False)),
            redirect_uris=body.get("redirect_uris", []),
            identifier_uris=body.get("identifier_uris", []),
            public_client=bool(body.get("public_client", False)),
            owned_by_itself=bool(body.get("owned_by_itself", False)),
        )
    except (KeyError, ValueError) as exc:
        return _bad(f"invalid application: {exc}")
    sp = fake.service_principal(app)
    return JSONResponse(
        {**app.to_graph(), "tenantId": app.tenant_id, "servicePrincipalId": sp.id}, status_code=201
    )


def _app_or_404(request: Request, app_id: str) -> Any:
    return _state(request).find_application(app_id.lower())


@router.post("/applications/{app_id}/passwords")
async def add_password(app_id: str, request: Request) -> Response:
    app = _app_or_404(request, app_id)
    if app is None:
        return _bad("unknown appId", 404)
    body = await _body(request)
    end = parse_iso(body["end_date_time"]) if body.get("end_date_time") else None
    key_id, secret = _handle(request).add_password(app, body.get("display_name"), end)
    return JSONResponse({"keyId": key_id, "secretText": secret}, status_code=201)


@router.delete("/applications/{app_id}/passwords/{key_id}")
async def remove_password(app_id: str, key_id: str, request: Request) -> Response:
    app = _app_or_404(request, app_id)
    if app is None or not _handle(request).remove_password(app, key_id):
        return _bad("unknown appId or keyId", 404)
    return Response(status_code=204)


@router.post("/applications/{app_id}/certificates")
async def add_certificate(app_id: str, request: Request) -> Response:
    app = _app_or_404(request, app_id)
    if app is None:
        return _bad("unknown appId", 404)
    body = await _body(request)
    key_pem = None
    cert_pem = body.get("certificate_pem")
    if not cert_pem:
        cert_pem, key_pem = make_self_signed_certificate(f"{app.display_name} certificate")
    cred = _handle(request).add_certificate(app, cert_pem)
    return JSONResponse(
        {"keyId": cred.key_id, "x5t": cred.x5t, "certificatePem": cert_pem, "privateKeyPem": key_pem},
        status_code=201,
    )


@router.post("/applications/{app_id}/grants")
async def grant(app_id: str, request: Request) -> Response:
    app = _app_or_404(request, app_id)
    if app is None:
        return _bad("unknown appId", 404)
    body = await _body(request)
    fake = _handle(request)
    fake.grant_permissions(app, body.get("permissions", []))
    for role in body.get("directory_roles", []):
        fake.assign_directory_role(app, role)
    return Response(status_code=204)


@router.post("/users")
async def add_user(request: Request) -> Response:
    body = await _body(request)
    try:
        user = _handle(request).add_user(
            body["tenant"],
            body["user_principal_name"],
            body["password"],
            body.get("display_name"),
            directory_roles=body.get("directory_roles", []),
        )
    except (KeyError, ValueError) as exc:
        return _bad(f"invalid user: {exc}")
    return JSONResponse({**user.to_graph(), "tenantId": user.tenant_id}, status_code=201)


@router.post("/devops/organizations")
async def add_org(request: Request) -> Response:
    body = await _body(request)
    fake = _handle(request)
    state = _state(request)
    members: list[Any] = []
    for member in body.get("members", []):
        app = state.find_application(str(member).lower())
        members.append(app if app else str(member))
    org = fake.add_devops_org(body["name"], int(body.get("projects", 0)), body.get("tenant"), members)
    return JSONResponse({"name": org.name, "id": org.id, "projects": len(org.projects)}, status_code=201)


@router.post("/devops/organizations/{name}/pats")
async def add_pat(name: str, request: Request) -> Response:
    body = await _body(request)
    if name.lower() not in _state(request).devops_orgs:
        return _bad("unknown organization", 404)
    token = _handle(request).add_pat(
        name, body.get("scopes", ["vso.project"]), bool(body.get("expired", False))
    )
    return JSONResponse({"token": token}, status_code=201)


@router.post("/caller-tokens")
async def caller_token(request: Request) -> Response:
    body = await _body(request)
    try:
        token = _handle(request).mint_caller_token(
            tenant_id=body["tenant_id"],
            audience=body["audience"],
            roles=body.get("roles", []),
            expires_in=int(body.get("expires_in", 3600)),
            issuer=body.get("issuer"),
            alg=body.get("alg", "RS256"),
            extra_claims=body.get("extra_claims"),
        )
    except (KeyError, ValueError) as exc:
        return _bad(f"invalid token request: {exc}")
    return JSONResponse({"token": token}, status_code=201)


@router.post("/signing-keys/rotate")
async def rotate(request: Request) -> Response:
    body = await _body(request)
    return JSONResponse({"kid": _handle(request).rotate_signing_key(bool(body.get("drop_old", False)))})


@router.post("/authorize")
async def authorize_behaviour(request: Request) -> Response:
    body = await _body(request)
    state = _state(request)
    user_ref = body.get("user")
    user_id = None
    if user_ref:
        with state.lock:
            match = state.users.get(str(user_ref).lower()) or next(
                (u for u in state.users.values() if u.user_principal_name.lower() == str(user_ref).lower()),
                None,
            )
        if match is None:
            return _bad("unknown user", 404)
        user_id = match.id
    _handle(request).set_authorize_behaviour(user_id, bool(body.get("deny", False)))
    return Response(status_code=204)
