"""GET /api/v1/credential-inventory: expiring app credentials and the scans behind them (Reader)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from core.deps import ID_MAX_LENGTH, ID_PATTERN, Reader
from core.durations import parse_duration
from core.errors import FieldError, Unprocessable
from inventory import service
from inventory.models import InventoryPage

router = APIRouter(prefix="/api/v1", tags=["credential inventory"])


def _within(text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as error:
        raise Unprocessable("within is not a duration", [FieldError("within", str(error))]) from None


@router.get(
    "/credential-inventory",
    response_model=InventoryPage,
    summary="App credentials that expire within EXPIRY_WARNING_DAYS or have expired, per connection (Reader)",
)
async def list_credential_inventory(
    caller: Reader,
    connection_id: Annotated[
        str | None, Query(alias="connectionId", max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)
    ] = None,
    within: Annotated[
        str | None,
        Query(max_length=20, description="a duration such as 7d or 12h: end date before now + within"),
    ] = None,
    managed: Annotated[
        bool | None, Query(description="true: a rotation of the broker replaces it; false: nothing does")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    continuation_token: Annotated[str | None, Query(alias="continuationToken", max_length=1200)] = None,
) -> InventoryPage:
    return await service.list_inventory(
        connection_id=connection_id,
        within=_within(within),
        managed=managed,
        limit=limit,
        token=continuation_token,
    )
