"""Reading the inventory: filters as OData over `CredentialInventory`, paged by key.

The continuation token is the last (connection id, Key ID) returned, base64url-encoded: the
next page reads the rows after it in Table Storage's (PartitionKey, RowKey) order, so paging is
stateless and a row written between two pages is neither repeated nor skipped before the mark.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import timedelta

from core import clock, records, tables
from core.errors import FieldError, Unprocessable
from inventory.models import SCAN_PK, CredentialItem, InventoryEntry, InventoryPage, ScanRecord, ScanView


def encode_token(connection_id: str, key_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([connection_id, key_id]).encode()).decode().rstrip("=")


def decode_token(token: str) -> tuple[str, str]:
    """The (connection id, Key ID) a token marks, or a 422 naming `continuationToken`."""
    try:
        mark = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        mark = None
    if not (isinstance(mark, list) and len(mark) == 2 and all(isinstance(part, str) for part in mark)):
        raise Unprocessable(
            "continuationToken is not one this API issued",
            [FieldError("continuationToken", "pass the continuationToken of the previous page unchanged")],
        )
    return mark[0], mark[1]


def _scan_view(scan: ScanRecord) -> ScanView:
    return ScanView(
        connection_id=scan.connection_id,
        tenant_id=scan.tenant_id,
        status=scan.status,
        last_scanned_at=clock.isoformat(scan.last_scanned_at) if scan.last_scanned_at else None,
        error=scan.last_error,
        missing_permission=scan.missing_permission,
        applications=scan.applications,
        expiring=scan.expiring,
    )


async def scans(connection_id: str | None) -> list[ScanView]:
    if connection_id is not None:
        found = await records.get(ScanRecord, SCAN_PK, connection_id)
        return [] if found is None else [_scan_view(found)]
    return [_scan_view(ScanRecord.from_row(row)) for row in await tables.partition(ScanRecord.TABLE, SCAN_PK)]


async def list_inventory(
    *,
    connection_id: str | None,
    within: timedelta | None,
    managed: bool | None,
    limit: int,
    token: str | None,
) -> InventoryPage:
    """One page of the expiring credentials matching the filters, and the scans behind them."""
    filters: list[str] = []
    params: dict[str, str] = {}
    if connection_id is not None:
        filters.append("PartitionKey eq @cid")
        params["cid"] = connection_id
    if within is not None:
        filters.append("endDateTime le @cutoff")
        params["cutoff"] = records.iso(clock.now() + within)
    if managed is not None:
        filters.append("managedBy ne @none" if managed else "managedBy eq @none")
        params["none"] = ""
    if token is not None:
        after_pk, after_rk = decode_token(token)
        # Spaces around the parentheses: the SDK substitutes `@name` only as a whole word.
        filters.append("( PartitionKey gt @apk or ( PartitionKey eq @apk and RowKey gt @ark ) )")
        params.update(apk=after_pk, ark=after_rk)
    query = " and ".join(filters) or "PartitionKey ne ''"
    rows = [row async for row in tables.query(InventoryEntry.TABLE, query, params, limit=limit + 1)]
    entries = [InventoryEntry.from_row(row) for row in rows[:limit]]
    more = len(rows) > limit
    return InventoryPage(
        items=[CredentialItem.of(entry) for entry in entries],
        scans=await scans(connection_id),
        continuation_token=encode_token(entries[-1].connection_id, entries[-1].key_id) if more else None,
    )
