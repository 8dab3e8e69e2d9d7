"""`addPassword`, the one non-idempotent Graph call the broker makes, done exactly once.

Graph creates a new secret for every POST, so a repeated request leaves a secret nobody tracks.
The POST goes through the gateway with `idempotent=False` (only a 429 is retried: Graph did not
process it). If the answer is lost (timeout, 5xx other than 503, reset, deadline), the app's
`passwordCredentials` are read and the one whose display name is the caller's marker (it
carries the run id, so it is unique to this attempt) is adopted: its key id is returned without
the value, which Graph shows only once, so the caller removes it rather than use it. Nothing
found: the outcome is still unknown (Graph reads may lag), reported as `outcome-unknown`; the
caller's reconciler looks for the marker again later. The POST is never sent twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from core import azure_gateway
from core.azure_credentials import AppAccess
from core.azure_failure import LOST, AzureFailure


@dataclass(frozen=True)
class AddedPassword:
    """A new password credential. `secret` is None when it was adopted after a lost answer."""

    key_id: str
    secret: str | None

    @property
    def adopted(self) -> bool:
        return self.secret is None


def marker(prefix: str, run_id: str) -> str:
    """The display name that marks a broker-made secret of one run (what a lost answer is found by)."""
    return f"{prefix} {run_id}"


async def marked_key_ids(access: AppAccess, app_object_id: str, display_name: str) -> list[str]:
    """Key ids of the app's password credentials named `display_name` (idempotent read)."""
    from msgraph.generated.applications.item.application_item_request_builder import (
        ApplicationItemRequestBuilder,
    )

    builder = access.graph().applications.by_application_id(app_object_id)
    config = ApplicationItemRequestBuilder.ApplicationItemRequestBuilderGetRequestConfiguration(
        query_parameters=ApplicationItemRequestBuilder.ApplicationItemRequestBuilderGetQueryParameters(
            select=["id", "passwordCredentials"]
        )
    )
    app = await azure_gateway.call("readApplication", lambda: builder.get(config), pace=access.pace_key)
    credentials = (app.password_credentials if app else None) or []
    return sorted(str(c.key_id).lower() for c in credentials if c.key_id and c.display_name == display_name)


async def add_password(
    access: AppAccess, app_object_id: str, display_name: str, end: datetime
) -> AddedPassword:
    """Add a password credential named `display_name` (a `marker`) to the app, once."""
    from msgraph.generated.applications.item.add_password.add_password_post_request_body import (
        AddPasswordPostRequestBody,
    )
    from msgraph.generated.models.password_credential import PasswordCredential

    body = AddPasswordPostRequestBody(
        password_credential=PasswordCredential(display_name=display_name, end_date_time=end)
    )
    builder = access.graph().applications.by_application_id(app_object_id).add_password
    try:
        created = await azure_gateway.call(
            "addPassword", lambda: builder.post(body), pace=access.pace_key, idempotent=False
        )
    except AzureFailure as failure:
        if not failure.outcome_unknown:
            raise
        lost = failure
    else:
        if created is None or not created.key_id or not created.secret_text:
            raise AzureFailure("addPassword", 502, "EmptyAnswer", "Graph returned no key id or secret")
        return AddedPassword(str(created.key_id).lower(), created.secret_text)
    try:
        found = await marked_key_ids(access, app_object_id, display_name)
    except AzureFailure:
        raise lost from None
    if len(found) == 1:
        return AddedPassword(found[0], None)
    raise AzureFailure(
        "addPassword",
        lost.status,
        LOST,
        f"the answer was lost and {len(found)} credentials carry the marker; reconcile later",
    )
