"""Helpers of the hostile-input tests (``from hostile_support import ...``).

* Recording clients: real ``redis.Redis`` / ``redis.asyncio.Redis`` clients whose
  connection class records every connection it opens and every command it sends
  (:class:`Recorder`), and :func:`instant_sleep`, which returns on time at once.
* :class:`Driver`: one example in either mode (blocking or asyncio, constructor or
  ``from_url``, ProcSync, Event or Barrier); :func:`attempt` and :func:`accepted`; what a
  working instance does (:func:`pass_once`, :func:`pass_in_pair`, :func:`assert_keys`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import redis
import redis.asyncio as aioredis
from hostile_values import state_key
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from support import arun, start_thread

import pyprocsync
import pyprocsync.asyncio as aps
import pyprocsync.clock
from pyprocsync import InvalidArgumentError, SyncResult
from pyprocsync.tools.server import EmbeddedServer

#: Longest a single call under test may take before it counts as hung.
BOUND = 3.0


#: ``url`` of :meth:`Driver.build` that stands for the session server's URL.
SESSION_URL = "<the session server>"


FUZZ = settings(
    max_examples=20,
    deadline=None,
    report_multiple_bugs=False,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# -- recording clients --------------------------------------------------------------------


@dataclass
class Recorder:
    """Every connection opened and every command sent by the clients of one example.

    ``cut`` makes later connection attempts and commands fail, so that a call that
    overran its bound in a worker thread ends instead of running on.
    """

    sent: list[bytes] = field(default_factory=list)
    connections: int = 0
    cut: bool = False

    def connecting(self) -> None:
        if self.cut:
            raise redis.exceptions.ConnectionError("cut off by the test")
        self.connections += 1

    def sending(self, command: Any) -> None:
        if self.cut:
            raise redis.exceptions.ConnectionError("cut off by the test")
        parts = [command] if isinstance(command, (bytes, bytearray, memoryview, str)) else command
        self.sent.append(b"".join(p.encode() if isinstance(p, str) else bytes(p) for p in parts))

    @property
    def silent(self) -> bool:
        """Nothing was connected nor sent (since :meth:`clear`)."""
        return self.connections == 0 and not self.sent

    def clear(self) -> None:
        """Forget the I/O so far: what comes next is the call under test."""
        self.sent.clear()
        self.connections = 0


def recording(base: type[Any], recorder: Recorder) -> type[Any]:
    """A subclass of the blocking connection class ``base`` reporting to ``recorder``."""

    class Recording(base):  # type: ignore[misc, valid-type]
        def _connect(self) -> Any:
            recorder.connecting()
            return super()._connect()

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            recorder.sending(command)
            super().send_packed_command(command, check_health)

    return Recording


def async_recording(base: type[Any], recorder: Recorder) -> type[Any]:
    """A subclass of the asyncio connection class ``base`` reporting to ``recorder``."""

    class Recording(base):  # type: ignore[misc, valid-type]
        async def _connect(self) -> None:
            recorder.connecting()
            await super()._connect()

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            recorder.sending(command)
            await super().send_packed_command(command, check_health)

    return Recording


@contextlib.contextmanager
def recording_from_url(recorder: Recorder) -> Iterator[None]:
    """Make ``redis.Redis.from_url`` and its asyncio twin hand out recording clients;
    making a cluster client (blocking or asyncio) counts as a connection."""
    plain, asynchronous = redis.Redis.from_url, aioredis.Redis.from_url

    def blocking(url: str, **kwargs: Any) -> redis.Redis:
        client = plain(url, **kwargs)
        pool = client.connection_pool
        pool.connection_class = recording(pool.connection_class, recorder)
        return client

    def asyncio_twin(url: str, **kwargs: Any) -> aioredis.Redis:
        client = asynchronous(url, **kwargs)
        pool = client.connection_pool
        pool.connection_class = async_recording(pool.connection_class, recorder)
        return client

    def cluster(original: Callable[..., Any]) -> Callable[..., Any]:
        def made(url: str, **kwargs: Any) -> Any:
            recorder.connecting()  # a cluster client reads the cluster's layout
            return original(url, **kwargs)

        return made

    with (
        mock.patch.object(redis.Redis, "from_url", blocking),
        mock.patch.object(aioredis.Redis, "from_url", asyncio_twin),
        mock.patch.object(RedisCluster, "from_url", cluster(RedisCluster.from_url)),
        mock.patch.object(AsyncRedisCluster, "from_url", cluster(AsyncRedisCluster.from_url)),
    ):
        yield


# -- driving one example in either mode ------------------------------------------------------

KINDS = ("ProcSync", "Event", "Barrier")


CLASSES: dict[str, dict[str, Any]] = {
    "blocking": {
        "ProcSync": pyprocsync.ProcSync,
        "Event": pyprocsync.Event,
        "Barrier": pyprocsync.Barrier,
    },
    "asyncio": {"ProcSync": aps.ProcSync, "Event": aps.Event, "Barrier": aps.Barrier},
}


@dataclass(frozen=True)
class Entry:
    """The way in: which class, blocking or asyncio, constructor or ``from_url``."""

    kind: str
    mode: str
    via: str

    def __str__(self) -> str:
        return f"{self.mode} {self.kind} via {self.via}"


def entries(
    kinds: tuple[str, ...] = KINDS, vias: tuple[str, ...] = ("constructor", "from_url")
) -> st.SearchStrategy[Entry]:
    return st.builds(
        Entry,
        st.sampled_from(kinds),
        st.sampled_from(("blocking", "asyncio")),
        st.sampled_from(vias),
    )


@dataclass
class Use:
    """The names one example uses, and when it began (epoch µs)."""

    name: str
    run_id: str = field(default_factory=lambda: f"hostile-{uuid.uuid4().hex}")
    prefix: str = "pyprocsync"
    started_us: int = field(default_factory=lambda: time.time_ns() // 1000)


class Driver:
    """Makes the instances of one example and runs their calls in its mode: awaited
    (asyncio) or in a worker thread (blocking), each bounded by :data:`BOUND`."""

    def __init__(self, entry: Entry, server: EmbeddedServer, recorder: Recorder) -> None:
        self.entry = entry
        self.server = server
        self.recorder = recorder
        self.closers: list[Callable[[], Any]] = []

    async def __call__(self, method: Callable[..., Any], *args: Any) -> Any:
        """``method(*args)``, awaited in asyncio mode.

        A call that overran :data:`BOUND` is ended by cutting its client off (its next
        command fails), not by cancelling it: redis-py 8.1's asyncio client may lose a
        cancellation that arrives while it awaits a reply, and the call would run on.
        """
        if self.entry.mode == "asyncio":
            task = asyncio.ensure_future(method(*args))
            await asyncio.wait({task}, timeout=BOUND)
            ended = task.done()
        else:
            thread, outcome = start_thread(lambda: method(*args))
            deadline = time.monotonic() + BOUND
            while thread.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            ended = not thread.is_alive()
        if not ended:
            self.recorder.cut = True
            if self.entry.mode == "asyncio":
                task.cancel()
                await asyncio.wait({task}, timeout=BOUND)
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: it is the cut's doing
            else:
                thread.join(BOUND)
            raise AssertionError(f"{self.entry}: {method.__qualname__} hung ({BOUND} s)")
        return task.result() if self.entry.mode == "asyncio" else outcome.result()

    def cls(self) -> Any:
        return CLASSES[self.entry.mode][self.entry.kind]

    def client(self) -> Any:
        """A recording client of the session server, of the entry's mode (closing it
        closes its pool)."""
        host, port = self.server.bind, self.server.port
        if self.entry.mode == "asyncio":
            cls = async_recording(aioredis.Connection, self.recorder)
            made: Any = aioredis.Redis.from_pool(
                aioredis.ConnectionPool(connection_class=cls, host=host, port=port)
            )
        else:
            cls = recording(redis.Connection, self.recorder)
            made = redis.Redis.from_pool(
                redis.ConnectionPool(connection_class=cls, host=host, port=port)
            )
        self.closers.append(made.aclose if self.entry.mode == "asyncio" else made.close)
        return made

    def build(self, use: Use, *, parties: Any = 1, url: Any = SESSION_URL, **options: Any) -> Any:
        """Make the entry's class for ``use`` with keyword ``options``; ``url`` replaces
        the session server's URL in ``from_url``."""
        kind = self.entry.kind
        head: tuple[Any, ...] = {
            "ProcSync": (),
            "Event": (use.name,),
            "Barrier": (use.name, parties),
        }[kind]
        options.setdefault("run_id", use.run_id)
        if self.entry.via == "from_url":
            with recording_from_url(self.recorder):
                made = self.cls().from_url(
                    self.server.url if url is SESSION_URL else url, *head, **options
                )
        else:
            made = self.cls()(self.client(), *head, **options)
        self.closers.insert(0, made.aclose if self.entry.mode == "asyncio" else made.close)
        return made

    async def close(self) -> None:
        self.recorder.cut = False
        for close in self.closers:
            done = close()
            if asyncio.iscoroutine(done):
                await done


