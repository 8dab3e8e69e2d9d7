"""In-memory state of the stand-in: tenants, apps, users, tokens, DevOps, Key Vault.

One re-entrant lock (`FakeState.lock`) guards everything; handlers hold it for a few dict
operations only. Tests may read the dataclasses directly (take the lock when racing the server).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
import secrets
import string
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from .ca import load_certificate, thumbprints
from .tokens import KeyRing

UTC = dt.UTC

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
KEYVAULT_RESOURCE = "https://vault.azure.net"
KEYVAULT_APP_ID = "cfa8b339-82a2-471a-a3c9-0fc0be7a4093"
DEVOPS_RESOURCE = "499b84ac-1321-427f-aa17-267ca6975798"

# Directory role display name -> roleTemplateId (as in Entra).
DIRECTORY_ROLE_TEMPLATES: dict[str, str] = {
    "Global Administrator": "62e90394-69f5-4237-9190-012177145e10",
    "User Administrator": "fe930be7-5e62-47db-91af-98c3a49a38b1",
    "Helpdesk Administrator": "729827e3-9c14-49f7-bb1b-9608f156bbb8",
    "Authentication Administrator": "c4e39bd9-1100-46d3-8c65-fb160da0071f",
    "Privileged Authentication Administrator": "7be44c8a-adaf-4e2a-84d6-ab2649e08a13",
    "Application Administrator": "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3",
    "Cloud Application Administrator": "158c047a-c907-4556-b7ef-446551a6b5f7",
}

SECRET_ALPHABET = string.ascii_letters + string.digits + "_~.-"


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def iso(value: dt.datetime) -> str:
    """Graph's date-time format (UTC, `Z`)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> dt.datetime:
    """Parse an ISO 8601 date-time; naive values are UTC."""
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_id() -> str:
    return str(uuid.uuid4())


def new_client_secret() -> str:
    """A client secret in Entra's current shape: 3 chars, `8Q~`, 34 chars (40 in all)."""
    head = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(3))
    tail = "".join(secrets.choice(SECRET_ALPHABET) for _ in range(34))
    return f"{head}8Q~{tail}"


# --------------------------------------------------------------------------- directory objects


@dataclass
class Tenant:
    """An Entra tenant; `domains[0]` is its default verified domain."""

    id: str
    domains: list[str]
    display_name: str

    @property
    def default_domain(self) -> str:
        return self.domains[0]


@dataclass
class PasswordCredential:
    """A client secret of an app. Only a hash of the value is kept, as in Entra."""

    key_id: str
    display_name: str | None
    hint: str
    secret_hash: str
    start: dt.datetime
    end: dt.datetime
    created_at: float
    usable_after: float = 0.0  # epoch seconds; replication delay for secrets added through Graph

    def to_graph(self, secret_text: str | None = None) -> dict[str, Any]:
        return {
            "customKeyIdentifier": None,
            "displayName": self.display_name,
            "endDateTime": iso(self.end),
            "hint": self.hint,
            "keyId": self.key_id,
            "secretText": secret_text,
            "startDateTime": iso(self.start),
        }


@dataclass
class KeyCredential:
    """A certificate registered on an app (public part only)."""

    key_id: str
    display_name: str | None
    certificate: x509.Certificate
    x5t: str
    x5t_s256: str
    start: dt.datetime
    end: dt.datetime

    def to_graph(self) -> dict[str, Any]:
        return {
            "customKeyIdentifier": self.certificate.fingerprint(_sha1()).hex().upper(),
            "displayName": self.display_name,
            "endDateTime": iso(self.end),
            "key": None,
            "keyId": self.key_id,
            "startDateTime": iso(self.start),
            "type": "AsymmetricX509Cert",
            "usage": "Verify",
        }


def _sha1() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA1()  # noqa: S303 - the certificate thumbprint is SHA-1 by definition


