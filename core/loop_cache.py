"""One SDK client per event loop, closed when that loop ends.

aiohttp/httpx sessions belong to the loop that made them. In Azure the HTTP function and
the timers share the worker's loop, so this is one client per process there; tests and the
local runner that use a second loop get their own instead of a broken shared one.

Every client is closed by `close_all()` (the API's shutdown, the test harness) and, failing
that, when its loop ends: the first client of a loop starts a parked async generator whose
`finally` closes the loop's clients, and `asyncio.run` (uvicorn, `make run`, the benches)
finalizes every live async generator before it closes the loop. No aiohttp session is left
for the garbage collector to warn about.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_registry: list[PerLoop[object]] = []
_watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = (
    weakref.WeakKeyDictionary()
)


async def _close_at_loop_end() -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await close_all()


async def _watch_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Park a generator the loop will finalize at its end (`loop.shutdown_asyncgens`)."""
    if loop not in _watchers:
        watcher = _close_at_loop_end()
        _watchers[loop] = watcher  # a strong reference: the loop itself holds only a weak one
        await watcher.asend(None)


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
        self._retired: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[asyncio.Future[T]]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        future = self._values.get(loop)
        if future is None:
            future = loop.create_future()
            self._values[loop] = future
            await _watch_loop(loop)
            try:
                future.set_result(await self._factory())
            except BaseException as error:
                del self._values[loop]
                future.set_exception(error)
                future.exception()  # mark retrieved; the caller gets the error below
                raise
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Close this loop's value (SDK clients have `close()`, httpx has `aclose()`) and forget it;
        also any value `clear()` set aside for this loop."""
        loop = asyncio.get_running_loop()
        futures = [*self._retired.pop(loop, []), self._values.pop(loop, None)]
        for future in futures:
            if future is None or not future.done() or future.exception() is not None:
                continue
            value: object = future.result()
            closer = getattr(value, "aclose", None) or getattr(value, "close", None)
            if closer is not None:
                result = closer()
                if asyncio.iscoroutine(result):
                    await result

    def clear(self) -> None:
        """Forget every value (settings changed); the next `get` builds anew.

        The old values are set aside, not dropped, so that their loop's `close_all` (or its end)
        still closes them.
        """
        for loop, future in list(self._values.items()):
            self._retired.setdefault(loop, []).append(future)
        self._values = weakref.WeakKeyDictionary()
