"""Azure DevOps REST: one page of an organization's projects, and DevOps answers as problems.

Only `AZURE_DEVOPS_ENDPOINT` + a validated organization name is ever called, without following
redirects (a redirect is DevOps sending a bad credential to its sign-in page).
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING

from connections.azure_errors import send_with_retries, within_deadline
from core.azure_clients import http_client
from core.azure_problems import DEVOPS_SCOPES, Explanation, credential_problem, rejected, transient_problem
from core.errors import Problem
from core.models import ApiModel
from core.retry_after import retry_after_seconds
from core.settings import get_settings

if TYPE_CHECKING:
    import httpx
    from azure.core.credentials_async import AsyncTokenCredential

# Azure DevOps as an Entra resource (its well-known application id).
DEVOPS_RESOURCE = "499b84ac-1321-427f-aa17-267ca6975798"
DEVOPS_SCOPE = f"{DEVOPS_RESOURCE}/.default"
API_VERSION = "7.1"
TOKEN_RETRIES = 3
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


def devops_problem(response: httpx.Response, method: str, org: str) -> Problem:
    """A DevOps answer other than a page of projects, as a problem naming the cause."""
    status = response.status_code
    content_type = response.headers.get("content-type", "")
    field_prefix = "credentials." if method != "oauth" else ""
    location = response.headers.get("location", "")
    if status == 203 or 300 <= status < 400 or (status == 200 and "html" in content_type):
        where = f" (redirected to {location.split('?')[0][:100]})" if location else ""
        return rejected(
            "devops-call",
            Explanation(
                _credential_field(method),
                "Azure DevOps answered with its sign-in page: the token is invalid, revoked or not for "
                f"organization {org}{where}",
            ),
            azure_code="SignInRedirect",
            azure_status=status,
            field_prefix=field_prefix,
        )
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    type_key = str(body.get("typeKey", "")) if isinstance(body, dict) else ""
    tf_code = re.search(r"TF\d+", message)
    azure_code = tf_code.group(0) if tf_code else (type_key or None)
    transient = transient_problem("devops-call", status, azure_code, retry_after_seconds(response.headers))
    if transient is not None:
        return transient
    lowered = message.lower()
    if status == 404:
        explanation = Explanation("orgName", f"organization not found: {org} does not exist in Azure DevOps")
    elif status == 403 or (status == 401 and "scope" in lowered):
        explanation = Explanation(
            _credential_field(method), f"the token is missing a required scope; grant {DEVOPS_SCOPES}"
        )
    elif status == 401 and "expired" in lowered:
        explanation = Explanation(
            _credential_field(method), "token invalid or expired: the token has expired"
        )
    elif status == 401 and method == "client-secret":
        explanation = Explanation(
            "clientId",
            f"token invalid or expired, or the app is not a member of organization {org} "
            "(add its service principal to the organization)",
        )
    elif status == 401:
        explanation = Explanation(_credential_field(method), "token invalid or expired")
    else:
        explanation = Explanation("orgName", "Azure DevOps refused the request; see azureCode")
    return rejected(
        "devops-call",
        explanation,
        azure_code=azure_code,
        azure_status=status,
        azure_message=message[:300],
        field_prefix=field_prefix,
    )


async def projects(
    org: str, authorization: str, method: str, *, top: int, continuation: str | None
) -> ProjectPage:
    """One page of the organization's projects."""
    client = await http_client()
    url = f"{get_settings().azure_devops_endpoint}/{org}/_apis/projects"
    params: dict[str, str] = {"api-version": API_VERSION, "$top": str(top)}
    if continuation:
        params["continuationToken"] = continuation
    headers = {"Authorization": authorization, "Accept": "application/json"}

    async def send() -> httpx.Response:
        return await client.get(url, params=params, headers=headers)

    response = await within_deadline(send_with_retries(send, step="devops-call"), "devops-call")
    if response.status_code != 200 or "json" not in response.headers.get("content-type", ""):
        raise devops_problem(response, method, org)
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
        token = await within_deadline(
            credential.get_token(DEVOPS_SCOPE, retry_total=TOKEN_RETRIES), "token-acquisition"
        )
    except Problem:
        raise
    except Exception as error:
        raise credential_problem(error, redact=redact) from None
    return f"Bearer {token.token}"
