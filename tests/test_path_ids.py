"""Ids in paths that Table Storage cannot hold are a 422 naming the parameter, on every route.

Azurite answers 404 for such keys; the real service may answer 400, which would surface as a
500. The rule is core.deps.PathId's; every route of the broker is tried, so a new route is
covered the day it is added.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx
import pytest

from tests.harness import assert_problem

BAD_IDS = {
    "hash": "a#b",
    "question-mark": "a?b",
    "backslash": "a\\b",
    "control": "a\x01b",
    "delete": "a\x7fb",
    "too-long": "x" * 513,
}


def _routes_with_ids(api: httpx.Client) -> list[tuple[str, str, list[str]]]:
    """(method, path template, path parameters) of every route the API documents with an id."""
    spec = api.get("/api/openapi.json").json()
    found = []
    for path, operations in spec["paths"].items():
        params = re.findall(r"{(\w+)}", path)
        if params:
            found += [(method.upper(), path, params) for method in operations if method != "parameters"]
    return found


@pytest.mark.parametrize("kind", list(BAD_IDS))
def test_every_route_refuses_an_id_table_storage_cannot_hold(api: httpx.Client, kind: str) -> None:
    routes = _routes_with_ids(api)
    named = {path for _, path, _ in routes}
    assert "/api/v1/leases/{lease_id}" in named  # today's lease and connection routes are among them
    assert any(path.startswith("/api/v1/app-connections/") for path in named)
    for method, path, params in routes:
        for bad in params:
            url = path
            for param in params:
                value = BAD_IDS[kind] if param == bad else "ok-id"
                url = url.replace("{" + param + "}", quote(value, safe=""))
            response = api.request(method, url, json={} if method in ("POST", "PATCH", "PUT") else None)
            assert_problem(response, 422, bad)


def test_a_good_id_still_reaches_the_route(api: httpx.Client) -> None:
    body = assert_problem(api.get("/api/v1/leases/no-such-lease.0123"), 404)
    assert body["errors"] == []
