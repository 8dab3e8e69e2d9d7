"""Microsoft Entra ID (v2.0 endpoints): discovery, JWKS, token, authorize; and caller tokens.

Paths as the real service: `/{tenant}/v2.0/.well-known/openid-configuration`,
`/{tenant}/discovery/v2.0/keys`, `/{tenant}/oauth2/v2.0/token`, `/{tenant}/oauth2/v2.0/authorize`,
`/common/discovery/instance` (MSAL instance discovery), `/common/userrealm/{user}` (MSAL ROPC).
The tenant may be its GUID or one of its verified domains; `common` / `organizations` work where
Entra allows them.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import html
import json
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from .faults import aad_error
from .state import (
    DIRECTORY_ROLE_TEMPLATES,
    Application,
    AuthorizationCode,
    FakeState,
    IssuedToken,
    PasswordCredential,
    RefreshToken,
    Resource,
    Tenant,
    User,
    iso,
    utcnow,
)
from .tokens import JwtFormatError, encode_unsafe, new_uti, split_jwt, verify_rsa_signature

router = APIRouter()

MULTI_TENANT_ALIASES = ("common", "organizations")
OIDC_SCOPES = {"openid", "profile", "email", "offline_access"}
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW = 300


def fake_state(request: Request) -> FakeState:
    state: FakeState = request.app.state.azure
    return state


def request_id(request: Request) -> str:
    return str(request.scope.get("azure_fake.request_id") or uuid.uuid4())


def issuer_for(state: FakeState, tenant_id: str) -> str:
    return f"{state.authority_host}/{tenant_id}/v2.0"


class TokenError(Exception):
    """An error answer of the token endpoint (AADSTS code and all)."""

    def __init__(self, status: int, error: str, code: int, description: str, suberror: str = "") -> None:
        super().__init__(f"AADSTS{code}: {description}")
        self.status = status
        self.error = error
        self.code = code
        self.description = description
        self.suberror = suberror

    def response(self, rid: str) -> JSONResponse:
        return JSONResponse(
            aad_error(self.error, self.code, self.description, rid, self.suberror),
            status_code=self.status,
            headers={"x-ms-request-id": rid, "Cache-Control": "no-store, no-cache"},
        )


def unknown_tenant(tenant: str) -> TokenError:
    return TokenError(
        400,
        "invalid_tenant" if tenant else "invalid_request",
        90002,
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing "
        "into the correct cloud. Check with your subscription administrator, this may happen if there are "
        "no active subscriptions for the tenant.",
    )


def unknown_application(client_id: str, tenant: Tenant) -> TokenError:
    return TokenError(
        400,
        "unauthorized_client",
        700016,
        f"Application with identifier '{client_id}' was not found in the directory "
        f"'{tenant.display_name}'. This can happen if the application has not been installed by the "
        "administrator of the tenant or consented to by any user in the tenant. You may have sent your "
        "authentication request to the wrong tenant.",
    )


# ------------------------------------------------------------------ discovery


def _tenant_or_error(state: FakeState, tenant: str) -> Tenant | None:
    return None if tenant.lower() in MULTI_TENANT_ALIASES else state.find_tenant(tenant)


@router.get("/{tenant}/v2.0/.well-known/openid-configuration")
async def openid_configuration(tenant: str, request: Request) -> Response:
    state = fake_state(request)
    base = state.authority_host
    if tenant.lower() in MULTI_TENANT_ALIASES:
        path_tenant, issuer = tenant.lower(), f"{base}/{{tenantid}}/v2.0"
    else:
        found = state.find_tenant(tenant)
        if found is None:
            return unknown_tenant(tenant).response(request_id(request))
        path_tenant, issuer = found.id, issuer_for(state, found.id)
    return JSONResponse(
        {
            "token_endpoint": f"{base}/{path_tenant}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/{path_tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{state.graph_endpoint}/oidc/userinfo",
            "authorization_endpoint": f"{base}/{path_tenant}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/{path_tenant}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/{path_tenant}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "at_hash",
                "c_hash",
                "email",
            ],
            "kerberos_endpoint": f"{base}/{path_tenant}/kerberos",
            "tenant_region_scope": "WW",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": state.graph_endpoint.split("://", 1)[-1],
            "rbac_url": "https://pas.windows.net",
        }
    )


@router.get("/{tenant}/discovery/v2.0/keys")
async def jwks(tenant: str, request: Request) -> Response:
    state = fake_state(request)
    if tenant.lower() not in MULTI_TENANT_ALIASES and state.find_tenant(tenant) is None:
        return unknown_tenant(tenant).response(request_id(request))
    return JSONResponse(state.keys.jwks())


@router.get("/common/discovery/instance")
async def instance_discovery(request: Request) -> Response:
    """MSAL's instance discovery; only reached if a client is told to use this host for it."""
    state = fake_state(request)
    host = state.authority_host.split("://", 1)[-1]
    endpoint = request.query_params.get("authorization_endpoint", "")
    tenant = "common"
    if endpoint.startswith(state.authority_host + "/"):
        tenant = endpoint[len(state.authority_host) + 1 :].split("/", 1)[0] or "common"
    return JSONResponse(
        {
            "tenant_discovery_endpoint": (
                f"{state.authority_host}/{tenant}/v2.0/.well-known/openid-configuration"
            ),
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }
    )


