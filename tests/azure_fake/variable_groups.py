"""Azure DevOps variable groups (`_apis/distributedtask/variablegroups`, api-version 7.1).

As the service does:
- reads (`vso.variablegroups_read`) never return a secret's value: `{"value": null, "isSecret": true}`;
- `PUT` replaces the group's variables with the body's (`vso.variablegroups_write`): a variable
  left out is gone, so a client that changes one variable must read, change and write the whole
  group. A secret sent back with `value: null` keeps its stored value (that is how a client
  round-trips secrets it cannot read). There is no ETag or revision check on `PUT`: the last
  writer wins, and `modifiedOn` (bumped on every write) is the only trace of a concurrent edit;
- 7.1 creates and updates at organization level (`{org}/_apis/...` with
  `variableGroupProjectReferences`); the project-level paths of 5.x are served too.
Authentication, 203/401 for bad PATs and TF-style errors are `devops.py`'s.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .devops import (
    PREFIX,
    DevOpsError,
    _answer_error,
    _guard,
    _json,
    _SignInRedirect,
    find_project,
)
from .state import DevOpsOrg, FakeState, GroupVariable, VariableGroup, utcnow

router = APIRouter(prefix=PREFIX)

READ = "vso.variablegroups_read"
WRITE = "vso.variablegroups_write"
BASE = "_apis/distributedtask/variablegroups"


def group_json(state: FakeState, org: DevOpsOrg, group: VariableGroup) -> dict[str, Any]:
    """The REST shape; secret values are never in it."""
    with state.lock:
        projects = {p.id: p for p in org.projects}
        return {
            "variables": {
                name: ({"value": None, "isSecret": True} if var.is_secret else {"value": var.value})
                | ({"isReadOnly": True} if var.is_read_only else {})
                for name, var in group.variables.items()
            },
            "id": group.id,
            "type": "Vsts",
            "name": group.name,
            "description": group.description,
            "createdBy": {"displayName": group.created_by, "id": group.created_by},
            "createdOn": _stamp(group.created_on),
            "modifiedBy": {"displayName": group.modified_by, "id": group.modified_by},
            "modifiedOn": _stamp(group.modified_on),
            "isShared": False,
            "variableGroupProjectReferences": [
                {
                    "projectReference": {"id": pid, "name": projects[pid].name if pid in projects else None},
                    "name": group.name,
                    "description": group.description,
                }
                for pid in group.project_ids
            ],
        }


def _stamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _not_found(group_id: int | str) -> DevOpsError:
    return DevOpsError(
        404, f"Variable group with id {group_id} does not exist.", "VariableGroupNotFoundException"
    )


def _bad(message: str) -> DevOpsError:
    return DevOpsError(400, message, "InvalidRequestException")


def _variables(raw: Any, old: dict[str, GroupVariable]) -> dict[str, GroupVariable]:
    """The body's variables; a secret sent with value null keeps its stored value."""
    if not isinstance(raw, dict) or not raw:
        raise _bad("TF400898: A variable group must contain at least one variable.")
    result: dict[str, GroupVariable] = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict):
            raise _bad(f"Invalid value for variable '{name}'.")
        is_secret = bool(spec.get("isSecret", False))
        value = spec.get("value")
        if value is None:
            previous = old.get(name)
            value = previous.value if previous is not None and previous.is_secret and is_secret else ""
        result[name] = GroupVariable(str(value), is_secret, bool(spec.get("isReadOnly", False)))
    return result


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise _bad("The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    return body


def _project_ids(state: FakeState, org: DevOpsOrg, body: dict[str, Any], project: str | None) -> list[str]:
    if project is not None:
        return [find_project(state, org, project).id]
    refs = body.get("variableGroupProjectReferences")
    if not isinstance(refs, list) or not refs:
        raise _bad("VariableGroupProjectReferences must contain at least one project reference.")
    ids = []
    for ref in refs:
        reference = (ref or {}).get("projectReference") or {}
        ident = reference.get("id") or reference.get("name")
        if not ident:
            raise _bad("A project reference needs the project's id or name.")
        ids.append(find_project(state, org, str(ident)).id)
    return ids


def touch(group: VariableGroup, caller: str) -> None:
    """A write: modifiedOn strictly later than before, revision + 1."""
    now = utcnow()
    group.modified_on = max(now, group.modified_on + dt.timedelta(milliseconds=1))
    group.modified_by = caller
    group.revision += 1


def create_group(
    state: FakeState,
    org: DevOpsOrg,
    name: str,
    project_ids: list[str],
    variables: dict[str, GroupVariable],
    description: str = "",
    caller: str = "seed",
) -> VariableGroup:
    """Add a group; 400 VariableGroupExistsException if a group of that name is in one of the projects."""
    with state.lock:
        for existing in org.variable_groups.values():
            if existing.name.lower() == name.lower() and set(existing.project_ids) & set(project_ids):
                raise DevOpsError(
                    400,
                    f"Variable group with name {name} already exists.",
                    "VariableGroupExistsException",
                )
        now = utcnow()
        group_id = max(org.variable_groups, default=0) + 1
        group = VariableGroup(group_id, name, description, project_ids, variables, caller, now, caller, now)
        org.variable_groups[group_id] = group
        return group


def _in_project(group: VariableGroup, project_id: str | None) -> bool:
    return project_id is None or project_id in group.project_ids


def _matches(name: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return name.lower().startswith(pattern[:-1].lower())
    return name.lower() == pattern.lower()


@router.get("/{org}/{project}/" + BASE)
async def list_groups(org: str, project: str, request: Request) -> Response:
    try:
        state, found = _guard(request, org, READ)
        project_id = find_project(state, found, project).id
        q = request.query_params
        wanted_ids = {int(i) for i in q.get("groupIds", "").split(",") if i.strip().isdigit()}
        with state.lock:
            groups = [
                g
                for g in sorted(found.variable_groups.values(), key=lambda g: g.id)
                if _in_project(g, project_id)
                and (not q.get("groupName") or _matches(g.name, q["groupName"]))
                and (not wanted_ids or g.id in wanted_ids)
            ]
        value = [group_json(state, found, g) for g in groups]
        return _json({"count": len(value), "value": value})
    except (DevOpsError, _SignInRedirect) as exc:
        return _answer_error(request, exc)


@router.get("/{org}/{project}/" + BASE + "/{group_id}")
async def get_group(org: str, project: str, group_id: int, request: Request) -> Response:
    try:
        state, found = _guard(request, org, READ)
        project_id = find_project(state, found, project).id
        with state.lock:
            group = found.variable_groups.get(group_id)
            if group is None or not _in_project(group, project_id):
                raise _not_found(group_id)
        return _json(group_json(state, found, group))
    except (DevOpsError, _SignInRedirect) as exc:
        return _answer_error(request, exc)


@router.post("/{org}/" + BASE)
@router.post("/{org}/{project}/" + BASE)
async def add_group(org: str, request: Request, project: str | None = None) -> Response:
    try:
        state, found = _guard(request, org, WRITE)
        body = await _body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _bad("The variable group name is required.")
        project_ids = _project_ids(state, found, body, project)
        variables = _variables(body.get("variables"), {})
        group = create_group(
            state, found, name, project_ids, variables, str(body.get("description") or ""), "api"
        )
        return _json(group_json(state, found, group))
    except (DevOpsError, _SignInRedirect) as exc:
        return _answer_error(request, exc)


@router.put("/{org}/" + BASE + "/{group_id}")
@router.put("/{org}/{project}/" + BASE + "/{group_id}")
async def update_group(org: str, group_id: int, request: Request, project: str | None = None) -> Response:
    try:
        state, found = _guard(request, org, WRITE)
        body = await _body(request)
        project_ids = (
            _project_ids(state, found, body, project)
            if (project is not None or body.get("variableGroupProjectReferences"))
            else None
        )
        with state.lock:
            group = found.variable_groups.get(group_id)
            if group is None:
                raise _not_found(group_id)
            group.variables = _variables(body.get("variables"), group.variables)
            if isinstance(body.get("name"), str) and body["name"].strip():
                group.name = body["name"]
            if "description" in body:
                group.description = str(body.get("description") or "")
            if project_ids is not None and project is None:
                group.project_ids = project_ids
            touch(group, "api")
        return _json(group_json(state, found, group))
    except (DevOpsError, _SignInRedirect) as exc:
        return _answer_error(request, exc)


@router.delete("/{org}/" + BASE + "/{group_id}")
async def delete_group(org: str, group_id: int, request: Request) -> Response:
    try:
        state, found = _guard(request, org, WRITE)
        with state.lock:
            if found.variable_groups.pop(group_id, None) is None:
                raise _not_found(group_id)
        return Response(status_code=204)
    except (DevOpsError, _SignInRedirect) as exc:
        return _answer_error(request, exc)