@dataclass
class Application:
    """An app registration (lives in its home tenant)."""

    id: str
    app_id: str
    tenant_id: str
    display_name: str
    password_credentials: list[PasswordCredential] = field(default_factory=list)
    key_credentials: list[KeyCredential] = field(default_factory=list)
    redirect_uris: list[str] = field(default_factory=list)
    identifier_uris: list[str] = field(default_factory=list)
    multi_tenant: bool = False
    public_client: bool = False
    owners: set[str] = field(default_factory=set)
    # resource key -> delegated permissions granted for `/.default` in user flows
    delegated_permissions: dict[str, set[str]] = field(default_factory=dict)
    created: dt.datetime = field(default_factory=utcnow)

    def to_graph(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "appId": self.app_id,
            "displayName": self.display_name,
            "createdDateTime": iso(self.created),
            "publisherDomain": None,
            "signInAudience": "AzureADMultipleOrgs" if self.multi_tenant else "AzureADMyOrg",
            "identifierUris": list(self.identifier_uris),
            "isFallbackPublicClient": self.public_client,
            "web": {"redirectUris": list(self.redirect_uris)},
            "passwordCredentials": [c.to_graph() for c in self.password_credentials],
            "keyCredentials": [c.to_graph() for c in self.key_credentials],
        }


@dataclass
class ServicePrincipal:
    """An app's instance in a tenant, holding its grants there."""

    id: str
    app_id: str
    tenant_id: str
    display_name: str
    # resource key ("graph", "app:{appId}", ...) -> granted application permissions (app roles)
    app_role_grants: dict[str, set[str]] = field(default_factory=dict)
    directory_roles: set[str] = field(default_factory=set)

    @property
    def graph_permissions(self) -> set[str]:
        return self.app_role_grants.get("graph", set())

    def to_graph(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "appId": self.app_id,
            "displayName": self.display_name,
            "accountEnabled": True,
            "servicePrincipalType": "Application",
            "appOwnerOrganizationId": None,
        }


@dataclass
class PasswordChange:
    at: dt.datetime
    by: str  # object id of the caller, or "seed" / "self"
    force_change_next_sign_in: bool


@dataclass
class User:
    """A user; `password` is kept in clear because this is a test double."""

    id: str
    tenant_id: str
    user_principal_name: str
    display_name: str
    password: str
    account_enabled: bool = True
    force_change_password: bool = False
    directory_roles: set[str] = field(default_factory=set)
    password_changed_at: dt.datetime = field(default_factory=utcnow)
    password_history: list[PasswordChange] = field(default_factory=list)

    @property
    def password_change_count(self) -> int:
        """Password changes after creation."""
        return len(self.password_history)

    def to_graph(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "userPrincipalName": self.user_principal_name,
            "displayName": self.display_name,
            "mail": None,
            "accountEnabled": self.account_enabled,
            "givenName": None,
            "surname": None,
            "jobTitle": None,
            "businessPhones": [],
            "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": None,
        }


# --------------------------------------------------------------------------- tokens


@dataclass
class IssuedToken:
    uti: str
    kind: str  # "app" | "delegated" | "caller"
    tenant_id: str
    client_id: str | None
    oid: str | None
    aud: str
    grant_type: str
    roles: list[str]
    scp: list[str]
    issued_at: float
    expires_at: float


@dataclass
class RefreshToken:
    token: str
    client_id: str
    user_id: str
    tenant_id: str
    issued_at: float
    revoked_reason: str | None = None  # "rotated" | "password_changed" | "revoked"


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    tenant_id: str
    user_id: str
    redirect_uri: str
    scopes: list[str]
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    created_at: float
    redeemed: bool = False


# --------------------------------------------------------------------------- DevOps


@dataclass
class DevOpsProject:
    id: str
    name: str
    description: str
    revision: int
    last_update_time: dt.datetime
    state: str = "wellFormed"
    visibility: str = "private"


@dataclass
class DevOpsOrg:
    name: str
    id: str
    tenant_id: str | None
    projects: list[DevOpsProject] = field(default_factory=list)
    members: set[str] = field(default_factory=set)  # object ids of users / service principals
    variable_groups: dict[int, VariableGroup] = field(default_factory=dict)  # by id


@dataclass
class GroupVariable:
    """One variable of a variable group; a secret's value is write-only over REST."""

    value: str
    is_secret: bool = False
    is_read_only: bool = False


