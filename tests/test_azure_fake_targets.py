# ruff: noqa: F811 - the shared fixtures are imported and then named as test arguments
"""The stand-in's Graph for secret rotations and the inventory, through msgraph and azure-identity:
target apps and their owners, Application.ReadWrite.OwnedBy as Graph enforces it, end dates
honoured at sign-in, and a tenant of 250 apps listed page by page."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import ClientSecretCredential
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from msgraph.generated.applications.applications_request_builder import ApplicationsRequestBuilder
from msgraph.generated.applications.item.add_password.add_password_post_request_body import (
    AddPasswordPostRequestBody,
)
from msgraph.generated.applications.item.remove_password.remove_password_post_request_body import (
    RemovePasswordPostRequestBody,
)
from msgraph.generated.applications_with_app_id.applications_with_app_id_request_builder import (
    ApplicationsWithAppIdRequestBuilder,
)
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.password_credential import PasswordCredential
from msgraph.generated.models.reference_create import ReferenceCreate
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_service_client import GraphServiceClient

from tests.azure_fake import FakeAzure, Tenant
from tests.azure_fake.fixtures import fake, healthy_fake, http, tenant  # noqa: F401 (pytest fixtures)
from tests.azure_fake.state import Application

UTC = dt.UTC


@pytest.fixture
async def signed_in(fake: FakeAzure) -> AsyncIterator[Any]:
    """Make (credential, graph client) for an app with a fresh secret; credentials closed after."""
    made: list[ClientSecretCredential] = []

    def make(
        app: Application, secret: str | None = None
    ) -> tuple[ClientSecretCredential, GraphServiceClient]:
        if secret is None:
            _, secret = fake.add_password(app)
        cred = ClientSecretCredential(app.tenant_id, app.app_id, secret, authority=fake.authority_host)
        made.append(cred)
        auth = AzureIdentityAuthenticationProvider(cred, scopes=[f"{fake.graph_endpoint}/.default"])
        adapter = GraphRequestAdapter(auth)
        adapter.base_url = f"{fake.graph_endpoint}/v1.0"
        return cred, GraphServiceClient(request_adapter=adapter)

    yield make
    for cred in made:
        await cred.close()


def app_named(fake: FakeAzure, tenant: Tenant, name: str, *permissions: str) -> Application:
    return fake.add_application(tenant, f"{name}-{uuid.uuid4().hex[:6]}", permissions)


def select(*fields: str) -> RequestConfiguration[Any]:
    query = ApplicationsWithAppIdRequestBuilder.ApplicationsWithAppIdRequestBuilderGetQueryParameters(
        select=list(fields)
    )
    return RequestConfiguration(query_parameters=query)


# ------------------------------------------------------------------ target apps and ownership


async def test_owned_by_reaches_only_owned_apps(fake: FakeAzure, tenant: Tenant, signed_in: Any) -> None:
    rotator = app_named(fake, tenant, "rotator", "Application.ReadWrite.OwnedBy")
    admin = app_named(fake, tenant, "admin", "Application.ReadWrite.All")
    owned = app_named(fake, tenant, "web")
    other = app_named(fake, tenant, "billing")
    fake.add_owner(owned, rotator)
    _, graph = signed_in(rotator)
    _, admin_graph = signed_in(admin)

    found = await graph.applications_with_app_id(owned.app_id).get(
        select("id", "appId", "passwordCredentials")
    )
    assert found is not None
    assert found.id == owned.id
    assert found.display_name is None
    added = await graph.applications.by_application_id(owned.id).add_password.post(
        AddPasswordPostRequestBody(password_credential=PasswordCredential(display_name="broker:rot-1"))
    )
    assert added is not None
    assert added.secret_text
    assert added.key_id
    await graph.applications.by_application_id(owned.id).remove_password.post(
        RemovePasswordPostRequestBody(key_id=added.key_id)
    )
    assert all(c.key_id != str(added.key_id) for c in owned.password_credentials)

    # Not an owner: Graph refuses reads and writes alike with 403 Authorization_RequestDenied.
    for call in (
        graph.applications_with_app_id(other.app_id).get(),
        graph.applications.by_application_id(other.id).add_password.post(
            AddPasswordPostRequestBody(password_credential=PasswordCredential(display_name="x"))
        ),
    ):
        with pytest.raises(ODataError) as denied:
            await call
        assert denied.value.response_status_code == 403
        assert denied.value.error is not None
        assert denied.value.error.code == "Authorization_RequestDenied"
    assert other.password_credentials == []
    listed = await graph.applications.get()
    assert listed is not None
    assert [a.id for a in listed.value or []] == [owned.id]

    # An admin makes the rotator an owner ($ref); from then on it may rotate that app too.
    owners = await admin_graph.applications.by_application_id(other.id).owners.get()
    assert owners is not None
    assert owners.value == []
    rotator_sp = fake.service_principal(rotator)
    ref = ReferenceCreate(odata_id=f"{fake.graph_endpoint}/v1.0/directoryObjects/{rotator_sp.id}")
    await admin_graph.applications.by_application_id(other.id).owners.ref.post(ref)
    with pytest.raises(ODataError) as twice:
        await admin_graph.applications.by_application_id(other.id).owners.ref.post(ref)
    assert twice.value.response_status_code == 400
    owners = await graph.applications.by_application_id(other.id).owners.get()
    assert owners is not None
    assert [o.id for o in owners.value or []] == [rotator_sp.id]
    await graph.applications.by_application_id(other.id).add_password.post(
        AddPasswordPostRequestBody(password_credential=PasswordCredential(display_name="broker:rot-2"))
    )
    assert len(other.password_credentials) == 1


async def test_target_app_token_endpoint_honours_end_dates(
    fake: FakeAzure, tenant: Tenant, signed_in: Any
) -> None:
    rotator = app_named(fake, tenant, "rotator", "Application.ReadWrite.All")
    target = app_named(fake, tenant, "target")
    _, graph = signed_in(rotator)
    ends = dt.datetime.now(UTC) + dt.timedelta(seconds=2)
    added = await graph.applications.by_application_id(target.id).add_password.post(
        AddPasswordPostRequestBody(
            password_credential=PasswordCredential(display_name="short", end_date_time=ends)
        )
    )
    assert added is not None
    assert added.secret_text
    assert added.end_date_time is not None
    assert abs((added.end_date_time - ends).total_seconds()) < 1
    # The target app signs in with its new secret (no Graph permissions: a token without roles).
    fresh = ClientSecretCredential(tenant.id, target.app_id, added.secret_text, authority=fake.authority_host)
    try:
        assert (await fresh.get_token(f"{fake.graph_endpoint}/.default")).token
    finally:
        await fresh.close()
    await asyncio.sleep(max(0.0, (ends - dt.datetime.now(UTC)).total_seconds()) + 0.3)
    late = ClientSecretCredential(tenant.id, target.app_id, added.secret_text, authority=fake.authority_host)
    try:
        with pytest.raises(ClientAuthenticationError) as expired:
            await late.get_token(f"{fake.graph_endpoint}/.default")
        assert "AADSTS7000222" in str(expired.value)
    finally:
        await late.close()


# ------------------------------------------------------------------ inventory: 250 apps, paged


@pytest.mark.slow
async def test_inventory_tenant_of_250_apps_pages(fake: FakeAzure, signed_in: Any) -> None:
    inventory_tenant = fake.add_tenant(domain="inventory.example")
    now = dt.datetime.now(UTC).replace(microsecond=0)
    days = [5, 20, 60, -3]  # expiring soon, within 30 days, later, expired
    started = time.perf_counter()
    apps = fake.add_applications(
        inventory_tenant,
        250,
        password_ends=lambda i: [now + dt.timedelta(days=days[i % 4])],
        certificate_ends=lambda i: [now + dt.timedelta(days=10)] if i % 50 == 0 else [],
    )
    seeding_seconds = time.perf_counter() - started
    assert seeding_seconds < 5, f"seeding 250 apps took {seeding_seconds:.2f}s"
    reader = fake.add_application(inventory_tenant, "inventory-reader", ["Application.Read.All"])
    _, graph = signed_in(reader)
    fields = ["id", "appId", "displayName", "passwordCredentials", "keyCredentials"]

    def query(top: int) -> RequestConfiguration[Any]:
        params = ApplicationsRequestBuilder.ApplicationsRequestBuilderGetQueryParameters(
            select=fields, top=top
        )
        return RequestConfiguration(query_parameters=params)

    one_page = await graph.applications.get(query(999))
    assert one_page is not None
    assert len(one_page.value or []) == 251
    assert one_page.odata_next_link is None

    fake.reset_counters()
    seen: list[Any] = []
    page = await graph.applications.get(query(100))
    while page is not None:
        seen.extend(page.value or [])
        if not page.odata_next_link:
            break
        page = await graph.applications.with_url(page.odata_next_link).get()
    assert fake.request_count("graph", r"/applications$", "GET") == 3
    assert len(seen) == 251
    assert len({a.id for a in seen}) == 251
    by_id = {a.id: a for a in seen}
    for i, app in enumerate(apps):
        listed = by_id[app.id]
        assert listed.display_name == app.display_name
        (secret,) = listed.password_credentials
        assert secret.end_date_time == now + dt.timedelta(days=days[i % 4])
        assert [c.end_date_time for c in listed.key_credentials] == (
            [now + dt.timedelta(days=10)] if i % 50 == 0 else []
        )
        assert listed.password_credentials[0].secret_text is None  # never on a read

    with pytest.raises(ODataError) as too_big:
        await graph.applications.get(query(1000))
    assert too_big.value.response_status_code == 400
