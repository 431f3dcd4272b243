"""A TCP proxy between the participants and a server, to inject network faults.

:class:`NetProxy` forwards every connection made to its port to a target server, through
an event loop in a thread of its own, so blocking clients, asyncio clients and other
processes can all use it. On the way it can

* delay each chunk of data by a latency with jitter, separately for each direction
  (:class:`Delay`), keeping the order of the chunks of one direction;
* drop every open connection at once (:meth:`NetProxy.cut`), as a failing link would:
  both ends are reset;
* hold all traffic (:meth:`NetProxy.pause`, :meth:`NetProxy.resume`): a link that stalls
  without failing; the connections stay open and new ones are accepted, but nothing
  passes until it resumes.

``with NetProxy(host, port, down=Delay(0.15)) as link:`` then connect to ``link.port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["Delay", "NetProxy"]

T = TypeVar("T")

#: How long a call from the test thread waits for the proxy's loop, seconds.
_LOOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Delay:
    """The delay of each chunk in one direction: uniformly random in
    ``[latency - jitter, latency + jitter]`` seconds (never below 0)."""

    latency: float = 0.0
    jitter: float = 0.0

    def draw(self, rng: random.Random) -> float:
        if self.jitter == 0:
            return max(0.0, self.latency)
        return max(0.0, rng.uniform(self.latency - self.jitter, self.latency + self.jitter))


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's end, the server's end, the pumps between."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self, *, reset: bool) -> None:
        """Stop forwarding and close both ends; with ``reset``, at once and with a TCP
        reset (SO_LINGER 0), as a failed link does."""
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        for writer in (self.client, self.server):
            if not reset:
                writer.close()
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class NetProxy:
    """A TCP proxy from ``127.0.0.1:<port>`` to ``host:port``; see the module doc.

    :param host: the target's address.
    :param port: the target's port.
    :param up: delay of the data from the clients to the target (requests).
    :param down: delay of the data from the target to the clients (replies, messages).
    :param seed: seed of the jitter's random numbers.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        up: Delay = Delay(),
        down: Delay = Delay(),
        seed: int | None = None,
    ) -> None:
        self.target = (host, port)
        self.up = up
        self.down = down
        self.port = 0
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._listener: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing: asyncio.Event | None = None

    # -- control, from any thread ------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://`` URL of the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def connections(self) -> int:
        """How many proxied connections are open."""
        return self._call(self._count)

    def start(self) -> NetProxy:
        """Start listening; :attr:`port` is then the proxy's port."""
        self._thread.start()
        self._call(self._open)
        return self

    def cut(self) -> int:
        """Reset every open connection (both ends); return how many were dropped.

        New connections are accepted as before.
        """
        return self._call(self._cut)

    def pause(self) -> None:
        """Hold all data in both directions until :meth:`resume`."""
        self._call(self._set_flowing, False)

    def resume(self) -> None:
        """Let the held data and everything after it pass again."""
        self._call(self._set_flowing, True)

    def close(self) -> None:
        """Drop every connection, stop listening and end the proxy's thread."""
        if not self._thread.is_alive():
            return
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_LOOP_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> NetProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``function(*args)`` on the proxy's loop and return its result."""
        future = asyncio.run_coroutine_threadsafe(function(*args), self._loop)
        return future.result(_LOOP_TIMEOUT)

    # -- on the proxy's loop -------------------------------------------------------------

    async def _open(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._listener = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._listener.sockets[0].getsockname()[1])

    async def _count(self) -> int:
        return len(self._links)

    async def _cut(self) -> int:
        links, self._links = self._links, set()
        for link in links:
            link.close(reset=True)
        return len(links)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _shutdown(self) -> None:
        if self._listener is not None:
            self._listener.close()
        await self._cut()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            await self._listener.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            *self._pipe(link, reader, up_writer, self.up),
            *self._pipe(link, up_reader, writer, self.down),
        ]

    def _pipe(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        delay: Delay,
    ) -> list[asyncio.Task[None]]:
        """Start the two tasks of one direction: one reads and timestamps chunks as they
        come, the other writes each at its time (never before the one ahead of it)."""
        loop = asyncio.get_running_loop()
        pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            due = 0.0
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    due = max(due, loop.time() + delay.draw(self._rng))
                    pending.put_nowait((due, data))
            pending.put_nowait((due, b""))

        async def deliver() -> None:
            assert self._flowing is not None
            with contextlib.suppress(OSError):
                while True:
                    due, data = await pending.get()
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    await self._flowing.wait()
                    if not data:
                        break
                    sink.write(data)
                    await sink.drain()
            # One end closed: close the link (Redis connections are never half closed).
            self._links.discard(link)
            link.close(reset=False)

        tasks = [asyncio.create_task(read()), asyncio.create_task(deliver())]
        for task in tasks:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return tasks
