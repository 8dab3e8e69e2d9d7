"""What connections offer the rest of the broker, registered in core.connection_seam at start-up.

Rotation (and later secret rotations and destinations) reach a connection only through this:
its facts, a Graph client acting as it, and the one conditional switch of its client secret.
"""

from __future__ import annotations

from typing import Any

from connections import client_secrets, lifecycle, store
from core.connection_seam import ConnectionFacts, provide_access

_SPECS = {client_secrets.KIND: client_secrets.SPEC}


class _Access:
    async def facts(self, kind: str, connection_id: str) -> ConnectionFacts:
        return lifecycle.facts_of(_SPECS[kind], await store.get_record(kind, connection_id))

    async def graph_client(self, kind: str, connection_id: str) -> Any:
        return await client_secrets.graph_client_for(connection_id)

    async def switch_client_secret(self, kind: str, connection_id: str, secret: str, *, from_rev: str) -> str:
        return await client_secrets.switch_client_secret(connection_id, secret, from_rev=from_rev)


provide_access(_Access())
