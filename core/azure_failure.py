"""What went wrong in one Azure call: `AzureFailure`, and the one classification of Azure's answers.

`classify(kind, step, error)` turns whatever an SDK or httpx raised for Entra ID (azure-identity),
Microsoft Graph (kiota), Key Vault (azure-core) or Azure DevOps (an httpx response) into an
`AzureFailure` carrying the step, the HTTP status (0: nothing answered), Azure's own code (AADSTS
number, Graph `error.code`, Key Vault `error.code`, DevOps TF code or `typeKey`), Retry-After,
and the request field at fault where Azure's code names one. The gateway decides retries from
it (`transient`, `outcome_unknown`); `problem()` is what the API answers. Messages are ours or
Azure's trimmed description, never an exception's text that might echo request material.

The classification also keeps what a caller validating input needs (`explained`: the credential
field at fault and the fix-it text from `core.azure_problems`' tables, `azure_message`: Azure's
own description); `validation_problem()` turns it into the connection API's 422/502/503/504
bodies, the caller choosing the field prefix and the secrets to redact. A `Problem` raised
inside a call (a credential that refreshes through the broker) passes through unclassified.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from core.azure_problems import (
    _AADSTS_EXPLAINED,
    SDK_REFUSED,
    Explanation,
    aadsts_code,
    azure_message,
    explain_aadsts,
    explain_graph,
    redacted,
    rejected,
    server_problem,
    throttled_problem,
    timeout_problem,
    unreachable_problem,
)
from core.errors import FieldError, Problem, Unavailable, Unprocessable, UpstreamError, UpstreamTimeout
from core.retry_after import retry_after_seconds

Kind = Literal["token", "graph", "keyvault", "appconfig", "devops"]

# Entra's own "try again later" codes: transient although the status is 400.
_AADSTS_TRANSIENT = {"50196", "90033", "50000"}
# Codes the gateway gives to failures that have no Azure code of their own.
TIMEOUT, DEADLINE, CONNECTION, LOST = "timeout", "deadline", "connection", "outcome-unknown"


class AzureFailure(Exception):
    """A step against Azure failed; `code` is Azure's, `status` the HTTP status seen (0: none)."""

    def __init__(
        self,
        step: str,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        field: str | None = None,
        explained: Explanation | None = None,
        azure_message: str = "",
    ) -> None:
        super().__init__(f"{step}: {code}: {message}")
        self.step = step
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.field = field
        self.explained = explained  # for a caller validating credentials (see validation_problem)
        self.azure_message = azure_message  # Azure's text: may echo input, so never in str(self)

    @property
    def transient(self) -> bool:
        """Worth trying again later: throttling, Azure-side errors, timeouts, network trouble."""
        return self.status in (0, 408, 429) or self.status >= 500

    @property
    def outcome_unknown(self) -> bool:
        """Azure may have done the work (the answer was lost): a 429 or 503 says it did not."""
        return self.transient and self.status not in (429, 503)

    def describe(self) -> str:
        """One line for `lastError`, audit and events (no secret material)."""
        return f"{self.step} failed: {self.code} (HTTP {self.status}): {self.message}"[:400]

    def problem(
        self, *, validating: bool = False, fields: Mapping[str, str] | None = None, **extra: Any
    ) -> Problem:
        """The failure as the caller sees it: the step, Azure's code, and what to do.

        `validating`: the caller's input is being checked, so a refusal is a 422 on the field at
        fault (renamed through `fields`, e.g. clientId -> applicationId); else a 502.
        """
        details = {"step": self.step, "azureCode": self.code, **extra}
        detail = f"Azure step '{self.step}' failed with {self.code}: {self.message}"
        if self.status == 429:
            wait = str(int(self.retry_after or 5))
            return Unavailable(detail, headers={"Retry-After": wait}, extra=details, code="azure-throttled")
        if self.code in (TIMEOUT, DEADLINE) or self.status == 504:
            return UpstreamTimeout(detail, extra=details)
        if self.transient:
            return Unavailable(detail, headers={"Retry-After": "5"}, extra=details, code="azure-unavailable")
        if validating:
            name = self.field or "clientId"
            name = (fields or {}).get(name, name)
            return Unprocessable(
                detail, [FieldError(name, self.message)], extra=details, code="azure-refused"
            )
        return UpstreamError(detail, extra=details, code="azure-refused")

    def validation_problem(
        self,
        *,
        field_prefix: str = "credentials.",
        redact: Iterable[str] = (),
        explained: Explanation | None = None,
        default_field: str | None = None,
    ) -> Problem:
        """The failure while validating a caller's credentials (connections): a refusal is a 422
        on `field_prefix` + the field at fault with its fix; 429 a 503 with Retry-After; other
        Azure trouble a 502; a timeout or the deadline a 504.

        `explained` overrides the classification's explanation (the caller knows more, e.g. a
        delegated token); `default_field` names the field when no table explains Azure's code.
        """
        if self.code in (TIMEOUT, DEADLINE):
            return timeout_problem(self.step)
        if self.status == 0:
            return unreachable_problem(self.step)
        if self.status == 429:
            return throttled_problem(self.step, self.retry_after, self.code)
        if self.transient:
            return server_problem(self.step, self.status, self.code)
        explanation = explained or self.explained or _REFUSED
        if default_field is not None and not explanation.known:
            explanation = Explanation(default_field, explanation.message, known=False)
        return rejected(
            self.step,
            explanation,
            azure_code=self.code,
            azure_status=self.status,
            azure_message=redacted(self.azure_message, redact),
            field_prefix=field_prefix,
        )


