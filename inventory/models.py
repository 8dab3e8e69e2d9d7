"""The inventory's stored records and its API bodies. Never a secret value, hint or thumbprint.

Tables (logical names; core.tables adds the deployment prefix):

- `CredentialInventory` (`InventoryEntry`): PartitionKey = connection id, RowKey = Key ID. One row
  per credential of the connection's tenant that ends within `EXPIRY_WARNING_DAYS` or has ended;
  a credential that is no longer expiring (renewed, removed) loses its row on the next scan.
  `notifiedOn` (UTC day) is when `credential.expiring` was last raised for it: once a day.
- `InventoryScans` (`ScanRecord`): PartitionKey = "scan", RowKey = connection id. The last scan's
  outcome (shown by the API) and, while a scan runs, its claim (`claimUntil`, `runId`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from core import clock, records
from core.models import ApiModel

SCAN_PK = "scan"
CredentialType = Literal["password", "certificate"]


class AppCredential(BaseModel):
    """A password or certificate credential of an app registration, without any secret material."""

    app_object_id: str
    app_id: str
    app_display_name: str = ""
    key_id: str
    type: CredentialType
    display_name: str = ""
    end_date_time: datetime


class InventoryEntry(
    records.Record, AppCredential, table="CredentialInventory", pk="connection_id", rk="key_id"
):
    """One expiring (or expired) credential of an app registration, as one connection sees it."""

    connection_id: str
    tenant_id: str
    managed_by: str = ""  # "" = no rotation of the broker replaces it
    notified_on: str = ""  # YYYY-MM-DD (UTC) of the last credential.expiring event

    def same_facts(self, other: InventoryEntry) -> bool:
        """Equal apart from the notification day and the ETag (no write needed)."""
        skip = {"notified_on", "etag"}
        return self.model_dump(exclude=skip) == other.model_dump(exclude=skip)


class ScanRecord(records.Record, table="InventoryScans", pk="partition", rk="connection_id"):
    """One connection's last inventory scan, and the claim of a scan in progress."""

    partition: str = SCAN_PK
    connection_id: str
    tenant_id: str = ""
    status: str = "pending"  # pending | ok | denied (a permission is missing) | failed
    last_scanned_at: datetime | None = None
    last_error: str | None = None
    missing_permission: str | None = None
    applications: int = 0
    pages: int = 0
    expiring: int = 0
    claim_until: datetime | None = None
    run_id: str | None = None


class CredentialItem(ApiModel):
    """A row as the API shows it and as the `credential.expiring` event carries it."""

    connection_id: str
    tenant_id: str
    app_object_id: str
    app_id: str
    app_display_name: str
    key_id: str
    type: CredentialType
    display_name: str
    end_date_time: str
    expired: bool
    managed_by: str | None

    @classmethod
    def of(cls, entry: InventoryEntry) -> CredentialItem:
        return cls(
            **entry.model_dump(include=set(cls.model_fields) - {"end_date_time", "expired", "managed_by"}),
            end_date_time=clock.isoformat(entry.end_date_time),
            expired=entry.end_date_time <= clock.now(),
            managed_by=entry.managed_by or None,
        )


class ScanView(ApiModel):
    connection_id: str
    tenant_id: str
    status: str
    last_scanned_at: str | None
    error: str | None
    missing_permission: str | None
    applications: int
    expiring: int


class InventoryPage(ApiModel):
    items: list[CredentialItem]
    scans: list[ScanView]
    continuation_token: str | None = None
