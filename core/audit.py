"""The audit log: who did what to which resource, when, with what result. Never a secret.

Table `AuditLog`: PartitionKey = UTC day `YYYYMMDD`, RowKey = inverted milliseconds + random
suffix, so a day reads newest first and a time range reads only its days.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from core import clock, tables
from core.auth import Caller
from core.deps import Admin
from core.errors import FieldError, Unprocessable
from core.models import ApiModel
from core.request_context import request_id

TABLE = "AuditLog"
_MAX_MS = 10**15
MAX_DETAIL = 500
SYSTEM = Caller(id="system", name="broker timer")

Result = Literal["success", "failure"]


class AuditEntry(ApiModel):
    id: str
    at: str
    actor_id: str
    actor_name: str
    action: str
    resource_type: str
    resource_id: str
    result: Result
    detail: str = ""
    request_id: str = ""


class AuditPage(ApiModel):
    items: list[AuditEntry]


def _keys(at: datetime) -> tuple[str, str]:
    millis = int(at.timestamp() * 1000)
    return at.strftime("%Y%m%d"), f"{_MAX_MS - millis:015d}-{secrets.token_hex(4)}"


async def record(
    caller: Caller,
    action: str,
    resource_type: str,
    resource_id: str,
    result: Result = "success",
    detail: str = "",
) -> None:
    """Append one entry. `detail` must already be free of secrets (services pass error texts they built)."""
    at = clock.now()
    pk, rk = _keys(at)
    await tables.insert(
        TABLE,
        pk,
        rk,
        {
            "at": clock.isoformat(at),
            "actorId": caller.id,
            "actorName": caller.name,
            "action": action,
            "resourceType": resource_type,
            "resourceId": resource_id,
            "result": result,
            "detail": detail[:MAX_DETAIL],
            "requestId": request_id.get(),
        },
    )


async def entries(
    since: datetime, until: datetime, *, action: str | None, resource_id: str | None, limit: int
) -> list[AuditEntry]:
    """Entries in [since, until], newest first, reading only the (UTC) days in range."""
    out: list[AuditEntry] = []
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    day = until
    filters = ["PartitionKey eq @pk", "at ge @since", "at le @until"]
    params: dict[str, str] = {"since": clock.isoformat(since), "until": clock.isoformat(until)}
    if action:
        filters.append("action eq @action")
        params["action"] = action
    if resource_id:
        filters.append("resourceId eq @rid")
        params["rid"] = resource_id
    while day.date() >= since.date() and len(out) < limit:
        params["pk"] = day.strftime("%Y%m%d")
        async for row in tables.query(TABLE, " and ".join(filters), params, limit=limit - len(out)):
            out.append(AuditEntry.model_validate({"id": f"{row.pk}-{row.rk}", **row.data}))
        day -= timedelta(days=1)
    return out


router = APIRouter(prefix="/api/v1", tags=["audit"])


# Times the day walk and the RowKey arithmetic can hold, with room for the 7-day default.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def _in_utc(name: str, value: datetime) -> datetime:
    """The time in UTC, or a 422 naming the parameter (no zone, or outside what can be stored)."""
    if value.tzinfo is None:
        raise Unprocessable("times need a zone", [FieldError(name, "use RFC 3339 with Z or an offset")])
    try:
        utc: datetime | None = value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise Unprocessable(
            f"{name} is out of range",
            [FieldError(name, f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC)")],
        )
    return utc


@router.get("/audit-logs", response_model=AuditPage, summary="Who did what, when (Admin)")
async def list_audit_logs(
    caller: Admin,
    since: Annotated[datetime | None, Query(description="RFC 3339; default 7 days before until")] = None,
    until: Annotated[datetime | None, Query(description="RFC 3339; default now")] = None,
    action: Annotated[str | None, Query(max_length=100)] = None,
    resource_id: Annotated[str | None, Query(alias="resourceId", max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    end = clock.now() if until is None else _in_utc("until", until)
    start = end - timedelta(days=7) if since is None else _in_utc("since", since)
    if start < EARLIEST:
        start = EARLIEST
    if start > end or end - start > timedelta(days=90):
        raise Unprocessable(
            "bad time range", [FieldError("since", "must be before until and at most 90 days earlier")]
        )
    return AuditPage(items=await entries(start, end, action=action, resource_id=resource_id, limit=limit))
