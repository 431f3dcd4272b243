"""Hostile input to the constructors (issue 7): every constructor option of ProcSync,
Event and Barrier, the lead time, the client and the URL, fuzzed.

Each test draws values for one parameter from :func:`hostile_values.hostile` mixed with
values the documentation calls valid, and picks at random the way in: blocking or
:mod:`pyprocsync.asyncio`, constructor or ``from_url``, ProcSync, Event or Barrier
(wherever the parameter exists). The property, for every value:

* either pyprocsync's :class:`~pyprocsync.InvalidArgumentError` (or its subclass
  :class:`~pyprocsync.ArgumentTypeError`) is raised before a single byte went to Redis,
  and the value is outside the documented domain. The clients are real clients of the
  session server that record every connection they open and every command they send
  (:class:`hostile_support.Recorder`; ``test_recorder_sees_what_a_call_sends`` shows
  that it does see a valid call);
* or the call behaves correctly on the real server: a round of one participant passes
  and its keys exist under the documented percent-encoded names with the retention as
  TTL, the stored lead time is the one asked for; all within ``BOUND`` seconds.

Anything else (another exception type, a documented-valid value refused, a call that
does not return) fails the test. Waiting for release instants is replaced by a stand-in
that returns on time at once, so huge lead times are checked by what is stored, not by
waiting. Values that once slipped through are tried in every run (``@example`` and
:data:`OPTION_EDGES`). Shrinking is off: a failing example costs real server calls (a
hung one costs ``BOUND``), and the strategies' examples are short.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any
from unittest import mock
from urllib.parse import quote

import numpy as np
import pytest
import redis
from hostile_support import (
    BOUND,
    FUZZ,
    KINDS,
    Driver,
    Entry,
    Recorder,
    Use,
    accepted,
    assert_keys,
    attempt,
    entries,
    pass_once,
)
from hostile_values import (
    BIG_NAMES,
    TEN_YEARS,
    count_ok,
    hostile,
    is_bool,
    name_ok,
    names,
    positive_ok,
    real,
    state_key,
    text_ok,
)
from hypothesis import example, given
from hypothesis import strategies as st
from support import await_until

import pyprocsync
import pyprocsync.clock
from pyprocsync import SyncResult
from pyprocsync.core import params
from pyprocsync.tools.server import EmbeddedServer


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


def lead_ok(value: object) -> bool:
    """A lead time or tolerance: finite, 0 to ten years."""
    number = real(value)
    return number is not None and 0 <= number <= TEN_YEARS


async def pass_in_pair(driver: Driver, instance: Any, use: Use, admin: redis.Redis) -> str:
    """``instance`` (a ProcSync, or a Barrier of two) waits first, then a plain partner
    arrives: both pass at one instant. Returns the node id of the waiter's lease."""
    if driver.entry.kind == "ProcSync":
        waiter = asyncio.ensure_future(driver(instance.sync, use.name, 2, BOUND))
    else:
        waiter = asyncio.ensure_future(driver(instance.wait, BOUND))
    leases = state_key(use.prefix, use.run_id, use.name, "ProcSync") + ":leases"
    await await_until(
        lambda: admin.zrange(leases, 0, -1) or waiter.done(), BOUND, "the waiter's arrival"
    )
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
    # Proceeding when late: a short automatic lead may be learned late on a loaded
    # machine, which says nothing about the option under test (on_late's own test
    # overrides it).
    options = {"delay": 0, "on_late": "proceed", **spec.context, option: value}
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
