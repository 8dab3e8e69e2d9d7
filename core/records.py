"""Typed table records: one pydantic model per stored entity, mapped to and from rows in one way.

A record declares its table and which fields are its keys; every other field is a property,
stored under its camelCase name. Values Table Storage cannot hold natively are encoded here and
only here: datetimes as RFC 3339 UTC strings (so string order is time order), timedeltas as
whole seconds, enums as their value, and lists, dicts and nested models as JSON. A `None` is not
stored. The ETag a record was read with travels with it, so a write back is conditional.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, ClassVar, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from core import tables

R = TypeVar("R", bound="Record")


def iso(value: datetime) -> str:
    """RFC 3339 UTC with microseconds and a `Z`: sortable as a string."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Record(BaseModel):
    """Base of every stored entity: `class Lease(Record, table="Leases", pk="...", rk="..."):`.

    `pk` and `rk` name the fields that are the row's PartitionKey and RowKey.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, validate_assignment=True, extra="ignore"
    )

    TABLE: ClassVar[str]
    PK_FIELD: ClassVar[str]
    RK_FIELD: ClassVar[str]

    etag: str | None = Field(default=None, exclude=True)

    def __init_subclass__(cls, table: str = "", pk: str = "", rk: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if table:
            cls.TABLE, cls.PK_FIELD, cls.RK_FIELD = table, pk, rk

    @property
    def pk(self) -> str:
        return str(getattr(self, self.PK_FIELD))

    @property
    def rk(self) -> str:
        return str(getattr(self, self.RK_FIELD))

    def to_data(self) -> dict[str, Any]:
        """The row's properties (keys and ETag excluded), encoded for Table Storage."""
        data: dict[str, Any] = {}
        for name, info in type(self).model_fields.items():
            if name in ("etag", self.PK_FIELD, self.RK_FIELD):
                continue
            value = getattr(self, name)
            if value is None:
                continue
            data[info.alias or name] = _encode(value)
        return data

    def to_row(self) -> tables.Row:
        return tables.Row(self.TABLE, self.pk, self.rk, self.to_data(), self.etag)

    @classmethod
    def from_row(cls, row: tables.Row) -> Self:
        """Decode a row; unknown properties are ignored (older or newer writers)."""
        values: dict[str, Any] = {cls.PK_FIELD: row.pk, cls.RK_FIELD: row.rk, "etag": row.etag}
        for name, info in cls.model_fields.items():
            alias = info.alias or name
            if alias in row.data and name not in values:
                values[name] = _decode(row.data[alias], info.annotation)
        return cls.model_validate(values)


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump_json(by_alias=True)
    if isinstance(value, list | dict | tuple | set | frozenset):
        return json.dumps(_plain(value), sort_keys=True)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_plain(v) for v in value]
        return sorted(items) if isinstance(value, set | frozenset) else items
    return _encode(value)


def _decode(value: Any, annotation: Any) -> Any:
    """JSON text back to a container where the field wants one; pydantic does the rest."""
    if isinstance(value, str) and value[:1] in ("[", "{") and _wants_container(annotation):
        return json.loads(value)
    return value


def _wants_container(annotation: Any) -> bool:
    text = repr(annotation)
    return any(word in text for word in ("list", "dict", "set", "tuple", "BaseModel")) or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel)
    )


async def get(model: type[R], pk: str, rk: str) -> R | None:
    """The record at (pk, rk), or None."""
    row = await tables.get(model.TABLE, pk, rk)
    return None if row is None else model.from_row(row)


async def insert(record: R) -> R:
    """Create; `RowExists` if taken. Returns the record with its new ETag."""
    row = await tables.insert(record.TABLE, record.pk, record.rk, record.to_data())
    return record.model_copy(update={"etag": row.etag})


async def replace(record: R) -> R:
    """Write back only if unchanged since read (`ConcurrencyConflict` otherwise); new ETag."""
    row = await tables.replace(record.to_row())
    return record.model_copy(update={"etag": row.etag})


async def upsert(record: R) -> R:
    """Create or replace unconditionally: single-writer rows only (index entries)."""
    row = await tables.upsert(record.TABLE, record.pk, record.rk, record.to_data())
    return record.model_copy(update={"etag": row.etag})


async def delete(record: Record, *, conditional: bool = True) -> None:
    """Delete; with `conditional` (default) only if unchanged since read."""
    await tables.delete(record.TABLE, record.pk, record.rk, record.etag if conditional else None)


BatchKind = Literal["create", "upsert", "update", "delete"]


async def batch(operations: Sequence[tuple[BatchKind, Record]]) -> None:
    """One atomic transaction of records in one table and partition (`update` and `delete` are
    ETag-checked when the record carries one); `ConcurrencyConflict` if any of them lost."""
    if not operations:
        return
    await tables.batch(
        operations[0][1].TABLE,
        [
            (kind, r.pk, r.rk, {} if kind == "delete" else r.to_data(), None if kind == "create" else r.etag)
            for kind, r in operations
        ],
    )