@router.get("/common/userrealm/{username}")
async def user_realm(username: str, request: Request) -> Response:
    """MSAL's user realm discovery before a username/password (ROPC) sign-in."""
    state = fake_state(request)
    domain = unquote(username).rsplit("@", 1)[-1]
    tenant = state.find_tenant(domain)
    return JSONResponse(
        {
            "ver": "1.0",
            "account_type": "Managed" if tenant else "Unknown",
            "domain_name": domain,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_audience_urn": "urn:federation:MicrosoftOnline",
        }
    )


# ------------------------------------------------------------------ scopes


@dataclass
class ScopeRequest:
    resource: Resource | None
    permissions: list[str]
    oidc: set[str]


def parse_scopes(state: FakeState, tenant: Tenant, raw: str) -> ScopeRequest:
    """Split a v2 `scope` string into one resource, its permissions and the OIDC scopes."""
    oidc: set[str] = set()
    resource_uri: str | None = None
    permissions: list[str] = []
    for scope in raw.split():
        if scope in OIDC_SCOPES:
            oidc.add(scope)
            continue
        if "/" in scope:
            uri, perm = scope.rsplit("/", 1)
        else:
            uri, perm = state.graph_endpoint, scope
        if resource_uri is not None and uri.rstrip("/").lower() != resource_uri.rstrip("/").lower():
            raise TokenError(
                400,
                "invalid_scope",
                28000,
                "Provided value for the input parameter scope is not valid because it contains more than "
                f"one resource. Scope {raw} is not valid.",
            )
        resource_uri = uri
        permissions.append(perm or ".default")
    resource = None
    if resource_uri is not None:
        resource = state.resolve_resource(resource_uri, tenant.id)
        if resource is None:
            raise TokenError(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource_uri} was not found in the tenant named "
                f"{tenant.display_name}. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant. You might have "
                "sent your authentication request to the wrong tenant.",
            )
    return ScopeRequest(resource, permissions, oidc)


# ------------------------------------------------------------------ client authentication


def _basic_credentials(headers: Mapping[str, str]) -> tuple[str, str] | None:
    header = headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return None
    return unquote(user), unquote(password)


def find_client(state: FakeState, tenant: Tenant, client_id: str, *, consent: bool = False) -> Application:
    """The app for `client_id` usable in `tenant` (home tenant, or consented multi-tenant app)."""
    app = state.find_application(client_id.lower())
    if app is None:
        raise unknown_application(client_id, tenant)
    if app.tenant_id == tenant.id:
        return app
    if not app.multi_tenant:
        raise unknown_application(client_id, tenant)
    if state.find_service_principal(app.app_id, tenant.id) is None:
        if not consent:
            raise unknown_application(client_id, tenant)
        state.add_service_principal(app, tenant)
    return app


def authenticate_client(
    state: FakeState,
    tenant: Tenant,
    tenant_in_path: str,
    app: Application,
    form: Mapping[str, str],
    headers: Mapping[str, str],
) -> str:
    """Check the client's credential; returns azpacr ("0" public, "1" secret, "2" certificate)."""
    secret = form.get("client_secret")
    basic = _basic_credentials(headers)
    if secret is None and basic is not None:
        secret = basic[1]
    assertion = form.get("client_assertion")
    if secret is not None:
        check_client_secret(state, app, secret)
        return "1"
    if assertion is not None:
        if form.get("client_assertion_type") != JWT_BEARER:
            raise TokenError(
                400,
                "invalid_request",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the "
                "'client_credentials' grant type.",
            )
        check_client_assertion(state, tenant, tenant_in_path, app, assertion)
        return "2"
    if app.public_client:
        return "0"
    raise TokenError(
        401,
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    )


