"""Request and response bodies of the connection routes.

Create bodies are unions discriminated by `method`, so the OpenAPI page shows each method's
credentials; PATCH bodies take `credentials` as an object checked against the connection's own
method (partial: send only what changes). A kind's hooks (rotation) add their block to these
bodies and to the views when connections.routes builds the routes.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field

from connections.fields import (
    CertificateCredentials,
    ClientSecretCredentials,
    Description,
    DevOpsAccessTokenCredentials,
    DevOpsClientSecretCredentials,
    Name,
    NoRotation,
    OrgName,
    TenantId,
)
from connections.store import ConnectionFields, ConnectionRecord
from core.models import ApiModel, RequestModel

PATCH_CREDENTIALS = (
    "New credentials, validated against Azure before they are saved. Send only what changes, in the "
    "shape of the connection's method (client-secret: tenantId, clientId, clientSecret; certificate: "
    "tenantId, clientId, certificate + privateKey together; access-token: accessToken, orgName)."
)


class CreateConnection(RequestModel):
    """What every create body holds; each method's body adds its `method` and `credentials`."""

    name: Name
    description: Description = None


class ConnectionView(ApiModel, ConnectionFields):
    """What every kind shows of a connection (never secret material); a kind adds its own fields."""

    authorized_user: str | None = None  # OAuth: who consented

    @classmethod
    def of(cls, record: ConnectionRecord, **kind_fields: Any) -> Self:
        """The view of a stored connection: the fields it shares with the row, then the kind's own."""
        shared = record.model_dump(include=set(cls.model_fields))
        user = record.meta.get("user") if record.method == "oauth" else None
        return cls(**shared | {"authorized_user": user} | kind_fields)


# ------------------------------------------------------------------------------------- client secrets


class CreateClientSecretConnection(CreateConnection):
    """A connection that signs in with the app's client secret."""

    method: Literal["client-secret"]
    credentials: ClientSecretCredentials


class CreateCertificateConnection(CreateConnection):
    """A connection that signs in with a certificate (the private key signs the client assertion)."""

    method: Literal["certificate"]
    credentials: CertificateCredentials
    rotation: NoRotation = None


class UpdateConnectionBody(RequestModel):
    """A PATCH: only the fields present change."""

    name: Name | None = None
    description: Description = None
    credentials: dict[str, Any] | None = Field(default=None, description=PATCH_CREDENTIALS)


class AuthorizeClientSecretsBody(RequestModel):
    """Start an OAuth (delegated) connection: the user signs in to this tenant."""

    name: Name
    tenant_id: TenantId
    description: Description = None


class AuthorizationStarted(ApiModel):
    """Open `authorizationUrl` in a browser within `expiresIn` seconds; the callback creates it."""

    authorization_url: str
    expires_in: int
    redirect_uri: str


# ---------------------------------------------------------------------------------------------- DevOps


class CreateDevOpsAccessTokenConnection(CreateConnection):
    """A connection that calls the organization with a personal access token."""

    method: Literal["access-token"]
    credentials: DevOpsAccessTokenCredentials


class CreateDevOpsClientSecretConnection(CreateConnection):
    """A connection that calls the organization as an Entra app (a member of the organization)."""

    method: Literal["client-secret"]
    credentials: DevOpsClientSecretCredentials


class AuthorizeDevOpsBody(RequestModel):
    """Start an OAuth (delegated) DevOps connection: the user signs in to this tenant."""

    name: Name
    tenant_id: TenantId
    org_name: OrgName
    description: Description = None
