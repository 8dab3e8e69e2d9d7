"""Domain events: one structured log line each, and a CloudEvent on Event Grid when configured.

A line is `BROKER_EVENT {"event": ..., ...}`; in Application Insights it lands in `traces`,
read with `parse_json(substring(message, 13))` (the alerts and the workbook do; tests/test_kql.py
runs their queries over real lines). Fields are ids, states and error texts that the services
already scrubbed of secrets; a field whose name says it holds secret material is dropped here as
well, so neither the log nor the topic can carry one.

With `EVENTS_TOPIC_ENDPOINT` set, the events in TYPES are also queued for the topic and sent in
batches by a task on the running loop (azure-eventgrid's async `EventGridPublisherClient`, the
broker's identity). Publishing never blocks or fails the operation that raised the event: a full
queue drops, a failed send is logged and counted (`stats()`), and `drain()` lets a timer wait
briefly for its events before the host may freeze the worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.loop_cache import PerLoop
from core.settings import SettingsError, get_settings

if TYPE_CHECKING:
    from azure.eventgrid.aio import EventGridPublisherClient

log = logging.getLogger("broker.events")

PREFIX = "BROKER_EVENT "
SOURCE = "/azure-credential-broker"

# Log event name -> CloudEvents `type` on the topic (DESIGN.md's six, plus the existing events).
TYPES: dict[str, str] = {
    "secret_rotation.succeeded": "Broker.SecretRotation.Succeeded",
    "secret_rotation.failed": "Broker.SecretRotation.Failed",
    "delivery.failed": "Broker.Delivery.Failed",
    "delivery.drifted": "Broker.Delivery.Drifted",
    "lease.revoke_failed": "Broker.Lease.RevokeFailed",
    "credential.expiring": "Broker.Credential.Expiring",
    "rotation.succeeded": "Broker.ConnectionRotation.Succeeded",
    "rotation.failed": "Broker.ConnectionRotation.Failed",
    "lease.created": "Broker.Lease.Created",
    "lease.revoked": "Broker.Lease.Revoked",
    "reconcile.fixed": "Broker.Reconcile.Fixed",
}

# Fields each event carries (the alerts, the workbook and the subjects read them).
FIELDS: dict[str, tuple[str, ...]] = {
    "secret_rotation.succeeded": ("secretRotationId", "appId", "keyId"),
    "secret_rotation.failed": ("secretRotationId", "appId", "error"),
    "delivery.failed": ("secretRotationId", "destination", "error"),
    "delivery.drifted": ("secretRotationId", "destination"),
    "lease.revoke_failed": ("leaseId", "error"),
    "credential.expiring": ("tenantId", "connectionId", "appId", "keyId", "endDateTime", "managedBy"),
    "rotation.succeeded": ("connectionId",),
    "rotation.failed": ("connectionId", "error"),
    "lease.created": ("leaseId",),
    "lease.revoked": ("leaseId",),
}

# The subject names what the event is about, most specific id last.
_SUBJECTS: tuple[tuple[str, str], ...] = (
    ("destination", "/secret-rotations/{secretRotationId}/destinations/{destination}"),
    ("secretRotationId", "/secret-rotations/{secretRotationId}"),
    ("keyId", "/tenants/{tenantId}/applications/{appId}/credentials/{keyId}"),
    ("leaseId", "/leases/{leaseId}"),
    ("connectionId", "/app-connections/{connectionId}"),
)

# Field names that would hold secret material; never written, whatever a caller passes.
_SECRET_FIELDS = frozenset(
    {
        "secret",
        "clientsecret",
        "password",
        "value",
        "secretvalue",
        "token",
        "accesstoken",
        "refreshtoken",
        "privatekey",
        "credentials",
    }
)

QUEUE_LIMIT = 1000
BATCH_LIMIT = 100  # well under Event Grid's 1 MB per request for these small events
SEND_TIMEOUT_SECONDS = 30.0

_stats: Counter[str] = Counter()


def stats() -> dict[str, int]:
    """Counters since start: queued, published, failed (send errors), dropped (queue full, no loop),
    refused_fields (secret-like names dropped), incomplete (an event without a contract field)."""
    keys = ("queued", "published", "failed", "dropped", "refused_fields", "incomplete")
    return {key: _stats[key] for key in keys}


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if key.lower() in _SECRET_FIELDS:
            _stats["refused_fields"] += 1
            log.error("event field %r dropped: an event never carries secret material", key)
            continue
        clean[key] = value
    return clean


def emit(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one domain event (warning level for failures the Portal should alert on) and, for the
    types in TYPES with a topic configured, queue it for Event Grid."""
    body = {"event": event, **_clean(fields)}
    lacking = [name for name in FIELDS.get(event, ()) if name not in body and name != "managedBy"]
    if lacking:  # the alerts and the workbook read these (tests/test_kql.py); a gap is a bug
        _stats["incomplete"] += 1
        log.error("event %s lacks the field(s) %s that the Portal queries read", event, lacking)
    log.log(level, "%s%s", PREFIX, json.dumps(body, default=str, separators=(",", ":"), sort_keys=True))
    if event in TYPES and _topic() is not None:
        _enqueue(cloud_event(event, body))