def check_client_secret(state: FakeState, app: Application, secret: str) -> PasswordCredential:
    invalid = TokenError(
        401,
        "invalid_client",
        7000215,
        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
        f"value, not the client secret ID, for a secret added to app '{app.app_id}'.",
    )
    cred = state.check_secret(app, secret)
    if cred is None:
        raise invalid
    now = utcnow()
    if cred.end <= now:
        raise TokenError(
            401,
            "invalid_client",
            7000222,
            f"The provided client secret keys for app '{app.app_id}' are expired. Visit the Azure portal "
            "to create new keys for your app: https://aka.ms/NewClientSecret, or consider using "
            "certificate credentials for added security: https://aka.ms/certCreds.",
        )
    if cred.start > now or time.time() < cred.usable_after:
        # Not replicated yet / not valid yet: Entra answers as if the secret were wrong.
        raise invalid
    return cred


def _thumbprint(value: Any) -> str | None:
    """A certificate thumbprint as unpadded base64url (clients send it padded, or even as hex)."""
    if not isinstance(value, str) or not value:
        return None
    if len(value) in (40, 64) and all(c in "0123456789abcdefABCDEF" for c in value):
        return base64.urlsafe_b64encode(bytes.fromhex(value)).decode().rstrip("=")
    return value.rstrip("=")


def check_client_assertion(
    state: FakeState, tenant: Tenant, tenant_in_path: str, app: Application, assertion: str
) -> None:
    try:
        header, claims, signing_input, signature = split_jwt(assertion)
    except JwtFormatError as exc:
        raise TokenError(400, "invalid_client", 50027, f"JWT token is invalid or malformed. {exc}") from exc
    x5t_s256 = _thumbprint(header.get("x5t#S256"))
    x5t = _thumbprint(header.get("x5t"))
    shown = header.get("x5t#S256") or header.get("x5t") or "(none)"
    with state.lock:
        cred = next(
            (
                c
                for c in app.key_credentials
                if (x5t_s256 and c.x5t_s256 == x5t_s256) or (x5t and not x5t_s256 and c.x5t == x5t)
            ),
            None,
        )
    suffix = (
        f"Thumbprint of key used by client: '{shown}', Please visit the Azure Portal, Graph Explorer or "
        f"directly use MS Graph to see configured keys for app Id '{app.app_id}'. Review the documentation "
        "at https://docs.microsoft.com/en-us/graph/deployments to determine the corresponding service "
        "endpoint and "
        "https://docs.microsoft.com/en-us/graph/api/application-get?view=graph-rest-1.0&tabs=http to "
        f"build a query request URL, such as 'https://graph.microsoft.com/beta/applications/{app.id}']"
    )
    if cred is None:
        raise TokenError(
            401,
            "invalid_client",
            700027,
            f"Client assertion contains an invalid signature. [Reason - The key was not found., {suffix}",
        )
    alg = str(header.get("alg", ""))
    if not verify_rsa_signature(cred.certificate.public_key(), alg, signing_input, signature):
        raise TokenError(
            401,
            "invalid_client",
            700027,
            "Client assertion contains an invalid signature. [Reason - The provided signature value did "
            f"not match the expected signature value., {suffix}",
        )
    now = time.time()
    if cred.end.timestamp() < now:
        raise TokenError(
            401,
            "invalid_client",
            700027,
            f"Client assertion contains an invalid signature. [Reason - The key used is expired., {suffix}",
        )
    if claims.get("iss") != app.app_id or claims.get("sub") != app.app_id:
        raise TokenError(
            401,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        )
    base = state.authority_host
    audiences = {
        f"{base}/{tenant_in_path}/oauth2/v2.0/token",
        f"{base}/{tenant.id}/oauth2/v2.0/token",
        f"{base}/{tenant.id}/v2.0",
        *(f"{base}/{d}/oauth2/v2.0/token" for d in tenant.domains),
    }
    if str(claims.get("aud", "")).rstrip("/") not in {a.rstrip("/") for a in audiences}:
        raise TokenError(
            401,
            "invalid_client",
            50027,
            f"JWT token is invalid or malformed. The audience '{claims.get('aud')}' of the client "
            f"assertion is not the token endpoint '{base}/{tenant.id}/oauth2/v2.0/token'.",
        )
    exp, nbf = claims.get("exp"), claims.get("nbf", 0)
    if not isinstance(exp, int | float) or exp + CLOCK_SKEW < now or float(nbf) - CLOCK_SKEW > now:
        raise TokenError(
            400,
            "invalid_client",
            700024,
            f"Client assertion is not within its valid time range. Current time: {iso(utcnow())}, "
            f"assertion valid from {nbf}, expiry time of assertion {exp}.",
        )


# ------------------------------------------------------------------ issuing


def _base_claims(state: FakeState, tenant_id: str, aud: str, lifetime: int) -> dict[str, Any]:
    now = int(time.time())
    return {
        "aud": aud,
        "iss": issuer_for(state, tenant_id),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "aio": base64.b64encode(secrets.token_bytes(24)).decode(),
        "rh": "0.A" + base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("="),
        "tid": tenant_id,
        "uti": new_uti(),
        "ver": "2.0",
    }


