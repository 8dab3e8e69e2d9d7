"""Reading a tenant's app registrations for the inventory: every page, through the gateway.

One `GET /applications?$select=id,appId,displayName,passwordCredentials,keyCredentials&$top=999`
and then each `@odata.nextLink` (which keeps `$select`): one Graph request per 999 apps. Only
what the inventory keeps leaves this module: Key IDs, display names and end dates; never a
password hint or a certificate's key or thumbprint.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core import azure_gateway
from inventory.models import AppCredential, CredentialType

if TYPE_CHECKING:
    from core.azure_credentials import AppAccess

PAGE_SIZE = 999  # Graph's largest page for /applications
SELECT = ["id", "appId", "displayName", "passwordCredentials", "keyCredentials"]
# The application permission a connection needs to list every app registration of its tenant.
READ_PERMISSION = "Application.Read.All"


async def application_pages(access: AppAccess) -> AsyncIterator[list[dict[str, Any]]]:
    """Each page of the tenant's applications as Graph's JSON objects, first to last.

    The pages go through the Graph client's request adapter (its auth and transport, Graph's
    errors as `ODataError` for the gateway to classify) but are read as JSON, not as msgraph
    models: kiota's model parser needs about 10 s of CPU for 250 apps, the JSON parser 10 ms.
    """
    from msgraph.generated.applications.applications_request_builder import ApplicationsRequestBuilder
    from msgraph.generated.models.o_data_errors.o_data_error import ODataError

    builder = access.graph().applications
    config = ApplicationsRequestBuilder.ApplicationsRequestBuilderGetRequestConfiguration(
        query_parameters=ApplicationsRequestBuilder.ApplicationsRequestBuilderGetQueryParameters(
            select=SELECT, top=PAGE_SIZE
        )
    )
    errors: dict[str, Any] = {"XXX": ODataError}
    link: str | None = None
    while True:

        async def send(link: str | None = link) -> Any:
            """A fresh request per attempt (the auth provider writes its token into it)."""
            request = (builder.with_url(link) if link else builder).to_get_request_information(
                None if link else config
            )
            return await builder.request_adapter.send_primitive_async(request, "bytes", errors)

        body = await azure_gateway.call("listApplications", send, pace=access.pace_key)
        page = json.loads(body) if body else {}
        yield list(page.get("value") or [])
        link = page.get("@odata.nextLink")
        if not link:
            return


def _end(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        end = datetime.fromisoformat(value)
    except ValueError:
        return None
    return end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)


def credentials_of(apps: Iterable[dict[str, Any]]) -> Iterable[AppCredential]:
    """The dated credentials of each app (a credential without an end date never expires)."""
    for app in apps:
        kinds: tuple[tuple[CredentialType, Any], ...] = (
            ("password", app.get("passwordCredentials")),
            ("certificate", app.get("keyCredentials")),
        )
        for kind, found in kinds:
            for credential in found or []:
                end = _end(credential.get("endDateTime"))
                if not credential.get("keyId") or end is None:
                    continue
                yield AppCredential(
                    app_object_id=str(app.get("id") or ""),
                    app_id=str(app.get("appId") or ""),
                    app_display_name=str(app.get("displayName") or ""),
                    key_id=str(credential["keyId"]).lower(),
                    type=kind,
                    display_name=str(credential.get("displayName") or ""),
                    end_date_time=end,
                )
