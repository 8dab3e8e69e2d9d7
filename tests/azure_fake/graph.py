"""Microsoft Graph (v1.0) over the stand-in's directory, as a table of routes.

A route is a method, a regular expression over the path after `/v1.0` and an async handler
taking a `GraphCall`. Adding one is a few lines:

    @graph_route("GET", r"/organization")
    async def list_organization(call: GraphCall) -> Response:
        return call.json({"value": [...]})

Every request is authenticated first (RS256 token from the stand-in, aud = the Graph endpoint
root or Graph's app id), then permissions are checked like Graph does: application permissions
(`roles`) for app-only tokens, delegated scopes (`scp`) plus the user's directory roles for user
tokens.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .entra import InvalidToken, validate_access_token
from .faults import graph_error
from .state import (
    DIRECTORY_ROLE_TEMPLATES,
    GRAPH_APP_ID,
    Application,
    FakeState,
    PasswordCredential,
    ServicePrincipal,
    User,
    iso,
    new_client_secret,
    new_id,
    parse_iso,
    sha256_hex,
    utcnow,
)

router = APIRouter()

JSON_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
)

APP_READ = {
    "Application.Read.All",
    "Application.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
}
APP_WRITE = {"Application.ReadWrite.All", "Directory.ReadWrite.All"}
USER_READ = {
    "User.Read.All",
    "User.ReadWrite.All",
    "User.ReadBasic.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
}
USER_WRITE = {"User.ReadWrite.All", "Directory.ReadWrite.All"}
PASSWORD_WRITE = {"User.ReadWrite.All", "Directory.ReadWrite.All", "User-PasswordProfile.ReadWrite.All"}
ROLE_READ = {*APP_READ, "Application.ReadWrite.OwnedBy"}  # servicePrincipal memberOf, as documented
APP_ADMIN_ROLES = {"Global Administrator", "Application Administrator", "Cloud Application Administrator"}
PASSWORD_ADMIN_ROLES = {
    "Global Administrator",
    "Privileged Authentication Administrator",
    "User Administrator",
    "Helpdesk Administrator",
    "Authentication Administrator",
}
PRIVILEGED_PASSWORD_ROLES = {"Global Administrator", "Privileged Authentication Administrator"}
PASSWORD_SYMBOLS = set("@#$%^&*-_!+=[]{}|\\:',.?/`~\"();<> ")


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def not_found(identifier: str) -> GraphError:
    return GraphError(
        404,
        "Request_ResourceNotFound",
        f"Resource '{identifier}' does not exist or one of its queried reference-property objects are not "
        "present.",
    )


def denied() -> GraphError:
    return GraphError(
        403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
    )


def bad_request(message: str, code: str = "Request_BadRequest") -> GraphError:
    return GraphError(400, code, message)


@dataclass
class Caller:
    """Who called Graph, from the validated token."""

    tenant_id: str
    app_id: str
    delegated: bool
    roles: set[str]
    scopes: set[str]
    service_principal: ServicePrincipal | None = None
    user: User | None = None

    @property
    def object_id(self) -> str:
        if self.user is not None:
            return self.user.id
        return self.service_principal.id if self.service_principal else ""

    @property
    def directory_roles(self) -> set[str]:
        if self.user is not None:
            return self.user.directory_roles
        return self.service_principal.directory_roles if self.service_principal else set()

    def permissions(self) -> set[str]:
        return self.scopes if self.delegated else self.roles


@dataclass
class GraphCall:
    """One Graph request: state, caller, path parameters, body and helpers to answer."""

    state: FakeState
    request: Request
    caller: Caller
    params: dict[str, str]
    body: dict[str, Any]
    request_id: str
    client_request_id: str | None
    version: str
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"{self.state.graph_endpoint}/{self.version}"

    def json(self, payload: dict[str, Any], status: int = 200, context: str | None = None) -> Response:
        if context:
            payload = {"@odata.context": f"{self.base}/$metadata#{context}", **payload}
        payload = select(payload, self.request.query_params.get("$select"))
        return Response(json.dumps(payload), status_code=status, media_type=JSON_TYPE)

    def no_content(self) -> Response:
        return Response(status_code=204)

    def require_any(self, permissions: set[str]) -> None:
        if not (self.caller.permissions() & permissions):
            raise denied()


def select(payload: dict[str, Any], selected: str | None) -> dict[str, Any]:
    """Apply `$select` to a single entity (and to each item of `value`)."""
    if not selected:
        return payload
    keep = {s.strip() for s in selected.split(",") if s.strip()}

    def pick(entity: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entity.items() if k in keep or k.startswith("@odata")}

    if isinstance(payload.get("value"), list):
        return {**payload, "value": [pick(v) for v in payload["value"]]}
    return pick(payload)


Handler = Callable[[GraphCall], Awaitable[Response]]


@dataclass
class GraphRoute:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


ROUTES: list[GraphRoute] = []


def graph_route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    """Register a handler for `method` and a path regex (matched in full after `/v1.0`)."""

    def register(handler: Handler) -> Handler:
        ROUTES.append(GraphRoute(method.upper(), re.compile(pattern), handler))
        return handler

    return register


# ------------------------------------------------------------------ dispatch


@router.api_route("/graph/{path:path}", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
async def graph_entry(path: str, request: Request) -> Response:
    state: FakeState = request.app.state.azure
    rid = str(request.scope.get("azure_fake.request_id") or uuid.uuid4())
    client_rid = request.headers.get("client-request-id")
    headers = {
        "request-id": rid,
        "client-request-id": client_rid or rid,
        "x-ms-ags-diagnostic": json.dumps(
            {"ServerInfo": {"DataCenter": "Loopback", "Slice": "E", "Ring": "0"}}
        ),
    }
    try:
        version, _, rest = path.partition("/")
        if version not in ("v1.0", "beta"):
            raise bad_request(f"Invalid version: {version}", "BadRequest")
        caller = authenticate(state, request)
        rest = "/" + rest.rstrip("/")
        for route in ROUTES:
            if route.method != request.method:
                continue
            match = route.pattern.fullmatch(rest)
            if match:
                call = GraphCall(
                    state,
                    request,
                    caller,
                    match.groupdict(),
                    await _json_body(request),
                    rid,
                    client_rid,
                    version,
                )
                response = await route.handler(call)
                break
        else:
            segment = rest.strip("/").split("/")[0].split("(")[0] or rest
            raise bad_request(f"Resource not found for the segment '{segment}'.", "BadRequest")
    except GraphError as exc:
        response = JSONResponse(graph_error(exc.code, exc.message, rid, client_rid), status_code=exc.status)
        headers.update(exc.headers)
    for name, value in headers.items():
        response.headers[name] = value
    return response


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise bad_request(
            "Unable to read JSON request payload. Please ensure Content-Type header is set.", "BadRequest"
        ) from exc
    if not isinstance(body, dict):
        raise bad_request("Unable to read JSON request payload.", "BadRequest")
    return body


def authenticate(state: FakeState, request: Request) -> Caller:
    try:
        claims = validate_access_token(
            state, request.headers.get("authorization"), {state.graph_endpoint, GRAPH_APP_ID}
        )
    except InvalidToken as exc:
        raise GraphError(
            401,
            "InvalidAuthenticationToken",
            exc.reason,
            {
                "WWW-Authenticate": 'Bearer realm="", '
                f'authorization_uri="{state.authority_host}/common/oauth2/authorize", '
                f'client_id="{GRAPH_APP_ID}"'
            },
        ) from exc
    tid = str(claims["tid"])
    app_id = str(claims.get("azp") or claims.get("appid") or "")
    if "scp" in claims:
        user = state.users.get(str(claims.get("oid", "")))
        if user is None or user.tenant_id != tid:
            raise GraphError(
                401, "InvalidAuthenticationToken", "Access token validation failure. User not found."
            )
        return Caller(tid, app_id, True, set(), set(str(claims["scp"]).split()), user=user)
    sp = state.find_service_principal(app_id, tid)
    if sp is None or sp.id != claims.get("oid"):
        raise GraphError(
            401, "InvalidAuthenticationToken", "Access token validation failure. Invalid principal."
        )
    return Caller(tid, app_id, False, set(claims.get("roles") or []), set(), service_principal=sp)


# ------------------------------------------------------------------ applications


def _application(call: GraphCall) -> Application:
    state, params = call.state, call.params
    with state.lock:
        if "app_id" in params:
            app = state.find_application(params["app_id"].lower())
            label = f"appId='{params['app_id']}'"
        else:
            app = state.applications.get(params["id"].lower())
            label = params["id"]
    if app is None or app.tenant_id != call.caller.tenant_id:
        raise not_found(label)
    return app


def _can_read_app(call: GraphCall, app: Application) -> None:
    caller = call.caller
    if caller.delegated:
        if caller.scopes & (APP_READ | {"Directory.AccessAsUser.All"}):
            return
        raise denied()
    if caller.roles & APP_READ:
        return
    if "Application.ReadWrite.OwnedBy" in caller.roles and caller.object_id in app.owners:
        return
    raise denied()


def _can_write_app(call: GraphCall, app: Application) -> None:
    caller = call.caller
    if caller.delegated:
        if not caller.scopes & (APP_WRITE | {"Directory.AccessAsUser.All"}):
            raise denied()
        if caller.object_id in app.owners or caller.directory_roles & APP_ADMIN_ROLES:
            return
        raise denied()
    if caller.roles & APP_WRITE:
        return
    if "Application.ReadWrite.OwnedBy" in caller.roles and caller.object_id in app.owners:
        return
    raise denied()


APP_BY_ID = r"/applications/(?P<id>[0-9a-fA-F-]{36})"
APP_BY_APP_ID = r"/applications\(appId='(?P<app_id>[^']+)'\)"


@graph_route("GET", APP_BY_ID)
@graph_route("GET", APP_BY_APP_ID)
async def get_application(call: GraphCall) -> Response:
    app = _application(call)
    _can_read_app(call, app)
    with call.state.lock:
        body = app.to_graph()
    return call.json(body, context="applications/$entity")


@graph_route("GET", r"/applications")
async def list_applications(call: GraphCall) -> Response:
    caller = call.caller
    with call.state.lock:
        apps = [a for a in call.state.applications.values() if a.tenant_id == caller.tenant_id]
    readable = []
    for app in apps:
        try:
            _can_read_app(call, app)
        except GraphError:
            continue
        readable.append(app)
    if not readable and not (
        caller.permissions() & APP_READ or "Application.ReadWrite.OwnedBy" in caller.roles
    ):
        raise denied()
    return _paged(call, [a.to_graph() for a in readable], "applications")


@graph_route("POST", APP_BY_ID + r"/addPassword")
@graph_route("POST", APP_BY_APP_ID + r"/addPassword")
async def add_password(call: GraphCall) -> Response:
    app = _application(call)
    _can_write_app(call, app)
    spec = call.body.get("passwordCredential") or {}
    if not isinstance(spec, dict):
        raise bad_request("Invalid value for passwordCredential.")
    now = utcnow()
    try:
        start = parse_iso(spec["startDateTime"]) if spec.get("startDateTime") else now
        end = parse_iso(spec["endDateTime"]) if spec.get("endDateTime") else start + dt.timedelta(days=730)
    except ValueError as exc:
        raise bad_request(f"Invalid date time value: {exc}") from exc
    if end <= start:
        raise bad_request("Key credential end date is invalid.", "KeyCredentialsInvalidEndDate")
    secret = new_client_secret()
    cred = PasswordCredential(
        key_id=new_id(),
        display_name=spec.get("displayName"),
        hint=secret[:3],
        secret_hash=sha256_hex(secret),
        start=start,
        end=end,
        created_at=time.time(),
        usable_after=time.time() + call.state.replication_delay,
    )
    with call.state.lock:
        app.password_credentials.append(cred)
    return call.json(cred.to_graph(secret), context="microsoft.graph.passwordCredential")


@graph_route("POST", APP_BY_ID + r"/removePassword")
@graph_route("POST", APP_BY_APP_ID + r"/removePassword")
async def remove_password(call: GraphCall) -> Response:
    app = _application(call)
    _can_write_app(call, app)
    key_id = str(call.body.get("keyId") or "")
    try:
        uuid.UUID(key_id)
    except ValueError as exc:
        raise bad_request(f"Invalid keyId '{key_id}': the value must be a GUID.") from exc
    if not call.state.remove_password(app, key_id.lower()):
        raise bad_request(f"No password credential found with keyId '{key_id}'.")
    return call.no_content()


@graph_route("GET", APP_BY_ID + r"/owners")
@graph_route("GET", APP_BY_APP_ID + r"/owners")
async def list_owners(call: GraphCall) -> Response:
    app = _application(call)
    _can_read_app(call, app)
    state = call.state
    with state.lock:
        owners: list[dict[str, Any]] = []
        for oid in sorted(app.owners):
            if oid in state.service_principals:
                owners.append(
                    {
                        "@odata.type": "#microsoft.graph.servicePrincipal",
                        **state.service_principals[oid].to_graph(),
                    }
                )
            elif oid in state.users:
                owners.append({"@odata.type": "#microsoft.graph.user", **state.users[oid].to_graph()})
    return _paged(call, owners, "directoryObjects")


@graph_route("POST", APP_BY_ID + r"/owners/\$ref")
@graph_route("POST", APP_BY_APP_ID + r"/owners/\$ref")
async def add_owner(call: GraphCall) -> Response:
    app = _application(call)
    _can_write_app(call, app)
    ref = str(call.body.get("@odata.id") or "")
    oid = ref.rstrip("/").rsplit("/", 1)[-1].lower()
    state = call.state
    with state.lock:
        principal = state.service_principals.get(oid) or state.users.get(oid)
        if principal is None or principal.tenant_id != app.tenant_id:
            raise not_found(oid or ref)
        if oid in app.owners:
            raise bad_request(
                "One or more added object references already exist for the following modified properties: "
                "'owners'."
            )
        app.owners.add(oid)
    return call.no_content()


@graph_route("DELETE", APP_BY_ID + r"/owners/(?P<owner>[0-9a-fA-F-]{36})/\$ref")
@graph_route("DELETE", APP_BY_APP_ID + r"/owners/(?P<owner>[0-9a-fA-F-]{36})/\$ref")
async def remove_owner(call: GraphCall) -> Response:
    app = _application(call)
    _can_write_app(call, app)
    oid = call.params["owner"].lower()
    with call.state.lock:
        if oid not in app.owners:
            raise not_found(oid)
        app.owners.discard(oid)
    return call.no_content()


# ------------------------------------------------------------------ service principals and roles


def _directory_role(tenant_id: str, name: str) -> dict[str, Any]:
    template = DIRECTORY_ROLE_TEMPLATES[name]
    return {
        "@odata.type": "#microsoft.graph.directoryRole",
        "id": str(uuid.uuid5(uuid.UUID(template), tenant_id)),
        "deletedDateTime": None,
        "description": f"{name} role",
        "displayName": name,
        "roleTemplateId": template,
    }


def _service_principal(call: GraphCall) -> ServicePrincipal:
    state, params = call.state, call.params
    if "app_id" in params:
        sp = state.find_service_principal(params["app_id"].lower(), call.caller.tenant_id)
        label = f"appId='{params['app_id']}'"
    else:
        with state.lock:
            sp = state.service_principals.get(params["id"].lower())
        label = params["id"]
    if sp is None or sp.tenant_id != call.caller.tenant_id:
        raise not_found(label)
    return sp


def _can_read_sp(call: GraphCall, sp: ServicePrincipal) -> None:
    caller = call.caller
    if caller.permissions() & (APP_READ | {"Directory.AccessAsUser.All"}):
        return
    if "Application.ReadWrite.OwnedBy" in caller.roles:
        app = call.state.find_application(sp.app_id)
        if app is not None and caller.object_id in app.owners:
            return
    raise denied()


SP_BY_ID = r"/servicePrincipals/(?P<id>[0-9a-fA-F-]{36})"
SP_BY_APP_ID = r"/servicePrincipals\(appId='(?P<app_id>[^']+)'\)"


@graph_route("GET", SP_BY_ID)
@graph_route("GET", SP_BY_APP_ID)
async def get_service_principal(call: GraphCall) -> Response:
    sp = _service_principal(call)
    _can_read_sp(call, sp)
    return call.json(sp.to_graph(), context="servicePrincipals/$entity")


@graph_route("GET", SP_BY_ID + r"/memberOf")
@graph_route("GET", SP_BY_APP_ID + r"/memberOf")
async def service_principal_member_of(call: GraphCall) -> Response:
    sp = _service_principal(call)
    call.require_any(ROLE_READ | {"Directory.AccessAsUser.All"})
    with call.state.lock:
        roles = sorted(sp.directory_roles)
    return _paged(call, [_directory_role(sp.tenant_id, r) for r in roles], "directoryObjects")


# ------------------------------------------------------------------ users


def _user(call: GraphCall, key: str = "user") -> User:
    ident = call.params[key]
    user = call.state.find_user(call.caller.tenant_id, ident)
    if user is None:
        raise not_found(ident)
    return user


def _can_read_user(call: GraphCall, user: User) -> None:
    caller = call.caller
    if caller.permissions() & (USER_READ | {"Directory.AccessAsUser.All"}):
        return
    if caller.delegated and caller.user is user and caller.scopes & {"User.Read", "User.ReadWrite"}:
        return
    raise denied()


USER = r"/users/(?P<user>[^/]+)"


@graph_route("GET", r"/me")
async def get_me(call: GraphCall) -> Response:
    if not call.caller.delegated or call.caller.user is None:
        raise bad_request("/me request is only valid with delegated authentication flow.", "BadRequest")
    _can_read_user(call, call.caller.user)
    return call.json(call.caller.user.to_graph(), context="users/$entity")


@graph_route("GET", USER)
async def get_user(call: GraphCall) -> Response:
    user = _user(call)
    _can_read_user(call, user)
    return call.json(user.to_graph(), context="users/$entity")


@graph_route("GET", r"/users")
async def list_users(call: GraphCall) -> Response:
    call.require_any(USER_READ | {"Directory.AccessAsUser.All"})
    with call.state.lock:
        users = [u.to_graph() for u in call.state.users.values() if u.tenant_id == call.caller.tenant_id]
    return _paged(call, users, "users")


@graph_route("GET", USER + r"/memberOf")
async def user_member_of(call: GraphCall) -> Response:
    user = _user(call)
    call.require_any(USER_READ | {"Directory.AccessAsUser.All"})
    with call.state.lock:
        roles = sorted(user.directory_roles)
    return _paged(call, [_directory_role(user.tenant_id, r) for r in roles], "directoryObjects")


def password_complexity_error(password: str) -> str | None:
    """Entra's default policy for cloud users: 8-256 chars, 3 of 4 character classes, allowed chars only."""
    if not 8 <= len(password) <= 256:
        return "length"
    if any(not (c.isascii() and (c.isalnum() or c in PASSWORD_SYMBOLS)) for c in password):
        return "characters"
    classes = [
        any(c.islower() for c in password),
        any(c.isupper() for c in password),
        any(c.isdigit() for c in password),
        any(c in PASSWORD_SYMBOLS for c in password),
    ]
    return None if sum(classes) >= 3 else "classes"