def issue_app_token(
    state: FakeState, tenant: Tenant, app: Application, resource: Resource, azpacr: str
) -> dict[str, Any]:
    sp = state.find_service_principal(app.app_id, tenant.id)
    assert sp is not None
    claims = _base_claims(state, tenant.id, resource.uri, state.access_token_lifetime)
    with state.lock:
        roles = sorted(sp.app_role_grants.get(resource.key, set()))
    claims.update(
        {
            "azp": app.app_id,
            "appid": app.app_id,
            "azpacr": azpacr,
            "appidacr": azpacr,
            "idp": issuer_for(state, tenant.id),
            "idtyp": "app",
            "oid": sp.id,
            "sub": sp.id,
        }
    )
    if roles:
        claims["roles"] = roles
    state.record_token(
        IssuedToken(
            claims["uti"],
            "app",
            tenant.id,
            app.app_id,
            sp.id,
            resource.uri,
            "client_credentials",
            roles,
            [],
            claims["iat"],
            claims["exp"],
        )
    )
    return {
        "token_type": "Bearer",
        "expires_in": state.access_token_lifetime,
        "ext_expires_in": state.access_token_lifetime,
        "access_token": state.keys.sign(claims),
    }


def granted_permissions(
    state: FakeState, tenant: Tenant, app: Application, user: User, resource: Resource
) -> set[str]:
    """Delegated permissions the user flow may carry for a resource (app defaults + user consent)."""
    with state.lock:
        granted = set(app.delegated_permissions.get(resource.key, set()))
        for key, perm in state.consents.get((tenant.id, app.app_id, user.id), set()):
            if key == resource.key:
                granted.add(perm)
    return granted


def record_consent(
    state: FakeState, tenant: Tenant, app: Application, user: User, scopes: ScopeRequest
) -> None:
    if scopes.resource is None:
        return
    with state.lock:
        consent = state.consents.setdefault((tenant.id, app.app_id, user.id), set())
        for perm in scopes.permissions:
            if perm != ".default":
                consent.add((scopes.resource.key, perm))


def issue_user_tokens(
    state: FakeState,
    tenant: Tenant,
    app: Application,
    user: User,
    scopes: ScopeRequest,
    azpacr: str,
    grant_type: str,
    *,
    nonce: str | None = None,
    client_info: bool = False,
) -> dict[str, Any]:
    resource = scopes.resource or state.resolve_resource(state.graph_endpoint, tenant.id)
    assert resource is not None
    granted = granted_permissions(state, tenant, app, user, resource)
    if ".default" in scopes.permissions or not scopes.permissions:
        scp = sorted(granted) or (["User.Read"] if resource.key == "graph" else ["user_impersonation"])
    else:
        missing = [p for p in scopes.permissions if p not in granted]
        if missing:
            raise TokenError(
                400,
                "invalid_grant",
                65001,
                "The user or administrator has not consented to use the application with ID "
                f"'{app.app_id}' named '{app.display_name}'. Send an interactive authorization request for "
                "this user and resource.",
                "consent_required",
            )
        scp = list(dict.fromkeys(scopes.permissions))
    claims = _base_claims(state, tenant.id, resource.uri, state.access_token_lifetime)
    claims.update(
        {
            "azp": app.app_id,
            "appid": app.app_id,
            "azpacr": azpacr,
            "appidacr": azpacr,
            "idtyp": "user",
            "name": user.display_name,
            "oid": user.id,
            "preferred_username": user.user_principal_name,
            "upn": user.user_principal_name,
            "scp": " ".join(scp),
            "sub": hashlib.sha256(f"{user.id}:{app.app_id}".encode()).hexdigest()[:43],
        }
    )
    with state.lock:
        wids = [DIRECTORY_ROLE_TEMPLATES[r] for r in sorted(user.directory_roles)]
    if wids:
        claims["wids"] = wids
    state.record_token(
        IssuedToken(
            claims["uti"],
            "delegated",
            tenant.id,
            app.app_id,
            user.id,
            resource.uri,
            grant_type,
            [],
            scp,
            claims["iat"],
            claims["exp"],
        )
    )
    prefix = "" if resource.key == "graph" else resource.uri.rstrip("/") + "/"
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "scope": " ".join([f"{prefix}{p}" for p in scp] + sorted(scopes.oidc)),
        "expires_in": state.access_token_lifetime,
        "ext_expires_in": state.access_token_lifetime,
        "access_token": state.keys.sign(claims),
    }
    if "offline_access" in scopes.oidc:
        rt = RefreshToken(
            token="1.A" + secrets.token_urlsafe(96),
            client_id=app.app_id,
            user_id=user.id,
            tenant_id=tenant.id,
            issued_at=time.time(),
        )
        with state.lock:
            state.refresh_tokens[rt.token] = rt
        body["refresh_token"] = rt.token
    if "openid" in scopes.oidc:
        id_claims = _base_claims(state, tenant.id, app.app_id, 3600)
        id_claims.update(
            {
                "name": user.display_name,
                "oid": user.id,
                "preferred_username": user.user_principal_name,
                "sub": claims["sub"],
            }
        )
        if nonce:
            id_claims["nonce"] = nonce
        body["id_token"] = state.keys.sign(id_claims)
    if client_info:
        info = json.dumps({"uid": user.id, "utid": tenant.id}).encode()
        body["client_info"] = base64.urlsafe_b64encode(info).decode().rstrip("=")
    return body


