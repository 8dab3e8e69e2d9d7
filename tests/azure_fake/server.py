"""The stand-in as a server: one FastAPI app under uvicorn on loopback HTTPS, and its handle.

Two listening sockets share one event loop (a background thread):
- the main port: Entra ID at the root (the authority host), Graph under `/graph`, Azure DevOps
  under `/devops`, the control API under `/_control`;
- the vault port: Key Vault at the root (its SDK needs the vault at the root of a host).

An outer ASGI layer classifies each request by service, counts it, applies the Graph rate limit
and injected faults, then hands it to the app.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from . import control, devops, entra, graph, keyvault
from .ca import TlsMaterial, create_tls_material, shared_tls_material, trust_ca_file
from .faults import FaultRule, Faults, RequestRecord, fault_body, normalize_service
from .state import (
    Application,
    DevOpsOrg,
    FakeState,
    KeyCredential,
    SecretVersion,
    ServicePrincipal,
    Tenant,
    User,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_app(state: FakeState, faults: Faults, handle: FakeAzure | None = None) -> FastAPI:
    """The FastAPI app with every service's routes (Entra last: its paths start with a variable)."""
    app = FastAPI(title="azure-fake", openapi_url=None, docs_url=None, redoc_url=None, redirect_slashes=False)
    app.state.azure = state
    app.state.faults = faults
    app.state.handle = handle
    app.include_router(control.router)
    app.include_router(keyvault.router)
    app.include_router(graph.router)
    app.include_router(devops.router)
    app.include_router(entra.router)
    return app


class FaultLayer:
    """ASGI wrapper: vault-port rewrite, service classification, counters, rate limit, faults."""

    def __init__(self, app: ASGIApp, faults: Faults, vault_port: int) -> None:
        self.app = app
        self.faults = faults
        self.vault_port = vault_port

    def classify(self, scope: Scope) -> tuple[str, Scope]:
        path: str = scope["path"]
        server = scope.get("server") or ("", 0)
        if server[1] == self.vault_port:
            scope = dict(scope)
            scope["path"] = keyvault.PREFIX + path
            scope["raw_path"] = keyvault.PREFIX.encode() + (scope.get("raw_path") or path.encode())
            return "keyvault", scope
        if path.startswith("/_control"):
            return "control", scope
        if path.startswith(keyvault.PREFIX):
            return "none", scope
        if path.startswith("/graph/") or path == "/graph":
            return "graph", scope
        if path.startswith(devops.PREFIX + "/"):
            return "devops", scope
        return "token", scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_path: str = scope["path"]
        service, scope = self.classify(scope)
        if service == "none":
            await _send_json(send, 404, {"detail": "Not Found"}, {})
            return
        rid = str(uuid.uuid4())
        scope["azure_fake.request_id"] = rid
        if service == "control":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        record = self.faults.record(service, method, client_path)
        send = _recording(send, record)
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        client_rid = headers.get("client-request-id")
        if service == "graph":
            wait = self.faults.graph_throttle(_token_tenant(headers.get("authorization", "")))
            if wait is not None:
                await _send_json(
                    send, 429, fault_body("graph", 429, rid, client_rid), _fault_headers(service, rid, wait)
                )
                return
        rule = self.faults.take(service, method, client_path)
        if rule is not None:
            if rule.kind == "delay":
                # The request is received in full first, so it is processed even if the client
                # gives up waiting (a "lost response": the side effect happens, the caller never knows).
                receive = await _buffered(receive)
                await asyncio.sleep(rule.seconds)
            elif rule.kind == "lost":
                # Azure did the work, the answer never arrived: run the request to completion,
                # drop its response, and answer 504 as a gateway that lost the reply would.
                async def discard(message: Message) -> None:
                    return None

                await self.app(scope, await _buffered(receive), discard)
                await _send_json(
                    send, 504, fault_body(service, 504, rid, client_rid), _fault_headers(service, rid, None)
                )
                return
            elif rule.kind == "timeout":
                await asyncio.sleep(rule.seconds)
                await _send_json(
                    send, 504, fault_body(service, 504, rid, client_rid), _fault_headers(service, rid, None)
                )
                return
            else:
                status = int(rule.kind)
                retry = rule.retry_after if status in (429, 503) else None
                await _send_json(
                    send,
                    status,
                    fault_body(service, status, rid, client_rid),
                    _fault_headers(service, rid, retry),
                )
                return
        await self.app(scope, receive, send)


