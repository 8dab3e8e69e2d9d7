"""Azure's refusals as the problem bodies a platform engineer can act on (the gateway's tables).

The tables say what an Azure code means for the caller (`Explanation`: the field at fault and
how to fix it); `core.azure_failure` classifies an answer with them once, and
`AzureFailure.validation_problem` builds the bodies below from that classification. Every
body names the step that failed (`step`: token-acquisition, graph-call, code-exchange,
token-refresh, devops-call) and carries Azure's own code (`azureCode`). Nothing here parses an
SDK error or retries: `core.azure_gateway` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import FieldError, Unavailable, Unprocessable, UpstreamError, UpstreamTimeout

Step = Literal["token-acquisition", "graph-call", "code-exchange", "token-refresh", "devops-call"]

STEP_LABELS: dict[str, str] = {
    "token-acquisition": "Acquiring a token from Entra ID",
    "graph-call": "Calling Microsoft Graph",
    "code-exchange": "Exchanging the authorization code with Entra ID",
    "token-refresh": "Refreshing the delegated token with Entra ID",
    "devops-call": "Calling Azure DevOps",
}

GRAPH_APP_PERMISSIONS = (
    "the application permission Application.ReadWrite.All (or Application.ReadWrite.OwnedBy with the app "
    "an owner of itself, or Directory.ReadWrite.All) with admin consent"
)
GRAPH_DELEGATED_PERMISSIONS = "delegated Application.ReadWrite.All, Directory.ReadWrite.All and User.Read"
DEVOPS_SCOPES = (
    "Variable Groups (read, create & manage), Release (read, write), Project and Team (read), "
    "Service Connections (read & query)"
)

_AADSTS = re.compile(r"AADSTS(\d+)")


class AzureRejected(Unprocessable, code="azure-validation-failed"):
    """Azure refused the connection's credentials or permissions (the caller can fix it)."""


@dataclass(frozen=True)
class Explanation:
    """What an Azure code means for the caller: the field at fault and how to fix it."""

    field: str  # relative to the caller's prefix (`credentials.`); "" is the prefix itself
    message: str
    known: bool = True  # False: a generic text for a code no table explains (the caller may name the field)


# AADSTS code -> (credential field, message). Fields are relative to `credentials`.
_AADSTS_EXPLAINED: dict[str, Explanation] = {
    "90002": Explanation(
        "tenantId", "no tenant with this ID or domain exists; check the Directory (tenant) ID"
    ),
    "900023": Explanation("tenantId", "this is not a valid tenant ID or domain"),
    "90072": Explanation("tenantId", "the account is not in this tenant; use the tenant the app lives in"),
    "700016": Explanation(
        "clientId", "no app with this client ID exists in the tenant (or it was not consented there)"
    ),
    "7000215": Explanation(
        "clientSecret",
        "the client secret is wrong; send the secret's Value (shown once when it was added), "
        "not its Secret ID",
    ),
    "7000222": Explanation(
        "clientSecret", "the client secret has expired; add a new one to the app and send it"
    ),
    "7000218": Explanation("clientSecret", "a client secret or certificate is required"),
    "700027": Explanation(
        "certificate",
        "the certificate is not registered on the app (or the assertion signature does not verify); "
        "upload this certificate to the app's Certificates & secrets",
    ),
    "700024": Explanation("certificate", "the client assertion is outside its valid time range"),
    "7000112": Explanation("clientId", "the app is disabled in this tenant"),
    "65001": Explanation(
        "clientId", "the app has not been granted the permissions (admin consent is missing)"
    ),
    "500011": Explanation("clientId", "the resource the token is for is not available in this tenant"),
    "501481": Explanation(
        "code", "the PKCE code verifier does not match the code challenge of the authorization request"
    ),
    "70000": Explanation(
        "code", "the authorization code is invalid, expired or already redeemed; start again"
    ),
    "70008": Explanation("refreshToken", "the refresh token has expired; authorize the connection again"),
    "700082": Explanation("refreshToken", "the refresh token expired from inactivity; authorize again"),
    "50173": Explanation("refreshToken", "the grant was revoked (password changed?); authorize again"),
    "50133": Explanation("refreshToken", "the session is invalid after a password change; authorize again"),
    "50011": Explanation("redirectUri", "the redirect URI is not registered on the operator app"),
}

_GRAPH_EXPLAINED: dict[int, Explanation] = {
    401: Explanation("clientId", "Microsoft Graph did not accept the token"),
    403: Explanation(
        "clientId", f"the app is missing Microsoft Graph permission; grant {GRAPH_APP_PERMISSIONS}"
    ),
    404: Explanation(
        "clientId",
        "Microsoft Graph cannot see this app; with Application.ReadWrite.OwnedBy the app must own itself, "
        f"else grant {GRAPH_APP_PERMISSIONS}",
    ),
}