def attempt(
    entry: Entry, server: EmbeddedServer, body: Callable[[Driver], Awaitable[None]]
) -> tuple[Recorder, Exception | None]:
    """Run ``body`` with a driver of ``entry`` in a fresh event loop.

    Returns the recorder, and the ValueError or TypeError the body raised (None if it
    returned); anything else propagates and fails the test.
    """
    recorder = Recorder()

    async def main() -> None:
        driver = Driver(entry, server, recorder)
        try:
            await body(driver)
        finally:
            await driver.close()

    try:
        arun(main)
    except (ValueError, TypeError) as exc:
        return recorder, exc
    return recorder, None


def accepted(
    valid: bool, entry: Entry, server: EmbeddedServer, body: Callable[[Driver], Awaitable[None]]
) -> bool:
    """The property: ``body`` either raises InvalidArgumentError (ArgumentTypeError)
    before any I/O, for a value outside the documented domain (``valid`` False), or
    returns having checked the behaviour itself. Returns whether it was accepted."""
    recorder, refused = attempt(entry, server, body)
    if refused is None:
        return True
    if not isinstance(refused, InvalidArgumentError):
        raise refused
    assert not valid, f"{entry}: a documented-valid value was refused: {refused!r}"
    assert recorder.silent, f"{entry}: {refused!r} was raised after I/O: {recorder.sent[:3]!r}"
    return False


# -- what a working instance does --------------------------------------------------------------


async def pass_once(driver: Driver, instance: Any, use: Use) -> None:
    """One participant passes: ``sync(name, 1)``, a Barrier of one, or an Event that is
    set, waited for and read as set."""
    kind = driver.entry.kind
    if kind == "ProcSync":
        result = await driver(instance.sync, use.name, 1, BOUND)
        assert isinstance(result, SyncResult), result
        assert (result.index, result.nodes) == (0, 1), result
    elif kind == "Barrier":
        assert await driver(instance.wait) == 0
    else:
        await driver(instance.set)
        assert await driver(instance.wait, BOUND) is True
        assert await driver(instance.is_set) is True


def assert_keys(admin: redis.Redis, use: Use, kind: str, retention_s: float = 60.0) -> None:
    """The example's state exists under the documented key name, with the retention as
    its TTL (a retention below 1 s may have expired it already; no TTL is never fine)."""
    key = state_key(use.prefix, use.run_id, use.name, kind)
    ttl = admin.pttl(key)
    assert ttl != -1, f"{key[:80]!r} has no TTL"
    if retention_s >= 1.0:
        assert 0 < ttl <= round(retention_s * 1000), f"{key[:80]!r}: PTTL {ttl}"
