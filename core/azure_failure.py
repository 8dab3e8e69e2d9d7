"""What went wrong in one Azure call: `AzureFailure`, and the one classification of Azure's answers.

`classify(kind, step, error)` turns whatever an SDK or httpx raised for Entra ID (azure-identity),
Microsoft Graph (kiota), Key Vault (azure-core) or Azure DevOps (an httpx response) into an
`AzureFailure` carrying the step, the HTTP status (0: nothing answered), Azure's own code (AADSTS
number, Graph `error.code`, Key Vault `error.code`, DevOps TF code or `typeKey`), Retry-After,
and the request field at fault where Azure's code names one. The gateway decides retries from
it (`transient`, `outcome_unknown`); `problem()` is what the API answers. Messages are ours or
Azure's trimmed description, never an exception's text that might echo request material.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from core.azure_problems import _AADSTS_EXPLAINED, aadsts_code
from core.errors import FieldError, Problem, Unavailable, Unprocessable, UpstreamError, UpstreamTimeout
from core.retry_after import retry_after_seconds

Kind = Literal["token", "graph", "keyvault", "devops"]

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
    ) -> None:
        super().__init__(f"{step}: {code}: {message}")
        self.step = step
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.field = field

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


def _headers(raw: Any) -> Mapping[str, str] | None:
    try:
        return {str(k): str(v) for k, v in dict(raw or {}).items()}
    except (TypeError, ValueError):
        return None


def token_failure(step: str, error: BaseException) -> AzureFailure:
    """An azure-identity failure with its AADSTS code, the field at fault and a fix."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    response = getattr(error, "response", None)
    status = int(getattr(response, "status_code", 0) or 0)
    retry_after = retry_after_seconds(_headers(getattr(response, "headers", None)))
    number = aadsts_code(str(getattr(error, "message", "") or error))
    if number:
        code = f"AADSTS{number}"
        if number in _AADSTS_TRANSIENT or status == 429 or status >= 500:
            return AzureFailure(
                step, status or 503, code, "Entra ID is busy; try again", retry_after=retry_after
            )
        explained = _AADSTS_EXPLAINED.get(number)
        if explained is None:
            return AzureFailure(step, status or 401, code, "Entra ID refused the app's sign-in")
        return AzureFailure(step, status or 400, code, explained.message, field=explained.field)
    if status == 429 or status >= 500:
        return AzureFailure(step, status, f"HTTP{status}", "Entra ID is busy", retry_after=retry_after)
    if isinstance(error, ServiceRequestError) or not isinstance(
        error, ClientAuthenticationError | HttpResponseError
    ):
        return AzureFailure(step, 0, CONNECTION, "Entra ID could not be reached")
    return AzureFailure(step, status or 401, "authentication_failed", "Entra ID refused the app's sign-in")


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
        return AzureFailure(step, status, code, message[:200], retry_after=retry_after)
    if isinstance(error, httpx.TimeoutException):
        return AzureFailure(step, 504, TIMEOUT, "Graph did not answer in time")
    if isinstance(error, httpx.HTTPError):
        return AzureFailure(step, 0, CONNECTION, "Graph could not be reached")
    raise error


def keyvault_failure(step: str, error: BaseException) -> AzureFailure:
    """A Key Vault (azure-core) failure: its `error.code` (SecretNotFound, Forbidden, Throttled...)."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    if isinstance(error, ClientAuthenticationError) and getattr(error, "response", None) is None:
        return token_failure("token", error)
    if isinstance(error, HttpResponseError):
        status = int(getattr(error, "status_code", 0) or 0)
        inner = getattr(error, "error", None)
        code = str(getattr(inner, "code", "") or "") or f"HTTP{status}"
        retry_after = retry_after_seconds(_headers(getattr(error.response, "headers", None)))
        return AzureFailure(step, status, code, "Key Vault refused the request", retry_after=retry_after)
    if isinstance(error, ServiceRequestError):
        return AzureFailure(step, 0, CONNECTION, "Key Vault could not be reached")
    raise error


_TF = re.compile(r"TF\d+")


def devops_failure(step: str, response: Any) -> AzureFailure:
    """An Azure DevOps answer (an httpx response with an error status): TF code or `typeKey`."""
    status = int(response.status_code)
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    type_key = str(body.get("typeKey", "")) if isinstance(body, dict) else ""
    found = _TF.search(message)
    code = found.group(0) if found else (type_key or f"HTTP{status}")
    retry_after = retry_after_seconds(_headers(response.headers))
    return AzureFailure(step, status, code, message[:300] or "Azure DevOps refused", retry_after=retry_after)


def classify(kind: Kind, step: str, error: BaseException) -> AzureFailure:
    """The one entry point: an SDK / transport exception of `kind` as an `AzureFailure`."""
    import httpx

    if isinstance(error, AzureFailure):
        return error
    if isinstance(error, httpx.TimeoutException):
        return AzureFailure(step, 504, TIMEOUT, "Azure did not answer in time")
    if kind == "token":
        return token_failure(step, error)
    if kind == "keyvault":
        return keyvault_failure(step, error)
    if kind == "graph":
        return graph_failure(step, error)
    if isinstance(error, httpx.HTTPStatusError):
        return devops_failure(step, error.response)
    if isinstance(error, httpx.HTTPError):
        return AzureFailure(step, 0, CONNECTION, "Azure DevOps could not be reached")
    raise error
