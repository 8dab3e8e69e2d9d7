"""HTTP routes of dynamic secrets and leases (thin: parse, authorize, call the service).

Roles: Admin creates, changes and deletes dynamic secrets (they hold an app's secret) and may
force-forget a lease; Operator creates, renews and revokes leases; Reader lists and reads.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from core.auth import Role
from core.deps import Admin, Operator, PathId, Reader
from core.errors import Forbidden
from leases import dynamic_secrets, revoking, service
from leases.models import (
    DynamicSecretCreate,
    DynamicSecretList,
    DynamicSecretOut,
    DynamicSecretsCreated,
    DynamicSecretUpdate,
    LeaseCreate,
    LeaseCreated,
    LeaseList,
    LeaseOut,
    LeaseRenew,
    LeaseRenewed,
    LeaseStatus,
)

router = APIRouter(prefix="/api/v1", tags=["dynamic secrets and leases"])

Limit = Annotated[int, Query(ge=1, le=1000)]


@router.post(
    "/dynamic-secrets",
    status_code=status.HTTP_201_CREATED,
    response_model=DynamicSecretsCreated,
    summary="Create one Entra ID dynamic secret per user (validates the app in Entra ID first)",
)
async def create_dynamic_secrets(body: DynamicSecretCreate, caller: Admin) -> DynamicSecretsCreated:
    return await dynamic_secrets.create_dynamic_secrets(body, caller)


@router.get("/dynamic-secrets", response_model=DynamicSecretList, summary="List dynamic secrets")
async def list_dynamic_secrets(caller: Reader, limit: Limit = 1000) -> DynamicSecretList:
    return DynamicSecretList(items=await dynamic_secrets.list_dynamic_secrets(limit))


@router.get("/dynamic-secrets/{name}", response_model=DynamicSecretOut, summary="Read a dynamic secret")
async def get_dynamic_secret(name: PathId, caller: Reader) -> DynamicSecretOut:
    return await dynamic_secrets.get_dynamic_secret(name)


@router.patch(
    "/dynamic-secrets/{name}",
    response_model=DynamicSecretOut,
    summary="Change TTLs or the app's client secret (re-validated)",
)
async def update_dynamic_secret(name: PathId, body: DynamicSecretUpdate, caller: Admin) -> DynamicSecretOut:
    return await dynamic_secrets.update_dynamic_secret(name, body, caller)


@router.delete(
    "/dynamic-secrets/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a dynamic secret (revokes its active lease first)",
)
async def delete_dynamic_secret(name: PathId, caller: Admin) -> Response:
    await dynamic_secrets.delete_dynamic_secret(name, caller)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/dynamic-secrets/{name}/leases",
    status_code=status.HTTP_201_CREATED,
    response_model=LeaseCreated,
    summary="Lease the user's credentials: a fresh password, returned once",
)
async def create_lease(
    name: PathId, caller: Operator, response: Response, body: LeaseCreate | None = None
) -> LeaseCreated:
    created = await service.create_lease(name, body.ttl if body else None, caller)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Location"] = f"/api/v1/leases/{created.lease.id}"
    return created


@router.get(
    "/dynamic-secrets/{name}/leases", response_model=LeaseList, summary="List a dynamic secret's leases"
)
async def list_leases(
    name: PathId,
    caller: Reader,
    lease_status: Annotated[LeaseStatus | None, Query(alias="status")] = None,
    limit: Limit = 100,
) -> LeaseList:
    return LeaseList(items=await service.list_leases(name, lease_status, limit))


@router.get("/leases/{lease_id}", response_model=LeaseOut, summary="Read a lease")
async def get_lease(lease_id: PathId, caller: Reader) -> LeaseOut:
    return await service.get_lease(lease_id)


@router.post(
    "/leases/{lease_id}/renew", response_model=LeaseRenewed, summary="Renew (capped at created + maxTtl)"
)
async def renew_lease(lease_id: PathId, caller: Operator, body: LeaseRenew | None = None) -> LeaseRenewed:
    return await service.renew_lease(lease_id, body.ttl if body else None, caller)


@router.delete(
    "/leases/{lease_id}",
    response_model=LeaseOut,
    summary="Revoke now (`force=true`, Admin: forget a lease Azure cannot revoke, audited)",
)
async def revoke_lease(
    lease_id: PathId,
    caller: Operator,
    force: Annotated[bool, Query(description="forget the lease if Azure refuses to revoke it")] = False,
) -> LeaseOut:
    if force and not caller.has(Role.ADMIN):
        raise Forbidden("force=true needs the app role Broker.Admin")
    return await revoking.revoke_lease(lease_id, caller, force=force)
