"""Field types and credential bodies shared by both connection kinds.

Every identifier that ends up in an Azure URL (tenant, client id, organization) is checked
here, so nothing unvalidated reaches a URL. Secret fields are `SecretStr`: they never show
in a repr, a log line or a validation error.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, SecretStr

from core.models import RequestModel

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DOMAIN = re.compile(r"^(?=.{4,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_NAME = re.compile(r"^[a-z0-9-]{1,64}$")
_ORG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,49}$")
# Authorities that are not a tenant: a connection must name one directory.
_NOT_TENANTS = {"common", "organizations", "consumers"}


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("must be 1-64 characters of lower-case letters, digits and dashes")
    return value


def _tenant(value: str) -> str:
    lowered = value.lower()
    if GUID.match(lowered) or (_DOMAIN.match(lowered) and lowered not in _NOT_TENANTS):
        return lowered
    raise ValueError(
        "must be the tenant's ID (a GUID) or one of its verified domain names, e.g. contoso.onmicrosoft.com"
    )


def _client_id(value: str) -> str:
    if not GUID.match(value):
        raise ValueError("must be the app's Application (client) ID, a GUID")
    return value.lower()


def _org(value: str) -> str:
    if not _ORG.match(value):
        raise ValueError(
            "must be the Azure DevOps organization name (letters, digits and dashes, at most 50, "
            "starting with a letter or digit), e.g. contoso for https://dev.azure.com/contoso"
        )
    return value


def _printable(value: SecretStr) -> SecretStr:
    text = value.get_secret_value()
    if text != text.strip() or any(not ch.isprintable() for ch in text):
        raise ValueError("must not contain whitespace at the ends or control characters")
    return value


Name = Annotated[str, Field(min_length=1, max_length=64, examples=["prod-graph"]), AfterValidator(_name)]
Description = Annotated[str | None, Field(default=None, max_length=500)]
TenantId = Annotated[
    str,
    Field(min_length=1, max_length=253, examples=["contoso.onmicrosoft.com"]),
    AfterValidator(_tenant),
]
ClientId = Annotated[
    str,
    Field(min_length=36, max_length=36, examples=["00000000-0000-0000-0000-000000000000"]),
    AfterValidator(_client_id),
]
OrgName = Annotated[str, Field(min_length=1, max_length=50, examples=["contoso"]), AfterValidator(_org)]
ClientSecret = Annotated[SecretStr, Field(min_length=1, max_length=512), AfterValidator(_printable)]
AccessToken = Annotated[SecretStr, Field(min_length=1, max_length=1024), AfterValidator(_printable)]
Pem = Annotated[SecretStr, Field(min_length=1, max_length=64 * 1024)]


class ClientSecretCredentials(RequestModel):
    """An app registration's client secret."""

    tenant_id: TenantId
    client_id: ClientId
    client_secret: ClientSecret


class CertificateCredentials(RequestModel):
    """An app registration's certificate (PEM) and its private key (PEM, unencrypted, RSA)."""

    tenant_id: TenantId
    client_id: ClientId
    certificate: Annotated[str, Field(min_length=1, max_length=64 * 1024)]
    private_key: Pem


class DevOpsAccessTokenCredentials(RequestModel):
    """A personal access token of one organization."""

    access_token: AccessToken
    org_name: OrgName


class DevOpsClientSecretCredentials(RequestModel):
    """An Entra app (a member of the organization) and its client secret."""

    tenant_id: TenantId
    client_id: ClientId
    client_secret: ClientSecret
    org_name: OrgName


def _no_rotation(value: Any) -> None:
    if value is not None:
        raise ValueError("automatic rotation is only available for method client-secret")


# A `rotation` block on a method other than client-secret: a 422 naming `rotation`.
NoRotation = Annotated[Any, AfterValidator(_no_rotation), Field(description="not available for this method")]
