"""Azure DevOps REST: one page of an organization's projects, through the gateway.

The gateway classifies DevOps' answers (`core.azure_failure.devops_failure`); this module only
says which of the caller's fields holds the token, for the fix-it text.

Only `AZURE_DEVOPS_ENDPOINT` + a validated organization name is ever called, without following
redirects (a redirect is DevOps sending a bad credential to its sign-in page).
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING

from core import azure_gateway
from core.azure_clients import http_client
from core.azure_failure import AzureFailure
from core.azure_problems import explain_devops
from core.errors import Problem
from core.models import ApiModel
from core.settings import get_settings

if TYPE_CHECKING:
    import httpx
    from azure.core.credentials_async import AsyncTokenCredential

# Azure DevOps as an Entra resource (its well-known application id).
DEVOPS_RESOURCE = "499b84ac-1321-427f-aa17-267ca6975798"
DEVOPS_SCOPE = f"{DEVOPS_RESOURCE}/.default"
API_VERSION = "7.1"
CONTINUATION = re.compile(r"^[A-Za-z0-9+/=_.~-]{1,512}$")


class Project(ApiModel):
    id: str
    name: str
    description: str | None = None
    state: str | None = None
    visibility: str | None = None
    last_update_time: str | None = None


class ProjectPage(ApiModel):
    items: list[Project]
    continuation_token: str | None = None


def _credential_field(method: str) -> str:
    return {"access-token": "accessToken", "client-secret": "clientId"}.get(method, "token")


def devops_problem(failure: AzureFailure, method: str, org: str) -> Problem:
    """The gateway's classification of a DevOps answer as the problem naming the field to fix."""
    explained = explain_devops(
        failure.status,
        failure.code,
        failure.message if failure.code == "SignInRedirect" else failure.azure_message,
        credential_field=_credential_field(method),
        org=org,
    )
    return failure.validation_problem(
        field_prefix="credentials." if method != "oauth" else "", explained=explained
    )


async def projects(
    org: str, authorization: str, method: str, *, top: int, continuation: str | None
) -> ProjectPage:
    """One page of the organization's projects."""
    import httpx

    client = await http_client()
    url = f"{get_settings().azure_devops_endpoint}/{org}/_apis/projects"
    params: dict[str, str] = {"api-version": API_VERSION, "$top": str(top)}
    if continuation:
        params["continuationToken"] = continuation
    headers = {"Authorization": authorization, "Accept": "application/json"}

    async def send() -> httpx.Response:
        response = await client.get(url, params=params, headers=headers)
        if response.status_code != 200 or "json" not in response.headers.get("content-type", ""):
            # not a page of projects: the gateway classifies it (sign-in page, TF code, 429, 5xx)
            raise httpx.HTTPStatusError("no projects", request=response.request, response=response)
        return response

    try:
        response = await azure_gateway.call("devops-call", send, kind="devops")
    except AzureFailure as failure:
        raise devops_problem(failure, method, org) from None
    body = response.json()
    items = [
        Project(
            id=str(p.get("id", "")),
            name=str(p.get("name", "")),
            description=p.get("description"),
            state=p.get("state"),
            visibility=p.get("visibility"),
            last_update_time=p.get("lastUpdateTime"),
        )
        for p in body.get("value", [])
        if isinstance(p, dict)
    ]
    token = response.headers.get("x-ms-continuationtoken")
    return ProjectPage(items=items, continuation_token=token if token and CONTINUATION.match(token) else None)


def basic(pat: str) -> str:
    return "Basic " + base64.b64encode(f":{pat}".encode()).decode()


async def bearer(credential: AsyncTokenCredential, redact: list[str]) -> str:
    try:
        token = await azure_gateway.call(
            "token-acquisition", lambda: credential.get_token(DEVOPS_SCOPE, retry_total=0), kind="token"
        )
    except AzureFailure as failure:
        raise failure.validation_problem(redact=redact) from None
    return f"Bearer {token.token}"
