"""Table Storage over connections that the server cuts: reuse after idle, lost answers, an outage.

Azurite sits behind `tests.table_proxy.TableProxy`, which decides per request whether it reaches
Azurite, so each test can say how many times a write reached the server (exactly once) and what
the caller saw (success, or a 503 problem; never a 500 and never a repeated batch).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core import table_transport, tables
from core.table_transport import TablesUnavailable
from tests.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from tests.conn_support import DEVOPS_PATH, app_settings, unique
from tests.harness import ServerHandle, assert_problem
from tests.table_proxy import TableProxy

TABLE = "ProxiedRows"


@pytest.fixture
def proxy(azurite: Azurite, broker: ServerHandle) -> Iterator[TableProxy]:
    """The broker's Table Storage through the proxy (fresh clients before and after)."""
    cut = TableProxy(azurite.port)
    with app_settings(TABLES_CONNECTION_STRING=cut.connection_string(ACCOUNT, ACCOUNT_KEY)):
        tables.reset_clients()
        broker.run(tables.get(TABLE, "warm-up", "creates-the-table"))
        try:
            yield cut
        finally:
            tables.reset_clients()
    cut.stop()


def writes(proxy: TableProxy, method: str, marker: str = TABLE) -> list[str]:
    return [r for r in proxy.requests(method) if marker in r]


def test_a_connection_idle_past_the_servers_keep_alive_is_not_reused(
    proxy: TableProxy, broker: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose keep-alive (3 s) outlasts ours (2 s) never gets a request on a dying connection."""
    proxy.keepalive = 3.0
    key = uuid.uuid4().hex
    broker.run(tables.insert(TABLE, key, "first", {"v": 1}))
    time.sleep(3.3)
    broker.run(
        tables.batch(TABLE, [("create", key, "b1", {"v": 2}, None), ("create", key, "b2", {"v": 3}, None)])
    )
    time.sleep(3.3)
    broker.run(tables.insert(TABLE, key, "third", {"v": 4}))
    assert proxy.dropped == []
    assert len(writes(proxy, "POST", "$batch")) == 1
    assert [r.rk for r in broker.run(tables.partition(TABLE, key))] == ["b1", "b2", "first", "third"]

    # With aiohttp's own keep-alive (15 s) the same idle gap loses the batch: the original failure,
    # now a 503 problem, and the batch is not repeated.
    monkeypatch.setattr(table_transport, "KEEPALIVE_SECONDS", 15.0)
    tables.reset_clients()
    broker.run(tables.insert(TABLE, key, "before-idle", {"v": 5}))
    time.sleep(3.3)
    with pytest.raises(TablesUnavailable) as raised:
        broker.run(tables.batch(TABLE, [("create", key, "c1", {"v": 6}, None)]))
    assert raised.value.status == 503
    assert raised.value.headers["Retry-After"] == str(table_transport.RETRY_AFTER_SECONDS)
    assert [r for r in proxy.dropped if "$batch" in r]
    assert len(writes(proxy, "POST", "$batch")) == 1
    assert broker.run(tables.get(TABLE, key, "c1")) is None


def test_an_insert_that_never_reached_the_server_is_sent_again_once(
    proxy: TableProxy, broker: ServerHandle
) -> None:
    key = uuid.uuid4().hex
    proxy.plan.append(("POST", "drop"))
    row = broker.run(tables.insert(TABLE, key, "a", {"name": "one"}))
    assert row.etag
    assert len([r for r in proxy.dropped if TABLE in r]) == 1
    assert len(writes(proxy, "POST")) == 1
    stored = broker.run(tables.get(TABLE, key, "a"))
    assert stored is not None
    assert stored.data == {"name": "one"}


def test_an_insert_whose_answer_was_lost_is_read_back_not_repeated(
    proxy: TableProxy, broker: ServerHandle
) -> None:
    key = uuid.uuid4().hex
    proxy.plan.append(("POST", "lose"))
    row = broker.run(tables.insert(TABLE, key, "a", {"name": "one", "n": 2}))
    assert row.data == {"name": "one", "n": 2}
    assert row.etag
    assert len(proxy.lost) == 1
    assert len(writes(proxy, "POST")) == 1  # Azurite got it once; the row read back settled it
    # Someone else's row under the key is still a taken key, not a success.
    other = uuid.uuid4().hex
    broker.run(tables.insert(TABLE, other, "a", {"name": "theirs"}))
    proxy.plan.append(("POST", "drop"))
    with pytest.raises(tables.RowExists):
        broker.run(tables.insert(TABLE, other, "a", {"name": "mine"}))


def test_an_etag_replace_whose_answer_was_lost_is_read_back(proxy: TableProxy, broker: ServerHandle) -> None:
    key = uuid.uuid4().hex
    first = broker.run(tables.insert(TABLE, key, "a", {"owner": ""}))
    proxy.plan.append(("PUT", "lose"))
    claimed = broker.run(tables.replace(first, {"owner": "me"}))
    assert len(proxy.lost) == 1
    # aiohttp itself repeats a PUT once on a reused connection; the ETag refuses that repeat (412),
    # which read back is our own write, not a lost race.
    assert 1 <= len(writes(proxy, "PUT")) <= 2
    stored = broker.run(tables.get(TABLE, key, "a"))
    assert stored is not None
    assert stored.data == {"owner": "me"}
    assert stored.etag == claimed.etag
    # The ETag it carries is the current one: the next write under it wins, a stale one loses.
    broker.run(tables.replace(claimed, {"owner": "me-again"}))
    with pytest.raises(tables.ConcurrencyConflict):
        broker.run(tables.replace(first, {"owner": "stale"}))


def test_a_batch_whose_answer_was_lost_is_a_503_and_never_repeated(
    proxy: TableProxy, broker: ServerHandle
) -> None:
    key = uuid.uuid4().hex
    proxy.plan.append(("POST", "lose"))
    with pytest.raises(TablesUnavailable):
        broker.run(
            tables.batch(TABLE, [("create", key, "x", {"v": 1}, None), ("create", key, "y", {"v": 2}, None)])
        )
    assert len(writes(proxy, "POST", "$batch")) == 1
    assert len(broker.run(tables.partition(TABLE, key))) == 2  # it did land; the caller was told 503


@pytest.fixture(scope="module")
def org(fake_azure: Any) -> Any:
    tenant = fake_azure.add_tenant(domain="contoso-tables.example.com")
    return fake_azure.add_devops_org(unique("TablesDown"), projects=1, tenant=tenant)


def test_table_storage_unreachable_on_a_create_route_is_a_503_problem(
    proxy: TableProxy, api: httpx.Client, fake_azure: Any, org: Any
) -> None:
    token = fake_azure.add_pat(org)
    proxy.down = True
    body = {
        "name": unique("ado"),
        "method": "access-token",
        "credentials": {"accessToken": token, "orgName": org.name},
    }
    response = api.post(DEVOPS_PATH, json=body)
    problem = assert_problem(response, 503)
    assert response.headers["Retry-After"] == str(table_transport.RETRY_AFTER_SECONDS)
    assert problem["type"].endswith("#unavailable")
    assert "Table Storage" in problem["detail"]
    assert token not in response.text
    assert proxy.dropped  # the broker did try Table Storage