def _headers(raw: Any) -> Mapping[str, str] | None:
    try:
        return {str(k): str(v) for k, v in dict(raw or {}).items()}
    except (TypeError, ValueError):
        return None


def entra_failure(
    step: str, status: int, description: str, number: str | None, retry_after: float | None
) -> AzureFailure:
    """An Entra ID (token endpoint) refusal: its AADSTS code, the field at fault and a fix."""
    said = azure_message(description)
    if number:
        code = f"AADSTS{number}"
        if number in _AADSTS_TRANSIENT or status == 429 or status >= 500:
            busy = status if status == 429 or status >= 500 else 503  # "try again" is transient
            return AzureFailure(
                step, busy, code, "Entra ID is busy; try again", retry_after=retry_after, azure_message=said
            )
        explained = explain_aadsts(number)
        if number not in _AADSTS_EXPLAINED:
            return AzureFailure(
                step,
                status or 401,
                code,
                "Entra ID refused the app's sign-in",
                explained=explained,
                azure_message=said,
            )
        return AzureFailure(
            step,
            status or 400,
            code,
            explained.message,
            field=explained.field,
            explained=explained,
            azure_message=said,
        )
    if status == 429 or status >= 500:
        return AzureFailure(step, status, f"HTTP{status}", "Entra ID is busy", retry_after=retry_after)
    return AzureFailure(
        step,
        status or 401,
        "authentication_failed",
        "Entra ID refused the app's sign-in",
        explained=explain_aadsts(None),
        azure_message=said,
    )


def _entra_body(response: Any) -> tuple[str, str | None]:
    """The token endpoint's error body: (error_description, AADSTS number)."""
    try:
        body = response.json()
    except ValueError:
        return str(getattr(response, "text", "") or "")[:2000], None
    if not isinstance(body, dict):
        return "", None
    description = str(body.get("error_description") or body.get("error") or "")
    codes = body.get("error_codes") or []
    return description, str(codes[0]) if isinstance(codes, list) and codes else aadsts_code(description)


def token_failure(step: str, error: BaseException) -> AzureFailure:
    """An Entra ID failure: azure-identity's error, or the token endpoint's answer to a raw request."""
    import httpx
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    if isinstance(error, httpx.HTTPStatusError):  # a raw request (the OAuth code exchange, refresh)
        answer = error.response
        description, number = _entra_body(answer)
        status = answer.status_code if answer.status_code != 200 else 502  # 200 without a token
        return entra_failure(step, status, description, number, retry_after_seconds(_headers(answer.headers)))
    if isinstance(error, ValueError):  # azure-identity checks its inputs before sending anything
        return AzureFailure(
            step,
            400,
            "InvalidCredentials",
            "the Azure SDK did not accept the credentials",
            explained=SDK_REFUSED,
        )
    response = getattr(error, "response", None)
    status = int(getattr(response, "status_code", 0) or 0)
    retry_after = retry_after_seconds(_headers(getattr(response, "headers", None)))
    message = str(getattr(error, "message", "") or error)
    number = aadsts_code(message)
    if number or status == 429 or status >= 500:
        return entra_failure(step, status, message, number, retry_after)
    if isinstance(error, ServiceRequestError) or not isinstance(
        error, ClientAuthenticationError | HttpResponseError
    ):
        return AzureFailure(step, 0, CONNECTION, "Entra ID could not be reached")
    return entra_failure(step, status, message, None, retry_after)


