"""Typed records round-trip through Azurite, and a stale ETag loses the write."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import pytest
from pydantic import BaseModel, Field

from core import records
from core.records import Record
from core.tables import ConcurrencyConflict, RowExists
from tests.harness import ServerHandle


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Part(BaseModel):
    key_id: str
    ends: datetime


class Sample(Record, table="TestRecords", pk="group", rk="id"):
    group: str
    id: str
    display_name: str
    colour: Colour = Colour.RED
    ttl: timedelta = timedelta(hours=1)
    expires_at: datetime | None = None
    tags: list[str] = Field(default_factory=list)
    parts: list[Part] = Field(default_factory=list)
    note: str | None = None


def sample(**changes: object) -> Sample:
    base = Sample(group=uuid.uuid4().hex, id="r1", display_name="one")
    return base.model_copy(update=changes)


def test_a_record_round_trips_through_table_storage(broker: ServerHandle) -> None:
    when = datetime(2026, 12, 2, 10, 30, 15, 123456, tzinfo=UTC)
    record = sample(
        colour=Colour.BLUE,
        ttl=timedelta(minutes=90),
        expires_at=when,
        tags=["b", "a"],
        parts=[Part(key_id="k1", ends=when)],
    )
    stored = broker.run(records.insert(record))
    assert stored.etag
    row = broker.run(records.tables.get(Sample.TABLE, record.group, "r1"))
    assert row is not None
    # camelCase properties, natively storable values, no None, keys not duplicated as properties
    assert row.data == {
        "displayName": "one",
        "colour": "blue",
        "ttl": 5400,
        "expiresAt": "2026-12-02T10:30:15.123456Z",
        "tags": '["b", "a"]',
        "parts": '[{"ends": "2026-12-02T10:30:15.123456Z", "key_id": "k1"}]',
    }
    read = broker.run(records.get(Sample, record.group, "r1"))
    assert read is not None
    assert read.model_dump(exclude={"etag"}) == record.model_dump(exclude={"etag"})
    assert read.etag == stored.etag


def test_a_missing_record_is_none_and_a_taken_key_is_refused(broker: ServerHandle) -> None:
    record = sample()
    assert broker.run(records.get(Sample, record.group, "r1")) is None
    broker.run(records.insert(record))
    with pytest.raises(RowExists):
        broker.run(records.insert(record))


def test_a_stale_etag_loses_replace_and_delete(broker: ServerHandle) -> None:
    first = broker.run(records.insert(sample()))
    second = broker.run(records.replace(first.model_copy(update={"display_name": "two"})))
    assert second.etag != first.etag
    with pytest.raises(ConcurrencyConflict):
        broker.run(records.replace(first.model_copy(update={"display_name": "stale"})))
    with pytest.raises(ConcurrencyConflict):
        broker.run(records.delete(first))
    broker.run(records.delete(second))
    assert broker.run(records.get(Sample, first.group, "r1")) is None
