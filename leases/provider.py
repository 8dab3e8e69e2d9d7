"""Entra ID users through Microsoft Graph: read a user, set a password, check the app's rights.

A dynamic secret's app needs the Graph application permission User.ReadWrite.All *and* a
directory role that may reset passwords (User Administrator, or a stronger one): Graph
refuses `passwordProfile` changes by apps without both. On create we check both, the way an
operator would see them in the Portal:
- the permission from the `roles` claim of the app token Entra just issued (what Graph will
  authorize the call with, consent included);
- the role from the service principal's `memberOf`
  (`GET /servicePrincipals(appId='…')/memberOf`, directoryRole `roleTemplateId`s). Reading it
  needs Application.Read.All or Directory.Read.All, which an app with only User.ReadWrite.All
  lacks: a 403 there is a warning in the response, not a failure, since
  the first lease then shows Graph's real answer.

Every failure is an `AzureFailure` naming the step and Azure's own code (AADSTS number or
Graph `error.code`); messages are built here, never copied from exceptions that might echo
request material. Clients are cached per event loop and per (tenant, app, secret digest),
so a lease costs one Graph call: the token is reused until it nears expiry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import string
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from core.azure_clients import client_secret_credential, graph_client, graph_scope
from core.loop_cache import PerLoop
from core.retry_after import retry_after_seconds

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from msgraph.graph_service_client import GraphServiceClient

T = TypeVar("T")

# Graph application permissions that allow updating users (the first is the documented one).
USER_WRITE_PERMISSIONS = ("User.ReadWrite.All", "Directory.ReadWrite.All")
# Directory roles (roleTemplateId) allowed to reset the password of a non-admin user.
PASSWORD_RESET_ROLES = {
    "fe930be7-5e62-47db-91af-98c3a49a38b1": "User Administrator",
    "729827e3-9c14-49f7-bb1b-9608f156bbb8": "Helpdesk Administrator",
    "c4e39bd9-1100-46d3-8c65-fb160da0071f": "Authentication Administrator",
    "7be44c8a-adaf-4e2a-84d6-ab2649e08a13": "Privileged Authentication Administrator",
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
}
SECRET_CACHE_SECONDS = 600
MAX_CACHED_APPS = 256

# Password alphabet: Entra accepts these symbols; quotes, backslash and space are left out so
# the password pastes safely into shells and config files.
SYMBOLS = "-_!@#$%^&*+=.?~"
PASSWORD_LENGTH = 32

# AADSTS code -> (request field it points at, what to do).
_AADSTS: dict[str, tuple[str, str]] = {
    "90002": ("tenantId", "the tenant does not exist; check the tenant ID"),
    "900023": ("tenantId", "the tenant ID is not a valid tenant GUID or domain"),
    "90072": ("tenantId", "the app is not registered or consented in this tenant"),
    "700016": ("applicationId", "no application with this ID exists in the tenant"),
    "7000112": ("applicationId", "the application is disabled"),
    "7000215": ("clientSecret", "the client secret is wrong (use the secret's value, not its ID)"),
    "7000222": ("clientSecret", "the client secret has expired; create a new one"),
    "50034": ("clientSecret", "the app's identity does not exist in the tenant"),
}
_AADSTS_CODE = re.compile(r"AADSTS(\d{4,7})")


class AzureFailure(Exception):
    """A step against Entra ID / Graph failed; `code` is Azure's, `status` the HTTP status seen."""

    def __init__(
        self,
        step: str,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(f"{step}: {code}: {message}")
        self.step = step
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.field = field

    @property
    def transient(self) -> bool:
        """Worth retrying later: throttling, Azure-side errors, timeouts, network trouble."""
        return self.status in (0, 408, 429) or self.status >= 500

    def describe(self) -> str:
        """One line for `lastError`, audit and events (no secret material)."""
        return f"{self.step} failed: {self.code} (HTTP {self.status}): {self.message}"[:400]


@dataclass(frozen=True)
class EntraUser:
    id: str
    user_principal_name: str
    mail_nickname: str | None
    display_name: str | None
    account_enabled: bool | None


@dataclass
class AppAccess:
    """One app's credential and Graph clients on one event loop."""

    credential: AsyncTokenCredential
    _graph: dict[int, GraphServiceClient] = field(default_factory=dict)

    def graph(self, max_retries: int = 3) -> GraphServiceClient:
        """A Graph client; `max_retries=0` for callers that pace retries themselves (the sweeper)."""
        if max_retries not in self._graph:
            self._graph[max_retries] = graph_client(self.credential, max_retries=max_retries)
        return self._graph[max_retries]


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A random password meeting Entra's complexity rule (all four character classes)."""
    if length < 16:
        raise ValueError("passwords are at least 16 characters")
    classes = (string.ascii_lowercase, string.ascii_uppercase, string.digits, SYMBOLS)
    alphabet = "".join(classes)
    chars = [secrets.choice(c) for c in classes] + [secrets.choice(alphabet) for _ in range(length - 4)]
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


def _digest(tenant_id: str, app_id: str, secret: str) -> tuple[str, str, str]:
    return tenant_id.lower(), app_id.lower(), hashlib.sha256(secret.encode()).hexdigest()


class AppCache(OrderedDict[tuple[str, str, str], AppAccess]):
    """One loop's app credentials, least recently used first; `core.loop_cache.close_all`
    closes them at shutdown (their HTTP sessions)."""

    async def close(self) -> None:
        while self:
            _, access = self.popitem()
            await access.credential.close()


async def _new_cache() -> AppCache:
    return AppCache()


_apps: PerLoop[AppCache] = PerLoop(_new_cache)
# Secret values read from the secret store, by store name: (value, monotonic time read).
_secrets: dict[str, tuple[str, float]] = {}


async def access_for_secret(tenant_id: str, app_id: str, secret: str) -> AppAccess:
    """The cached access of an app, made on first use."""
    apps = await _apps.get()
    key = _digest(tenant_id, app_id, secret)
    found = apps.get(key)
    if found is not None:
        apps.move_to_end(key)
        return found
    access = AppAccess(client_secret_credential(tenant_id, app_id, secret))
    apps[key] = access
    while len(apps) > MAX_CACHED_APPS:
        _, old = apps.popitem(last=False)
        await old.credential.close()
    return access


async def drop_access(tenant_id: str, app_id: str, secret: str) -> None:
    """Forget an app's cached access (its secret stopped working)."""
    apps = await _apps.get()
    old = apps.pop(_digest(tenant_id, app_id, secret), None)
    if old is not None:
        await old.credential.close()


def forget_secret(ref: str) -> None:
    """Forget a cached secret value (it was replaced or deleted)."""
    _secrets.pop(ref, None)


async def stored_secret(ref: str, *, fresh: bool = False) -> str:
    """The app's client secret from the secret store, cached briefly in memory."""
    from core.secret_store import SecretMissing, secret_store

    cached = _secrets.get(ref)
    if cached and not fresh and time.monotonic() - cached[1] < SECRET_CACHE_SECONDS:
        return cached[0]
    try:
        value = await secret_store().get(ref)
    except SecretMissing:
        raise AzureFailure(
            "secretStore",
            404,
            "SecretMissing",
            "the app's client secret is missing from the secret store; "
            "PATCH the dynamic secret with clientSecret",
        ) from None
    _secrets[ref] = (value, time.monotonic())
    return value


async def with_stored_access(
    tenant_id: str, app_id: str, ref: str, call: Callable[[AppAccess], Awaitable[T]]
) -> T:
    """Run `call` with the app's access; if the cached secret no longer signs in, re-read it once.

    Another instance may have replaced the secret (PATCH): the store has the new value.
    """
    secret = await stored_secret(ref)
    try:
        return await call(await access_for_secret(tenant_id, app_id, secret))
    except AzureFailure as failure:
        if failure.step != "token" or failure.transient:
            raise
        await drop_access(tenant_id, app_id, secret)
        fresh = await stored_secret(ref, fresh=True)
        if fresh == secret:
            raise
        return await call(await access_for_secret(tenant_id, app_id, fresh))


# ---------------------------------------------------------------------------- failures


def _retry_after(headers: Any) -> int | None:
    seconds = retry_after_seconds(headers if isinstance(headers, Mapping) else None)
    return None if seconds is None else int(seconds)


def token_failure(step: str, error: BaseException) -> AzureFailure:
    """An azure-identity failure as a failure of `step`, with its AADSTS code and a fix."""
    from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

    text = str(getattr(error, "message", "") or error)
    match = _AADSTS_CODE.search(text)
    if match:
        code = f"AADSTS{match.group(1)}"
        field, advice = _AADSTS.get(match.group(1), (None, "Entra ID refused the app's sign-in"))
        return AzureFailure(step, 400 if field else 401, code, advice, field=field)
    if isinstance(error, ServiceRequestError) or not isinstance(error, ClientAuthenticationError):
        return AzureFailure(step, 0, "connection", "Entra ID could not be reached")
    return AzureFailure(step, 401, "authentication_failed", "Entra ID refused the app's sign-in")


def graph_failure(step: str, error: BaseException) -> AzureFailure:
    """A Graph SDK / transport exception as a failure of `step`."""
    import httpx
    from azure.core.exceptions import AzureError
    from kiota_abstractions.api_error import APIError
    from msgraph.generated.models.o_data_errors.o_data_error import ODataError

    if isinstance(error, AzureFailure):
        return error
    if isinstance(error, AzureError):  # the token request inside the Graph call
        return token_failure("token", error)
    if isinstance(error, ODataError):
        status = error.response_status_code or 0
        main = error.error
        code = (main.code if main else None) or f"HTTP{status}"
        message = (main.message if main else None) or "Graph refused the request"
        return AzureFailure(
            step, status, code, message[:200], retry_after=_retry_after(error.response_headers)
        )
    if isinstance(error, APIError):
        status = error.response_status_code or 0
        return AzureFailure(
            step,
            status,
            f"HTTP{status}",
            "Graph answered with an error",
            retry_after=_retry_after(error.response_headers),
        )
    if isinstance(error, httpx.TimeoutException):
        return AzureFailure(step, 504, "timeout", "Graph did not answer in time")
    if isinstance(error, httpx.HTTPError):
        return AzureFailure(step, 0, "connection", "Graph could not be reached")
    raise error


async def _graph_call(step: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except Exception as error:
        raise graph_failure(step, error) from None


# ---------------------------------------------------------------------------- operations


async def app_token_claims(access: AppAccess) -> dict[str, Any]:
    """Sign in as the app; the claims of its Graph token (`roles`: application permissions,
    `tid`: the tenant GUID, whatever name the caller gave the tenant)."""
    try:
        token = await access.credential.get_token(graph_scope())
    except Exception as error:
        raise token_failure("token", error) from None
    return token_claims(token.token)


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT access token (read, not verified: Entra just issued it to us over TLS)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_roles(claims: dict[str, Any]) -> set[str]:
    roles = claims.get("roles", [])
    return {str(r) for r in roles} if isinstance(roles, list) else set()


async def directory_roles(access: AppAccess, app_id: str) -> set[str]:
    """roleTemplateIds of the directory roles the app's service principal holds.

    `GET /servicePrincipals(appId='…')/memberOf` in one call (the app need not read its own
    service principal object for that).
    """
    from urllib.parse import quote

    from msgraph.generated.models.directory_role import DirectoryRole

    from core.azure_clients import graph_base_url

    graph = access.graph()
    url = f"{graph_base_url()}/servicePrincipals(appId='{quote(app_id, safe='-')}')/memberOf"
    builder = graph.service_principals.by_service_principal_id(app_id).member_of
    page = await _graph_call("directoryRole", builder.with_url(url).get())
    found: set[str] = set()
    for _ in range(20):  # at most 20 pages: an app is a member of few groups and roles
        if page is None:
            break
        found.update(
            m.role_template_id
            for m in page.value or []
            if isinstance(m, DirectoryRole) and m.role_template_id
        )
        if not page.odata_next_link:
            break
        page = await _graph_call("directoryRole", builder.with_url(page.odata_next_link).get())
    return found


async def read_user(access: AppAccess, id_or_upn: str) -> EntraUser:
    """One user by object id or user principal name."""
    from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder

    config = UserItemRequestBuilder.UserItemRequestBuilderGetRequestConfiguration(
        query_parameters=UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
            select=["id", "userPrincipalName", "mailNickname", "displayName", "accountEnabled"]
        )
    )
    user = await _graph_call("readUser", access.graph().users.by_user_id(id_or_upn).get(config))
    if user is None or not user.id or not user.user_principal_name:
        raise AzureFailure("readUser", 404, "Request_ResourceNotFound", "Graph returned no user")
    return EntraUser(
        id=user.id,
        user_principal_name=user.user_principal_name,
        mail_nickname=user.mail_nickname,
        display_name=user.display_name,
        account_enabled=user.account_enabled,
    )


async def set_password(access: AppAccess, user_id: str, password: str, *, max_retries: int = 3) -> None:
    """`PATCH /users/{id}` with a new passwordProfile, no forced change at next sign-in."""
    from msgraph.generated.models.password_profile import PasswordProfile
    from msgraph.generated.models.user import User

    body = User(password_profile=PasswordProfile(password=password, force_change_password_next_sign_in=False))
    await _graph_call("setPassword", access.graph(max_retries).users.by_user_id(user_id).patch(body))


async def close_clients() -> None:
    """Close this loop's cached credentials and forget cached secrets (`close_all` does the former)."""
    await (await _apps.get()).close()
    _secrets.clear()
