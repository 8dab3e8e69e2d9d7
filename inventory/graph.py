"""Reading a tenant's app registrations for the inventory: every page, through the gateway.

One `GET /applications?$select=id,appId,displayName,passwordCredentials,keyCredentials&$top=999`
and then each `@odata.nextLink` (which keeps `$select`): one Graph request per 999 apps. Only
what the inventory keeps leaves this module: Key IDs, display names and end dates; never a
password hint or a certificate's key or thumbprint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core import azure_gateway

if TYPE_CHECKING:
    from core.azure_credentials import AppAccess

PAGE_SIZE = 999  # Graph's largest page for /applications
SELECT = ["id", "appId", "displayName", "passwordCredentials", "keyCredentials"]
# The application permission a connection needs to list every app registration of its tenant.
READ_PERMISSION = "Application.Read.All"


@dataclass(frozen=True)
class Credential:
    """A password or certificate credential of an app, without any secret material."""

    app_object_id: str
    app_id: str
    app_display_name: str
    key_id: str
    type: str  # password | certificate
    display_name: str
    end: datetime


async def application_pages(access: AppAccess) -> AsyncIterator[list[Any]]:
    """Each page of the tenant's applications (msgraph `Application` models), first to last."""
    from msgraph.generated.applications.applications_request_builder import ApplicationsRequestBuilder

    builder = access.graph().applications
    config = ApplicationsRequestBuilder.ApplicationsRequestBuilderGetRequestConfiguration(
        query_parameters=ApplicationsRequestBuilder.ApplicationsRequestBuilderGetQueryParameters(
            select=SELECT, top=PAGE_SIZE
        )
    )
    page = await azure_gateway.call("listApplications", lambda: builder.get(config), pace=access.pace_key)
    while page is not None:
        yield list(page.value or [])
        link = page.odata_next_link
        if not link:
            return
        following = builder.with_url(link)
        page = await azure_gateway.call("listApplications", following.get, pace=access.pace_key)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def credentials_of(apps: Iterable[Any]) -> Iterable[Credential]:
    """The dated credentials of each app (a credential without an end date never expires)."""
    for app in apps:
        kinds = (("password", app.password_credentials), ("certificate", app.key_credentials))
        for kind, found in kinds:
            for credential in found or []:
                if credential.key_id is None or credential.end_date_time is None:
                    continue
                yield Credential(
                    app_object_id=str(app.id or ""),
                    app_id=str(app.app_id or ""),
                    app_display_name=str(app.display_name or ""),
                    key_id=str(credential.key_id).lower(),
                    type=kind,
                    display_name=str(credential.display_name or ""),
                    end=_utc(credential.end_date_time),
                )