def _can_reset_password(call: GraphCall, user: User) -> None:
    caller = call.caller
    if not caller.permissions() & (PASSWORD_WRITE | {"Directory.AccessAsUser.All"}):
        raise denied()
    if caller.delegated and caller.user is user:
        return  # a user may set their own password profile with the scope
    roles = caller.directory_roles
    if user.directory_roles:
        if not roles & PRIVILEGED_PASSWORD_ROLES:
            raise denied()
    elif not roles & PASSWORD_ADMIN_ROLES:
        raise denied()


@graph_route("PATCH", USER)
async def update_user(call: GraphCall) -> Response:
    user = _user(call)
    body = call.body
    profile = body.get("passwordProfile")
    others = {k: v for k, v in body.items() if k != "passwordProfile" and not k.startswith("@odata")}
    if profile is not None:
        if not isinstance(profile, dict):
            raise bad_request("Invalid value specified for property 'passwordProfile' of resource 'User'.")
        _can_reset_password(call, user)
    if others:
        call.require_any(USER_WRITE | {"Directory.AccessAsUser.All"})
    if profile is not None:
        password = profile.get("password")
        if not isinstance(password, str) or password_complexity_error(password):
            raise bad_request(
                "The specified password does not comply with password complexity requirements. Please "
                "provide a different password."
            )
        call.state.set_user_password(
            user,
            password,
            by=call.caller.object_id,
            force_change_next_sign_in=bool(profile.get("forceChangePasswordNextSignIn", False)),
        )
    with call.state.lock:
        if "displayName" in others:
            user.display_name = str(others["displayName"])
        if "accountEnabled" in others:
            user.account_enabled = bool(others["accountEnabled"])
    return call.no_content()


