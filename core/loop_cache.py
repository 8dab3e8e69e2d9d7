"""One SDK client per event loop.

aiohttp/httpx sessions belong to the loop that made them. In Azure the HTTP function and
the timers share the worker's loop, so this is one client per process there; tests and the
local runner that use a second loop get their own instead of a broken shared one.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_registry: list[PerLoop[object]] = []


async def close_all() -> None:
    """Close every cached client of the running loop (at shutdown, so no session is left open)."""
    for cache in reversed(_registry):
        await cache.close()


class PerLoop(Generic[T]):
    """Lazily build a value once per running event loop."""

    def __init__(self, factory: Callable[[], Awaitable[T]]) -> None:
        self._factory = factory
        _registry.append(self)  # type: ignore[arg-type]
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future[T]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        future = self._values.get(loop)
        if future is None:
            future = loop.create_future()
            self._values[loop] = future
            try:
                future.set_result(await self._factory())
            except BaseException as error:
                del self._values[loop]
                future.set_exception(error)
                future.exception()  # mark retrieved; the caller gets the error below
                raise
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Close this loop's value (SDK clients have `close()`, httpx has `aclose()`) and forget it."""
        future = self._values.pop(asyncio.get_running_loop(), None)
        if future is None or not future.done() or future.exception() is not None:
            return
        value: object = future.result()
        closer = getattr(value, "aclose", None) or getattr(value, "close", None)
        if closer is not None:
            result = closer()
            if asyncio.iscoroutine(result):
                await result

    def clear(self) -> None:
        """Forget every value (settings changed); the next `get` builds anew."""
        self._values = weakref.WeakKeyDictionary()
