"""Azure Table Storage with optimistic concurrency.

Every write of an existing row carries the ETag it read (`IfNotModified`); a lost race is
`ConcurrencyConflict`, never a silent overwrite. Rows are plain dicts of JSON-able values;
times are stored as ISO strings so that RowKey/property order is time order.
Benchmarks and tests count operations through `observe()` (tests/table_stats.py installs the
counter); with no observer, which is production, that costs one empty loop per operation.

Dropped connections (core.table_transport): a write whose answer was lost is settled by reading the
row back (insert, ETag replace); a batch is never repeated; what cannot be settled is a 503 problem.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from core.errors import Conflict
from core.loop_cache import PerLoop
from core.settings import get_settings
from core.table_transport import TablesUnavailable, reachable, transport

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient, TableServiceClient

_SYSTEM = {"PartitionKey", "RowKey", "Timestamp", "etag"}


class ConcurrencyConflict(Conflict, code="concurrency-conflict"):
    """The row changed (or vanished) since it was read; re-read and retry."""


class RowExists(Conflict, code="already-exists"):
    """A row with that key already exists."""


@dataclass
class Row:
    """One entity: its keys, its properties and the ETag it was read with."""

    table: str
    pk: str
    rk: str
    data: dict[str, Any]
    etag: str | None = None


TableObserver = Callable[[str | None, int], None]
"""Told of each operation: its kind and the entities it read; kind None = more entities of a query."""

_observers: list[TableObserver] = []


def observe(observer: TableObserver) -> None:
    """Count table operations (benchmarks, tests); production installs none."""
    if observer not in _observers:
        _observers.append(observer)


def _note(kind: str | None, read: int = 0) -> None:
    for observer in _observers:
        observer(kind, read)


BatchOp = tuple[Literal["create", "upsert", "update", "delete"], str, str, Mapping[str, Any], str | None]


class _Clients:
    """The service client and one `TableClient` per table, built once: building a `TableClient`
    (it parses its URL and sets up its pipeline) cost about as much CPU as a point read."""

    def __init__(self, service: TableServiceClient) -> None:
        self.service = service
        self.tables: dict[str, TableClient] = {}

    async def close(self) -> None:
        await self.service.close()  # the table clients share its transport


async def _service() -> _Clients:
    from azure.data.tables.aio import TableServiceClient

    settings = get_settings()
    if settings.tables_connection_string:
        return _Clients(
            TableServiceClient.from_connection_string(
                settings.tables_connection_string.get_secret_value(), transport=transport()
            )
        )
    from core.azure_clients import broker_credential

    assert settings.tables_endpoint
    return _Clients(
        TableServiceClient(
            endpoint=settings.tables_endpoint, credential=await broker_credential(), transport=transport()
        )
    )


_services: PerLoop[_Clients] = PerLoop(_service)
_created: set[str] = set()


def table_name(kind: str) -> str:
    """The physical table for an entity kind (the optional prefix isolates deployments)."""
    return f"{get_settings().table_prefix}{kind}"


async def _client(table: str) -> TableClient:
    clients = await _services.get()
    name = table_name(table)
    client = clients.tables.get(name)
    if client is None:
        if name not in _created:
            with reachable("create table"):
                await clients.service.create_table_if_not_exists(name)
            _created.add(name)
        client = clients.tables.setdefault(name, clients.service.get_table_client(name))
    return client


def _row(table: str, entity: Mapping[str, Any]) -> Row:
    data = {k: v for k, v in entity.items() if k not in _SYSTEM}
    etag = getattr(entity, "metadata", {}).get("etag")
    return Row(table, str(entity["PartitionKey"]), str(entity["RowKey"]), data, etag)


def _entity(pk: str, rk: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in data.items() if v is not None}, "PartitionKey": pk, "RowKey": rk}


def _holds(row: Row | None, data: Mapping[str, Any]) -> bool:
    """Whether a row read back holds exactly what we wrote (so the write whose answer was lost landed)."""
    return row is not None and row.data == {k: v for k, v in data.items() if v is not None}


def _match(etag: str | None) -> dict[str, Any]:
    from azure.core import MatchConditions

    if etag is None:
        return {"match_condition": MatchConditions.Unconditionally}
    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}


async def get(table: str, pk: str, rk: str) -> Row | None:
    """Read one row, or None."""
    from azure.core.exceptions import ResourceNotFoundError

    client = await _client(table)
    try:
        with reachable("read"):
            entity = await client.get_entity(pk, rk)
    except ResourceNotFoundError:
        _note("get")
        return None
    _note("get", 1)
    return _row(table, entity)


async def insert(table: str, pk: str, rk: str, data: Mapping[str, Any]) -> Row:
    """Create a row; `RowExists` if the key is taken (the way to claim a unique name).

    If the answer is lost the row is read back: holding our data, the insert landed; absent, it is
    sent once more (create-only, so it can never land twice); anything else is someone else's row.
    """
    from azure.core.exceptions import ResourceExistsError

    client = await _client(table)
    lost = False
    for attempt in (1, 2):
        _note("insert")
        try:
            with reachable("insert"):
                meta = await client.create_entity(_entity(pk, rk, data))
            return Row(table, pk, rk, dict(data), meta.get("etag"))
        except ResourceExistsError:
            current = await get(table, pk, rk) if lost else None
            if current is not None and _holds(current, data):
                return current
            raise RowExists(f"{table} {pk}/{rk} already exists") from None
        except TablesUnavailable:
            lost = True
            current = await get(table, pk, rk)
            if current is not None:
                if _holds(current, data):
                    return current
                raise RowExists(f"{table} {pk}/{rk} already exists") from None
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def replace(row: Row, data: Mapping[str, Any] | None = None) -> Row:
    """Write `row` back (or `data` in its place) only if nobody changed it since it was read.

    A transport layer may repeat a PUT whose answer was lost (aiohttp does so once on a reused
    connection), and the repeat of a write that landed is refused as a lost race; so a refusal or a
    lost answer is settled by reading back: a row holding exactly our data is our write. A lost
    answer with the row still at the ETag we read did not land, and is sent once more under it.
    """
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
    from azure.data.tables import UpdateMode

    client = await _client(row.table)
    new = dict(row.data if data is None else data)

    async def settle(lost: bool) -> Row | None:
        current = await get(row.table, row.pk, row.rk)
        if current is not None and _holds(current, new):
            return Row(row.table, row.pk, row.rk, new, current.etag)
        if lost and current is not None and current.etag == row.etag:
            return None
        raise ConcurrencyConflict(f"{row.table} {row.pk}/{row.rk} changed meanwhile")

    for attempt in (1, 2):
        _note("replace")
        try:
            with reachable("replace"):
                meta = await client.update_entity(
                    _entity(row.pk, row.rk, new), mode=UpdateMode.REPLACE, retry_total=0, **_match(row.etag)
                )
            return Row(row.table, row.pk, row.rk, new, meta.get("etag"))
        except ResourceNotFoundError:
            raise ConcurrencyConflict(f"{row.table} {row.pk}/{row.rk} was deleted meanwhile") from None
        except TablesUnavailable:
            settled = await settle(lost=True)
            if settled is not None:
                return settled
            if attempt == 2:
                raise
        except HttpResponseError as error:
            if error.status_code not in (409, 412):
                raise
            settled = await settle(lost=False)
            assert settled is not None
            return settled
    raise AssertionError("unreachable")  # pragma: no cover


async def upsert(table: str, pk: str, rk: str, data: Mapping[str, Any]) -> Row:
    """Create or replace unconditionally (only for rows with a single writer, like index entries)."""
    from azure.data.tables import UpdateMode

    client = await _client(table)
    _note("upsert")
    with reachable("upsert"):
        meta = await client.upsert_entity(_entity(pk, rk, data), mode=UpdateMode.REPLACE)
    return Row(table, pk, rk, dict(data), meta.get("etag"))


async def delete(table: str, pk: str, rk: str, etag: str | None = None) -> None:
    """Delete a row (idempotent without an ETag; `ConcurrencyConflict` if the ETag no longer matches)."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    client = await _client(table)
    _note("delete")
    try:
        with reachable("delete"):
            await client.delete_entity(pk, rk, **_match(etag))
    except ResourceNotFoundError:
        if etag is not None:
            raise ConcurrencyConflict(f"{table} {pk}/{rk} was deleted meanwhile") from None
    except HttpResponseError as error:
        if error.status_code in (409, 412):
            raise ConcurrencyConflict(f"{table} {pk}/{rk} changed meanwhile") from None
        raise


