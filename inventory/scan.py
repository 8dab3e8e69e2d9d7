"""One connection's inventory scan, under an ETag claim of its `InventoryScans` row.

Order: claim (insert or ETag replace of the scan row; a live claim or a scan younger than
`FRESH_FOR` means another instance did or does the work), list every page of the tenant's apps
inside `deadline(claimUntil)`, then write the difference to `CredentialInventory` in batches
(only while the claim holds), raise `credential.expiring` for the rows first seen today, and
release the claim with the outcome. A claim is taken over only at `takeover_at(claimUntil)`,
so nothing done under it outlives it. A refused listing (403) is an outcome, never an exception.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from core import azure_gateway, clock, events, records, tables
from core.azure_failure import AzureFailure
from core.connection_seam import ConnectionFacts, access
from core.errors import Problem
from core.settings import get_settings
from core.tables import ConcurrencyConflict, RowExists
from inventory import graph
from inventory.models import SCAN_PK, CredentialItem, InventoryEntry, ScanRecord

log = logging.getLogger(__name__)

KIND = "azure-client-secrets"
CLAIM = timedelta(minutes=5)
# A scan that finished this recently is not repeated: two timer instances do the work once.
FRESH_FOR = timedelta(minutes=5)
BATCH = 100  # Table Storage's most operations per transaction
MAX_ERROR = 300


async def claim(connection_id: str, tenant_id: str, *, fresh_for: timedelta = FRESH_FOR) -> ScanRecord | None:
    """Claim the connection's scan row, or None when another instance holds or just did the scan."""
    now = clock.now()
    update = {"claim_until": now + CLAIM, "run_id": uuid.uuid4().hex, "tenant_id": tenant_id}
    current = await records.get(ScanRecord, SCAN_PK, connection_id)
    try:
        if current is None:
            return await records.insert(ScanRecord(connection_id=connection_id, **update))
        if current.claim_until is not None:
            if now < azure_gateway.takeover_at(current.claim_until):
                return None
        elif (
            current.last_scanned_at is not None and timedelta(0) <= now - current.last_scanned_at < fresh_for
        ):
            return None  # (a scan time ahead of our clock is another instance's skew: scan again)
        return await records.replace(current.model_copy(update=update))
    except (RowExists, ConcurrencyConflict):
        return None


def _holds(scan: ScanRecord) -> bool:
    return scan.claim_until is not None and clock.now() < scan.claim_until


async def _release(scan: ScanRecord, **outcome: object) -> str:
    """Record the outcome and end the claim (ETag: a takeover in between wins)."""
    done = scan.model_copy(update={"claim_until": None, "run_id": None, **outcome})
    try:
        await records.replace(done)
    except ConcurrencyConflict:
        return "lost-claim"
    return str(done.status)


def describe(error: BaseException) -> str:
    """A short, secret-free account of a failed scan (the gateway already scrubbed Azure's text)."""
    if isinstance(error, AzureFailure):
        text = error.describe()
    elif isinstance(error, Problem):
        text = error.detail
    else:
        text = f"unexpected {type(error).__name__}"
    return text[:MAX_ERROR]


async def entries_of(connection_id: str) -> list[InventoryEntry]:
    rows = await tables.partition(InventoryEntry.TABLE, connection_id)
    return [InventoryEntry.from_row(row) for row in rows]


async def _list(
    facts: ConnectionFacts, managed: dict[str, str]
) -> tuple[int, int, dict[str, InventoryEntry]]:
    """(pages, apps, the credentials ending before the warning cutoff) of the connection's tenant."""
    cutoff = clock.now() + timedelta(days=get_settings().expiry_warning_days)
    pages = apps = 0
    found: dict[str, InventoryEntry] = {}
    app_access = await access().app_access(KIND, facts.id)
    async for page in graph.application_pages(app_access):
        pages += 1
        apps += len(page)
        for credential in graph.credentials_of(page):
            if credential.end_date_time <= cutoff:
                found[credential.key_id] = InventoryEntry(
                    connection_id=facts.id,
                    tenant_id=facts.tenant_id,
                    managed_by=managed.get(credential.key_id, ""),
                    **credential.model_dump(),
                )
    return pages, apps, found


def _expiring_event(entry: InventoryEntry) -> None:
    events.emit("credential.expiring", **CredentialItem.of(entry).model_dump(by_alias=True))


async def _write(
    connection_id: str, scan: ScanRecord, found: dict[str, InventoryEntry]
) -> list[InventoryEntry] | None:
    """Write the difference; the rows to notify today, or None if the claim ran out first."""
    existing = {entry.key_id: entry for entry in await entries_of(connection_id)}
    today = clock.now().date().isoformat()
    ops: list[tuple[records.BatchKind, InventoryEntry]] = []
    notify: list[InventoryEntry] = []
    for key_id, entry in sorted(found.items()):
        old = existing.get(key_id)
        entry.notified_on = today
        if old is None or old.notified_on != today:
            notify.append(entry)
        elif entry.same_facts(old):
            continue
        ops.append(("upsert", entry))
    ops += [("delete", old) for key, old in sorted(existing.items()) if key not in found]
    for start in range(0, len(ops), BATCH):
        if not _holds(scan):
            return None
        await records.batch(ops[start : start + BATCH])
    return notify


async def scan_connection(facts: ConnectionFacts, scan: ScanRecord, managed: dict[str, str]) -> str:
    """Scan one claimed connection; its outcome (ok, denied, failed, lapsed, lost-claim)."""
    assert scan.claim_until is not None
    started = clock.now()
    try:
        async with azure_gateway.deadline(scan.claim_until):
            pages, apps, found = await _list(facts, managed)
    except Exception as error:
        denied = isinstance(error, AzureFailure) and error.status == 403
        missing = graph.READ_PERMISSION if denied else None
        text = describe(error)
        if denied:
            text = f"the connection's app lacks the {graph.READ_PERMISSION} application permission: {text}"
        events.emit(
            "inventory.scan_failed",
            level=logging.WARNING,
            connectionId=facts.id,
            tenantId=facts.tenant_id,
            error=text,
            missingPermission=missing,
        )
        outcome = "denied" if denied else "failed"
        return await _release(
            scan, status=outcome, last_scanned_at=started, last_error=text, missing_permission=missing
        )
    notify = await _write(facts.id, scan, found)
    if notify is None:
        log.warning("inventory scan of %s outlived its claim; the next run repeats it", facts.id)
        return "lapsed"
    for entry in notify:
        _expiring_event(entry)
    return await _release(
        scan,
        status="ok",
        last_scanned_at=started,
        last_error=None,
        missing_permission=None,
        applications=apps,
        pages=pages,
        expiring=len(found),
    )


async def forget(connection_id: str) -> str:
    """A deleted connection: remove its rows and its scan record (under the same claim)."""
    scan = await claim(connection_id, "")  # a scan younger than FRESH_FOR saw the connection
    if scan is None:
        return "busy"
    ops: list[tuple[records.BatchKind, InventoryEntry]] = [
        ("delete", entry) for entry in await entries_of(connection_id)
    ]
    for start in range(0, len(ops), BATCH):
        if not _holds(scan):
            return "lapsed"
        await records.batch(ops[start : start + BATCH])
    try:
        await records.delete(scan)
    except ConcurrencyConflict:
        return "lost-claim"
    return "forgotten"
