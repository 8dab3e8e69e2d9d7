"""Where connections and what rides on them (rotation, later secret rotations and destinations) meet.

Neither domain package imports the other. Connections provide `ConnectionAccess` (facts about a
connection, its credential and Graph client, the one conditional switch of its client secret);
rotation provides `KindHooks` for the client-secret kind (its request block, its view, and what
to do before and after a create, PATCH or delete). The composition root (function_app.wire)
names the modules that register them; they are imported on first use, so cold start pays nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

if TYPE_CHECKING:
    from core.auth import Caller
    from core.azure_credentials import AppAccess


@dataclass(frozen=True)
class ConnectionFacts:
    """What others may know of a connection: never a secret."""

    kind: str
    id: str
    method: str
    tenant_id: str
    client_id: str
    credential_rev: str
    resource: str  # the audit resource type of its events
    deleting: bool = False  # its DELETE has begun: nothing may add to it any more
    secret_key_id: str = ""  # the Key ID of its client secret at `credential_rev` ("" = not known)


class RevisionMoved(Exception):
    """The connection's credentials changed since the caller planned from them: nothing was written."""


class ConnectionAccess(Protocol):
    async def facts(self, kind: str, connection_id: str) -> ConnectionFacts:
        """The connection's facts, or a NotFound problem."""

    async def list_facts(self, kind: str) -> list[ConnectionFacts]:
        """The facts of every connection of a kind (the inventory scans each client-secret one)."""

    async def app_access(self, kind: str, connection_id: str) -> AppAccess:
        """The connection's credential and Graph client (core.azure_credentials: the one cache);
        its `pace_key` is what the gateway paces the calls by."""

    async def switch_client_secret(
        self, kind: str, connection_id: str, secret: str, *, from_rev: str, key_id: str
    ) -> str:
        """Make `secret` (Key ID `key_id`) the connection's client secret if it is still at
        `from_rev`; the new revision.

        `RevisionMoved` if another writer changed the credentials (nothing is overwritten).
        """

    async def devops_authorization(self, connection_id: str) -> tuple[str, Callable[[], Awaitable[str]]]:
        """An Azure DevOps connection's organization and a source of its Authorization header
        (a NotFound problem if there is no such connection); destinations write with it."""


@dataclass(frozen=True)
class UpdatePlan:
    """What a hook decided before a PATCH changes anything; `check_app` sees the app that the new
    credentials read while they are validated (and refuses with a problem naming the field)."""

    check_app: Callable[[Any], None] | None = None
    secret_key_id: str | None = None  # stored with new credentials: None keeps it, "" = not known
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KindHooks:
    """Behaviour attached to a connection kind under a body field (`rotation` of client secrets).

    `prepare_update` checks every precondition of a PATCH before any side effect; `created` and
    `updated` run after the row is written (a refusal of `created` rolls the create back);
    `deleting` runs after the delete's preconditions and before the row goes.
    """

    field: str
    settings_model: type[BaseModel]
    view_model: type[BaseModel]
    methods: frozenset[str]
    describe: Callable[[str], Awaitable[BaseModel | None]]
    created: Callable[[ConnectionFacts, BaseModel | None, Caller], Awaitable[BaseModel | None]]
    prepare_update: Callable[
        [ConnectionFacts, BaseModel | None, dict[str, Any] | None], Awaitable[UpdatePlan]
    ]
    updated: Callable[[ConnectionFacts, BaseModel | None, UpdatePlan, Caller], Awaitable[BaseModel | None]]
    deleting: Callable[[ConnectionFacts, Caller], Awaitable[None]]


_modules: list[str] = []
_loaded = False
_access: ConnectionAccess | None = None
_hooks: dict[str, KindHooks] = {}


def wire(modules: Iterable[str]) -> None:
    """Name the modules that register providers (imported on first use, in order)."""
    global _loaded
    _modules[:] = list(modules)
    _loaded = False


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in _modules:
            importlib.import_module(name)


def ensure_loaded() -> None:
    """Import the wired modules now (registries elsewhere in core, e.g. core.managed_keys, rely on it)."""
    _load()


def provide_access(access: ConnectionAccess) -> None:
    global _access
    _access = access


def provide_hooks(kind: str, hooks: KindHooks) -> None:
    _hooks[kind] = hooks


def access() -> ConnectionAccess:
    """The connections' provider; a RuntimeError names the missing wiring."""
    _load()
    if _access is None:
        raise RuntimeError("no ConnectionAccess is wired: call core.connection_seam.wire() at start-up")
    return _access


def hooks_for(kind: str) -> KindHooks | None:
    _load()
    return _hooks.get(kind)