@dataclass
class VariableGroup:
    """A DevOps library variable group (type Vsts), shared by the projects it references."""

    id: int
    name: str
    description: str
    project_ids: list[str]
    variables: dict[str, GroupVariable]
    created_by: str
    created_on: dt.datetime
    modified_by: str
    modified_on: dt.datetime
    revision: int = 1  # internal: counts writes (the REST shape has only modifiedOn)


@dataclass
class PersonalAccessToken:
    token: str
    authorization_id: str
    org: str
    scopes: set[str]
    valid_to: dt.datetime
    display_name: str
    revoked: bool = False


# --------------------------------------------------------------------------- Key Vault


@dataclass
class SecretVersion:
    version: str
    value: str
    content_type: str | None
    tags: dict[str, str] | None
    enabled: bool
    not_before: int | None
    expires: int | None
    created: int
    updated: int


@dataclass
class VaultSecret:
    name: str
    versions: OrderedDict[str, SecretVersion] = field(default_factory=OrderedDict)
    deleted_date: int | None = None
    scheduled_purge_date: int | None = None

    @property
    def latest(self) -> SecretVersion:
        return next(reversed(self.versions.values()))


KEY_VAULT_ROLES = {
    "Key Vault Administrator": {"list", "read", "write", "purge"},
    "Key Vault Secrets Officer": {"list", "read", "write", "purge"},
    "Key Vault Secrets User": {"list", "read"},
    "Key Vault Reader": {"list"},
}


@dataclass
class Vault:
    """A key vault. The broker's own vault (name "") has its own port; named ones live by path.

    `roles`: object id -> Key Vault RBAC role names; None (the broker vault by default) lets every
    principal of the vault's tenant in."""

    name: str
    tenant_id: str | None
    secrets: dict[str, VaultSecret] = field(default_factory=dict)  # by lower-case name
    deleted_secrets: dict[str, VaultSecret] = field(default_factory=dict)
    roles: dict[str, set[str]] | None = field(default_factory=dict)

    def allows(self, oid: str, action: str) -> bool:
        if self.roles is None:
            return True
        return any(action in KEY_VAULT_ROLES.get(role, set()) for role in self.roles.get(oid, set()))


# --------------------------------------------------------------------------- App Configuration

APP_CONFIG_ROLES = {
    "App Configuration Data Owner": {"read", "write"},
    "App Configuration Data Reader": {"read"},
}


@dataclass
class KeyValue:
    key: str
    label: str | None
    value: str | None
    content_type: str | None
    tags: dict[str, str]
    etag: str
    last_modified: dt.datetime
    locked: bool = False


@dataclass
class AppConfigStore:
    """An App Configuration store, by path `/stores/NAME`; key-values by (key, label)."""

    name: str
    tenant_id: str
    values: dict[tuple[str, str | None], KeyValue] = field(default_factory=dict)
    roles: dict[str, set[str]] = field(default_factory=dict)  # object id -> role names

    def allows(self, oid: str, action: str) -> bool:
        return any(action in APP_CONFIG_ROLES.get(role, set()) for role in self.roles.get(oid, set()))


# --------------------------------------------------------------------------- the state


@dataclass
class Resource:
    """Something a token can be issued for."""

    key: str  # "graph", "keyvault", "devops", "arm", "storage", "graph-public", "app:{appId}"
    uri: str  # what the caller named; becomes `aud`


