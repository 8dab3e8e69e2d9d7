"""Who manages a credential: a registry of "managed key ids" providers, by label.

The inventory tells, for each expiring credential, whether a rotation of the broker will replace
it (`managedBy`). The packages that rotate register a provider here at start-up (the modules
named in `core.connection_seam.wire`): connection rotation as `connection-rotation`, secret
rotations as `secret-rotation`. A provider returns the Key IDs it currently manages; Key IDs are
GUIDs, unique across tenants, so one lower-cased map answers every connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from core import connection_seam

Provider = Callable[[], Awaitable[Iterable[str]]]

_providers: dict[str, Provider] = {}


def provide(label: str, provider: Provider) -> None:
    """Register (or replace) the provider whose Key IDs are `managedBy: label`."""
    _providers[label] = provider


async def managed_by() -> dict[str, str]:
    """Key ID (lower case) -> the label of who manages it; a Key ID not in the map has no manager."""
    connection_seam.ensure_loaded()
    found: dict[str, str] = {}
    for label, provider in sorted(_providers.items()):
        for key_id in await provider():
            if key_id:
                found.setdefault(key_id.lower(), label)
    return found
