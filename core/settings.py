"""Every app setting the broker reads, in one place, validated once at start.

The environment variable of each field is its name upper-cased; Bicep sets each one
that Azure needs (tests/test_infra.py compares the two). A plain pydantic model reads
os.environ: pydantic-settings did the same but cost 57 ms of every cold start (measured).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

_EVERY_MINUTE = "0 * * * * *"
_HOURLY = "0 0 * * * *"
# The Functions host (App Service platform) sets these on every instance in Azure.
AZURE_HOST_MARKERS = ("WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME")
MIN_LOCAL_TOKEN_LENGTH = 32
# App Service resolves these references before the app starts; one still present means it could not.
_UNRESOLVED_REFERENCES = ("@microsoft.keyvault(", "@microsoft.appconfiguration(")
_HOST_PATTERN = re.compile(r"^[A-Za-z0-9*?.\[\]-]+(:[0-9*?]+)?$")


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names it and says how to fix it."""


def _root_url(value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError("must be an absolute http(s) URL")
    return value.rstrip("/")


class Settings(BaseModel):
    """App settings (environment variables; names are the contract in DESIGN.md)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # State: Table Storage by managed identity (Azure) or connection string (Azurite).
    tables_endpoint: str | None = None
    tables_connection_string: SecretStr | None = None
    table_prefix: str = Field(default="", pattern=r"^[A-Za-z]?[A-Za-z0-9]{0,20}$")

    # Secret material: Key Vault, or the local AES-GCM store when KEY_VAULT_URL is unset.
    key_vault_url: str | None = None
    local_secrets_dir: Path = Path(".local/secrets")

    # Azure endpoints (roots; sovereign clouds and the test stand-in set them).
    azure_authority_host: str = "https://login.microsoftonline.com"
    graph_endpoint: str = "https://graph.microsoft.com"
    azure_devops_endpoint: str = "https://dev.azure.com"
    site_url: str = "http://127.0.0.1:7071"

    # Operator app registrations used by the OAuth connection methods.
    inf_app_connection_azure_client_secrets_client_id: str | None = None
    inf_app_connection_azure_client_secrets_client_secret: SecretStr | None = None
    inf_app_connection_azure_devops_client_id: str | None = None
    inf_app_connection_azure_devops_client_secret: SecretStr | None = None

    # Caller authentication.
    auth_mode: Literal["local", "entra"] = "local"
    auth_tenant_id: str | None = None
    auth_audience: str | None = None
    local_api_token: SecretStr | None = None

    # Timer schedules (NCRONTAB with seconds), used as %SETTING% by the Functions host.
    rotation_schedule: str = _EVERY_MINUTE
    expiry_sweep_schedule: str = _EVERY_MINUTE
    reconcile_schedule: str = "30 */5 * * * *"
    inventory_schedule: str = _HOURLY

    # Credential inventory: credentials ending within this many days (or ended) are recorded.
    expiry_warning_days: int = Field(default=30, ge=1, le=365)

    # Event Grid topic for CloudEvents (unset: events are log lines only).
    events_topic_endpoint: str | None = None

    # Hosts a destination's vaultUrl/endpoint must match (comma-separated host[:port] globs, https).
    destination_hosts: str = "*.vault.azure.net,*.azconfig.io"

    # How long revoked leases stay readable for audit.
    lease_retention_days: int = Field(default=30, ge=1, le=3650)

    # The broker's own user-assigned managed identity (read by DefaultAzureCredential too).
    azure_client_id: str | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _resolved(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower().startswith(_UNRESOLVED_REFERENCES):
            raise ValueError(
                "still holds an unresolved reference (@Microsoft.KeyVault(...)): the platform could not "
                "read the secret; check that it exists and that the app's identity may read it "
                "(keyVaultReferenceIdentity, Key Vault Secrets User/Officer), then restart the app"
            )
        return value

    @field_validator("azure_authority_host", "graph_endpoint", "azure_devops_endpoint", "site_url")
    @classmethod
    def _roots(cls, value: str) -> str:
        return _root_url(value)

    @field_validator("key_vault_url", "tables_endpoint")
    @classmethod
    def _optional_roots(cls, value: str | None) -> str | None:
        return _root_url(value) if value else None

    @field_validator("events_topic_endpoint")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith("https://"):
            raise ValueError(
                "must be the topic's https endpoint (https://<topic>.<region>-1.eventgrid.azure.net/api/events)"
            )
        return value

    @field_validator("destination_hosts")
    @classmethod
    def _host_patterns(cls, value: str) -> str:
        patterns = [p.strip().lower() for p in value.split(",") if p.strip()]
        if not patterns:
            raise ValueError("needs at least one host[:port] pattern, e.g. *.vault.azure.net")
        for pattern in patterns:
            if not _HOST_PATTERN.fullmatch(pattern):
                raise ValueError(f"{pattern!r} is not a host[:port] glob (no scheme, no path)")
        return ",".join(patterns)

    @property
    def destination_host_patterns(self) -> tuple[str, ...]:
        """DESTINATION_HOSTS as a tuple of lower-case host[:port] globs."""
        return tuple(self.destination_hosts.split(","))

    @field_validator("rotation_schedule", "expiry_sweep_schedule", "reconcile_schedule", "inventory_schedule")
    @classmethod
    def _ncrontab(cls, value: str) -> str:
        from core.ncrontab import parse_ncrontab

        parse_ncrontab(value)
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Settings:
        if not self.tables_endpoint and not self.tables_connection_string:
            raise ValueError(
                "set TABLES_ENDPOINT (Azure, managed identity) or TABLES_CONNECTION_STRING (Azurite)"
            )
        if self.auth_mode == "entra" and not (self.auth_tenant_id and self.auth_audience):
            raise ValueError("AUTH_MODE=entra needs AUTH_TENANT_ID and AUTH_AUDIENCE")
        if self.auth_mode == "local":
            in_azure = (info.context or {}).get("in_azure", False)
            if in_azure:
                raise ValueError(
                    "AUTH_MODE=local is for the local stack only; in Azure set AUTH_MODE=entra "
                    "with AUTH_TENANT_ID and AUTH_AUDIENCE"
                )
            token = self.local_api_token.get_secret_value() if self.local_api_token else ""
            if not token:
                raise ValueError("AUTH_MODE=local needs LOCAL_API_TOKEN (the static admin token)")
            if len(token) < MIN_LOCAL_TOKEN_LENGTH:
                raise ValueError(
                    f"LOCAL_API_TOKEN must be at least {MIN_LOCAL_TOKEN_LENGTH} characters "
                    "(make run generates one: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
        return self


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        name = "_".join(str(p) for p in item["loc"]).upper() or "settings"
        parts.append(f"{name}: {item['msg']}")
    return "invalid app settings: " + "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read and validated once (tests call `get_settings.cache_clear()`)."""
    # Names are case-insensitive, and an empty value counts as unset (Bicep writes '' for an
    # unconfigured OAuth app).
    environment = {key.lower(): value for key, value in os.environ.items() if value != ""}
    values = {name: environment[name] for name in Settings.model_fields if name in environment}
    in_azure = any(os.environ.get(name) for name in AZURE_HOST_MARKERS)
    try:
        return Settings.model_validate(values, context={"in_azure": in_azure})
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None