async def query(
    table: str,
    filter: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    select: list[str] | None = None,
    page_size: int = 1000,
    limit: int | None = None,
) -> AsyncIterator[Row]:
    """Rows matching an OData filter, with `@name` parameters (never string-built values)."""
    client = await _client(table)
    _note("query")
    pages = client.query_entities(
        filter, parameters=dict(parameters or {}), select=select, results_per_page=page_size
    ).by_page()
    seen = 0
    with reachable("query"):
        async for page in pages:
            async for entity in page:
                _note(None, 1)
                yield _row(table, entity)
                seen += 1
                if limit is not None and seen >= limit:
                    return


async def partition(table: str, pk: str, *, limit: int | None = None) -> list[Row]:
    """Every row of one partition (small partitions only)."""
    return [row async for row in query(table, "PartitionKey eq @pk", {"pk": pk}, limit=limit)]


async def batch(table: str, operations: Iterable[BatchOp]) -> None:
    """One atomic transaction within one partition (at most 100 operations)."""
    from azure.data.tables import TableTransactionError, UpdateMode

    ops: list[Any] = []
    for kind, pk, rk, data, etag in operations:
        entity = _entity(pk, rk, data)
        if kind == "create":
            ops.append(("create", entity))
        elif kind == "upsert":
            ops.append(("upsert", entity, {"mode": UpdateMode.REPLACE}))
        elif kind == "update":
            ops.append(("update", entity, {"mode": UpdateMode.REPLACE, **_match(etag)}))
        else:
            ops.append(("delete", entity, _match(etag)))
    if not ops:
        return
    if len(ops) > 100:
        raise ValueError("a table transaction holds at most 100 operations")
    client = await _client(table)
    _note("batch")
    try:
        with reachable("batch"):  # never repeated: a lost answer leaves its outcome unknown
            await client.submit_transaction(ops)
    except TableTransactionError as error:
        if error.status_code in (404, 409, 412):
            raise ConcurrencyConflict(f"{table}: a row in the batch changed meanwhile") from None
        raise


async def ping() -> None:
    """Readiness: the table service answers."""
    clients = await _services.get()
    with reachable("list tables"):
        async for _ in clients.service.list_tables(results_per_page=1).by_page():
            break


def reset_clients() -> None:
    """Forget clients and created tables (settings changed, e.g. in tests)."""
    _services.clear()
    _created.clear()