def _topic() -> str | None:
    try:
        return get_settings().events_topic_endpoint
    except SettingsError:  # an event never fails its operation; the start already named the setting
        return None


def subject_of(fields: dict[str, Any]) -> str:
    """The resource path the event is about, from its ids (DESIGN: subject names what, not secrets)."""
    for key, template in _SUBJECTS:
        if key in fields:
            try:
                return template.format(**fields)
            except KeyError:
                continue
    return "/broker"


def cloud_event(event: str, body: dict[str, Any]) -> dict[str, Any]:
    """The CloudEvents 1.0 envelope (JSON format) for a logged event body."""
    data = {key: value for key, value in body.items() if key != "event"}
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": SOURCE,
        "type": TYPES[event],
        "subject": subject_of(data),
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": json.loads(json.dumps(data, default=str)),
    }


# ---------------------------------------------------------------------------------------------
# the publisher: one queue and one sender task per event loop


class _Outbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=QUEUE_LIMIT)
        self.task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()


_outboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Outbox] = weakref.WeakKeyDictionary()


async def _publisher() -> EventGridPublisherClient:
    from azure.eventgrid.aio import EventGridPublisherClient

    from core.azure_clients import broker_credential

    endpoint = _topic()
    if endpoint is None:
        raise RuntimeError("EVENTS_TOPIC_ENDPOINT is not set")
    return EventGridPublisherClient(endpoint, await broker_credential(), retry_total=2)


_client: PerLoop[EventGridPublisherClient] = PerLoop(_publisher)


def _enqueue(envelope: dict[str, Any]) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _stats["dropped"] += 1
        log.warning("event %s not published: no running event loop", envelope["type"])
        return
    outbox = _outboxes.get(loop)
    if outbox is None:
        outbox = _outboxes[loop] = _Outbox()
    try:
        outbox.queue.put_nowait(envelope)
    except asyncio.QueueFull:
        _stats["dropped"] += 1
        log.warning("event %s not published: the outbox is full (%d)", envelope["type"], QUEUE_LIMIT)
        return
    _stats["queued"] += 1
    outbox.idle.clear()
    if outbox.task is None or outbox.task.done():
        outbox.task = loop.create_task(_send_loop(outbox), name="broker-events")


async def _send_loop(outbox: _Outbox) -> None:
    """Send what is queued in batches until the queue is empty, then stop (restarted on demand)."""
    while not outbox.queue.empty():
        batch = [outbox.queue.get_nowait() for _ in range(min(BATCH_LIMIT, outbox.queue.qsize()))]
        try:
            client = await _client.get()
            await asyncio.wait_for(client.send(batch), SEND_TIMEOUT_SECONDS)
        except Exception as error:  # never let a failed send escape into the app
            _stats["failed"] += len(batch)
            log.warning("events not published to Event Grid: %d event(s), %s", len(batch), _describe(error))
        else:
            _stats["published"] += len(batch)
    outbox.idle.set()


def _describe(error: BaseException) -> str:
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__}" + (f" (HTTP {status})" if status else "")


async def drain(within: float = 5.0) -> bool:
    """Wait up to `within` s for this loop's queued events to be sent; True if none is left."""
    outbox = _outboxes.get(asyncio.get_running_loop())
    if outbox is None:
        return True
    try:
        await asyncio.wait_for(outbox.idle.wait(), within)
    except TimeoutError:
        return False
    return True