class FakeState:
    """All state of the stand-in. Seeding helpers are here; the HTTP handlers use the same objects."""

    def __init__(
        self,
        authority_host: str = "",
        graph_endpoint: str = "",
        key_vault_url: str = "",
        devops_endpoint: str = "",
    ) -> None:
        self.lock = threading.RLock()
        self.authority_host = authority_host.rstrip("/")
        self.graph_endpoint = graph_endpoint.rstrip("/")
        self.key_vault_url = key_vault_url.rstrip("/")
        self.devops_endpoint = devops_endpoint.rstrip("/")
        self.keys = KeyRing()
        self.tenants: dict[str, Tenant] = {}
        self.applications: dict[str, Application] = {}  # by object id
        self.service_principals: dict[str, ServicePrincipal] = {}  # by object id
        self.users: dict[str, User] = {}  # by object id
        self.issued_tokens: OrderedDict[str, IssuedToken] = OrderedDict()
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.authorization_codes: dict[str, AuthorizationCode] = {}
        self.consents: dict[tuple[str, str, str], set[tuple[str, str]]] = {}
        self.devops_orgs: dict[str, DevOpsOrg] = {}  # by lower-case name
        self.pats: dict[str, PersonalAccessToken] = {}
        self.secrets: dict[str, VaultSecret] = {}  # the broker vault's, by lower-case name
        self.deleted_secrets: dict[str, VaultSecret] = {}
        self.vaults: dict[str, Vault] = {}  # named vaults served by path, by lower-case name
        self.app_config_stores: dict[str, AppConfigStore] = {}  # by lower-case name
        self.base_url = authority_host.rstrip("/")  # the main port; vaults and stores live under it
        # behaviour knobs
        self.replication_delay = 0.0
        self.access_token_lifetime = 3599
        self.authorization_code_lifetime = 600.0
        self.authorize_user_id: str | None = None
        self.authorize_deny = False
        self.vault_tenant_id: str | None = None
        # object ids allowed to use the vault's secrets (RBAC); None = every principal of its tenant
        self.vault_principals: set[str] | None = None
        self.max_issued_tokens = 20000
        self._counter = itertools.count(1)
        self._apps_by_app_id: dict[str, Application] = {}
        self._sps_by_app: dict[tuple[str, str], ServicePrincipal] = {}
        self._users_by_upn: dict[tuple[str, str], User] = {}

    # ------------------------------------------------------------------ lookups

    def find_tenant(self, tenant: str) -> Tenant | None:
        """By id or by any verified domain (case-insensitive)."""
        key = tenant.strip().lower()
        with self.lock:
            found = self.tenants.get(key)
            if found:
                return found
            for candidate in self.tenants.values():
                if key in (d.lower() for d in candidate.domains):
                    return candidate
        return None

    def find_application(self, app_id: str) -> Application | None:
        """By appId (client id)."""
        with self.lock:
            return self._apps_by_app_id.get(app_id.lower())

    def find_service_principal(self, app_id: str, tenant_id: str) -> ServicePrincipal | None:
        with self.lock:
            return self._sps_by_app.get((app_id.lower(), tenant_id))

    def find_user(self, tenant_id: str, id_or_upn: str) -> User | None:
        """By object id or user principal name, within a tenant."""
        key = id_or_upn.lower()
        with self.lock:
            user = self.users.get(key) or self._users_by_upn.get((tenant_id, key))
            if user and user.tenant_id == tenant_id:
                return user
        return None

    def resolve_resource(self, uri: str, tenant_id: str) -> Resource | None:
        """Map a scope's resource part to a known resource (or None: AADSTS500011)."""
        norm = uri.rstrip("/")
        lowered = norm.lower()
        fixed = {
            self.graph_endpoint.lower(): "graph",
            GRAPH_APP_ID: "graph",
            "https://graph.microsoft.com": "graph-public",
            KEYVAULT_RESOURCE: "keyvault",
            KEYVAULT_APP_ID: "keyvault",
            DEVOPS_RESOURCE: "devops",
            "https://app.vssps.visualstudio.com": "devops",
            "https://management.azure.com": "arm",
            "https://management.core.windows.net": "arm",
            "https://storage.azure.com": "storage",
            "https://appconfig.azure.com": "appconfig",
            "https://azconfig.io": "appconfig",
            "https://eventgrid.azure.net": "eventgrid",
        }
        if lowered in fixed:
            return Resource(fixed[lowered], norm)
        if self.base_url and lowered.startswith(f"{self.base_url.lower()}/stores/"):
            return Resource("appconfig", norm)  # the endpoint as audience, as older SDKs asked
        with self.lock:
            candidates = [self._apps_by_app_id[lowered]] if lowered in self._apps_by_app_id else []
            candidates += [
                app
                for app in self.applications.values()
                if lowered in (u.lower().rstrip("/") for u in app.identifier_uris)
            ]
            for app in candidates:
                if app.tenant_id == tenant_id or app.multi_tenant:
                    return Resource(f"app:{app.app_id}", norm)
        return None

    def check_secret(self, app: Application, secret: str) -> PasswordCredential | None:
        """The password credential whose value is `secret`, if any."""
        digest = sha256_hex(secret)
        with self.lock:
            for cred in app.password_credentials:
                if hmac.compare_digest(cred.secret_hash, digest):
                    return cred
        return None

    # ------------------------------------------------------------------ seeding

    def add_tenant(
        self, tenant_id: str | None = None, domain: str | None = None, display_name: str | None = None
    ) -> Tenant:
        """Add a tenant (GUID id; `domain` becomes its default verified domain)."""
        n = next(self._counter)
        tid = (tenant_id or new_id()).lower()
        domains = [domain] if domain else []
        domains.append(f"fake{n}.onmicrosoft.com")
        tenant = Tenant(id=tid, domains=domains, display_name=display_name or f"Tenant {n}")
        with self.lock:
            self.tenants[tid] = tenant
            if self.vault_tenant_id is None:
                self.vault_tenant_id = tid
        return tenant

    def add_application(
        self,
        tenant: Tenant | str,
        display_name: str,
        permissions: Iterable[str] = (),
        directory_roles: Iterable[str] = (),
        *,
        multi_tenant: bool = False,
        redirect_uris: Iterable[str] = (),
        identifier_uris: Iterable[str] = (),
        public_client: bool = False,
        delegated_permissions: Iterable[str] = ("User.Read",),
        app_id: str | None = None,
        owned_by_itself: bool = False,
    ) -> Application:
        """Register an app with a service principal in `tenant`.

        `permissions` are Graph application permissions granted with admin consent
        (e.g. "Application.ReadWrite.All", "User.ReadWrite.All"); `directory_roles` are Entra
        roles assigned to its service principal (e.g. "User Administrator").
        `delegated_permissions` are the Graph scopes a `/.default` user flow grants.
        `owned_by_itself` makes its service principal an owner of the app (for
        Application.ReadWrite.OwnedBy).
        """
        tid = self._tenant_id(tenant)
        for role in directory_roles:
            if role not in DIRECTORY_ROLE_TEMPLATES:
                raise ValueError(
                    f"unknown directory role {role!r}; known: {sorted(DIRECTORY_ROLE_TEMPLATES)}"
                )
        app = Application(
            id=new_id(),
            app_id=(app_id or new_id()).lower(),
            tenant_id=tid,
            display_name=display_name,
            redirect_uris=list(redirect_uris),
            identifier_uris=list(identifier_uris),
            multi_tenant=multi_tenant,
            public_client=public_client,
            delegated_permissions={
                "graph": set(delegated_permissions),
                "devops": {"user_impersonation"},
                "keyvault": {"user_impersonation"},
                "appconfig": {"KeyValue.Read", "KeyValue.Write", "KeyValue.Delete"},
            },
        )
        with self.lock:
            self.applications[app.id] = app
            self._apps_by_app_id[app.app_id] = app
            sp = self._ensure_service_principal(app, tid)
            sp.app_role_grants["graph"] = set(permissions)
            sp.directory_roles = set(directory_roles)
            if owned_by_itself:
                app.owners.add(sp.id)
        return app

    def add_service_principal(
        self,
        app: Application,
        tenant: Tenant | str,
        permissions: Iterable[str] = (),
        directory_roles: Iterable[str] = (),
    ) -> ServicePrincipal:
        """Consent a (multi-tenant) app into another tenant, with grants there."""
        tid = self._tenant_id(tenant)
        with self.lock:
            sp = self._ensure_service_principal(app, tid)
            sp.app_role_grants.setdefault("graph", set()).update(permissions)
            sp.directory_roles.update(directory_roles)
        return sp

    def service_principal(self, app: Application, tenant: Tenant | str | None = None) -> ServicePrincipal:
        """The app's service principal in `tenant` (default: its home tenant)."""
        tid = self._tenant_id(tenant) if tenant else app.tenant_id
        sp = self.find_service_principal(app.app_id, tid)
        if sp is None:
            raise KeyError(f"no service principal of {app.app_id} in {tid}")
        return sp

    def grant_permissions(
        self,
        app: Application,
        permissions: Iterable[str],
        resource: str = "graph",
        tenant: Tenant | str | None = None,
    ) -> None:
        """Grant more application permissions (app roles) on a resource key ("graph", "app:{appId}")."""
        sp = self.service_principal(app, tenant)
        with self.lock:
            sp.app_role_grants.setdefault(resource, set()).update(permissions)

    def revoke_permissions(
        self,
        app: Application,
        permissions: Iterable[str],
        resource: str = "graph",
        tenant: Tenant | str | None = None,
    ) -> None:
        """Remove granted application permissions (new tokens no longer carry them)."""
        sp = self.service_principal(app, tenant)
        with self.lock:
            sp.app_role_grants.setdefault(resource, set()).difference_update(permissions)

    def assign_directory_role(
        self, principal: Application | User, role: str, tenant: Tenant | str | None = None
    ) -> None:
        """Assign an Entra directory role to an app's service principal or to a user."""
        if role not in DIRECTORY_ROLE_TEMPLATES:
            raise ValueError(f"unknown directory role {role!r}")
        with self.lock:
            if isinstance(principal, User):
                principal.directory_roles.add(role)
            else:
                self.service_principal(principal, tenant).directory_roles.add(role)

    def remove_directory_role(
        self, principal: Application | User, role: str, tenant: Tenant | str | None = None
    ) -> None:
        with self.lock:
            if isinstance(principal, User):
                principal.directory_roles.discard(role)
            else:
                self.service_principal(principal, tenant).directory_roles.discard(role)

    def add_password(
        self,
        app: Application,
        display_name: str | None = None,
        end: dt.datetime | None = None,
        start: dt.datetime | None = None,
        *,
        replication_delay: float = 0.0,
    ) -> tuple[str, str]:
        """Add a client secret; returns (key_id, secret_text). `end` in the past makes it expired."""
        secret = new_client_secret()
        now = utcnow()
        cred = PasswordCredential(
            key_id=new_id(),
            display_name=display_name,
            hint=secret[:3],
            secret_hash=sha256_hex(secret),
            start=start or now,
            end=end or now + dt.timedelta(days=730),
            created_at=time.time(),
            usable_after=time.time() + replication_delay,
        )
        with self.lock:
            app.password_credentials.append(cred)
        return cred.key_id, secret

    def remove_password(self, app: Application, key_id: str) -> bool:
        """Remove a client secret by key id; False if there was none."""
        with self.lock:
            before = len(app.password_credentials)
            app.password_credentials[:] = [c for c in app.password_credentials if c.key_id != key_id]
            return len(app.password_credentials) != before

    def add_certificate(
        self,
        app: Application,
        cert_pem: str | bytes,
        display_name: str | None = None,
    ) -> KeyCredential:
        """Register a certificate (public part) on an app for client-assertion sign-in."""
        cert = load_certificate(cert_pem)
        x5t, x5t_s256 = thumbprints(cert)
        cred = KeyCredential(
            key_id=new_id(),
            display_name=display_name or cert.subject.rfc4514_string(),
            certificate=cert,
            x5t=x5t,
            x5t_s256=x5t_s256,
            start=cert.not_valid_before_utc,
            end=cert.not_valid_after_utc,
        )
        with self.lock:
            app.key_credentials.append(cred)
        return cred

    def add_user(
        self,
        tenant: Tenant | str,
        upn: str,
        password: str,
        display_name: str | None = None,
        *,
        directory_roles: Iterable[str] = (),
        account_enabled: bool = True,
    ) -> User:
        """Add a user who can sign in with `password` (ROPC, authorize)."""
        tid = self._tenant_id(tenant)
        user = User(
            id=new_id(),
            tenant_id=tid,
            user_principal_name=upn,
            display_name=display_name or upn.split("@")[0],
            password=password,
            account_enabled=account_enabled,
            directory_roles=set(directory_roles),
        )
        with self.lock:
            self.users[user.id] = user
            self._users_by_upn[(tid, upn.lower())] = user
        return user

    def set_user_password(
        self, user: User, password: str, *, by: str = "seed", force_change_next_sign_in: bool = False
    ) -> None:
        """Change a user's password as Entra does: history recorded, refresh tokens revoked."""
        with self.lock:
            user.password = password
            user.force_change_password = force_change_next_sign_in
            user.password_changed_at = utcnow()
            user.password_history.append(
                PasswordChange(user.password_changed_at, by, force_change_next_sign_in)
            )
            for rt in self.refresh_tokens.values():
                if rt.user_id == user.id and rt.revoked_reason is None:
                    rt.revoked_reason = "password_changed"

    def add_devops_org(
        self,
        name: str,
        projects: int | Iterable[str] = 0,
        tenant: Tenant | str | None = None,
        members: Iterable[Application | User | str] = (),
    ) -> DevOpsOrg:
        """An Azure DevOps organization with N generated projects (or the named ones).

        `tenant` connects it to an Entra tenant (Bearer tokens must come from it); `members`
        are the users / apps (service principals) allowed to call it with Entra tokens.
        """
        org = DevOpsOrg(name=name, id=new_id(), tenant_id=self._tenant_id(tenant) if tenant else None)
        names = (
            [f"project-{i:03d}" for i in range(1, projects + 1)]
            if isinstance(projects, int)
            else list(projects)
        )
        for i, project_name in enumerate(names):
            org.projects.append(
                DevOpsProject(
                    id=new_id(),
                    name=project_name,
                    description=f"{project_name} description",
                    revision=100 + i,
                    last_update_time=utcnow(),
                )
            )
        with self.lock:
            self.devops_orgs[name.lower()] = org
        for member in members:
            self.add_devops_member(org, member)
        return org

    def add_devops_member(self, org: DevOpsOrg | str, member: Application | User | str) -> None:
        """Add a user, an app's (home tenant) service principal, or an object id to an organization."""
        target = org if isinstance(org, DevOpsOrg) else self.devops_orgs[org.lower()]
        if isinstance(member, Application):
            oid = self.service_principal(member).id
        elif isinstance(member, User):
            oid = member.id
        else:
            oid = member
        with self.lock:
            target.members.add(oid)

    def add_pat(
        self,
        org: DevOpsOrg | str,
        scopes: Iterable[str] = ("vso.project",),
        expired: bool = False,
        display_name: str = "azure-fake PAT",
        valid_for: dt.timedelta = dt.timedelta(days=30),
    ) -> str:
        """A personal access token for one organization; returns the token text (52 chars)."""
        name = org.name if isinstance(org, DevOpsOrg) else org
        token = "".join(secrets.choice(string.ascii_lowercase + "234567") for _ in range(52))
        valid_to = utcnow() - dt.timedelta(days=1) if expired else utcnow() + valid_for
        pat = PersonalAccessToken(token, new_id(), name.lower(), set(scopes), valid_to, display_name)
        with self.lock:
            self.pats[token] = pat
        return token

    def revoke_pat(self, token: str) -> None:
        with self.lock:
            self.pats[token].revoked = True

    def set_secret(
        self, name: str, value: str, content_type: str | None = None, vault: str = ""
    ) -> SecretVersion:
        """Put a Key Vault secret version directly (as if set by someone else)."""
        from .keyvault import put_secret_version

        return put_secret_version(self, self.vault(vault), name, value, content_type, None, {})

    def vault(self, name: str = "") -> Vault:
        """A named vault, or (name "") a view of the broker vault over `secrets`/`deleted_secrets`."""
        with self.lock:
            if not name:
                return Vault(
                    "",
                    self.vault_tenant_id,
                    self.secrets,
                    self.deleted_secrets,
                    None
                    if self.vault_principals is None
                    else {oid: {"Key Vault Secrets Officer"} for oid in self.vault_principals},
                )
            found = self.vaults.get(name.lower())
        if found is None:
            raise KeyError(f"no vault named {name!r}; add_vault first")
        return found

    def principal_id(self, principal: Application | User | str, tenant_id: str) -> str:
        """The object id that tokens carry: an app's service principal in `tenant_id`, a user's id."""
        if isinstance(principal, Application):
            return self.service_principal(principal, tenant_id).id
        if isinstance(principal, User):
            return principal.id
        return principal

    # ------------------------------------------------------------------ tokens bookkeeping

    def record_token(self, token: IssuedToken) -> None:
        with self.lock:
            self.issued_tokens[token.uti] = token
            while len(self.issued_tokens) > self.max_issued_tokens:
                self.issued_tokens.popitem(last=False)

    def tokens_for(self, client_id: str | None = None, kind: str | None = None) -> list[IssuedToken]:
        """Issued tokens, optionally filtered by client id and kind ("app", "delegated", "caller")."""
        with self.lock:
            return [
                t
                for t in self.issued_tokens.values()
                if (client_id is None or t.client_id == client_id) and (kind is None or t.kind == kind)
            ]

    # ------------------------------------------------------------------ helpers

    def _tenant_id(self, tenant: Tenant | str | None) -> str:
        if isinstance(tenant, Tenant):
            return tenant.id
        if tenant is None:
            raise ValueError("a tenant is required")
        found = self.find_tenant(tenant)
        if found is None:
            raise KeyError(f"unknown tenant {tenant!r}")
        return found.id

    def _ensure_service_principal(self, app: Application, tenant_id: str) -> ServicePrincipal:
        sp = self.find_service_principal(app.app_id, tenant_id)
        if sp is None:
            sp = ServicePrincipal(
                id=new_id(), app_id=app.app_id, tenant_id=tenant_id, display_name=app.display_name
            )
            self.service_principals[sp.id] = sp
            self._sps_by_app[(app.app_id, tenant_id)] = sp
        return sp

    def summary(self) -> dict[str, Any]:
        """A JSON-able overview (no secret values) for the control API."""
        with self.lock:
            return {
                "tenants": [
                    {"id": t.id, "domains": t.domains, "displayName": t.display_name}
                    for t in self.tenants.values()
                ],
                "applications": [
                    {
                        **app.to_graph(),
                        "tenantId": app.tenant_id,
                        "servicePrincipals": [
                            {
                                "id": sp.id,
                                "tenantId": sp.tenant_id,
                                "appRoleGrants": {k: sorted(v) for k, v in sp.app_role_grants.items()},
                                "directoryRoles": sorted(sp.directory_roles),
                            }
                            for sp in self.service_principals.values()
                            if sp.app_id == app.app_id
                        ],
                    }
                    for app in self.applications.values()
                ],
                "users": [
                    {
                        **u.to_graph(),
                        "tenantId": u.tenant_id,
                        "passwordChangeCount": u.password_change_count,
                        "directoryRoles": sorted(u.directory_roles),
                    }
                    for u in self.users.values()
                ],
                "devopsOrganizations": [
                    {
                        "name": o.name,
                        "tenantId": o.tenant_id,
                        "projects": len(o.projects),
                        "members": sorted(o.members),
                    }
                    for o in self.devops_orgs.values()
                ],
                "personalAccessTokens": [
                    {
                        "org": p.org,
                        "scopes": sorted(p.scopes),
                        "validTo": iso(p.valid_to),
                        "revoked": p.revoked,
                    }
                    for p in self.pats.values()
                ],
                "keyVault": {
                    "tenantId": self.vault_tenant_id,
                    "secrets": sorted(s.name for s in self.secrets.values()),
                    "deletedSecrets": sorted(s.name for s in self.deleted_secrets.values()),
                },
                "vaults": [
                    {
                        "name": v.name,
                        "tenantId": v.tenant_id,
                        "secrets": sorted(s.name for s in v.secrets.values()),
                        "deletedSecrets": sorted(s.name for s in v.deleted_secrets.values()),
                        "roles": {oid: sorted(r) for oid, r in (v.roles or {}).items()},
                    }
                    for v in self.vaults.values()
                ],
                "appConfigStores": [
                    {
                        "name": store.name,
                        "tenantId": store.tenant_id,
                        "keys": sorted(f"{k}|{label or ''}" for k, label in store.values),
                        "roles": {oid: sorted(r) for oid, r in store.roles.items()},
                    }
                    for store in self.app_config_stores.values()
                ],
                "variableGroups": [
                    {
                        "org": o.name,
                        "id": g.id,
                        "name": g.name,
                        "variables": sorted(g.variables),
                        "revision": g.revision,
                    }
                    for o in self.devops_orgs.values()
                    for g in o.variable_groups.values()
                ],
                "issuedTokens": len(self.issued_tokens),
                "replicationDelay": self.replication_delay,
            }
