"""Fault injection, Graph rate limiting and request counters.

Rules are matched in the order they were added; a rule with `count=None` applies until
`reset()`. `path_pattern` is a regular expression searched (`re.search`) in the request path as
the client sent it (percent-decoded, without the query), e.g. "addPassword" or r"/secrets/".
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from .state import iso, new_id, utcnow

SERVICES = ("token", "graph", "keyvault", "devops")
SERVICE_ALIASES = {"entra": "token", "aad": "token", "kv": "keyvault", "vault": "keyvault", "ado": "devops"}
KINDS = ("429", "503", "500", "timeout", "delay", "lost")


def normalize_service(service: str) -> str:
    name = SERVICE_ALIASES.get(service.lower(), service.lower())
    if name != "*" and name not in SERVICES:
        raise ValueError(f"unknown service {service!r}; use one of {[*SERVICES, '*']}")
    return name


@dataclass
class FaultRule:
    """One injected fault. `remaining=None` means until reset."""

    id: int
    service: str
    kind: str
    remaining: int | None
    path_pattern: re.Pattern[str] | None
    method: str | None
    retry_after: int
    seconds: float
    hits: int = 0

    def matches(self, service: str, method: str, path: str) -> bool:
        if self.service not in ("*", service):
            return False
        if self.method and self.method != method.upper():
            return False
        return not (self.path_pattern and not self.path_pattern.search(path))

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "kind": self.kind,
            "remaining": self.remaining,
            "pathPattern": self.path_pattern.pattern if self.path_pattern else None,
            "method": self.method,
            "retryAfter": self.retry_after,
            "seconds": self.seconds,
            "hits": self.hits,
        }


@dataclass
class RequestRecord:
    at: float
    service: str
    method: str
    path: str
    status: int = 0


@dataclass
class _Bucket:
    rate: float
    capacity: float
    tokens: float
    updated: float = field(default_factory=time.monotonic)

    def take(self) -> float | None:
        """None if a request may pass now, else seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate


class Faults:
    """Thread-safe registry of faults, the Graph token bucket and request counters."""

    def __init__(self, log_size: int = 5000) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._next_id = 1
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self.log: deque[RequestRecord] = deque(maxlen=log_size)
        self._graph_bucket: _Bucket | None = None
        self._tenant_buckets: dict[str, _Bucket] = {}

    # -------------------------------------------------------------- faults

    def inject(
        self,
        service: str,
        kind: str,
        count: int | None = 1,
        path_pattern: str | None = None,
        method: str | None = None,
        retry_after: int = 1,
        seconds: float = 5.0,
    ) -> FaultRule:
        kind = str(kind)
        if count is not None and count < 1:
            raise ValueError("count must be >= 1, or None for 'until reset'")
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {list(KINDS)}")
        with self._lock:
            rule = FaultRule(
                id=self._next_id,
                service=normalize_service(service),
                kind=kind,
                remaining=count,
                path_pattern=re.compile(path_pattern) if path_pattern else None,
                method=method.upper() if method else None,
                retry_after=int(retry_after),
                seconds=float(seconds),
            )
            self._next_id += 1
            self._rules.append(rule)
        return rule

    def take(self, service: str, method: str, path: str) -> FaultRule | None:
        """The first live rule matching this request (its count is used up by one)."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(service, method, path):
                    rule.hits += 1
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._rules.remove(rule)
                    return rule
        return None

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def reset(self) -> None:
        """Drop every fault and the Graph rate limit (counters are kept; see reset_counters)."""
        with self._lock:
            self._rules.clear()
            self._graph_bucket = None
            self._tenant_buckets.clear()

    # -------------------------------------------------------------- rate limit

    def set_graph_rate_limit(
        self, requests_per_second: float | None, burst: float | None = None, tenant: str | None = None
    ) -> None:
        """Token bucket for Graph; None (or 0) switches it off.

        With `tenant`, the bucket counts only requests whose token was issued in that tenant (Graph
        throttles per app and tenant), and applies in addition to a global bucket, if any.
        """
        bucket = None
        if requests_per_second:
            capacity = burst if burst is not None else max(1.0, requests_per_second)
            bucket = _Bucket(requests_per_second, capacity, capacity)
        with self._lock:
            if tenant is None:
                self._graph_bucket = bucket
            elif bucket is None:
                self._tenant_buckets.pop(tenant.lower(), None)
            else:
                self._tenant_buckets[tenant.lower()] = bucket

    def graph_throttle(self, tenant: str | None = None) -> int | None:
        """None if the Graph request may pass, else the Retry-After seconds to answer."""
        with self._lock:
            waits = [
                b.take()
                for b in (self._tenant_buckets.get((tenant or "").lower()), self._graph_bucket)
                if b is not None
            ]
        wait = max((w for w in waits if w is not None), default=None)
        return None if wait is None else max(1, math.ceil(wait))

    # -------------------------------------------------------------- counters

    def record(self, service: str, method: str, path: str) -> RequestRecord:
        record = RequestRecord(time.time(), service, method.upper(), path)
        with self._lock:
            self._counts[(service, method.upper(), path)] += 1
            self.log.append(record)
        return record

    def request_count(
        self, service: str = "*", path_pattern: str | None = None, method: str | None = None
    ) -> int:
        """Requests seen (faulted ones included) for a service, path regex and method."""
        name = "*" if service == "*" else normalize_service(service)
        pattern = re.compile(path_pattern) if path_pattern else None
        wanted_method = method.upper() if method else None
        with self._lock:
            items = list(self._counts.items())
        return sum(
            n
            for (svc, meth, path), n in items
            if (name in ("*", svc))
            and (wanted_method is None or meth == wanted_method)
            and (pattern is None or pattern.search(path))
        )

    def reset_counters(self) -> None:
        with self._lock:
            self._counts.clear()
            self.log.clear()


# ------------------------------------------------------------------ error bodies per service


def graph_error(
    code: str, message: str, request_id: str, client_request_id: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": iso(utcnow()),
                "request-id": request_id,
                "client-request-id": client_request_id or request_id,
            },
        }
    }


def aad_error(
    error: str, code: int, description: str, request_id: str, status_hint: str = ""
) -> dict[str, Any]:
    """Entra's token endpoint error body."""
    timestamp = utcnow().strftime("%Y-%m-%d %H:%M:%SZ")
    full = (
        f"AADSTS{code}: {description} Trace ID: {request_id} Correlation ID: {request_id} Timestamp: "
        f"{timestamp}"
    )
    return {
        "error": error,
        "error_description": full,
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": request_id,
        "correlation_id": request_id,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        **({"suberror": status_hint} if status_hint else {}),
    }


