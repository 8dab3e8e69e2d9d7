"""A loopback HTTP/1.1 proxy in front of Azurite that cuts connections the way a server does.

It reads each request whole (headers + Content-Length body) before deciding, so a test knows
exactly which requests reached Azurite (`forwarded`) and which did not (`dropped`):

- `keepalive`: a request arriving on a connection idle at least that long is dropped and the
  connection closed, as a Node server whose keep-alive timer fired just as the request came in
  (the client saw no FIN first, which is the race that made `make bench` fail);
- `plan`: the next requests of a method are `drop`ped (closed unread) or `lose` their answer
  (forwarded, Azurite does the work, the connection is closed before any byte of the answer);
- `down`: every request is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from tests.azurite import free_port

Fate = Literal["drop", "lose"]


@dataclass
class TableProxy:
    target_port: int
    port: int = field(default_factory=free_port)
    keepalive: float | None = None
    down: bool = False
    plan: list[tuple[str, Fate]] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="table-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def connection_string(self, account: str, key: str) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
            f"TableEndpoint=http://127.0.0.1:{self.port}/{account};"
        )

    def requests(self, method: str) -> list[str]:
        """Forwarded requests of one method (the ones Azurite received)."""
        return [r for r in self.forwarded if r.startswith(method + " ")]

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await self._stop.wait()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _fate(self, method: str, idle: float, served: int) -> Fate | None:
        if self.down or (self.keepalive is not None and served and idle >= self.keepalive):
            return "drop"
        for index, (planned, fate) in enumerate(self.plan):
            if planned == method:
                del self.plan[index]
                return fate
        return None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        last = [time.monotonic()]

        async def pipe_answers() -> None:
            while chunk := await up_reader.read(65536):
                last[0] = time.monotonic()
                writer.write(chunk)
                await writer.drain()
            writer.close()

        answers: asyncio.Task[None] | None = None
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                idle = time.monotonic() - last[0]
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split(" ")[:2]
                length = next(
                    (
                        int(v)
                        for k, _, v in (h.partition(":") for h in lines[1:])
                        if k.lower() == "content-length"
                    ),
                    0,
                )
                body = await reader.readexactly(length)
                request = f"{method} {target}"
                fate = self._fate(method, idle, served)
                if fate == "drop":
                    self.dropped.append(request)
                    return
                self.forwarded.append(request)
                up_writer.write(head + body)
                await up_writer.drain()
                if fate == "lose":
                    if answers is not None:
                        answers.cancel()
                        await asyncio.gather(answers, return_exceptions=True)
                        answers = None
                    await up_reader.read(1)  # Azurite answers only after the work is done
                    self.lost.append(request)
                    return
                if answers is None:
                    answers = asyncio.create_task(pipe_answers())
                served += 1
                last[0] = time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            if answers is not None:
                answers.cancel()
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()
