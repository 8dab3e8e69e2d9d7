"""Azure DevOps variable-group destinations (REST api-version 7.1 over the shared httpx client).

A PUT replaces the group's variables, and reads return secrets as `{"value": null, "isSecret":
true}`; Azure DevOps keeps a secret's stored value when it is sent back with `value: null` (the
round trip the web UI, the az CLI and Terraform's provider rely on). So a delivery reads the group,
changes only our variable (secret) and the optional client id variable (plain), sends every other
variable back as read (secrets as null), and writes the whole group.

The service has no conditional write (no ETag or revision on PUT: last writer wins). The broker
therefore re-reads the group right before the PUT and starts over when `modifiedOn` moved (a
concurrent edit), so a body built from a stale read is never written; the window that remains is
one round trip. A lost PUT answer is not repeated blindly either: the loop reads again first.
"""

from __future__ import annotations

import logging
from typing import Any

from core import azure_gateway
from core.azure_clients import http_client
from core.azure_failure import AzureFailure
from core.errors import FieldError, Problem, Unprocessable
from core.settings import get_settings
from rotation.destinations.access import DevOpsAccess, Held, SecretToDeliver
from rotation.destinations.models import DevOpsVariableGroupDestination

log = logging.getLogger(__name__)

API_VERSION = "7.1"
PATH = "_apis/distributedtask/variablegroups"
SCOPES = "vso.variablegroups_manage (a PAT: Variable Groups, Read, create & manage)"
MAX_EDIT_ATTEMPTS = 4

Group = dict[str, Any]


async def _send(step: str, access: DevOpsAccess, method: str, url: str, **kwargs: Any) -> Group:
    """One DevOps request through the gateway; a sign-in page (203/HTML) is a refusal, not data."""
    client = await http_client()

    async def send() -> Group:
        headers = {"Authorization": await access.authorization(), "Accept": "application/json"}
        response = await client.request(method, url, headers=headers, **kwargs)
        content_type = response.headers.get("content-type", "")
        if response.status_code == 203 or (response.status_code < 400 and "json" not in content_type):
            raise AzureFailure(step, 203, "SignInRedirect", "Azure DevOps answered with its sign-in page")
        response.raise_for_status()
        body = response.json()
        return body if isinstance(body, dict) else {}

    return await azure_gateway.call(step, send, kind="devops", idempotent=method == "GET")


def _base(access: DevOpsAccess) -> str:
    return f"{get_settings().azure_devops_endpoint}/{access.organization}"


async def _find(dest: DevOpsVariableGroupDestination, access: DevOpsAccess) -> Group | None:
    url = f"{_base(access)}/{dest.project}/{PATH}"
    params = {"groupName": dest.variable_group, "api-version": API_VERSION}
    listed = await _send("findVariableGroup", access, "GET", url, params=params)
    wanted = dest.variable_group.lower()
    return next(
        (
            g
            for g in listed.get("value", [])
            if isinstance(g, dict) and str(g.get("name", "")).lower() == wanted
        ),
        None,
    )


async def _get(dest: DevOpsVariableGroupDestination, access: DevOpsAccess, group_id: int) -> Group:
    url = f"{_base(access)}/{dest.project}/{PATH}/{group_id}"
    return await _send("readVariableGroup", access, "GET", url, params={"api-version": API_VERSION})


def refusal(
    failure: AzureFailure, dest: DevOpsVariableGroupDestination, access: DevOpsAccess, at: str
) -> Problem:
    """A DevOps refusal as a 422 naming the field to fix; anything else as the gateway says."""
    org = access.organization
    message = failure.message.lower()
    if failure.code == "SignInRedirect" or (failure.status == 401 and "scope" not in message):
        field, fix = (
            "connectionId",
            "Azure DevOps refused the connection's token: it is invalid, expired or revoked, or not "
            f"for organization {org}; update the connection's credentials",
        )
    elif failure.status in (401, 403):
        field, fix = "connectionId", f"the connection's token lacks a scope; grant {SCOPES}"
    elif failure.status == 404 and failure.code == "TF200016":
        field, fix = "project", f"project {dest.project} does not exist in organization {org}"
    elif failure.status == 404 and "variablegroup" in failure.code.lower():
        field, fix = "variableGroup", f"variable group {dest.variable_group} does not exist in {dest.project}"
    else:
        return failure.problem(validating=True, fields={"clientId": f"{at}.connectionId"})
    return Unprocessable(
        f"Azure DevOps refused the destination ({failure.code}).",
        [FieldError(f"{at}.{field}", fix)],
        extra={"step": failure.step, "azureCode": failure.code},
        code="azure-refused",
    )