# ------------------------------------------------------------------ paging


def _paged(call: GraphCall, items: Iterable[dict[str, Any]], context: str) -> Response:
    """Collections with `$top` and `@odata.nextLink` (a `$skiptoken` holding the offset)."""
    all_items = list(items)
    q = call.request.query_params
    try:
        top = int(q.get("$top", "100"))
        skip = int(q.get("$skiptoken", "0"))
    except ValueError as exc:
        raise bad_request("Invalid paging parameter.", "BadRequest") from exc
    if not 1 <= top <= 999:
        raise bad_request(f"Invalid page size specified: '{top}'. Must be between 1 and 999 inclusive.")
    page = all_items[skip : skip + top]
    payload: dict[str, Any] = {"value": page}
    if skip + top < len(all_items):
        link_params = [(k, v) for k, v in q.multi_items() if k not in ("$skiptoken", "$top")]
        link_params += [("$top", str(top)), ("$skiptoken", str(skip + top))]
        from urllib.parse import urlencode

        payload["@odata.nextLink"] = (
            f"{call.base}{call.request.url.path.split('/' + call.version, 1)[1]}?{urlencode(link_params)}"
        )
    return call.json(payload, context=context)


__all__ = ["ROUTES", "GraphCall", "GraphError", "graph_route", "iso", "router"]