def _token_tenant(authorization: str) -> str | None:
    """The `tid` of a bearer token (unverified: only to pick the tenant's rate-limit bucket)."""
    import base64
    import json

    try:
        payload = authorization.split(" ", 1)[1].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["tid"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def _fault_headers(service: str, rid: str, retry_after: int | None) -> dict[str, str]:
    headers = {"x-ms-request-id": rid}
    if service == "graph":
        headers.update({"request-id": rid, "client-request-id": rid})
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return headers


async def _buffered(receive: Receive) -> Receive:
    """Read the whole request body now; return a receive() that replays it."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    pending = iter(messages)

    async def replay() -> Message:
        for message in pending:
            return message
        return await receive()

    return replay


def _recording(send: Send, record: RequestRecord) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            record.status = int(message["status"])
        await send(message)

    return wrapped


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw = [
        (b"content-type", b"application/json; charset=utf-8"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class FakeAzure:
    """Handle of a running stand-in: endpoints, state, seeding, faults. Use `start_fake_azure()`."""

    def __init__(
        self, port: int = 0, vault_port: int = 0, tls_dir: Path | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.tls: TlsMaterial = create_tls_material(tls_dir) if tls_dir else shared_tls_material()
        self._main_socket = _listen(host, port)
        self._vault_socket = _listen(host, vault_port)
        self.port: int = self._main_socket.getsockname()[1]
        self.vault_port: int = self._vault_socket.getsockname()[1]
        self.base_url = f"https://{host}:{self.port}"
        self.state = FakeState(
            authority_host=self.authority_host,
            graph_endpoint=self.graph_endpoint,
            key_vault_url=self.key_vault_url,
            devops_endpoint=self.devops_endpoint,
        )
        self.faults = Faults()
        app = create_app(self.state, self.faults, self)
        layer = FaultLayer(app, self.faults, self.vault_port)
        config = uvicorn.Config(
            layer,
            ssl_certfile=str(self.tls.cert_file),
            ssl_keyfile=str(self.tls.key_file),
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="h11",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="azure-fake", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._server.serve(sockets=[self._main_socket, self._vault_socket]))

    def start(self, timeout: float = 20) -> FakeAzure:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("azure-fake did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving; open connections and requests in flight are dropped."""
        self._server.should_exit = True
        self._server.force_exit = True  # do not wait for idle keep-alive TLS connections
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for sock in (self._main_socket, self._vault_socket):
            sock.close()

    def __enter__(self) -> FakeAzure:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ endpoints

    @property
    def authority_host(self) -> str:
        """What AZURE_AUTHORITY_HOST is set to (Entra ID lives at the root)."""
        return self.base_url

    @property
    def graph_endpoint(self) -> str:
        """Graph root; clients append `/v1.0` and request `{graph_endpoint}/.default`."""
        return f"{self.base_url}/graph"

    @property
    def devops_endpoint(self) -> str:
        """Azure DevOps root; clients append `/{organization}`."""
        return f"{self.base_url}/devops"

    @property
    def key_vault_url(self) -> str:
        return f"https://127.0.0.1:{self.vault_port}"

    @property
    def ca_file(self) -> Path:
        """PEM of the CA that signed the server certificate."""
        return self.tls.ca_file

    def token_endpoint(self, tenant: Tenant | str) -> str:
        return f"{self.authority_host}/{_tid(tenant)}/oauth2/v2.0/token"

    def authorize_endpoint(self, tenant: Tenant | str) -> str:
        return f"{self.authority_host}/{_tid(tenant)}/oauth2/v2.0/authorize"

    def issuer(self, tenant: Tenant | str) -> str:
        return f"{self.authority_host}/{_tid(tenant)}/v2.0"

    def openid_configuration_url(self, tenant: Tenant | str) -> str:
        return f"{self.authority_host}/{_tid(tenant)}/v2.0/.well-known/openid-configuration"

    def jwks_uri(self, tenant: Tenant | str = "common") -> str:
        return f"{self.authority_host}/{_tid(tenant)}/discovery/v2.0/keys"

    def env(self) -> dict[str, str]:
        """Settings that point a client process at the stand-in."""
        return {
            "AZURE_AUTHORITY_HOST": self.authority_host,
            "GRAPH_ENDPOINT": self.graph_endpoint,
            "AZURE_DEVOPS_ENDPOINT": self.devops_endpoint,
            "KEY_VAULT_URL": self.key_vault_url,
            "SSL_CERT_FILE": str(self.ca_file),
            "REQUESTS_CA_BUNDLE": str(self.ca_file),
        }

    def trust(self) -> None:
        """Make this process trust the CA (env vars + aiohttp's import-time SSL context)."""
        trust_ca_file(self.ca_file)

    # ------------------------------------------------------------------ seeding (see FakeState)

    def add_tenant(
        self, tenant_id: str | None = None, domain: str | None = None, display_name: str | None = None
    ) -> Tenant:
        """Add a tenant (GUID id; `domain` becomes its default verified domain)."""
        return self.state.add_tenant(tenant_id, domain, display_name)

    def add_application(
        self,
        tenant: Tenant | str,
        display_name: str,
        permissions: Iterable[str] = (),
        directory_roles: Iterable[str] = (),
        **options: Any,
    ) -> Application:
        """Register an app + service principal; see FakeState.add_application for the options
        (multi_tenant, redirect_uris, identifier_uris, public_client, delegated_permissions, app_id,
        owned_by_itself)."""
        return self.state.add_application(tenant, display_name, permissions, directory_roles, **options)

    def add_service_principal(
        self,
        app: Application,
        tenant: Tenant | str,
        permissions: Iterable[str] = (),
        directory_roles: Iterable[str] = (),
    ) -> ServicePrincipal:
        """Consent a multi-tenant app into another tenant, with grants there."""
        return self.state.add_service_principal(app, tenant, permissions, directory_roles)

    def service_principal(self, app: Application, tenant: Tenant | str | None = None) -> ServicePrincipal:
        return self.state.service_principal(app, tenant)

    def grant_permissions(
        self, app: Application, permissions: Iterable[str], resource: str = "graph"
    ) -> None:
        """Grant application permissions (app roles) on "graph" or "app:{appId}"."""
        self.state.grant_permissions(app, permissions, resource)

    def revoke_permissions(
        self, app: Application, permissions: Iterable[str], resource: str = "graph"
    ) -> None:
        self.state.revoke_permissions(app, permissions, resource)

    def assign_directory_role(self, principal: Application | User, role: str) -> None:
        """E.g. assign_directory_role(app, "User Administrator")."""
        self.state.assign_directory_role(principal, role)

    def remove_directory_role(self, principal: Application | User, role: str) -> None:
        self.state.remove_directory_role(principal, role)

    def add_password(
        self,
        app: Application,
        display_name: str | None = None,
        end: dt.datetime | None = None,
        start: dt.datetime | None = None,
        *,
        replication_delay: float = 0.0,
    ) -> tuple[str, str]:
        """Add a client secret; returns (key_id, secret_text). A past `end` makes it expired."""
        return self.state.add_password(app, display_name, end, start, replication_delay=replication_delay)

    def remove_password(self, app: Application, key_id: str) -> bool:
        return self.state.remove_password(app, key_id)

    def add_certificate(
        self, app: Application, cert_pem: str | bytes, display_name: str | None = None
    ) -> KeyCredential:
        """Register a certificate for client-assertion sign-in (see ca.make_self_signed_certificate)."""
        return self.state.add_certificate(app, cert_pem, display_name)

    def add_user(
        self, tenant: Tenant | str, upn: str, password: str, display_name: str | None = None, **options: Any
    ) -> User:
        """Add a user (options: directory_roles, account_enabled)."""
        return self.state.add_user(tenant, upn, password, display_name, **options)

    def set_user_password(self, user: User, password: str, force_change_next_sign_in: bool = False) -> None:
        self.state.set_user_password(user, password, force_change_next_sign_in=force_change_next_sign_in)

    def add_devops_org(
        self,
        name: str,
        projects: int | Iterable[str] = 0,
        tenant: Tenant | str | None = None,
        members: Iterable[Application | User | str] = (),
    ) -> DevOpsOrg:
        """A DevOps organization with N projects; `members` may call it with Entra tokens."""
        return self.state.add_devops_org(name, projects, tenant, members)

    def add_devops_member(self, org: DevOpsOrg | str, member: Application | User | str) -> None:
        self.state.add_devops_member(org, member)

    def add_pat(
        self, org: DevOpsOrg | str, scopes: Iterable[str] = ("vso.project",), expired: bool = False
    ) -> str:
        """A personal access token for `org`; returns its text."""
        return self.state.add_pat(org, scopes, expired)

    def revoke_pat(self, token: str) -> None:
        self.state.revoke_pat(token)

    def set_secret(self, name: str, value: str, content_type: str | None = None) -> SecretVersion:
        """Put a Key Vault secret version directly."""
        return self.state.set_secret(name, value, content_type)

    def set_vault_tenant(self, tenant: Tenant | str) -> None:
        """The tenant whose tokens the vault accepts (default: the first tenant added)."""
        with self.state.lock:
            self.state.vault_tenant_id = (
                _tid(tenant) if isinstance(tenant, Tenant) else self.state._tenant_id(tenant)
            )

    def restrict_vault_access(self, principals: Iterable[Application | User | str] | None) -> None:
        """Only these principals may use the vault's secrets (others: 403 ForbiddenByRbac).

        Apps stand for their service principal in the vault's tenant. None opens it to every
        principal of the vault's tenant again (the default)."""
        if principals is None:
            with self.state.lock:
                self.state.vault_principals = None
            return
        tenant = self.state.vault_tenant_id
        oids: set[str] = set()
        for principal in principals:
            if isinstance(principal, Application):
                oids.add(self.state.service_principal(principal, tenant).id)
            elif isinstance(principal, User):
                oids.add(principal.id)
            else:
                oids.add(principal)
        with self.state.lock:
            self.state.vault_principals = oids

    # ------------------------------------------------------------------ tokens and keys

    def mint_caller_token(
        self,
        tenant_id: str,
        audience: str,
        roles: list[str] | tuple[str, ...] = (),
        expires_in: int = 3600,
        issuer: str | None = None,
        alg: str = "RS256",
        kid: str | None = None,
        key: Any = None,
        extra_claims: dict[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """A token for the broker's API; see entra.mint_caller_token for bad-token options."""
        return entra.mint_caller_token(
            self.state, tenant_id, audience, roles, expires_in, issuer, alg, kid, key, extra_claims, **options
        )

    def rotate_signing_key(self, drop_old: bool = False) -> str:
        """Publish a new signing key and sign with it from now on; returns its kid."""
        return self.state.keys.rotate(drop_old).kid

    @property
    def signing_kid(self) -> str:
        return self.state.keys.current.kid

    def signing_public_key_pem(self) -> bytes:
        return self.state.keys.current.public_pem()

    def set_authorize_behaviour(self, user: User | str | None = None, deny: bool = False) -> None:
        """Who signs in at /authorize (default: login_hint, else the tenant's first user).

        `deny=True` makes /authorize redirect with error=access_denied (AADSTS65004)."""
        with self.state.lock:
            self.state.authorize_user_id = user.id if isinstance(user, User) else user
            self.state.authorize_deny = deny

    # ------------------------------------------------------------------ faults and counters

    def inject(
        self,
        service: str,
        kind: str,
        count: int | None = 1,
        path_pattern: str | None = None,
        method: str | None = None,
        retry_after: int = 1,
        seconds: float = 5.0,
    ) -> FaultRule:
        """Make the next `count` matching requests fail (None: until reset_faults).

        service: "token" | "graph" | "keyvault" | "devops" | "*"; kind: "429" (Retry-After),
        "503" (Retry-After), "500", "timeout" (sleep `seconds`, then 504, not processed),
        "delay" (sleep `seconds`, then processed normally), "lost" (processed in full, then the
        answer is dropped and the client gets 504: Azure did the work, the caller never hears).
        """
        return self.faults.inject(service, kind, count, path_pattern, method, retry_after, seconds)

    def set_replication_delay(self, seconds: float) -> None:
        """Secrets added through Graph addPassword fail sign-in (AADSTS7000215) for `seconds`."""
        with self.state.lock:
            self.state.replication_delay = float(seconds)

    def set_graph_rate_limit(
        self,
        requests_per_second: float | None,
        burst: float | None = None,
        tenant: Tenant | str | None = None,
    ) -> None:
        """Token bucket on Graph; over it -> 429 + Retry-After. None switches it off.

        With `tenant`, only that tenant's requests (by the token's `tid`) count against the bucket."""
        self.faults.set_graph_rate_limit(requests_per_second, burst, _tid(tenant) if tenant else None)

    def reset_faults(self) -> None:
        """Back to a healthy service: no faults, no rate limit, no replication delay, default authorize."""
        self.faults.reset()
        with self.state.lock:
            self.state.replication_delay = 0.0
            self.state.authorize_deny = False
            self.state.authorize_user_id = None

    def request_count(
        self, service: str = "*", path_pattern: str | None = None, method: str | None = None
    ) -> int:
        """Requests seen by a service (faulted ones included); path_pattern is a regex (re.search)."""
        return self.faults.request_count(service, path_pattern, method)

    def reset_counters(self) -> None:
        self.faults.reset_counters()

    def request_log(self, service: str | None = None) -> list[RequestRecord]:
        """Recent requests (method, path, status), oldest first."""
        wanted = normalize_service(service) if service else None
        return [r for r in list(self.faults.log) if wanted is None or r.service == wanted]


def _tid(tenant: Tenant | str) -> str:
    return tenant.id if isinstance(tenant, Tenant) else tenant


def start_fake_azure(
    port: int = 0, vault_port: int = 0, *, tls_dir: Path | None = None, trust: bool = True
) -> FakeAzure:
    """Start the stand-in on 127.0.0.1 (ephemeral ports by default) and return its handle.

    All instances in a process share one CA (unless `tls_dir` is given), so SSL_CERT_FILE can
    point at one file. With `trust` (default) this process trusts it at once: SSL_CERT_FILE and
    REQUESTS_CA_BUNDLE are set and the CA is added to aiohttp's import-time default context.
    """
    fake = FakeAzure(port, vault_port, tls_dir).start()
    if trust:
        fake.trust()
    return fake
