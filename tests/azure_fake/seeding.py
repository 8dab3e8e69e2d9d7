"""Seeding and inspection for the destination services and the inventory tenant.

Named vaults, App Configuration stores, DevOps variable groups, app owners, and a fast way to
register hundreds of apps whose secrets and certificates end at chosen dates. `FakeAzure`
wraps each function; tests normally call them through the handle.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache

from cryptography.hazmat.primitives.asymmetric import rsa

from .appconfig import put_key_value
from .ca import load_certificate, make_self_signed_certificate, new_rsa_key, thumbprints
from .devops import find_project
from .keyvault import NAME as VAULT_NAME
from .state import (
    APP_CONFIG_ROLES,
    KEY_VAULT_ROLES,
    AppConfigStore,
    Application,
    DevOpsOrg,
    FakeState,
    GroupVariable,
    KeyCredential,
    KeyValue,
    SecretVersion,
    Tenant,
    User,
    VariableGroup,
    Vault,
    new_id,
    utcnow,
)
from .variable_groups import create_group

Principal = Application | User | str


# ------------------------------------------------------------------ Key Vault


def add_vault(state: FakeState, name: str, tenant: Tenant | str | None = None) -> Vault:
    """A named vault (`/vaults/NAME`) trusting `tenant` (default: the first tenant); no access yet."""
    if not VAULT_NAME.match(name) or len(name) < 3 or len(name) > 24:
        raise ValueError(f"vault name {name!r}: 3-24 letters, digits and '-'")
    tid = state._tenant_id(tenant) if tenant else state.vault_tenant_id
    vault = Vault(name=name, tenant_id=tid)
    with state.lock:
        if name.lower() in state.vaults:
            raise ValueError(f"vault {name!r} exists")
        state.vaults[name.lower()] = vault
    return vault


def grant_vault(state: FakeState, vault: Vault | str, principal: Principal, role: str) -> None:
    """Assign a Key Vault data role (Secrets Officer, Secrets User, Reader, Administrator)."""
    if role not in KEY_VAULT_ROLES:
        raise ValueError(f"unknown role {role!r}; known: {sorted(KEY_VAULT_ROLES)}")
    found = state.vault(vault.name if isinstance(vault, Vault) else vault)
    if found.roles is None:
        raise ValueError("the broker vault uses restrict_vault_access, not role assignments")
    oid = state.principal_id(principal, found.tenant_id or "")
    with state.lock:
        found.roles.setdefault(oid, set()).add(role)


def revoke_vault(state: FakeState, vault: Vault | str, principal: Principal, role: str | None = None) -> None:
    """Remove one role assignment (or all of the principal's) on a named vault."""
    found = state.vault(vault.name if isinstance(vault, Vault) else vault)
    oid = state.principal_id(principal, found.tenant_id or "")
    with state.lock:
        if found.roles is None:
            return
        roles = found.roles.get(oid, set())
        roles.difference_update({role} if role else set(roles))


def vault_secret(
    state: FakeState, vault: Vault | str, name: str, version: str | None = None
) -> SecretVersion | None:
    """The latest (or a given) version of a live secret, value included; None if absent or deleted."""
    found = state.vault(vault.name if isinstance(vault, Vault) else vault)
    with state.lock:
        secret = found.secrets.get(name.lower())
        if secret is None:
            return None
        return secret.versions.get(version) if version else secret.latest


# ------------------------------------------------------------------ App Configuration


def add_app_config_store(state: FakeState, name: str, tenant: Tenant | str | None = None) -> AppConfigStore:
    tid = state._tenant_id(tenant) if tenant else state.vault_tenant_id
    if tid is None:
        raise ValueError("add a tenant first")
    store = AppConfigStore(name=name, tenant_id=tid)
    with state.lock:
        if name.lower() in state.app_config_stores:
            raise ValueError(f"store {name!r} exists")
        state.app_config_stores[name.lower()] = store
    return store


def _store(state: FakeState, store: AppConfigStore | str) -> AppConfigStore:
    name = store.name if isinstance(store, AppConfigStore) else store
    with state.lock:
        found = state.app_config_stores.get(name.lower())
    if found is None:
        raise KeyError(f"no App Configuration store {name!r}")
    return found


def grant_app_config(state: FakeState, store: AppConfigStore | str, principal: Principal, role: str) -> None:
    """Assign App Configuration Data Owner or Data Reader on one store."""
    if role not in APP_CONFIG_ROLES:
        raise ValueError(f"unknown role {role!r}; known: {sorted(APP_CONFIG_ROLES)}")
    found = _store(state, store)
    oid = state.principal_id(principal, found.tenant_id)
    with state.lock:
        found.roles.setdefault(oid, set()).add(role)


def app_config_value(
    state: FakeState, store: AppConfigStore | str, key: str, label: str | None = None
) -> KeyValue | None:
    found = _store(state, store)
    with state.lock:
        return found.values.get((key, label))


def set_app_config_value(
    state: FakeState,
    store: AppConfigStore | str,
    key: str,
    value: str | None,
    label: str | None = None,
    content_type: str | None = None,
) -> KeyValue:
    """Set a key-value as someone else would (new etag)."""
    found = _store(state, store)
    with state.lock:
        return put_key_value(found, key, label, value, content_type)


# ------------------------------------------------------------------ DevOps variable groups


def _org(state: FakeState, org: DevOpsOrg | str) -> DevOpsOrg:
    return org if isinstance(org, DevOpsOrg) else state.devops_orgs[org.lower()]


def add_variable_group(
    state: FakeState,
    org: DevOpsOrg | str,
    project: str,
    name: str,
    variables: Mapping[str, str] = {},
    secrets: Mapping[str, str] = {},
) -> VariableGroup:
    """A variable group in one project with plain `variables` and secret `secrets`."""
    found = _org(state, org)
    project_id = find_project(state, found, project).id
    values = {k: GroupVariable(v) for k, v in variables.items()}
    values.update({k: GroupVariable(v, is_secret=True) for k, v in secrets.items()})
    return create_group(state, found, name, [project_id], values)


def variable_group(state: FakeState, org: DevOpsOrg | str, group: int | str) -> VariableGroup | None:
    """A group by id or name, with secret values (the REST API never shows them)."""
    found = _org(state, org)
    with state.lock:
        if isinstance(group, int):
            return found.variable_groups.get(group)
        return next((g for g in found.variable_groups.values() if g.name.lower() == group.lower()), None)


def set_group_variable(
    state: FakeState, org: DevOpsOrg | str, group: int | str, name: str, value: str, secret: bool = False
) -> VariableGroup:
    """Someone else edits the group (drift, or a concurrent edit): modifiedOn moves on."""
    from .variable_groups import touch

    found = variable_group(state, org, group)
    if found is None:
        raise KeyError(f"no variable group {group!r}")
    with state.lock:
        found.variables[name] = GroupVariable(value, secret)
        touch(found, "someone-else")
    return found


# ------------------------------------------------------------------ owners and inventory


def add_owner(state: FakeState, app: Application, principal: Principal) -> None:
    """Make a user or an app's service principal (in `app`'s tenant) an owner of `app`."""
    oid = state.principal_id(principal, app.tenant_id)
    with state.lock:
        app.owners.add(oid)


@cache
def _seed_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


def add_key_credential(
    state: FakeState, app: Application, end: dt.datetime, display_name: str | None = None
) -> KeyCredential:
    """A certificate credential ending at `end` (a real self-signed certificate, valid one year
    up to `end`), for inventories; sign-in with it needs `add_certificate` and the private key."""
    start = end - dt.timedelta(days=365)
    cert_pem, _ = make_self_signed_certificate(
        display_name or app.display_name, key=_seed_key(), days=365, not_before=start
    )
    cert = load_certificate(cert_pem)
    x5t, x5t_s256 = thumbprints(cert)
    cred = KeyCredential(new_id(), display_name or f"CN={app.display_name}", cert, x5t, x5t_s256, start, end)
    with state.lock:
        app.key_credentials.append(cred)
    return cred


EndDates = Callable[[int], Sequence[dt.datetime]]


def add_applications(
    state: FakeState,
    tenant: Tenant | str,
    count: int,
    *,
    prefix: str = "inventory-app",
    password_ends: EndDates = lambda i: (),
    certificate_ends: EndDates = lambda i: (),
    permissions: Iterable[str] = (),
) -> list[Application]:
    """Register `count` apps (`{prefix}-{i:04d}`); app i gets a secret per date in
    `password_ends(i)` and a certificate per date in `certificate_ends(i)`. 250 apps take well
    under a second."""
    apps = []
    for i in range(count):
        app = state.add_application(tenant, f"{prefix}-{i:04d}", permissions)
        for end in password_ends(i):
            state.add_password(
                app, f"secret-{i:04d}", end=end, start=min(utcnow(), end - dt.timedelta(days=1))
            )
        for end in certificate_ends(i):
            add_key_credential(state, app, end)
        apps.append(app)
    return apps