def keyvault_error(code: str, message: str, inner: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if inner:
        body["innererror"] = {"code": inner}
    return {"error": body}


def devops_error(message: str, type_key: str, event_id: int = 3000) -> dict[str, Any]:
    return {
        "$id": "1",
        "innerException": None,
        "message": message,
        "typeName": (
            f"Microsoft.TeamFoundation.Framework.Server.{type_key}, Microsoft.TeamFoundation.Framework.Server"
        ),
        "typeKey": type_key,
        "errorCode": 0,
        "eventId": event_id,
    }


_FAULT_TEXT = {
    "429": "Too many requests",
    "500": "An internal error occurred",
    "503": "The service is temporarily unavailable",
    "504": "The request timed out",
}


def fault_body(service: str, status: int, request_id: str, client_request_id: str | None) -> dict[str, Any]:
    """What each service answers for a throttled / failed request."""
    if service == "graph":
        code = {
            429: "TooManyRequests",
            500: "generalException",
            503: "serviceNotAvailable",
            504: "UnknownError",
        }[status]
        return graph_error(code, _FAULT_TEXT[str(status)], request_id, client_request_id)
    if service == "keyvault":
        if status == 429:
            return keyvault_error(
                "Throttled",
                "Request was not processed because too many requests were received. Reason: "
                "VaultRequestTypeLimitReached",
            )
        return keyvault_error(
            {500: "InternalServerError", 503: "ServiceUnavailable", 504: "GatewayTimeout"}[status],
            _FAULT_TEXT[str(status)],
        )
    if service == "devops":
        if status == 429:
            return devops_error(
                "TF400733: The request has been canceled: Request was blocked due to exceeding usage of "
                "resource 'Global' in namespace 'User'.",
                "RequestBlockedException",
            )
        return devops_error(f"TF400898: {_FAULT_TEXT[str(status)]}.", "ServiceUnavailableException")
    # token service
    if status == 429:
        return aad_error(
            "temporarily_unavailable",
            50196,
            "The server terminated an operation because it encountered a loop while processing a request.",
            request_id,
        )
    if status == 500:
        return aad_error(
            "server_error",
            50000,
            "There was an error issuing a token or an issue with our sign-in service.",
            request_id,
        )
    return aad_error(
        "temporarily_unavailable", 90033, "A transient error has occurred. Please try again.", request_id
    )


def new_request_id() -> str:
    return new_id()