# ------------------------------------------------------------------ token endpoint


def _form(body: bytes) -> dict[str, str]:
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def _require(form: Mapping[str, str], name: str, code: int = 900144) -> str:
    value = form.get(name)
    if not value:
        raise TokenError(
            400, "invalid_request", code, f"The request body must contain the following parameter: '{name}'."
        )
    return value


@router.post("/{tenant}/oauth2/v2.0/token")
async def token_endpoint(tenant: str, request: Request) -> Response:
    state = fake_state(request)
    rid = request_id(request)
    form = _form(await request.body())
    basic = _basic_credentials(request.headers)
    if basic and "client_id" not in form:
        form["client_id"] = basic[0]
    try:
        body = _token(state, tenant, form, request.headers)
    except TokenError as exc:
        return exc.response(rid)
    return JSONResponse(body, headers={"x-ms-request-id": rid, "Cache-Control": "no-store, no-cache"})


def _token(
    state: FakeState, tenant_in_path: str, form: dict[str, str], headers: Mapping[str, str]
) -> dict[str, Any]:
    grant_type = form.get("grant_type")
    if not grant_type:
        raise TokenError(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        )
    multi = tenant_in_path.lower() in MULTI_TENANT_ALIASES
    tenant = None if multi else state.find_tenant(tenant_in_path)
    if tenant is None and not multi:
        raise unknown_tenant(tenant_in_path)
    client_id = _require(form, "client_id")
    if grant_type == "client_credentials":
        if tenant is None:
            raise TokenError(
                400,
                "invalid_request",
                50059,
                "No tenant-identifying information found in either the request or implied by any provided "
                "credentials.",
            )
        return _client_credentials(state, tenant, tenant_in_path, client_id, form, headers)
    if grant_type == "authorization_code":
        return _authorization_code(state, tenant, tenant_in_path, client_id, form, headers)
    if grant_type == "refresh_token":
        return _refresh_token(state, tenant, tenant_in_path, client_id, form, headers)
    if grant_type == "password":
        if tenant is None:
            raise TokenError(
                400, "invalid_request", 90002, "Username/password sign-in needs a tenant-specific endpoint."
            )
        return _password(state, tenant, tenant_in_path, client_id, form, headers)
    raise TokenError(
        400,
        "unsupported_grant_type",
        70003,
        f"The app requested an unsupported grant type '{grant_type}'.",
    )