def aadsts_code(text: str) -> str | None:
    """The AADSTS number in an Entra error text, if any."""
    match = _AADSTS.search(text)
    return match.group(1) if match else None


def explain_aadsts(number: str | None) -> Explanation:
    """What an AADSTS code means for the caller (a generic text for a code the table lacks)."""
    return _AADSTS_EXPLAINED.get(number or "") or Explanation(
        "clientId", "Entra ID refused the request; see azureCode and azureMessage", known=False
    )


def explain_graph(status: int) -> Explanation:
    """What a Graph refusal with an app's token means: the app's permissions, by status."""
    return _GRAPH_EXPLAINED.get(status) or Explanation(
        "clientId", "Microsoft Graph refused the request; see azureCode", known=False
    )


# Graph refused a signed-in user's (delegated) token: the consent is missing, not an app permission.
DELEGATED_GRAPH_REFUSED = Explanation(
    "scope", f"the signed-in user's token is missing Graph permission; consent {GRAPH_DELEGATED_PERMISSIONS}"
)
# azure-identity refused the credentials before sending anything (e.g. a malformed tenant ID).
SDK_REFUSED = Explanation("", "check the tenant ID, client ID and credential format")


def explain_devops(status: int, code: str, message: str, *, credential_field: str, org: str) -> Explanation:
    """What a DevOps refusal means; `credential_field` is the field holding the caller's token."""
    lowered = message.lower()
    if code == "SignInRedirect":
        return Explanation(
            credential_field,
            f"{message}: the token is invalid, revoked or not for organization {org}",
        )
    if status == 404:
        return Explanation("orgName", f"organization not found: {org} does not exist in Azure DevOps")
    if status == 403 or (status == 401 and "scope" in lowered):
        return Explanation(credential_field, f"the token is missing a required scope; grant {DEVOPS_SCOPES}")
    if status == 401 and "expired" in lowered:
        return Explanation(credential_field, "token invalid or expired: the token has expired")
    if status == 401 and credential_field == "clientId":
        return Explanation(
            "clientId",
            f"token invalid or expired, or the app is not a member of organization {org} "
            "(add its service principal to the organization)",
        )
    if status == 401:
        return Explanation(credential_field, "token invalid or expired")
    return Explanation("orgName", "Azure DevOps refused the request; see azureCode", known=False)


def azure_message(text: str) -> str:
    """Azure's own description without the AADSTS prefix and trace noise (secrets not yet redacted)."""
    text = re.sub(r"^.*?AADSTS\d+:\s*", "", text, count=1, flags=re.S)
    return text.split(" Trace ID:")[0].split("\r\n")[0].strip()[:2000]


def redacted(text: str, redact: Iterable[str]) -> str:
    """`text` with any secret the caller holds replaced, cut to a problem body's length."""
    for secret in redact:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text[:300]


def _label(step: str) -> str:
    return STEP_LABELS.get(step, step)


def timeout_problem(step: str) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"{_label(step)} timed out: Azure did not answer in time. Nothing was saved; try again.",
        extra={"step": step},
        code="azure-timeout",
    )


def throttled_problem(step: str, retry_after: float | None, azure_code: str | None = None) -> Unavailable:
    wait = int(retry_after or 30)
    return Unavailable(
        f"{_label(step)} was throttled by Azure (HTTP 429) after retries; try again in {wait}s.",
        headers={"Retry-After": str(wait)},
        extra={"step": step, "azureStatus": 429, **({"azureCode": azure_code} if azure_code else {})},
        code="azure-throttled",
    )


def server_problem(step: str, status: int, azure_code: str | None = None) -> UpstreamError:
    return UpstreamError(
        f"{_label(step)} failed: Azure answered HTTP {status} after retries. Nothing was saved; try again.",
        extra={"step": step, "azureStatus": status, **({"azureCode": azure_code} if azure_code else {})},
        code="azure-unavailable",
    )


def unreachable_problem(step: str) -> UpstreamError:
    return UpstreamError(
        f"{_label(step)} failed: Azure could not be reached.",
        extra={"step": step},
        code="azure-unreachable",
    )


def rejected(
    step: str,
    explanation: Explanation,
    *,
    azure_code: str | None,
    azure_status: int | None,
    azure_message: str = "",
    field_prefix: str = "credentials.",
) -> AzureRejected:
    """The 422 for credentials or permissions Azure refused."""
    code_text = f" ({azure_code})" if azure_code else ""
    extra: dict[str, Any] = {"step": step}
    if azure_code:
        extra["azureCode"] = azure_code
    if azure_status:
        extra["azureStatus"] = azure_status
    if azure_message:
        extra["azureMessage"] = azure_message
    field = (field_prefix + explanation.field) if explanation.field else field_prefix.rstrip(".")
    return AzureRejected(
        f"{_label(step)} failed{code_text}: {explanation.message}.",
        [FieldError(field or "credentials", explanation.message)],
        extra=extra,
    )
