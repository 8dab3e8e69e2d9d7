"""Azure's refusals as the problem bodies a platform engineer can act on (the gateway's table).

Every problem built here says which step failed (`step`: token-acquisition, graph-call,
code-exchange, token-refresh, devops-call, or a domain's own step name) and carries Azure's own
code (`azureCode`: AADSTS..., Graph `error.code`, DevOps TF code / `typeKey`), plus a fix-it
message on the field at fault. Retrying is not done here: `core.azure_gateway` retries, and
turns what is left into these problems.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import FieldError, Problem, Unavailable, Unprocessable, UpstreamError, UpstreamTimeout
from core.retry_after import retry_after_seconds

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


class AzureRejected(Unprocessable):
    """Azure refused the connection's credentials or permissions (the caller can fix it)."""

    code = "azure-validation-failed"


@dataclass(frozen=True)
class Explanation:
    """What an Azure code means for the caller: the field at fault and how to fix it."""

    field: str
    message: str


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


def _azure_message(text: str, redact: Iterable[str]) -> str:
    """Azure's own description, trimmed of trace noise, with any secret we hold redacted."""
    text = re.sub(r"^.*?AADSTS\d+:\s*", "", text, count=1, flags=re.S)
    text = text.split(" Trace ID:")[0].split("\r\n")[0].strip()
    for secret in redact:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text[:300]


def _label(step: str) -> str:
    return STEP_LABELS.get(step, step)


def timeout_problem(step: str, seconds: float | None = None) -> UpstreamTimeout:
    waited = f" within {seconds:.0f}s" if seconds else ""
    return UpstreamTimeout(
        f"{_label(step)} timed out: Azure did not answer{waited}. Nothing was saved; try again.",
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


def transient_problem(
    step: str, status: int, azure_code: str | None, retry_after: float | None = None
) -> Problem | None:
    """Azure's answer once retries are spent: 429 -> 503 with Retry-After, 5xx -> 502; else None."""
    if status == 429:
        return throttled_problem(step, retry_after, azure_code)
    if status >= 500:
        return server_problem(step, status, azure_code)
    return None


def unreachable_problem(step: str, error: BaseException) -> UpstreamError:
    return UpstreamError(
        f"{_label(step)} failed: Azure could not be reached ({type(error).__name__}).",
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
    return AzureRejected(
        f"{_label(step)} failed{code_text}: {explanation.message}.",
        [FieldError(field_prefix + explanation.field, explanation.message)],
        extra=extra,
    )


def entra_problem(
    step: str,
    status: int,
    body: Mapping[str, Any] | str,
    *,
    redact: Iterable[str] = (),
    field_prefix: str = "credentials.",
    default_field: str = "clientId",
    retry_after: float | None = None,
) -> Problem:
    """A token endpoint error (`{error, error_description, error_codes}`) as a problem."""
    if isinstance(body, Mapping):
        description = str(body.get("error_description") or body.get("error") or "")
        codes = body.get("error_codes") or []
        number = str(codes[0]) if codes else aadsts_code(description)
    else:
        description = body
        number = aadsts_code(body)
    azure_code = f"AADSTS{number}" if number else None
    transient = transient_problem(step, status, azure_code, retry_after)
    if transient is not None:
        return transient
    if number in {"50196", "90033", "50000"}:  # Entra's own "try again later" codes
        return server_problem(step, status, azure_code)
    explanation = _AADSTS_EXPLAINED.get(number or "") or Explanation(
        default_field, "Entra ID refused the request; see azureCode and azureMessage"
    )
    return rejected(
        step,
        explanation,
        azure_code=azure_code,
        azure_status=status,
        azure_message=_azure_message(description, redact),
        field_prefix=field_prefix,
    )


def credential_problem(
    error: BaseException, *, step: str = "token-acquisition", redact: Iterable[str] = ()
) -> Problem:
    """An azure-identity failure (ClientAuthenticationError and friends) as a problem."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(error, Problem):
        return error
    if isinstance(error, TimeoutError):
        return timeout_problem(step)
    if isinstance(error, ClientAuthenticationError | HttpResponseError):
        response = getattr(error, "response", None)
        status = int(getattr(response, "status_code", 0) or 0) or 400
        body: Mapping[str, Any] | str = str(getattr(error, "message", "") or "")
        if response is not None:
            try:
                parsed = response.json()
                if isinstance(parsed, Mapping):
                    body = parsed
            except Exception:  # noqa: S110 - a non-JSON body: keep the message text
                pass
        retry_after = retry_after_seconds(dict(response.headers)) if response is not None else None
        return entra_problem(step, status, body, redact=redact, retry_after=retry_after)
    if isinstance(error, ServiceRequestError | ServiceResponseError):
        return unreachable_problem(step, error)
    if isinstance(error, ValueError):
        # azure-identity validates its inputs (e.g. a tenant id) before any request.
        return AzureRejected(
            f"{_label(step)} failed: the credentials were not accepted by the Azure SDK.",
            [FieldError("credentials", "check the tenant ID, client ID and credential format")],
            extra={"step": step},
        )
    return unreachable_problem(step, error)


def graph_problem(
    error: BaseException,
    *,
    step: str = "graph-call",
    delegated: bool = False,
    redact: Iterable[str] = (),
) -> Problem:
    """A Microsoft Graph failure (kiota APIError / ODataError, httpx errors) as a problem."""
    import httpx
    from kiota_abstractions.api_error import APIError

    if isinstance(error, Problem):
        return error
    if isinstance(error, TimeoutError | httpx.TimeoutException):
        return timeout_problem(step)
    if isinstance(error, httpx.TransportError):
        return unreachable_problem(step, error)
    if isinstance(error, APIError):
        status = int(error.response_status_code or 0)
        odata = getattr(error, "error", None)
        code = str(getattr(odata, "code", "") or "") or None
        message = str(getattr(odata, "message", "") or "")
        headers = {k.lower(): v for k, v in (error.response_headers or {}).items()}
        transient = transient_problem(step, status, code, retry_after_seconds(headers))
        if transient is not None:
            return transient
        explanation = _GRAPH_EXPLAINED.get(status) or Explanation(
            "clientId", "Microsoft Graph refused the request; see azureCode"
        )
        if delegated and status == 403:
            explanation = Explanation(
                "scope",
                "the signed-in user's token is missing Graph permission; "
                f"consent {GRAPH_DELEGATED_PERMISSIONS}",
            )
        return rejected(
            step,
            explanation,
            azure_code=code,
            azure_status=status,
            azure_message=_azure_message(message, redact),
            field_prefix="" if delegated else "credentials.",
        )
    # The auth provider raises the credential's own error if a token cannot be had mid-call.
    from azure.core.exceptions import AzureError

    if isinstance(error, AzureError):
        return credential_problem(error, step="token-acquisition", redact=redact)
    return unreachable_problem(step, error)
