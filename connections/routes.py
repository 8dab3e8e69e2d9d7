"""The one set of connection routes, built per kind from its `KindApi` description.

create/list/read/update/delete and the OAuth start are the same for every kind; what differs
(bodies, the view, extra routes such as DevOps projects) is data in the kind's module. A kind's
hooks (core.connection_seam: rotation on client secrets) add their block to the create/PATCH
bodies and the view; the generic service (connections.lifecycle) calls them, never a route.
A third kind is one new module with a `KindApi` and one line in `ROUTED`.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field, create_model

from connections import lifecycle, oauth, store
from connections.kinds import KindSpec
from connections.models import AuthorizationStarted, UpdateConnectionBody
from connections.routing import (
    ConnectionId,
    IfMatch,
    authorization_started,
    changes_of,
    connection_router,
    set_etag,
)
from connections.store import ConnectionRecord
from core.connection_seam import KindHooks, hooks_for
from core.deps import Admin, Reader
from core.models import ApiModel

ROUTED = ("connections.client_secrets", "connections.devops")


@dataclass(frozen=True)
class KindApi:
    """What a connection kind's routes need to know about it."""

    spec: KindSpec
    create_models: tuple[type[BaseModel], ...]  # one per method of spec.methods, each with a Literal `method`
    authorize_model: type[BaseModel]  # `name`, `tenantId` and what the OAuth completion needs besides
    view_model: type[ApiModel]
    to_view: Callable[[ConnectionRecord], ApiModel]
    create_summary: str
    update_model: type[UpdateConnectionBody] = UpdateConnectionBody
    extra_routes: Callable[[APIRouter], None] | None = None


def _extended(model: type[BaseModel], hooks: KindHooks | None, methods: tuple[str, ...] = ()) -> type[Any]:
    """`model` with the hooks' block as an optional field (for the given methods, if any)."""
    if hooks is None:
        return model
    method = model.model_fields.get("method")
    if (
        methods
        and method is not None
        and getattr(method.annotation, "__args__", ("",))[0] not in hooks.methods
    ):
        return model
    field: Any = (hooks.settings_model | None, None)
    return create_model(model.__name__, __base__=model, __doc__=model.__doc__, **{hooks.field: field})


def _viewed(api: KindApi, hooks: KindHooks | None) -> type[Any]:
    if hooks is None:
        return api.view_model
    field: Any = (hooks.view_model | None, None)
    return create_model(f"{api.view_model.__name__}View", __base__=api.view_model, **{hooks.field: field})


def router_for(api: KindApi) -> APIRouter:
    """The routes of one connection kind."""
    spec = api.spec
    hooks = hooks_for(spec.kind)
    field = hooks.field if hooks is not None else ""
    creates = tuple(_extended(m, hooks, spec.methods) for m in api.create_models)
    CreateBody = Annotated[Union[creates], Field(discriminator="method")]  # type: ignore[valid-type]  # noqa: UP007
    UpdateBody = _extended(api.update_model, hooks)
    View = _viewed(api, hooks)
    ViewList = create_model(f"{api.view_model.__name__}List", __base__=ApiModel, items=(list[View], ...))  # type: ignore[valid-type]
    router = connection_router(spec.prefix, spec.kind, spec.methods)

    async def shown(record: ConnectionRecord, block: BaseModel | None = None, *, read: bool = False) -> Any:
        if read:
            block = await lifecycle.view_extension(spec, record)
        values = api.to_view(record).model_dump()
        if hooks is not None:
            values[field] = block
        return View(**values)

    @router.post("", status_code=201, response_model=View, summary=api.create_summary)
    async def create_connection(body: CreateBody, caller: Admin, response: Response) -> Any:
        credentials = body.credentials  # type: ignore[attr-defined]
        record, block = await lifecycle.create(
            spec,
            body.name,  # type: ignore[attr-defined]
            body.description,  # type: ignore[attr-defined]
            spec.method_of(credentials),
            credentials,
            caller,
            getattr(body, field, None) if field else None,
        )
        response.headers["Location"] = f"{spec.prefix}/{record.id}"
        return await shown(record, block)

    @router.get("", response_model=ViewList, summary="List connections")
    async def list_connections(caller: Reader) -> Any:
        found = await store.list_records(spec.kind)
        return ViewList(items=list(await asyncio.gather(*(shown(r, read=True) for r in found))))

    @router.post(
        "/oauth/authorize",
        response_model=AuthorizationStarted,
        summary="Start an OAuth connection: returns the Entra ID authorize URL to open in a browser",
    )
    async def authorize(body: api.authorize_model, caller: Admin) -> AuthorizationStarted:  # type: ignore[name-defined]
        return authorization_started(await oauth.start_connection(spec.kind, body, caller))

    @router.get("/{connection_id}", response_model=View, summary="Read a connection")
    async def get_connection(connection_id: ConnectionId, caller: Reader, response: Response) -> Any:
        record = await store.get_record(spec.kind, connection_id)
        set_etag(response, record.etag)
        return await shown(record, read=True)

    @router.patch(
        "/{connection_id}",
        response_model=View,
        summary="Update a connection (new credentials are validated first; If-Match honoured)",
    )
    async def update_connection(
        connection_id: ConnectionId,
        body: UpdateBody,  # type: ignore[valid-type]
        caller: Admin,
        response: Response,
        if_match: IfMatch = None,
    ) -> Any:
        record, block = await lifecycle.update(
            spec,
            connection_id,
            changes_of(body),
            caller,
            if_match=if_match,
            extension=getattr(body, field, None) if field else None,
        )
        set_etag(response, record.etag)
        return await shown(record, block)

    @router.delete(
        "/{connection_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        summary="Delete a connection and its stored credentials (what its hooks made is removed first)",
    )
    async def delete_connection(
        connection_id: ConnectionId, caller: Admin, if_match: IfMatch = None
    ) -> Response:
        await lifecycle.delete(spec, connection_id, caller, if_match=if_match)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    if api.extra_routes is not None:
        api.extra_routes(router)
    return router


def routers() -> list[APIRouter]:
    """Every kind's router (the kinds' modules are imported here, at start-up)."""
    import importlib

    return [router_for(importlib.import_module(name).API) for name in ROUTED]


async def view_of(kind: str, record: ConnectionRecord) -> dict[str, Any]:
    """A connection as its kind's routes show it (the OAuth callback answers with this)."""
    import importlib

    module = next(m for m in (importlib.import_module(n) for n in ROUTED) if m.API.spec.kind == kind)
    api: KindApi = module.API
    values = api.to_view(record).model_dump(mode="json", by_alias=True)
    hooks = hooks_for(kind)
    if hooks is not None:
        block = await lifecycle.view_extension(api.spec, record)
        values[hooks.field] = None if block is None else block.model_dump(mode="json", by_alias=True)
    return values
