"""Event Grid basic topics (CloudEvents 1.0 input schema, local auth disabled), as the SDK reaches them.

A topic's endpoint is `{base}/eventgrid/topics/{name}/api/events` (in Azure:
`https://{name}.{region}-1.eventgrid.azure.net/api/events`). What azure-eventgrid's
`EventGridPublisherClient` sends for CloudEvents is checked as the service checks it:
`POST ?api-version=2018-01-01`, `Content-Type: application/cloudevents-batch+json`, a JSON array
of CloudEvents 1.0 (`specversion`, `id`, `source`, `type` required), at most 1 MB in all, and an
Entra ID bearer token for `https://eventgrid.azure.net` (SAS keys are refused: local auth is off);
a principal outside the topic's EventGrid Data Sender list gets 403. Accepted events are kept
in order so tests can read what arrived (`FakeAzure.topic_events`).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .entra import InvalidToken, validate_access_token

PREFIX = "/eventgrid"
RESOURCE = "https://eventgrid.azure.net"
API_VERSIONS = {"2018-01-01"}
MAX_BATCH_BYTES = 1024 * 1024
REQUIRED = ("specversion", "id", "source", "type")

router = APIRouter(prefix=PREFIX)


@dataclass
class Topic:
    name: str
    senders: set[str] | None = None  # object ids holding EventGrid Data Sender; None: any principal
    events: list[dict[str, Any]] = field(default_factory=list)
    senders_seen: list[str] = field(default_factory=list)


class TopicStore:
    """Topics by name; thread-safe (tests read while the server writes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.topics: dict[str, Topic] = {}

    def add(self, name: str, senders: set[str] | None = None) -> Topic:
        with self.lock:
            topic = self.topics[name] = Topic(name, senders)
            return topic

    def events(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.topics[name].events)


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


@router.post("/topics/{name}/api/events")
async def publish(name: str, request: Request) -> Response:
    store: TopicStore = request.app.state.topics
    with store.lock:
        topic = store.topics.get(name)
    if topic is None:
        return _error(404, "NotFound", f"The topic {name} could not be found.")
    version = request.query_params.get("api-version")
    if version not in API_VERSIONS:
        return _error(400, "BadRequest", f"The api-version '{version}' is invalid.")
    if request.headers.get("aeg-sas-key") or request.headers.get("aeg-sas-token"):
        return _error(401, "Unauthorized", "Local authentication (SAS) is disabled for this topic.")
    try:
        claims = validate_access_token(
            request.app.state.azure, request.headers.get("authorization"), {RESOURCE}
        )
    except InvalidToken as exc:
        return _error(401, "Unauthorized", f"The request authorization was not valid. {exc.reason}")
    principal = str(claims.get("oid", ""))
    if topic.senders is not None and principal not in topic.senders:
        return _error(
            403,
            "Forbidden",
            f"The principal {principal} does not have the EventGrid Data Sender role on topic {name}.",
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/cloudevents-batch+json":
        return _error(
            400,
            "BadRequest",
            f"This topic accepts the CloudEventSchemaV1_0 input schema; content type '{content_type}' "
            "is not application/cloudevents-batch+json.",
        )
    raw = await request.body()
    if len(raw) > MAX_BATCH_BYTES:
        return _error(413, "RequestEntityTooLarge", "The maximum size (1536000) has been exceeded.")
    try:
        batch = json.loads(raw)
    except ValueError:
        return _error(400, "BadRequest", "The request body is not valid JSON.")
    if not isinstance(batch, list) or not batch:
        return _error(400, "BadRequest", "Expected a non-empty JSON array of CloudEvents.")
    for index, event in enumerate(batch):
        if not isinstance(event, dict):
            return _error(400, "BadRequest", f"Event {index} is not a JSON object.")
        missing = [name for name in REQUIRED if not event.get(name)]
        if missing:
            return _error(400, "BadRequest", f"Event {index} misses required attribute(s) {missing}.")
        if event["specversion"] != "1.0":
            return _error(400, "BadRequest", f"Event {index}: specversion must be 1.0.")
    with store.lock:
        topic.events.extend(batch)
        topic.senders_seen.append(principal)
    return Response(status_code=200)