def _client_credentials(
    state: FakeState,
    tenant: Tenant,
    tenant_in_path: str,
    client_id: str,
    form: dict[str, str],
    headers: Mapping[str, str],
) -> dict[str, Any]:
    scope = _require(form, "scope")
    app = find_client(state, tenant, client_id)
    azpacr = authenticate_client(state, tenant, tenant_in_path, app, form, headers)
    if azpacr == "0":
        raise TokenError(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
    parts = scope.split()
    if len(parts) != 1 or not parts[0].endswith("/.default"):
        raise TokenError(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Client credential flows must have a scope "
            "value with /.default suffixed to the resource identifier (application ID URI).",
        )
    scopes = parse_scopes(state, tenant, scope)
    assert scopes.resource is not None
    return issue_app_token(state, tenant, app, scopes.resource, azpacr)


def _authorization_code(
    state: FakeState,
    tenant: Tenant | None,
    tenant_in_path: str,
    client_id: str,
    form: dict[str, str],
    headers: Mapping[str, str],
) -> dict[str, Any]:
    code_text = _require(form, "code")
    with state.lock:
        code = state.authorization_codes.get(code_text)
    if (
        code is None
        or code.client_id != client_id.lower()
        or (tenant is not None and code.tenant_id != tenant.id)
    ):
        raise TokenError(400, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
    if code.redeemed:
        raise TokenError(
            400,
            "invalid_grant",
            54005,
            "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an "
            "existing refresh token.",
        )
    if time.time() > code.created_at + state.authorization_code_lifetime:
        raise TokenError(
            400,
            "invalid_grant",
            70008,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new "
            "interactive authorization request for this user and resource.",
        )
    code_tenant = state.tenants[code.tenant_id]
    app = find_client(state, code_tenant, client_id)
    redirect_uri = form.get("redirect_uri", "")
    if redirect_uri != code.redirect_uri:
        raise TokenError(
            400,
            "invalid_grant",
            500112,
            f"The reply address '{redirect_uri}' does not match the reply address '{code.redirect_uri}' "
            "provided when requesting Authorization code.",
        )
    azpacr = authenticate_client(state, code_tenant, tenant_in_path, app, form, headers)
    if code.code_challenge:
        verifier = form.get("code_verifier", "")
        if code.code_challenge_method == "S256":
            computed = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
            )
        else:
            computed = verifier
        if not verifier or not hmac.compare_digest(computed, code.code_challenge):
            raise TokenError(
                400,
                "invalid_grant",
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            )
    user = state.users[code.user_id]
    scopes = parse_scopes(state, code_tenant, form.get("scope") or " ".join(code.scopes))
    with state.lock:
        if code.redeemed:  # a concurrent redemption won
            raise TokenError(400, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed.")
        code.redeemed = True
    return issue_user_tokens(
        state,
        code_tenant,
        app,
        user,
        scopes,
        azpacr,
        "authorization_code",
        nonce=code.nonce,
        client_info=form.get("client_info") == "1",
    )


def _refresh_token(
    state: FakeState,
    tenant: Tenant | None,
    tenant_in_path: str,
    client_id: str,
    form: dict[str, str],
    headers: Mapping[str, str],
) -> dict[str, Any]:
    text = _require(form, "refresh_token")
    with state.lock:
        rt = state.refresh_tokens.get(text)
    if rt is None or rt.client_id != client_id.lower() or (tenant is not None and rt.tenant_id != tenant.id):
        raise TokenError(400, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
    if rt.revoked_reason == "password_changed":
        user = state.users[rt.user_id]
        raise TokenError(
            400,
            "invalid_grant",
            50173,
            "The provided grant has expired due to it being revoked, a fresh auth token is needed. The "
            "user might have changed or reset their password. The grant was issued on "
            f"'{iso(dt.datetime.fromtimestamp(rt.issued_at, dt.UTC))}' and the TokensValidFrom date "
            f"(before which tokens are not valid) for this user is '{iso(user.password_changed_at)}'.",
            "bad_token",
        )
    if rt.revoked_reason is not None:
        raise TokenError(400, "invalid_grant", 70000, "Provided grant is invalid or malformed.", "bad_token")
    rt_tenant = state.tenants[rt.tenant_id]
    app = find_client(state, rt_tenant, client_id)
    azpacr = authenticate_client(state, rt_tenant, tenant_in_path, app, form, headers)
    user = state.users[rt.user_id]
    if not user.account_enabled:
        raise TokenError(400, "invalid_grant", 50057, "The user account is disabled.")
    scopes = parse_scopes(state, rt_tenant, form.get("scope") or "openid offline_access")
    scopes.oidc.add("offline_access")  # a refresh always returns a new refresh token
    with state.lock:
        if rt.revoked_reason is not None:
            raise TokenError(
                400, "invalid_grant", 70000, "Provided grant is invalid or malformed.", "bad_token"
            )
        rt.revoked_reason = "rotated"
    return issue_user_tokens(
        state,
        rt_tenant,
        app,
        user,
        scopes,
        azpacr,
        "refresh_token",
        client_info=form.get("client_info") == "1",
    )


def _password(
    state: FakeState,
    tenant: Tenant,
    tenant_in_path: str,
    client_id: str,
    form: dict[str, str],
    headers: Mapping[str, str],
) -> dict[str, Any]:
    username = _require(form, "username")
    password = _require(form, "password")
    scope = _require(form, "scope")
    app = find_client(state, tenant, client_id)
    azpacr = authenticate_client(state, tenant, tenant_in_path, app, form, headers)
    user = state.find_user(tenant.id, username)
    if user is None:
        raise TokenError(
            400,
            "invalid_grant",
            50034,
            f"The user account {{EUII Hidden}} does not exist in the {tenant.id} directory. To sign into "
            "this application, the account must be added to the directory.",
        )
    if not user.account_enabled:
        raise TokenError(400, "invalid_grant", 50057, "The user account is disabled.")
    if not hmac.compare_digest(user.password.encode(), password.encode()):
        raise TokenError(
            400, "invalid_grant", 50126, "Error validating credentials due to invalid username or password."
        )
    if user.force_change_password:
        raise TokenError(
            400, "user_password_expired", 50055, "The password is expired.", "user_password_expired"
        )
    scopes = parse_scopes(state, tenant, scope)
    return issue_user_tokens(
        state, tenant, app, user, scopes, azpacr, "password", client_info=form.get("client_info") == "1"
    )


# ------------------------------------------------------------------ authorize


def _error_page(status: int, code: int, message: str) -> HTMLResponse:
    text = html.escape(f"AADSTS{code}: {message}")
    return HTMLResponse(
        "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body><h1>Sorry, but "
        f"we're having trouble signing you in.</h1><p id='error'>{text}</p></body></html>",
        status_code=status,
    )


def _redirect(redirect_uri: str, params: dict[str, str]) -> RedirectResponse:
    separator = "&" if "?" in redirect_uri else "?"
    return RedirectResponse(redirect_uri + separator + urlencode(params), status_code=302)


@router.get("/{tenant}/oauth2/v2.0/authorize")
async def authorize(tenant: str, request: Request) -> Response:
    state = fake_state(request)
    q = request.query_params
    client_id = q.get("client_id", "")
    redirect_uri = q.get("redirect_uri", "")
    state_param = q.get("state")
    multi = tenant.lower() in MULTI_TENANT_ALIASES
    target = None if multi else state.find_tenant(tenant)
    if target is None and not multi:
        return _error_page(400, 90002, unknown_tenant(tenant).description)
    user = _signed_in_user(state, target, q.get("login_hint"))
    if user is None:
        return _error_page(400, 50058, "A silent sign-in request was sent but no user is signed in.")
    target = state.tenants[user.tenant_id]
    if not client_id:
        return _error_page(400, 900144, "The request body must contain the following parameter: 'client_id'.")
    try:
        app = find_client(state, target, client_id, consent=True)
    except TokenError as exc:
        return _error_page(400, exc.code, exc.description)
    if not app.redirect_uris:
        return _error_page(400, 500113, "No reply address is registered for the application.")
    if redirect_uri not in app.redirect_uris:
        return _error_page(
            400,
            50011,
            f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs "
            f"configured for the application '{app.app_id}'. Make sure the redirect URI sent in the "
            "request matches one added to your application in the Azure portal.",
        )
    extra = {"state": state_param} if state_param is not None else {}
    if q.get("response_type") != "code":
        return _redirect(
            redirect_uri,
            {
                "error": "unsupported_response_type",
                "error_description": (
                    f"AADSTS700054: response_type '{q.get('response_type')}' is not enabled for the "
                    "application."
                ),
                **extra,
            },
        )
    challenge = q.get("code_challenge")
    method = q.get("code_challenge_method", "plain" if challenge else None)
    if challenge and method not in ("S256", "plain"):
        return _redirect(
            redirect_uri,
            {
                "error": "invalid_request",
                "error_description": "AADSTS501491: Invalid size of Code_Challenge parameter or unsupported "
                "code_challenge_method.",
                **extra,
            },
        )
    if state.authorize_deny:
        return _redirect(
            redirect_uri,
            {
                "error": "access_denied",
                "error_description": "AADSTS65004: User declined to consent to access the app.",
                "error_uri": "https://login.microsoftonline.com/error?code=65004",
                **extra,
            },
        )
    try:
        scopes = parse_scopes(state, target, q.get("scope", "openid"))
    except TokenError as exc:
        return _redirect(
            redirect_uri,
            {"error": exc.error, "error_description": f"AADSTS{exc.code}: {exc.description}", **extra},
        )
    record_consent(state, target, app, user, scopes)
    code = AuthorizationCode(
        code="1.A" + secrets.token_urlsafe(64),
        client_id=app.app_id,
        tenant_id=target.id,
        user_id=user.id,
        redirect_uri=redirect_uri,
        scopes=q.get("scope", "openid").split(),
        code_challenge=challenge,
        code_challenge_method=method,
        nonce=q.get("nonce"),
        created_at=time.time(),
    )
    with state.lock:
        state.authorization_codes[code.code] = code
    return _redirect(redirect_uri, {"code": code.code, **extra, "session_state": str(uuid.uuid4())})


def _signed_in_user(state: FakeState, tenant: Tenant | None, login_hint: str | None) -> User | None:
    with state.lock:
        if state.authorize_user_id:
            user = state.users.get(state.authorize_user_id)
            if user and (tenant is None or user.tenant_id == tenant.id):
                return user
        if tenant is None:
            return None
        if login_hint:
            hinted = state.find_user(tenant.id, login_hint)
            if hinted:
                return hinted
        return next((u for u in state.users.values() if u.tenant_id == tenant.id), None)


# ------------------------------------------------------------------ caller tokens


def mint_caller_token(
    state: FakeState,
    tenant_id: str,
    audience: str,
    roles: list[str] | tuple[str, ...] = (),
    expires_in: int = 3600,
    issuer: str | None = None,
    alg: str = "RS256",
    kid: str | None = None,
    key: Any = None,
    extra_claims: Mapping[str, Any] | None = None,
    *,
    app_id: str | None = None,
    object_id: str | None = None,
    not_before: int | None = None,
) -> str:
    """An access token for the broker's own API, as Entra would issue to a client app.

    - `expires_in` <= 0 gives an already expired token; `not_before` sets nbf.
    - `issuer` overrides iss (default `{authority}/{tenant}/v2.0`).
    - `alg="RS256"` signs with the current signing key (or `key`: an RSA private key object or
      PEM, e.g. one not in the JWKS; `kid` overrides the header kid).
    - `alg="none"` gives an unsigned token; `alg="HS256"` MACs with `key` (bytes/str), by default
      the signing key's public PEM (the RS256/HS256 confusion attack).
    - `extra_claims` are merged last (a value of None removes the claim).
    """
    import jwt
    from cryptography.hazmat.primitives import serialization

    now = int(time.time())
    oid = object_id or str(uuid.uuid4())
    claims: dict[str, Any] = {
        "aud": audience,
        "iss": issuer or issuer_for(state, tenant_id),
        "iat": now,
        "nbf": not_before if not_before is not None else now,
        "exp": now + expires_in,
        "aio": base64.b64encode(secrets.token_bytes(24)).decode(),
        "azp": app_id or "11111111-2222-3333-4444-555555555555",
        "azpacr": "1",
        "oid": oid,
        "rh": "0.A" + secrets.token_urlsafe(24),
        "sub": oid,
        "tid": tenant_id,
        "uti": new_uti(),
        "ver": "2.0",
    }
    if roles:
        claims["roles"] = list(roles)
    for name, value in (extra_claims or {}).items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    state.record_token(
        IssuedToken(
            claims["uti"],
            "caller",
            tenant_id,
            claims.get("azp"),
            oid,
            audience,
            "mint",
            list(roles),
            [],
            now,
            claims["exp"],
        )
    )
    if alg == "RS256":
        if key is None:
            signer = state.keys.current
            return jwt.encode(
                claims, signer.private_key, algorithm="RS256", headers={"kid": kid or signer.kid}
            )
        private: Any = (
            serialization.load_pem_private_key(key.encode() if isinstance(key, str) else key, password=None)
            if isinstance(key, str | bytes)
            else key
        )
        return jwt.encode(claims, private, algorithm="RS256", headers={"kid": kid or "unknown-signing-key"})
    if alg == "none":
        return encode_unsafe(claims, "none", kid=kid)
    if alg == "HS256":
        secret = key if key is not None else state.keys.current.public_pem()
        return encode_unsafe(claims, "HS256", key=secret, kid=kid or state.keys.current.kid)
    raise ValueError(f"unsupported alg {alg!r}: use RS256, HS256 or none")


# ------------------------------------------------------------------ validating tokens (for the resource APIs)


class InvalidToken(Exception):
    """A bearer token a resource API must refuse; `reason` says why in the resource's words."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # "empty" | "malformed" | "signature" | "expired" | "audience" | "issuer"


def validate_access_token(state: FakeState, authorization: str | None, audiences: set[str]) -> dict[str, Any]:
    """Check a `Bearer` header against the stand-in's keys: signature, lifetime, audience, issuer."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise InvalidToken("Access token is empty.", "empty")
    token = authorization[7:].strip()
    if not token:
        raise InvalidToken("Access token is empty.", "empty")
    try:
        _, claims = state.keys.verify(token)
    except JwtFormatError as exc:
        raise InvalidToken("IDX14100: JWT is not well formed.", "malformed") from exc
    except ValueError as exc:
        raise InvalidToken(f"Access token validation failure. {exc}.", "signature") from exc
    now = time.time()
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp < now:
        raise InvalidToken("Lifetime validation failed, the token is expired.", "expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and nbf > now + CLOCK_SKEW:
        raise InvalidToken("Lifetime validation failed, the token is not yet valid.", "expired")
    if str(claims.get("aud", "")).rstrip("/").lower() not in {a.rstrip("/").lower() for a in audiences}:
        raise InvalidToken("Access token validation failure. Invalid audience.", "audience")
    tid = str(claims.get("tid", ""))
    if state.find_tenant(tid) is None or claims.get("iss") != issuer_for(state, tid):
        raise InvalidToken("Access token validation failure. Invalid issuer.", "issuer")
    return claims
