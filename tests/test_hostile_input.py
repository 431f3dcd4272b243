"""Hostile input (issue 7): every public parameter of ProcSync, Event and Barrier, fuzzed.

Each test draws values for one parameter from :func:`hostile` (unicode, NUL, glob
characters, braces, 64 KiB names, numpy scalars and arrays, bools, NaN and infinities,
negative and huge numbers, None, bytes, lists, objects) mixed with values the
documentation calls valid, and picks at random the way in: blocking or
:mod:`pyprocsync.asyncio`, constructor or ``from_url``, ProcSync, Event or Barrier
(wherever the parameter exists). The property, for every value:

* either pyprocsync's :class:`~pyprocsync.InvalidArgumentError` (or its subclass
  :class:`~pyprocsync.ArgumentTypeError`) is raised before a single byte went to Redis,
  and the value is outside the documented domain. The clients are real ``redis.Redis``
  and ``redis.asyncio.Redis`` clients of the session server whose connection class
  records every connection it opens and every command it sends (:class:`Recorder`;
  ``test_recorder_sees_what_a_call_sends`` shows that it does see a valid call);
* or the call behaves correctly on the real server: a round of one participant passes
  and its keys exist under the documented percent-encoded names with the retention as
  TTL, a lone participant of a larger round times out, a set flag wakes its waiter, the
  stored lead time is the one asked for; all within :data:`BOUND` seconds.

Anything else (another exception type, a documented-valid value refused, a call that
does not return) fails the test. Waiting for release instants is replaced by a stand-in
that returns on time at once (:func:`instant_sleep`), so huge lead times are checked by
what is stored, not by waiting. Values that once slipped through are tried in every run
(``@example`` and :data:`OPTION_EDGES`). Shrinking is off: a failing example costs real
server calls (a hung one costs :data:`BOUND`), and the strategies' examples are short.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import numbers
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any
from unittest import mock
from urllib.parse import quote

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from support import arun, start_thread

import pyprocsync
import pyprocsync.asyncio as aps
import pyprocsync.clock
from pyprocsync import BrokenBarrierError, InvalidArgumentError, SyncResult, TimeOutError
from pyprocsync.core import params
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


@contextlib.contextmanager
def instant_sleep() -> Iterator[None]:
    """Waiting for a release instant returns at once, exactly on time."""

    def sleep(at_ns: int, spin_ns: int, **_options: object) -> int:
        return at_ns

    async def async_sleep(at_ns: int, spin_ns: int, **_options: object) -> int:
        return at_ns

    with (
        mock.patch.object(pyprocsync.clock, "sleep_until_ns", sleep),
        mock.patch.object(pyprocsync.clock, "async_sleep_until_ns", async_sleep),
    ):
        yield


# -- values -------------------------------------------------------------------------------

#: 64 KiB names: plain, multi-byte (9 bytes each once encoded), glob, NUL, braces.
BIG_NAMES = ["x" * 65536, "€" * 65536, "*?[]" * 16384, "\x00" * 65536, "{}" * 32768]

ODD_OBJECTS: list[object] = [
    object(),
    [1],
    ["event"],
    ("a",),
    {"k": 1},
    {1},
    b"bytes",
    bytearray(b"x"),
    1j,
    Decimal("1.5"),
    Decimal("NaN"),
    Fraction(1, 3),
    Fraction(10**400, 7),
    np.array([1.0, 2.0]),
    np.array(1.0),
    np.bytes_(b"np"),
    np.str_("n\x00p"),
    np.datetime64("2020-01-01"),
    len,
]

NUMBERS: list[object] = [
    0,
    -1,
    1,
    2,
    -0.0,
    5e-324,
    1e-300,
    0.5,
    1e10,
    1e13,
    1e300,
    -1e300,
    math.nan,
    math.inf,
    -math.inf,
    2**53 + 1,
    2**63,
    10**16,
    10**400,
    -(10**400),
    np.int64(2),
    np.int8(-1),
    np.uint64(2**64 - 1),
    np.int32(0),
    np.float32(0.5),
    np.float64(math.nan),
    np.float16(math.inf),
    np.float64(1e300),
    np.True_,
    np.False_,
    True,
    False,
]


def names() -> st.SearchStrategy[str]:
    """Strings as names: any unicode, NUL, glob characters, braces, lone surrogates, 64 KiB."""
    return st.one_of(
        st.text(max_size=16),
        st.text(alphabet="*?[]{}\\:%\x00 \t\n^-!", max_size=12),
        st.sampled_from(BIG_NAMES),
        st.sampled_from(["\ud800", "a\udfffb", "", " ", ":", "%41", "{a}", "a:b{c}*"]),
    )


def hostile() -> st.SearchStrategy[object]:
    """Values of every kind a parameter might be handed by mistake or by malice."""
    return st.one_of(
        st.none(),
        st.sampled_from(NUMBERS),
        st.sampled_from(ODD_OBJECTS),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.binary(max_size=8),
        st.lists(st.integers(), max_size=2),
        names(),
    )


# -- the documented domains ---------------------------------------------------------------


def is_bool(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def real(value: object) -> float | None:
    """``value`` as a float if the documentation calls it a number (any real type but
    bool, numpy's included), None otherwise. A finite number beyond floats is the
    largest finite float here (of its sign): huge, but not infinite."""
    if is_bool(value) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:
        return sys.float_info.max if value > 0 else -sys.float_info.max


def text_ok(value: object) -> bool:
    """A ``str`` Redis can store (UTF-8 encodable)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def name_ok(value: object) -> bool:
    return text_ok(value) and value != ""


def index(value: object) -> int | None:
    """``operator.index(value)``, or None where it does not apply (and for bools)."""
    if is_bool(value):
        return None
    try:
        return int(value.__index__())  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None


def count_ok(value: object, most: int = params.MAX_COUNT) -> bool:
    """A count: an integer from 1 to ``most`` (``nodes``, ``parties``: a million)."""
    number = index(value)
    return number is not None and 1 <= number <= most


#: "Every duration, here and in calls, may be at most ten years" (ProcSync's docstring).
TEN_YEARS = 10 * 365 * 86400.0


def lead_ok(value: object) -> bool:
    """A lead time or tolerance: finite, 0 to ten years."""
    number = real(value)
    return number is not None and 0 <= number <= TEN_YEARS


def positive_ok(value: object) -> bool:
    """A duration: above 0, up to ten years."""
    number = real(value)
    return number is not None and 0 < number <= TEN_YEARS


def timeout_ok(value: object) -> bool:
    """A timeout of ``sync``: None or inf (no limit), or a duration."""
    return value is None or real(value) == math.inf or positive_ok(value)


def wait_timeout_ok(value: object) -> bool:
    """A timeout of ``Event.wait`` or ``Barrier.wait``, as threading takes it: None or
    inf (no limit), or any number of seconds up to ten years either way (<= 0 polls)."""
    number = real(value)
    if value is None or number is None:
        return value is None
    return math.isinf(number) or abs(number) <= TEN_YEARS


def state_key(prefix: str, run_id: str, name: str, kind: str) -> str:
    """The documented key of a round's (or a flag's) state: run id and name are
    percent-encoded, everything but ASCII letters, digits and ``_.-~``."""
    base = f"{prefix}:{{{quote(run_id, safe='')}:{quote(name, safe='')}}}"
    return f"{base}:flag" if kind == "Event" else base


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


async def pass_in_pair(driver: Driver, instance: Any, use: Use, admin: redis.Redis) -> str:
    """``instance`` (a ProcSync, or a Barrier of two) waits first, then a plain partner
    arrives: both pass at one instant. Returns the node id of the waiter's lease."""
    if driver.entry.kind == "ProcSync":
        waiter = asyncio.ensure_future(driver(instance.sync, use.name, 2, BOUND))
    else:
        waiter = asyncio.ensure_future(driver(instance.wait, BOUND))
    leases = state_key(use.prefix, use.run_id, use.name, "ProcSync") + ":leases"
    deadline = time.monotonic() + BOUND
    while not admin.zrange(leases, 0, -1) and not waiter.done():
        assert time.monotonic() < deadline, "the waiter never arrived"
        await asyncio.sleep(0.005)
    members = admin.zrange(leases, 0, -1)
    partner_client = redis.Redis(host=driver.server.bind, port=driver.server.port)
    try:
        with pyprocsync.ProcSync(partner_client, use.run_id, 0) as partner:
            theirs = await asyncio.to_thread(partner.sync, use.name, 2, BOUND)
    finally:
        partner_client.close()
    mine = await waiter
    if isinstance(mine, SyncResult):
        assert mine.release_at == theirs.release_at
    assert {theirs.index, mine if isinstance(mine, int) else mine.index} == {0, 1}
    assert len(members) == 1, members
    return members[0].decode("utf-8")[13:]


def stored_outcome(admin: redis.Redis, use: Use, kind: str) -> tuple[int, int]:
    """(release instant, lead) in µs of the example's first round (or set)."""
    key = state_key(use.prefix, use.run_id, use.name, kind)
    stored = admin.hget(key, "o" if kind == "Event" else "o0")
    assert stored is not None, f"no outcome stored under {key[:80]!r}"
    fields = stored.decode().split(" ")
    return int(fields[2]), int(fields[3])


def assert_keys(admin: redis.Redis, use: Use, kind: str, retention_s: float = 60.0) -> None:
    """The example's state exists under the documented key name, with the retention as
    its TTL (a retention below 1 s may have expired it already; no TTL is never fine)."""
    key = state_key(use.prefix, use.run_id, use.name, kind)
    ttl = admin.pttl(key)
    assert ttl != -1, f"{key[:80]!r} has no TTL"
    if retention_s >= 1.0:
        assert 0 < ttl <= round(retention_s * 1000), f"{key[:80]!r}: PTTL {ttl}"


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin(server: EmbeddedServer) -> Iterator[redis.Redis]:
    """A plain client of the session server, to look at what an example stored."""
    client = redis.Redis(host=server.bind, port=server.port)
    yield client
    client.close()


# -- the recorder itself --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["blocking", "asyncio"])
@pytest.mark.parametrize("via", ["constructor", "from_url"])
def test_recorder_sees_what_a_call_sends(server: EmbeddedServer, mode: str, via: str) -> None:
    """Control for every "nothing was sent" below: the recording clients see a valid
    call (its connections, SCRIPT LOAD, SUBSCRIBE, EVALSHA), and a constructor alone
    sends nothing."""
    entry, use = Entry("ProcSync", mode, via), Use("control")

    async def construct(driver: Driver) -> None:
        driver.build(use, delay=0)

    assert attempt(entry, server, construct) == (Recorder(), None)

    async def one_round(driver: Driver) -> None:
        await pass_once(driver, driver.build(use, delay=0), use)

    recorder, error = attempt(entry, server, one_round)
    assert error is None
    assert recorder.connections >= 2  # commands, and the listener pool's own
    sent = b"\n".join(recorder.sent).upper()
    for command in (b"SCRIPT", b"SUBSCRIBE", b"EVALSHA"):
        assert command in sent


# -- constructor options shared by the three classes ------------------------------------------


@dataclass(frozen=True)
class Option:
    """A keyword option of the constructors: valid values, the documented domain, and
    the other options an example needs to exercise it (``clock="server"``, say)."""

    valid: st.SearchStrategy[object]
    in_domain: Callable[[object], bool]
    context: dict[str, Any] = field(default_factory=dict)
    kinds: tuple[str, ...] = KINDS


OPTIONS: dict[str, Option] = {
    "run_id": Option(names(), text_ok),
    "node_id": Option(st.one_of(st.none(), names()), lambda v: v is None or name_ok(v)),
    "prefix": Option(names(), lambda v: name_ok(v) and not {"{", "}"} & set(str(v))),
    # Up to 30 s: the default retention (60 s) must be at least twice the liveness.
    "liveness": Option(
        st.one_of(st.floats(1e-6, 30.0), st.sampled_from([np.float32(0.5), Fraction(1, 4), 30])),
        lambda v: positive_ok(v) and (real(v) or 0.0) <= 30.0,
    ),
    "retention": Option(
        st.one_of(
            st.floats(1.0, TEN_YEARS),
            st.sampled_from([1.0, 1e9, TEN_YEARS, 1e16, 10**20, np.float64(90)]),
        ),
        lambda v: positive_ok(v) and (real(v) or 0.0) >= 1.0,
        {"liveness": 0.5},
    ),
    "late_tolerance": Option(st.floats(0.0, TEN_YEARS), lead_ok),
    "spin": Option(st.floats(0.0, TEN_YEARS), lead_ok),
    "on_late": Option(
        st.sampled_from(["raise", "proceed", np.str_("proceed")]),
        lambda v: isinstance(v, str) and v in ("raise", "proceed"),
    ),
    "clock": Option(
        st.sampled_from(["system", "server", np.str_("server")]),
        lambda v: isinstance(v, str) and v in ("system", "server"),
    ),
    "clock_samples": Option(
        st.one_of(st.integers(1, 10), st.sampled_from([np.int64(3), np.uint8(1), 10**6])),
        lambda v: count_ok(v, params.MAX_CLOCK_SAMPLES),
        {"clock": "server"},
    ),
    "clock_refresh": Option(
        st.one_of(st.floats(1e-9, TEN_YEARS), st.sampled_from([np.float32(1.0), TEN_YEARS])),
        positive_ok,
        {"clock": "server"},
    ),
    "member": Option(st.sampled_from([True, False, np.True_, np.False_, 1, "yes"]), is_bool),
    "auto_floor": Option(
        st.one_of(st.floats(0.0, TEN_YEARS), st.sampled_from([0, 0.001, TEN_YEARS, 1e13])),
        lead_ok,
        {"delay": "auto"},
        kinds=("ProcSync", "Barrier"),
    ),
}


def check_option(
    server: EmbeddedServer, admin: redis.Redis, option: str, value: object, entry: Entry
) -> None:
    """The property for one keyword option of the constructors (see the tests below)."""
    spec = OPTIONS[option]
    use = Use(f"option-{option}")
    if option == "run_id" and isinstance(value, str):
        use.run_id = value
    if option == "prefix" and isinstance(value, str):
        use.prefix = value
    options = {"delay": 0, **spec.context, option: value}
    pair = option == "node_id" and entry.kind != "Event"

    async def body(driver: Driver) -> None:
        instance = driver.build(use, parties=2 if pair else 1, **options)
        if pair:
            node = await pass_in_pair(driver, instance, use, admin)
            assert value is None or node == value, (node, value)
        else:
            with instant_sleep():
                await pass_once(driver, instance, use)
        if option == "member" and value is True:  # registered while the instance is open
            assert admin.zcard(f"{use.prefix}:{{{quote(use.run_id, safe='')}}}:members") == 1

    if not accepted(spec.in_domain(value), entry, server, body):
        return
    retention = (real(value) or 60.0) if option == "retention" else 60.0
    assert_keys(admin, use, entry.kind, retention)
    if option == "auto_floor":
        _at, lead = stored_outcome(admin, use, entry.kind)
        assert lead >= round((real(value) or 0.0) * 1e6)


@FUZZ
@pytest.mark.parametrize("option", list(OPTIONS))
@given(data=st.data())
def test_constructor_option(
    server: EmbeddedServer, admin: redis.Redis, option: str, data: st.DataObject
) -> None:
    """Each keyword option of ProcSync, Event and Barrier (blocking or asyncio, made by
    the constructor or ``from_url``): refused before any I/O, or the instance passes a
    round (or sets a flag) and its keys are where the documentation says, with the
    retention as TTL. A node id also names the waiter's lease in a round of two."""
    spec = OPTIONS[option]
    value = data.draw(st.one_of(hostile(), spec.valid), label=option)
    check_option(server, admin, option, value, data.draw(entries(spec.kinds), label="entry"))


#: Values every run tries (the random ones above may miss them): documented-valid
#: extremes and the wrong kinds that once slipped through.
OPTION_EDGES: list[tuple[str, object]] = [
    ("run_id", "\x00*?[]{}:%"),
    ("run_id", BIG_NAMES[1]),
    ("run_id", "\ud800"),
    ("node_id", "n\x00de {x}*"),
    ("node_id", BIG_NAMES[0]),
    ("prefix", "a*b?[c]\\"),
    ("prefix", "a{b"),
    ("liveness", Fraction(1, 4)),
    ("liveness", 10**400),
    ("retention", TEN_YEARS),
    ("retention", TEN_YEARS * 1.01),
    ("retention", 10**400),
    ("late_tolerance", TEN_YEARS),
    ("late_tolerance", Fraction(10**400, 7)),
    ("spin", TEN_YEARS),
    ("on_late", np.array(["raise", "proceed"])),
    ("clock", np.array(["system", "server"])),
    ("clock_samples", 10**6),
    ("clock_refresh", TEN_YEARS),
    ("auto_floor", TEN_YEARS),
    ("member", True),
    ("member", np.True_),
    ("member", 1),
]


@pytest.mark.parametrize(("option", "value"), OPTION_EDGES, ids=lambda v: repr(v)[:24])
def test_constructor_option_edge(
    server: EmbeddedServer, admin: redis.Redis, option: str, value: object
) -> None:
    """The property of ``test_constructor_option`` for fixed values, every run: a
    blocking ProcSync made by its constructor (a Barrier for ``node_id``, so that a
    lease names it)."""
    kind = "Barrier" if option == "node_id" else "ProcSync"
    check_option(server, admin, option, value, Entry(kind, "blocking", "constructor"))


# -- the lead time, and the client or URL ------------------------------------------------------


@FUZZ
@example(value=TEN_YEARS, entry=Entry("ProcSync", "blocking", "constructor"))
@example(value=TEN_YEARS, entry=Entry("Event", "asyncio", "from_url"))
@example(value=1e13, entry=Entry("Barrier", "blocking", "constructor"))
@example(value=np.array([0.5, 1.0]), entry=Entry("ProcSync", "asyncio", "constructor"))
@example(value=10**400, entry=Entry("Barrier", "blocking", "constructor"))
@example(value="auto", entry=Entry("Event", "blocking", "constructor"))
@given(
    value=st.one_of(
        hostile(),
        st.floats(0.0, TEN_YEARS),
        st.sampled_from(
            [0, 0.001, "auto", TEN_YEARS, 1e13, 10**20, np.float32(0.01), Fraction(1, 8)]
        ),
    ),
    entry=entries(),
)
def test_delay(server: EmbeddedServer, admin: redis.Redis, value: object, entry: Entry) -> None:
    """``delay`` (finite and >= 0, or "auto" except for an Event): refused before any
    I/O, or the stored release instant is the decision's clock plus exactly that lead
    and the instance returns at it (on time: the wait is a stand-in)."""
    use = Use("delay")
    auto = isinstance(value, str) and value == "auto"
    in_domain = lead_ok(value) or (auto and entry.kind != "Event")

    async def body(driver: Driver) -> None:
        instance = driver.build(use, delay=value)
        with instant_sleep():
            await pass_once(driver, instance, use)

    if not accepted(in_domain, entry, server, body):
        return
    at_us, lead_us = stored_outcome(admin, use, entry.kind)
    if auto:
        assert lead_us >= 1000  # the default auto_floor
    else:
        assert lead_us == round((real(value) or 0.0) * 1e6)
    assert use.started_us - 1000 <= at_us - lead_us <= time.time_ns() // 1000 + 1000


@FUZZ
@example(value="redis://127.0.0.1:6379/0", entry=Entry("ProcSync", "blocking", "constructor"))
@example(value=None, entry=Entry("Event", "asyncio", "constructor"))
@given(value=st.one_of(hostile(), st.just("the real client")), entry=entries(vias=("constructor",)))
def test_redis_client(server: EmbeddedServer, value: object, entry: Entry) -> None:
    """``redis_client``: a client of the session server works; anything else (None, a
    URL string, bytes, numbers, lists, objects) is refused with ArgumentTypeError."""
    use = Use("client")
    the_real_one = isinstance(value, str) and value == "the real client"

    async def body(driver: Driver) -> None:
        if the_real_one:
            await pass_once(driver, driver.build(use, delay=0), use)
            return
        head: tuple[Any, ...] = {"ProcSync": (), "Event": (use.name,), "Barrier": (use.name, 1)}[
            entry.kind
        ]
        made = driver.cls()(value, *head, run_id=use.run_id, delay=0)
        raise AssertionError(f"{entry}: accepted {value!r:.80} as its client: {made!r}")

    accepted(the_real_one, entry, server, body)


#: URLs next to hostile values; ``{base}`` is the session server's ``redis://host:port``.
URLS = st.sampled_from(
    [
        "",
        "redis",
        "http://x",
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:99999/0",
        "{base}/0?db=x",
        "{base}/0?socket_timeout=soon",
        "{base}/0?foo=bar",
        "{base}/0",
        "{base}",
        "{base}/0?socket_timeout=5",
    ]
)


@FUZZ
@example(value=None, entry=Entry("ProcSync", "blocking", "from_url"))
@example(value=123, entry=Entry("Barrier", "asyncio", "from_url"))
@example(value=b"{base}/0", entry=Entry("Event", "blocking", "from_url"))
@given(value=st.one_of(hostile(), URLS), entry=entries(vias=("from_url",)))
def test_from_url_url(
    server: EmbeddedServer, admin: redis.Redis, value: object, entry: Entry
) -> None:
    """The ``url`` of every ``from_url``: a value that is no URL of a server is refused
    with a ValueError or TypeError before any I/O (parsing is redis-py's, so its own
    ValueError counts too); a URL of the session server works."""
    base = f"redis://{server.bind}:{server.port}"
    if isinstance(value, (str, bytes)):
        value = (
            value.replace(b"{base}", base.encode())
            if isinstance(value, bytes)
            else value.replace("{base}", base)
        )
    use = Use("url")

    async def body(driver: Driver) -> None:
        await pass_once(driver, driver.build(use, url=value, delay=0), use)

    recorder, refused = attempt(entry, server, body)
    if refused is not None:
        assert recorder.silent, f"{entry}: {refused!r} was raised after I/O"
        return
    assert isinstance(value, str), value
    assert_keys(admin, use, entry.kind)


@FUZZ
@example(value="no", entry=Entry("ProcSync", "blocking", "from_url"))
@example(value=np.array([True, False]), entry=Entry("Event", "asyncio", "from_url"))
@example(value=np.False_, entry=Entry("Event", "asyncio", "from_url"))
@given(
    value=st.one_of(hostile(), st.just(False)).filter(lambda v: not (is_bool(v) and bool(v))),
    entry=entries(vias=("from_url",)),
)
def test_from_url_cluster(
    server: EmbeddedServer, admin: redis.Redis, value: object, entry: Entry
) -> None:
    """``cluster`` of every ``from_url`` (True or False, NumPy's booleans included; true
    needs a cluster, so it is left out here): false works with the session server,
    anything that is not a boolean is refused before any I/O; a truthy string like "no"
    must not make a cluster client."""
    use = Use("cluster")

    async def body(driver: Driver) -> None:
        await pass_once(driver, driver.build(use, cluster=value, delay=0), use)

    if accepted(is_bool(value), entry, server, body):
        assert_keys(admin, use, entry.kind)


# -- names of Events and Barriers, parties, action, default timeout ---------------------------


@FUZZ
@example(value=BIG_NAMES[1], entry=Entry("Event", "blocking", "from_url"))
@example(value="*?[]{}\x00", entry=Entry("Barrier", "asyncio", "constructor"))
@given(value=st.one_of(hostile(), names()), entry=entries(("Event", "Barrier")))
def test_event_and_barrier_name(
    server: EmbeddedServer, admin: redis.Redis, value: object, entry: Entry
) -> None:
    """The ``name`` of an Event or a Barrier: any non-empty text (NUL, glob characters,
    braces, 64 KiB) works under its percent-encoded key name; anything else is refused
    before any I/O."""
    use = Use(value)  # type: ignore[arg-type]

    async def body(driver: Driver) -> None:
        await pass_once(driver, driver.build(use, delay=0), use)

    if accepted(name_ok(value), entry, server, body):
        assert_keys(admin, use, entry.kind)


async def lone(driver: Driver, call: Callable[..., Any], *args: Any) -> BaseException:
    """Run a call that must be refused for want of partners; return what it raised."""
    try:
        result = await driver(call, *args)
    except (BrokenBarrierError, TimeOutError) as exc:
        return exc
    raise AssertionError(f"a lone participant of a larger round was released: {result!r}")


def assert_lone_timeout(error: BaseException, size: int) -> None:
    """What a lone participant whose timeout expired raises: 1 of ``size`` arrived."""
    assert getattr(error, "reason", "timeout") == "timeout", error
    assert (getattr(error, "arrived", None), getattr(error, "expected", None)) == (1, size), error


SIZES = st.one_of(st.integers(1, 3), st.sampled_from([np.int64(2), np.uint8(1), 10**16, 2**62]))


@FUZZ
@example(value=np.int64(2), entry=Entry("ProcSync", "blocking", "constructor"))
@example(value=10**16, entry=Entry("ProcSync", "blocking", "constructor"))
@example(value=10**16, entry=Entry("Barrier", "asyncio", "constructor"))
@given(value=st.one_of(hostile(), SIZES), entry=entries(("ProcSync", "Barrier"), ("constructor",)))
def test_nodes_and_parties(server: EmbeddedServer, value: object, entry: Entry) -> None:
    """``nodes`` of ``sync`` and a Barrier's ``parties``: an int >= 1 of any integer type
    (not bool). One passes at once; a lone participant of a larger round times out with
    1 of ``nodes`` arrived (never released, never a ProtocolError); anything else is
    refused before any I/O."""
    use = Use("size")
    size = index(value)

    async def body(driver: Driver) -> None:
        if entry.kind == "Barrier":
            barrier = driver.build(use, parties=value, delay=0)
            if size == 1:
                assert await driver(barrier.wait) == 0
            else:
                assert_lone_timeout(await lone(driver, barrier.wait, 0.2), size or 0)
            return
        instance = driver.build(use, delay=0)
        if size == 1:
            result = await driver(instance.sync, use.name, value, BOUND)
            assert isinstance(result, SyncResult), result
            assert result.nodes == 1
        else:
            error = await lone(driver, instance.sync, use.name, value, 0.2)
            assert isinstance(error, TimeOutError), error
            assert_lone_timeout(error, size or 0)

    accepted(count_ok(value), entry, server, body)


@FUZZ
@example(value=len, entry=Entry("Barrier", "asyncio", "from_url"))
@given(
    value=st.one_of(hostile(), st.sampled_from(["<plain>", "<async>", "<object>"])),
    entry=entries(("Barrier",)),
)
def test_barrier_action(server: EmbeddedServer, value: object, entry: Entry) -> None:
    """``action``: None or a callable (in asyncio also an ``async def`` function); it
    runs exactly once in a barrier of one. A callable that raises when called without
    arguments (``len``) is an action that fails: its exception reaches the caller, as
    documented. Anything else is refused before any I/O."""
    use = Use("action")
    calls: list[str] = []

    class CallableObject:
        def __call__(self) -> None:
            calls.append("object")

    async def coroutine_function() -> None:
        calls.append("async")

    actions: dict[str, object] = {
        "<plain>": lambda: calls.append("plain"),
        "<async>": coroutine_function if entry.mode == "asyncio" else CallableObject(),
        "<object>": CallableObject(),
    }
    ours = isinstance(value, str) and value in actions
    action = actions[value] if ours else value  # type: ignore[index]
    failure: type[BaseException] | None = None
    if callable(action) and not ours:
        try:
            action()
        except Exception as exc:
            failure = type(exc)

    async def body(driver: Driver) -> None:
        barrier = driver.build(use, action=action, delay=0)
        if failure is None:
            assert await driver(barrier.wait) == 0
        else:
            with pytest.raises(failure):
                await driver(barrier.wait)

    if accepted(action is None or callable(action), entry, server, body) and ours:
        assert len(calls) == 1, calls


TIMEOUTS = st.one_of(
    st.floats(1e-12, TEN_YEARS),
    st.sampled_from(
        [
            None,
            math.inf,
            1e-9,
            0.001,
            5,
            TEN_YEARS,
            9.3e9,
            np.float64(1e10),
            10**30,
            0,
            -1,
            -math.inf,
            np.float64(-0.0),
        ]
    ),
)


def assert_passed(outcome: object, kind: str, timeout: object) -> None:
    """A call that can pass at once passed. Only a round (not a flag that is set) may
    give up first, and only with a tiny timeout (its subscription was not confirmed)."""
    if kind == "Event":
        assert outcome is True, f"Event.wait({timeout!r}) on a set flag returned {outcome!r}"
    elif isinstance(outcome, BaseException):
        number = real(timeout)
        assert isinstance(outcome, (TimeOutError, BrokenBarrierError)), outcome
        assert number is not None, outcome
        assert number < 0.5, f"timeout={timeout!r}: {outcome!r}"
    else:
        assert isinstance(outcome, SyncResult) or outcome == 0, outcome


@FUZZ
@example(value=Fraction(10**400, 7), entry=Entry("Barrier", "blocking", "constructor"))
@example(value=1e10, entry=Entry("Barrier", "blocking", "from_url"))
@given(value=st.one_of(hostile(), TIMEOUTS), entry=entries(("Barrier",)))
def test_barrier_default_timeout(server: EmbeddedServer, value: object, entry: Entry) -> None:
    """A Barrier's default ``timeout`` (None, inf or a number > 0): a barrier of one
    passes with it; anything else is refused before any I/O."""
    use = Use("default-timeout")

    async def body(driver: Driver) -> None:
        barrier = driver.build(use, timeout=value, delay=0)
        try:
            outcome: object = await driver(barrier.wait)
        except (TimeOutError, BrokenBarrierError) as exc:
            outcome = exc
        assert_passed(outcome, "Barrier", value)

    accepted(wait_timeout_ok(value), entry, server, body)


# -- the methods -----------------------------------------------------------------------------


@FUZZ
@example(value=BIG_NAMES[3], entry=Entry("ProcSync", "asyncio", "constructor"), method="sync")
@example(value="a:b{c}*", entry=Entry("ProcSync", "blocking", "constructor"), method="reset")
@given(
    value=st.one_of(hostile(), names()),
    entry=entries(("ProcSync",), ("constructor",)),
    method=st.sampled_from(["sync", "reset"]),
)
def test_event_name_of_sync_and_reset(
    server: EmbeddedServer, admin: redis.Redis, value: object, entry: Entry, method: str
) -> None:
    """``event_name`` of ``sync`` and ``reset``: any non-empty text passes a round of one
    (keys under the percent-encoded name) or resets the (idle) event; anything else is
    refused before any I/O."""
    use = Use(value)  # type: ignore[arg-type]

    async def body(driver: Driver) -> None:
        instance = driver.build(use, delay=0)
        if method == "sync":
            await pass_once(driver, instance, use)
        else:
            assert await driver(instance.reset, value) == 0

    if accepted(name_ok(value), entry, server, body) and method == "sync":
        assert_keys(admin, use, "ProcSync")


@FUZZ
@example(value=1e10, entry=Entry("ProcSync", "blocking", "constructor"))
@example(value=TEN_YEARS, entry=Entry("Event", "blocking", "constructor"))
@example(value=1e-9, entry=Entry("Event", "asyncio", "constructor"))
@example(value=10**400, entry=Entry("ProcSync", "asyncio", "constructor"))
@given(value=st.one_of(hostile(), TIMEOUTS), entry=entries(vias=("constructor",)))
def test_timeout_of_sync_and_waits(server: EmbeddedServer, value: object, entry: Entry) -> None:
    """``timeout`` of ``ProcSync.sync`` (None, inf or a number > 0), ``Event.wait`` and
    ``Barrier.wait`` (as threading: also 0 or less, a poll): a call that can pass at
    once (a round of one, a flag that is set) passes with any such timeout, huge ones
    included; only a round with a tiny timeout may give up first. Anything else is
    refused before any I/O."""
    use = Use("timeout")

    async def body(driver: Driver) -> None:
        instance = driver.build(use, delay=0)
        try:
            if entry.kind == "ProcSync":
                outcome: object = await driver(instance.sync, use.name, 1, value)
            else:
                if entry.kind == "Event":
                    await driver(instance.set)
                    driver.recorder.clear()  # the call under test is the wait
                outcome = await driver(instance.wait, value)
        except (TimeOutError, BrokenBarrierError) as exc:
            outcome = exc
        assert_passed(outcome, entry.kind, value)

    ok = timeout_ok if entry.kind == "ProcSync" else wait_timeout_ok
    accepted(ok(value), entry, server, body)
