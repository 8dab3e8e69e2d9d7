"""`GET /api/health`: liveness plus readiness of the tables and the secret store (no auth)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from core import tables
from core.models import ApiModel
from core.secret_store import secret_store

CHECK_TIMEOUT_SECONDS = 5.0

router = APIRouter(tags=["health"])


class Check(ApiModel):
    status: Literal["ok", "failing"]
    detail: str = ""


class Health(ApiModel):
    status: Literal["ok", "degraded"]
    checks: dict[str, Check]


async def _check(probe: Awaitable[None]) -> Check:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return Check(status="failing", detail=f"no answer within {CHECK_TIMEOUT_SECONDS:.0f}s")
    except Exception as error:  # readiness reports any failure by type, never its text
        return Check(status="failing", detail=type(error).__name__)
    return Check(status="ok")


@router.get("/api/health", response_model=Health, responses={503: {"model": Health}})
async def health() -> JSONResponse:
    table_check, secret_check = await asyncio.gather(_check(tables.ping()), _check(secret_store().ping()))
    checks = {"tables": table_check, "secretStore": secret_check}
    ok = all(c.status == "ok" for c in checks.values())
    body = Health(status="ok" if ok else "degraded", checks=checks)
    return JSONResponse(body.model_dump(by_alias=True), status_code=200 if ok else 503)
