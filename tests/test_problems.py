"""Every error is problem+json: bad JSON, wrong types, unknown routes and fields, oversized bodies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends
from pydantic import Field

from core.api import MAX_BODY_BYTES, create_app
from core.auth import Caller, Role, require
from core.models import ApiModel, RequestModel
from tests.azurite import free_port
from tests.harness import ServerHandle, assert_problem, serve_in_thread


class Thing(RequestModel):
    name: str
    count: int
    tags: list[str] = Field(default_factory=list)


class Echo(ApiModel):
    name: str
    count: int


router = APIRouter()


@router.post("/api/v1/things", response_model=Echo, status_code=201)
async def create_thing(body: Thing, caller: Annotated[Caller, Depends(require(Role.ADMIN))]) -> Echo:
    return Echo(name=body.name, count=body.count)


@router.get("/api/v1/boom")
async def boom() -> None:
    raise RuntimeError("secret-value-that-must-not-leak")


@pytest.fixture(scope="module")
def app_server(broker: ServerHandle) -> Iterator[ServerHandle]:
    """The core app with one test route, served for real (same middleware and handlers)."""
    handle = serve_in_thread(create_app([router]), free_port())
    yield handle
    handle.stop()


@pytest.fixture
def client(app_server: ServerHandle, token: object) -> Iterator[httpx.Client]:
    assert callable(token)
    headers = {"Authorization": f"Bearer {token()}", "Content-Type": "application/json"}
    with httpx.Client(base_url=app_server.url, headers=headers, timeout=30) as c:
        yield c


def test_valid_body_is_accepted(client: httpx.Client) -> None:
    response = client.post("/api/v1/things", json={"name": "a", "count": 1})
    assert response.status_code == 201
    assert response.json() == {"name": "a", "count": 1}


def test_malformed_json_is_400(client: httpx.Client) -> None:
    body = assert_problem(client.post("/api/v1/things", content=b'{"name": "a", "count": '), 400)
    assert body["title"] == "Malformed JSON"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"count": 1}, "name"),
        ({"name": "a", "count": "many"}, "count"),
        ({"name": ["a"], "count": 1}, "name"),
        ({"name": "a", "count": 1, "colour": "red"}, "colour"),
        ({"name": "a", "count": 1, "tags": "x"}, "tags"),
    ],
)
def test_wrong_fields_are_422_naming_the_field(
    client: httpx.Client, payload: dict[str, object], field: str
) -> None:
    assert_problem(client.post("/api/v1/things", json=payload), 422, field=field)


def test_a_body_that_is_not_an_object_is_422(client: httpx.Client) -> None:
    assert_problem(client.post("/api/v1/things", json=[1, 2]), 422)


def test_unknown_route_is_404_problem(client: httpx.Client) -> None:
    body = assert_problem(client.get("/api/v1/nothing-here"), 404)
    assert "/api/docs" in body["detail"]


def test_wrong_method_is_405_problem(client: httpx.Client) -> None:
    assert_problem(client.delete("/api/v1/things"), 405)


def test_oversized_body_is_413(client: httpx.Client) -> None:
    big = b'{"name": "' + b"a" * (MAX_BODY_BYTES + 10) + b'", "count": 1}'
    assert_problem(client.post("/api/v1/things", content=big), 413)


def test_oversized_chunked_body_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b"a" * 1024
        yield b'", "count": 1}'

    assert_problem(client.post("/api/v1/things", content=chunks()), 413)


def test_unexpected_errors_are_500_problems_without_details(client: httpx.Client) -> None:
    response = client.get("/api/v1/boom")
    body = assert_problem(response, 500)
    assert "secret-value-that-must-not-leak" not in response.text
    assert "Traceback" not in response.text
    assert body["title"] == "Internal error"


def test_request_id_is_echoed(client: httpx.Client) -> None:
    response = client.get("/api/v1/nothing-here", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


def test_docs_and_openapi_are_served(client: httpx.Client) -> None:
    assert client.get("/api/docs").status_code == 200
    spec = client.get("/api/openapi.json").json()
    assert "/api/health" in spec["paths"]