def _missing_group(dest: DevOpsVariableGroupDestination, at: str) -> Unprocessable:
    return Unprocessable(
        "The variable group does not exist.",
        [
            FieldError(
                f"{at}.variableGroup",
                f"no variable group named {dest.variable_group} in project {dest.project}; "
                "create it in Azure DevOps (the broker never creates one)",
            )
        ],
        code="validation-failed",
    )


async def validate(
    dest: DevOpsVariableGroupDestination, access: DevOpsAccess, at: str = "destination"
) -> None:
    """Find the group with the connection's token: the project and the group must exist."""
    try:
        group = await _find(dest, access)
    except AzureFailure as failure:
        raise refusal(failure, dest, access, at) from None
    if group is None:
        raise _missing_group(dest, at)


def merged(group: Group, dest: DevOpsVariableGroupDestination, secret: SecretToDeliver) -> Group:
    """The PUT body: the group as read, ours changed, every other variable sent back untouched
    (a secret as `value: null`, which Azure DevOps keeps)."""
    variables: dict[str, Any] = {}
    for name, spec in (group.get("variables") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        kept: dict[str, Any] = {"value": None if spec.get("isSecret") else spec.get("value")}
        for flag in ("isSecret", "isReadOnly"):
            if spec.get(flag):
                kept[flag] = True
        variables[name] = kept
    variables[dest.variable] = {"value": secret.value.get_secret_value(), "isSecret": True}
    if dest.client_id_variable:
        variables[dest.client_id_variable] = {"value": secret.app_id, "isSecret": False}
    references = [
        {
            "projectReference": (ref or {}).get("projectReference"),
            "name": (ref or {}).get("name") or group.get("name"),
            "description": (ref or {}).get("description"),
        }
        for ref in group.get("variableGroupProjectReferences") or []
    ]
    return {
        "name": group.get("name"),
        "description": group.get("description"),
        "type": group.get("type") or "Vsts",
        "variables": variables,
        "variableGroupProjectReferences": references,
    }


async def deliver(
    dest: DevOpsVariableGroupDestination, access: DevOpsAccess, secret: SecretToDeliver
) -> Held:
    """Read, change ours, re-read to catch a concurrent edit, write the whole group, read back."""
    for attempt in range(1, MAX_EDIT_ATTEMPTS + 1):
        group = await _find(dest, access)
        if group is None:
            raise AzureFailure(
                "findVariableGroup", 404, "VariableGroupNotFoundException", "the group is gone"
            )
        body = merged(group, dest, secret)
        group_id = int(group["id"])
        current = await _get(dest, access, group_id)
        if current.get("modifiedOn") != group.get("modifiedOn"):
            log.info(
                "variable group %s changed while being updated (attempt %d); reading again", group_id, attempt
            )
            continue
        url = f"{_base(access)}/{PATH}/{group_id}"
        try:
            await _send(
                "updateVariableGroup", access, "PUT", url, params={"api-version": API_VERSION}, json=body
            )
        except AzureFailure as failure:
            if not failure.outcome_unknown or attempt == MAX_EDIT_ATTEMPTS:
                raise
            log.info("variable group %s: the update's answer was lost; reading again", group_id)
            continue
        return held(await _get(dest, access, group_id), dest, secret)
    raise AzureFailure(
        "updateVariableGroup",
        409,
        "ConcurrentEdit",
        f"the group kept changing; tried {MAX_EDIT_ATTEMPTS} times",
    )


async def read_back(
    dest: DevOpsVariableGroupDestination, access: DevOpsAccess, secret: SecretToDeliver
) -> Held:
    """The group's `modifiedOn` and whether our variables are there as delivered (the secret's value
    cannot be read: `matches` is None when everything readable agrees)."""
    group = await _find(dest, access)
    if group is None:
        return Held(present=False, matches=False)
    return held(group, dest, secret)


def held(group: Group, dest: DevOpsVariableGroupDestination, secret: SecretToDeliver) -> Held:
    variables = group.get("variables") or {}
    ours = variables.get(dest.variable)
    present = isinstance(ours, dict) and bool(ours.get("isSecret"))
    client_ok = True
    if dest.client_id_variable:
        client = variables.get(dest.client_id_variable)
        client_ok = isinstance(client, dict) and client.get("value") == secret.app_id
    return Held(
        present=present,
        version=str(group.get("modifiedOn") or "") or None,
        matches=None if present and client_ok else False,
    )
