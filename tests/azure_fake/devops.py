"""Azure DevOps REST (organization level), under the stand-in's `devops_endpoint`.

Authentication as the real service:
- `Authorization: Basic base64(":" + PAT)` (any user name). A PAT for this organization with a
  scope covering the call passes. A PAT lacking the scope gets 401 (TF400813). An expired PAT
  gets 401 "The Personal Access Token used has expired.". An unknown or revoked PAT gets
  **203 Non-Authoritative Information with the HTML sign-in page** (what dev.azure.com does),
  unless the client sent `X-TFS-FedAuthRedirect: Suppress`, which turns that into a 401.
- `Authorization: Bearer <Entra token>` with aud 499b84ac-1321-427f-aa17-267ca6975798 from the
  organization's tenant, for a principal added to the organization (`add_devops_member`).
- No credentials: 401 (TF400813, anonymous access).
Unknown organization: 404 with a TF-style JSON error. Missing api-version: 400 as the service.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from .entra import InvalidToken, validate_access_token
from .faults import devops_error
from .state import DEVOPS_RESOURCE, DevOpsOrg, DevOpsProject, FakeState, iso, utcnow

PREFIX = "/devops"
router = APIRouter(prefix=PREFIX)

SIGN_IN_PAGE = """<!DOCTYPE html>
<html><head><title>Azure DevOps Services | Sign In</title></head>
<body><p>Sign in to your account</p>
<form method="post" action="https://login.microsoftonline.com/"><input type="submit" value="Sign in"></form>
</body></html>"""


class DevOpsError(Exception):
    def __init__(
        self, status: int, message: str, type_key: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type_key = type_key
        self.headers = headers or {}


class _SignInRedirect(Exception):
    """An unknown PAT: the sign-in page (203) or 401 when redirects are suppressed."""


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body),
        status_code=status,
        media_type="application/json; charset=utf-8; api-version=7.1",
        headers=headers,
    )


SCOPE_LEVELS = ("", "_read", "_write", "_manage")


def _scope_level(scope: str) -> tuple[str, int]:
    for index in range(len(SCOPE_LEVELS) - 1, 0, -1):
        if scope.endswith(SCOPE_LEVELS[index]):
            return scope[: -len(SCOPE_LEVELS[index])], index
    return scope, 0


def has_scope(granted: set[str], needed: str) -> bool:
    """A scope covers its own and lower levels: `vso.variablegroups_manage` covers `_write` and
    `_read`; `vso.project` is covered by vso.project, _write, _manage; a full-access PAT covers all."""
    if not needed or "app_token" in granted:
        return True
    base, level = _scope_level(needed)
    for scope in granted:
        have_base, have_level = _scope_level(scope)
        if have_base == base and have_level >= level:
            return True
    return False


def _org(state: FakeState, name: str) -> DevOpsOrg:
    with state.lock:
        org = state.devops_orgs.get(name.lower())
    if org is None:
        raise DevOpsError(
            404,
            f"TF400898: The organization '{name}' could not be found. Verify that the name of the "
            "organization is correct and that the organization exists.",
            "OrganizationNotFoundException",
        )
    return org


def authenticate(state: FakeState, request: Request, org: DevOpsOrg, scope: str) -> str:
    """Check the caller against the organization; returns a display name for the caller."""
    header = request.headers.get("authorization", "")
    anonymous = DevOpsError(
        401,
        "TF400813: Resource not available for anonymous access. Client authentication required.",
        "UnauthorizedRequestException",
        {"WWW-Authenticate": "Bearer authorization_uri=" + state.authority_host, "X-TFS-FedAuthRedirect": ""},
    )
    if header.lower().startswith("basic "):
        try:
            _, _, pat_text = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError as exc:
            raise _SignInRedirect() from exc
        with state.lock:
            pat = state.pats.get(pat_text)
        if pat is None or pat.revoked or pat.org != org.name.lower():
            raise _SignInRedirect()
        if pat.valid_to <= utcnow():
            raise DevOpsError(
                401,
                "Access Denied: The Personal Access Token used has expired.",
                "UnauthorizedRequestException",
            )
        if not has_scope(pat.scopes, scope):
            raise DevOpsError(
                401,
                f"TF400813: The user '{pat.display_name}' is not authorized to access this resource. The "
                f"personal access token does not have the required scope '{scope}'.",
                "UnauthorizedRequestException",
            )
        return pat.display_name
    if header.lower().startswith("bearer "):
        try:
            claims = validate_access_token(state, header, {DEVOPS_RESOURCE})
        except InvalidToken as exc:
            raise DevOpsError(
                401,
                f"TF400813: Resource not available for anonymous access. {exc.reason}",
                "UnauthorizedRequestException",
            ) from exc
        oid = str(claims.get("oid", ""))
        name = str(claims.get("preferred_username") or claims.get("azp") or oid)
        if (org.tenant_id and claims.get("tid") != org.tenant_id) or oid not in org.members:
            raise DevOpsError(
                401,
                f"TF400813: The user '{name}' is not authorized to access this resource.",
                "UnauthorizedRequestException",
            )
        return name
    raise anonymous


def _guard(request: Request, org_name: str, scope: str) -> tuple[FakeState, DevOpsOrg]:
    state: FakeState = request.app.state.azure
    if "api-version" not in request.query_params and "api-version" not in request.headers.get("accept", ""):
        raise DevOpsError(
            400,
            f'No api-version was supplied for the "{request.method}" request. The version must be supplied '
            'either as part of the Accept header (e.g. "application/json; api-version=1.0") or as a query '
            "parameter (e.g. '?api-version=1.0').",
            "VssVersionNotSpecifiedException",
        )
    org = _org(state, org_name)
    authenticate(state, request, org, scope)
    return state, org


def _answer_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, _SignInRedirect):
        if request.headers.get("x-tfs-fedauthredirect", "").lower() == "suppress":
            return _json(
                devops_error(
                    "TF400813: Resource not available for anonymous access. Client authentication required.",
                    "UnauthorizedRequestException",
                ),
                401,
            )
        return HTMLResponse(
            SIGN_IN_PAGE, status_code=203, headers={"X-TFS-ProcessId": "00000000-0000-0000-0000-000000000000"}
        )
    assert isinstance(exc, DevOpsError)
    return _json(devops_error(exc.message, exc.type_key), exc.status, exc.headers)


def _project(state: FakeState, org: DevOpsOrg, project: DevOpsProject) -> dict[str, Any]:
    return {
        "id": project.id,
        "name": project.name,
        "description": project.description,
        "url": f"{request_base(state)}/{org.name}/_apis/projects/{project.id}",
        "state": project.state,
        "revision": project.revision,
        "visibility": project.visibility,
        "lastUpdateTime": iso(project.last_update_time),
    }


def find_project(state: FakeState, org: DevOpsOrg, project: str) -> DevOpsProject:
    """A project by id or name (case-insensitive); 404 TF200016 as the service answers."""
    with state.lock:
        match = next(
            (p for p in org.projects if project in (p.id, p.name) or p.name.lower() == project.lower()),
            None,
        )
    if match is None:
        raise DevOpsError(
            404,
            f"TF200016: The following project does not exist: {project}. Verify that the name of the "
            "project is correct and that the project exists on the specified Azure DevOps Server.",
            "ProjectDoesNotExistWithNameException",
        )
    return match


def request_base(state: FakeState) -> str:
    return state.devops_endpoint


@router.get("/{org}/_apis/projects")
async def list_projects(org: str, request: Request) -> Response:
    try:
        state, found = _guard(request, org, "vso.project")
        q = request.query_params
        try:
            top = int(q.get("$top", "100"))
            start = int(q.get("continuationToken") or q.get("$skip") or "0")
        except ValueError as exc:
            raise DevOpsError(
                400,
                "TF400516: The continuation token or paging value is not valid.",
                "InvalidArgumentValueException",
            ) from exc
        top = max(1, min(top, 1000))
        with state.lock:
            projects = sorted(found.projects, key=lambda p: p.name.lower())
            page = [_project(state, found, p) for p in projects[start : start + top]]
        headers = {}
        if start + top < len(projects):
            headers["x-ms-continuationtoken"] = str(start + top)
        return _json({"count": len(page), "value": page}, headers=headers)
    except (DevOpsError, _SignInRedirect) as exc:
        return _answer_error(request, exc)


@router.get("/{org}/_apis/projects/{project}")
async def get_project(org: str, project: str, request: Request) -> Response:
    try:
        state, found = _guard(request, org, "vso.project")
        return _json(_project(state, found, find_project(state, found, project)))
    except (DevOpsError, _SignInRedirect) as exc:
        return _answer_error(request, exc)


@router.get("/{org}/_apis/connectionData")
async def connection_data(org: str, request: Request) -> Response:
    """Who am I, for the organization (any valid credential; no particular scope)."""
    try:
        state: FakeState = request.app.state.azure
        found = _org(state, org)
        name = authenticate(state, request, found, "")
        user = {"id": found.id, "providerDisplayName": name, "isActive": True, "properties": {}}
        return _json(
            {
                "authenticatedUser": user,
                "authorizedUser": user,
                "instanceId": found.id,
                "deploymentId": found.id,
                "deploymentType": "hosted",
                "locationServiceData": {"serviceOwner": "00025394-6065-48ca-87d9-7f5672854ef7"},
            }
        )
    except (DevOpsError, _SignInRedirect) as exc:
        return _answer_error(request, exc)
