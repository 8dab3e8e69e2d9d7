"""Structured domain events, one log line each, that Portal alerts and the workbook query.

A line is `BROKER_EVENT {"event": ..., ...}`; in Application Insights it lands in `traces`,
read with `parse_json(substring(message, 13))`. Fields are ids, states and error texts
that the services already scrubbed of secrets; never credential material.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("broker.events")

PREFIX = "BROKER_EVENT "


def emit(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one domain event (warning level for failures the Portal should alert on)."""
    body = {"event": event, **{k: v for k, v in fields.items() if v is not None}}
    log.log(level, "%s%s", PREFIX, json.dumps(body, default=str, separators=(",", ":"), sort_keys=True))