def graph_failure(step: str, error: BaseException) -> AzureFailure:
    """A Graph (kiota) failure: `error.code` and message from the OData body, Retry-After."""
    import httpx
    from azure.core.exceptions import AzureError
    from kiota_abstractions.api_error import APIError

    if isinstance(error, AzureError):  # the token request inside the Graph call
        return token_failure("token", error)
    if isinstance(error, APIError):
        status = int(error.response_status_code or 0)
        main = getattr(error, "error", None)
        code = str(getattr(main, "code", "") or "") or f"HTTP{status}"
        message = str(getattr(main, "message", "") or "") or "Graph answered with an error"
        retry_after = retry_after_seconds(_headers(error.response_headers))
        return AzureFailure(
            step,
            status,
            code,
            message[:200],
            retry_after=retry_after,
            explained=explain_graph(status),
            azure_message=message[:2000],
        )
    if isinstance(error, httpx.TimeoutException):
        return AzureFailure(step, 504, TIMEOUT, "Graph did not answer in time")
    if isinstance(error, httpx.HTTPError):
        return AzureFailure(step, 0, CONNECTION, "Graph could not be reached")
    raise error


def keyvault_failure(step: str, error: BaseException, service: str = "Key Vault") -> AzureFailure:
    """A Key Vault or App Configuration (azure-core) failure: its `error.code` (SecretNotFound,
    Forbidden, Throttled...), or `HTTP<status>` where the service answers without a body."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    if isinstance(error, ClientAuthenticationError) and getattr(error, "response", None) is None:
        return token_failure("token", error)
    if isinstance(error, HttpResponseError):
        status = int(getattr(error, "status_code", 0) or 0)
        inner = getattr(error, "error", None)
        code = str(getattr(inner, "code", "") or "") or f"HTTP{status}"
        retry_after = retry_after_seconds(_headers(getattr(error.response, "headers", None)))
        return AzureFailure(step, status, code, f"{service} refused the request", retry_after=retry_after)
    if isinstance(error, ServiceRequestError):
        return AzureFailure(step, 0, CONNECTION, f"{service} could not be reached")
    raise error


_REFUSED = Explanation("clientId", "Azure refused the request; see azureCode", known=False)
_TF = re.compile(r"TF\d+")


def devops_failure(step: str, response: Any) -> AzureFailure:
    """An Azure DevOps answer that is not data: its sign-in page (a 203, a redirect or HTML, for a
    token it does not accept), or an error status with a TF code or `typeKey`."""
    status = int(response.status_code)
    content_type = str(response.headers.get("content-type", ""))
    if status == 203 or 300 <= status < 400 or (status < 300 and "json" not in content_type):
        location = str(response.headers.get("location", "")).split("?")[0][:100]
        where = f" (redirected to {location})" if location else ""
        return AzureFailure(
            step, status, "SignInRedirect", f"Azure DevOps answered with its sign-in page{where}"
        )
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    type_key = str(body.get("typeKey", "")) if isinstance(body, dict) else ""
    found = _TF.search(message)
    code = found.group(0) if found else (type_key or f"HTTP{status}")
    retry_after = retry_after_seconds(_headers(response.headers))
    return AzureFailure(
        step,
        status,
        code,
        message[:300] or "Azure DevOps refused",
        retry_after=retry_after,
        azure_message=message[:2000],
    )


def classify(kind: Kind, step: str, error: BaseException) -> AzureFailure:
    """The one entry point: an SDK / transport exception of `kind` as an `AzureFailure`."""
    import httpx

    if isinstance(error, AzureFailure):
        return error
    if isinstance(error, Problem):  # already an answer for the caller (e.g. a broker-side refresh)
        raise error
    if isinstance(error, httpx.TimeoutException):
        return AzureFailure(step, 504, TIMEOUT, "Azure did not answer in time")
    if kind == "token":
        return token_failure(step, error)
    if kind == "keyvault":
        return keyvault_failure(step, error)
    if kind == "appconfig":
        return keyvault_failure(step, error, "App Configuration")
    if kind == "graph":
        return graph_failure(step, error)
    if isinstance(error, httpx.HTTPStatusError):
        return devops_failure(step, error.response)
    if isinstance(error, httpx.HTTPError):
        return AzureFailure(step, 0, CONNECTION, "Azure DevOps could not be reached")
    raise error
