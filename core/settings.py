"""Every app setting the broker reads, in one place, validated once at start.

The environment variable of each field is its name upper-cased; Bicep sets each one
that Azure needs (tests/test_infra.py compares the two). A plain pydantic model reads
os.environ: pydantic-settings did the same but cost 57 ms of every cold start (measured).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

_EVERY_MINUTE = "0 * * * * *"


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

    # How long revoked leases stay readable for audit.
    lease_retention_days: int = Field(default=30, ge=1, le=3650)

    # The broker's own user-assigned managed identity (read by DefaultAzureCredential too).
    azure_client_id: str | None = None

    @field_validator("azure_authority_host", "graph_endpoint", "azure_devops_endpoint", "site_url")
    @classmethod
    def _roots(cls, value: str) -> str:
        return _root_url(value)

    @field_validator("key_vault_url", "tables_endpoint")
    @classmethod
    def _optional_roots(cls, value: str | None) -> str | None:
        return _root_url(value) if value else None

    @field_validator("rotation_schedule", "expiry_sweep_schedule", "reconcile_schedule")
    @classmethod
    def _ncrontab(cls, value: str) -> str:
        from core.ncrontab import parse_ncrontab

        parse_ncrontab(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not self.tables_endpoint and not self.tables_connection_string:
            raise ValueError(
                "set TABLES_ENDPOINT (Azure, managed identity) or TABLES_CONNECTION_STRING (Azurite)"
            )
        if self.auth_mode == "entra" and not (self.auth_tenant_id and self.auth_audience):
            raise ValueError("AUTH_MODE=entra needs AUTH_TENANT_ID and AUTH_AUDIENCE")
        if self.auth_mode == "local" and not self.local_api_token:
            raise ValueError("AUTH_MODE=local needs LOCAL_API_TOKEN (the static admin token)")
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
    try:
        return Settings.model_validate(values)
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None
