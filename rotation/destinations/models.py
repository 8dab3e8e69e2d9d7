"""Where a rotated secret is delivered: the destination shapes, their state, and the checks that
need no network (https, DESTINATION_HOSTS, Key Vault names, references, duplicates).

The shapes are a discriminated union on `type`, so a body names exactly one kind's fields. The
semantic checks run in `check_destinations`, not in pydantic validators, so every refusal names
the field as the API documents it (`destinations[0].vaultUrl`) with the fix.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field

from core.errors import FieldError, Unprocessable
from core.models import ApiModel, RequestModel
from core.settings import get_settings

MAX_DESTINATIONS = 10
SECRET_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
# App Configuration: keys may not be "." or "..", nor contain "%"; 10 KB is the documented limit.
_APP_CONFIG_KEY_FORBIDDEN = re.compile(r"%")

Status = Literal["synced", "pending", "failed", "drifted"]


class KeyVaultDestination(RequestModel):
    """A secret in a vault; a new version per delivery."""

    type: Literal["key-vault"]
    vault_url: str = Field(max_length=500)
    secret_name: str = Field(max_length=127)
    connection_id: str | None = Field(default=None, max_length=100)

    @property
    def target(self) -> str:
        return f"{self.vault_url.rstrip('/').lower()}/secrets/{self.secret_name.lower()}"


class AppConfigurationDestination(RequestModel):
    """A key-value (with label) in an App Configuration store: the value or a Key Vault reference."""

    type: Literal["app-configuration"]
    endpoint: str = Field(max_length=500)
    key: str = Field(min_length=1, max_length=1000)
    label: str | None = Field(default=None, max_length=1000)
    connection_id: str | None = Field(default=None, max_length=100)
    key_vault_reference: bool = False

    @property
    def target(self) -> str:
        return f"{self.endpoint.rstrip('/').lower()}/kv/{self.key}?label={self.label or ''}"


class DevOpsVariableGroupDestination(RequestModel):
    """A secret variable (and optionally the client id) in an Azure DevOps variable group."""

    type: Literal["devops-variable-group"]
    connection_id: str = Field(min_length=1, max_length=100)
    project: str = Field(min_length=1, max_length=256)
    variable_group: str = Field(min_length=1, max_length=256)
    variable: str = Field(min_length=1, max_length=256)
    client_id_variable: str | None = Field(default=None, min_length=1, max_length=256)

    @property
    def target(self) -> str:
        parts = (self.connection_id, self.project, self.variable_group, self.variable)
        return "/".join(p.lower() for p in parts)


Destination = Annotated[
    KeyVaultDestination | AppConfigurationDestination | DevOpsVariableGroupDestination,
    Field(discriminator="type"),
]
DestinationList = Annotated[list[Destination], Field(max_length=MAX_DESTINATIONS)]


def destination_id(dest: Destination) -> str:
    """A stable, path-safe id for a destination (events' subjects, state records): its type and a
    digest of what it writes, so reordering a PATCHed list keeps each destination's state."""
    digest = hashlib.sha256(f"{dest.type}|{dest.target}".encode()).hexdigest()[:12]
    return f"{dest.type}-{digest}"


class DestinationState(ApiModel):
    """What the broker knows about one destination, held in the secret rotation's own record
    (a nested list, written with the rotation under its ETag: one writer, one row, no joins).

    `lastSyncedVersion` is what the read-back saw: the Key Vault version, the App Configuration
    etag or the DevOps group's `modifiedOn`; the re-check compares against it and the value."""

    id: str
    type: str
    status: Status = "pending"
    last_synced_at: datetime | None = None
    last_synced_key_id: str | None = None
    last_synced_version: str | None = None
    last_error: str | None = None
    failures: int = 0
    next_attempt_at: datetime | None = None


# ----------------------------------------------------------------------------------- checks


def host_allowed(url: str, patterns: tuple[str, ...]) -> bool:
    """`url`'s host[:port] matches one of the DESTINATION_HOSTS globs (port 443 may be left out)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        return False
    candidates = {f"{host}:{port or 443}"} | ({host} if port in (None, 443) else set())
    return any(fnmatch.fnmatchcase(c, p) for c in candidates for p in patterns)


def _url_error(field: str, url: str) -> FieldError | None:
    parts = urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.hostname:
        return FieldError(field, "must be an https URL, e.g. https://NAME.vault.azure.net")
    if parts.username or parts.password or parts.query or parts.fragment:
        return FieldError(field, "must be a plain https URL without credentials, query or fragment")
    patterns = get_settings().destination_host_patterns
    if not host_allowed(url, patterns):
        return FieldError(
            field,
            f"host {parts.netloc} does not match DESTINATION_HOSTS ({', '.join(patterns)}); "
            "fix the URL, or add the host to the DESTINATION_HOSTS setting",
        )
    return None


def destination_errors(destinations: list[Destination], field: str = "destinations") -> list[FieldError]:
    """Every problem with the list that needs no network, each naming its field."""
    errors: list[FieldError] = []
    if len(destinations) > MAX_DESTINATIONS:
        errors.append(FieldError(field, f"at most {MAX_DESTINATIONS} destinations per rotation"))
    seen: dict[str, int] = {}
    has_vault = any(isinstance(d, KeyVaultDestination) for d in destinations)
    for index, dest in enumerate(destinations):
        at = f"{field}[{index}]"
        if isinstance(dest, KeyVaultDestination):
            if (problem := _url_error(f"{at}.vaultUrl", dest.vault_url)) is not None:
                errors.append(problem)
            if not SECRET_NAME.fullmatch(dest.secret_name):
                errors.append(
                    FieldError(
                        f"{at}.secretName",
                        "Key Vault secret names are 1-127 letters, digits and '-' (no '_' or '.')",
                    )
                )
        elif isinstance(dest, AppConfigurationDestination):
            if (problem := _url_error(f"{at}.endpoint", dest.endpoint)) is not None:
                errors.append(problem)
            if dest.key in (".", "..") or _APP_CONFIG_KEY_FORBIDDEN.search(dest.key):
                errors.append(
                    FieldError(f"{at}.key", "App Configuration keys cannot be '.', '..' or hold '%'")
                )
            if dest.key_vault_reference and not has_vault:
                errors.append(
                    FieldError(
                        f"{at}.keyVaultReference",
                        "a Key Vault reference needs a key-vault destination in the same rotation; "
                        "add one or set keyVaultReference to false",
                    )
                )
        if isinstance(dest, DevOpsVariableGroupDestination) and dest.client_id_variable == dest.variable:
            errors.append(
                FieldError(f"{at}.clientIdVariable", "must differ from variable (the secret's name)")
            )
        key = destination_id(dest)
        if key in seen:
            errors.append(FieldError(at, f"duplicates destinations[{seen[key]}]; remove one"))
        else:
            seen[key] = index
    return errors


def check_destinations(destinations: list[Destination], field: str = "destinations") -> None:
    """Raise a 422 naming every field at fault (before any request is sent anywhere)."""
    errors = destination_errors(destinations, field)
    if errors:
        raise Unprocessable("The destinations have invalid fields; see errors.", errors)


def host_refusal(dest: Destination) -> str | None:
    """Why the broker may not send anything to this destination now (DESTINATION_HOSTS may have
    changed since it was accepted), or None. Checked again before every request."""
    if isinstance(dest, KeyVaultDestination):
        problem = _url_error("vaultUrl", dest.vault_url)
    elif isinstance(dest, AppConfigurationDestination):
        problem = _url_error("endpoint", dest.endpoint)
    else:
        return None
    return None if problem is None else f"{problem.field}: {problem.message}"


def reference_vault(destinations: list[Destination]) -> KeyVaultDestination | None:
    """The key-vault destination an App Configuration reference points at: the first one."""
    return next((d for d in destinations if isinstance(d, KeyVaultDestination)), None)
