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

Every call goes through `core.azure_gateway` (classification into `AzureFailure`, retries that
honour Retry-After, the caller's deadline, pacing per (tenant, app)); credentials come from the
one cache in `core.azure_credentials`, so a lease costs one Graph call: the token is reused
until it nears expiry.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from core import azure_credentials, azure_gateway
from core.auth import unverified_claims
from core.azure_clients import graph_scope
from core.azure_credentials import AppAccess
from core.azure_failure import AzureFailure, token_failure

T = TypeVar("T")

__all__ = ["AppAccess", "AzureFailure", "EntraUser", "generate_password", "token_failure"]

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

# Password alphabet: Entra accepts these symbols; quotes, backslash and space are left out so
# the password pastes safely into shells and config files.
SYMBOLS = "-_!@#$%^&*+=.?~"
PASSWORD_LENGTH = 32


@dataclass(frozen=True)
class EntraUser:
    id: str
    user_principal_name: str
    mail_nickname: str | None
    display_name: str | None
    account_enabled: bool | None


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A random password meeting Entra's complexity rule (all four character classes)."""
    if length < 16:
        raise ValueError("passwords are at least 16 characters")
    classes = (string.ascii_lowercase, string.ascii_uppercase, string.digits, SYMBOLS)
    alphabet = "".join(classes)
    chars = [secrets.choice(c) for c in classes] + [secrets.choice(alphabet) for _ in range(length - 4)]
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


async def access_for_secret(tenant_id: str, app_id: str, secret: str) -> AppAccess:
    """The cached access of an app (the one credential cache), made on first use."""
    return await azure_credentials.for_secret(tenant_id, app_id, secret)


async def drop_access(tenant_id: str, app_id: str, secret: str) -> None:
    """Forget an app's cached access (its secret stopped working)."""
    await azure_credentials.drop(tenant_id, app_id, secret)


# Secret values read from the secret store, by store name: (value, monotonic time read).
_secrets: dict[str, tuple[str, float]] = {}


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


# ---------------------------------------------------------------------------- operations


async def app_token_claims(access: AppAccess) -> dict[str, Any]:
    """Sign in as the app; the claims of its Graph token (`roles`: application permissions,
    `tid`: the tenant GUID, whatever name the caller gave the tenant)."""
    token = await azure_gateway.call(
        "token", lambda: access.credential.get_token(graph_scope()), kind="token", pace=access.pace_key
    )
    return unverified_claims(token.token)


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
    page = await azure_gateway.call("directoryRole", builder.with_url(url).get, pace=access.pace_key)
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
        next_page = builder.with_url(page.odata_next_link)
        page = await azure_gateway.call("directoryRole", next_page.get, pace=access.pace_key)
    return found


async def read_user(access: AppAccess, id_or_upn: str) -> EntraUser:
    """One user by object id or user principal name."""
    from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder

    config = UserItemRequestBuilder.UserItemRequestBuilderGetRequestConfiguration(
        query_parameters=UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
            select=["id", "userPrincipalName", "mailNickname", "displayName", "accountEnabled"]
        )
    )
    item = access.graph().users.by_user_id(id_or_upn)
    user = await azure_gateway.call("readUser", lambda: item.get(config), pace=access.pace_key)
    if user is None or not user.id or not user.user_principal_name:
        raise AzureFailure("readUser", 404, "Request_ResourceNotFound", "Graph returned no user")
    return EntraUser(
        id=user.id,
        user_principal_name=user.user_principal_name,
        mail_nickname=user.mail_nickname,
        display_name=user.display_name,
        account_enabled=user.account_enabled,
    )


async def set_password(access: AppAccess, user_id: str, password: str) -> None:
    """`PATCH /users/{id}` with a new passwordProfile, no forced change at next sign-in.

    Idempotent (the same body sets the same password), so the gateway may retry it; it runs
    under the caller's deadline (a revoke's claim).
    """
    from msgraph.generated.models.password_profile import PasswordProfile
    from msgraph.generated.models.user import User

    body = User(password_profile=PasswordProfile(password=password, force_change_password_next_sign_in=False))
    item = access.graph().users.by_user_id(user_id)
    await azure_gateway.call("setPassword", lambda: item.patch(body), pace=access.pace_key)
