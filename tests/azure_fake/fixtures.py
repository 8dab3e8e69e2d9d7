"""pytest fixtures for the stand-in's own tests: one stand-in per test module, healthy after each test.

from tests.azure_fake.fixtures import fake, healthy_fake, http, tenant  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .server import FakeAzure, start_fake_azure
from .state import Tenant


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAzure]:
    instance = start_fake_azure()
    yield instance
    instance.stop()


@pytest.fixture(autouse=True)
def healthy_fake(fake: FakeAzure) -> Iterator[None]:
    """Faults injected by a test end with it."""
    yield
    fake.reset_faults()


@pytest.fixture(scope="module")
def tenant(fake: FakeAzure) -> Tenant:
    return fake.add_tenant(domain="contoso.example")


@pytest.fixture
def http(fake: FakeAzure) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client
