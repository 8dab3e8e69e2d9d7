"""What connections offer the rest of the broker, registered in core.connection_seam at start-up.

Rotation (and later secret rotations and destinations) reach a connection only through this:
its facts, a Graph client acting as it, and the one conditional switch of its client secret.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from connections import client_secrets, devops, kinds, lifecycle, store
from core.azure_credentials import AppAccess
from core.connection_seam import ConnectionFacts, provide_access

_SPECS = {client_secrets.KIND: client_secrets.SPEC}


class _Access:
    async def facts(self, kind: str, connection_id: str) -> ConnectionFacts:
        return lifecycle.facts_of(_SPECS[kind], await store.get_record(kind, connection_id))

    async def list_facts(self, kind: str) -> list[ConnectionFacts]:
        return [
            lifecycle.facts_of(_SPECS[kind], record) for record in await store.list_records(kind, 100_000)
        ]

    async def app_access(self, kind: str, connection_id: str) -> AppAccess:
        return await kinds.cached_access(_SPECS[kind], await store.get_record(kind, connection_id))

    async def switch_client_secret(
        self, kind: str, connection_id: str, secret: str, *, from_rev: str, key_id: str
    ) -> str:
        return await client_secrets.switch_client_secret(
            connection_id, secret, from_rev=from_rev, key_id=key_id
        )

    async def devops_authorization(self, connection_id: str) -> tuple[str, Callable[[], Awaitable[str]]]:
        record = await store.get_record(devops.KIND, connection_id)

        async def authorization() -> str:
            return await devops._authorization(record)  # the one way a stored DevOps connection signs

        return record.org_name or "", authorization


provide_access(_Access())
