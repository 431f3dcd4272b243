"""``pyprocsync.Event`` (blocking) on a real server: threading.Event semantics across
threads and processes, the common release instant, faults, validation, lifecycle.

"Waiting" participants are counted as waiting only once their first read of the flag
is done (``participant.announce_first_check``): a set that happens before a wait
has looked at the flag is, as in threading, a set that happened before the wait.
Timing bounds are generous semantic bounds, never speed measurements.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from primitive_support import flag_keys, ready_counter, wait_counter
from runner import Node, Participants
from support import LONG, PROMPT, Outcome, event_keys, join, make_client, start_thread, wait_until

from pyprocsync import (
    ArgumentTypeError,
    Barrier,
    Event,
    InvalidArgumentError,
    ProcSync,
    ProcSyncError,
    ProtocolError,
)
from pyprocsync.tools.server import EmbeddedServer


@pytest.fixture
def make_event(client: redis.Redis, run_id: str) -> Iterator[Callable[..., Event]]:
    """Factory of Events in this test's run (``make_event(name, **options)``); all are
    closed at teardown."""
    made: list[Event] = []

    def make(name: str, **options: Any) -> Event:
        event = Event(client, name, run_id=run_id, **options)
        made.append(event)
        return event

    yield make
    for event in made:
        event.close()


def start_waiters(
    participants: Participants, client: redis.Redis, name: str, count: int, **options: Any
) -> list[Node]:
    """Start ``count`` processes waiting on ``name``; return once every one of them is
    waiting (has read the flag)."""
    ready = f"{participants.run_id}:ready:{name}"
    nodes = [
        participants.launch("event-wait", name, ready_key=ready, timeout=LONG, **options)
        for _ in range(count)
    ]
    wait_counter(client, ready, count)
    return nodes


def start_waiting_thread(
    event: Event, client: redis.Redis, run_id: str, timeout: float = LONG
) -> tuple[threading.Thread, Outcome]:
    """Start ``event.wait(timeout)`` in a thread; return once it is waiting."""
    ready = f"{run_id}:ready:{uuid.uuid4().hex}"
    ready_counter(event, client, ready)
    thread, outcome = start_thread(lambda: (event.wait(timeout), time.time()))
    wait_counter(client, ready, 1)
    return thread, outcome


# -- waking -----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_threads_wait_until_set(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """Three threads wait (one Event instance each); none returns before ``set()``; each
    returns True once it happens."""
    started = [start_waiting_thread(make_event("go"), client, run_id) for _ in range(3)]
    time.sleep(0.2)
    assert all(thread.is_alive() for thread, _ in started)
    set_at = time.time()
    make_event("go").set()
    join([thread for thread, _ in started], PROMPT + 5)
    for _, outcome in started:
        value, returned = outcome.result()
        assert value is True
        assert set_at <= returned < set_at + PROMPT


@pytest.mark.timeout(60)
def test_processes_wait_until_set(
    participants: Participants, make_event: Callable[..., Event], client: redis.Redis
) -> None:
    """Three processes wait; none returns before the test process sets the flag; each
    returns True promptly once it does."""
    nodes = start_waiters(participants, client, "go", 3)
    time.sleep(0.3)
    assert all(node.process.poll() is None for node in nodes)
    set_ns = time.time_ns()
    make_event("go").set()
    for record in participants.finish(nodes, timeout=30):
        assert record["ok"] is True, record
        assert record["value"] is True
        assert 0 <= (record["returned_ns"] - set_ns) / 1e9 < PROMPT


@pytest.mark.timeout(60)
def test_set_then_clear_at_once_wakes_every_waiting_process(
    participants: Participants, make_event: Callable[..., Event], client: redis.Redis
) -> None:
    """The sets are numbered: ``set()`` immediately followed by ``clear()`` still wakes
    every process that was already waiting (all return True), and the flag reads as
    cleared afterwards."""
    nodes = start_waiters(participants, client, "blink", 3)
    event = make_event("blink")
    event.set()
    event.clear()
    assert event.is_set() is False
    for record in participants.finish(nodes, timeout=30):
        assert record["ok"] is True, record
        assert record["value"] is True
    assert event.is_set() is False


@pytest.mark.timeout(30)
def test_set_then_clear_wakes_threads_ten_times(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """Set-then-clear, ten times over with two fresh waiting threads each: every waiter
    returns True every time (no set is missed however short it lasts)."""
    setter = make_event("pulse")
    for attempt in range(10):
        started = [start_waiting_thread(make_event("pulse"), client, run_id) for _ in range(2)]
        setter.set()
        setter.clear()
        join([thread for thread, _ in started], PROMPT + 5)
        assert [o.result()[0] for _, o in started] == [True, True], f"attempt {attempt}"


@pytest.mark.timeout(30)
def test_set_then_clear_before_the_wait_began_does_not_count(
    make_event: Callable[..., Event],
) -> None:
    """A set that was cleared before ``wait`` began does not wake it: wait returns False
    at its timeout."""
    event = make_event("old")
    event.set()
    event.clear()
    began = time.monotonic()
    assert make_event("old").wait(0.3) is False
    assert 0.3 <= time.monotonic() - began < 0.3 + PROMPT


@pytest.mark.timeout(30)
def test_wait_returns_false_only_on_timeout(make_event: Callable[..., Event]) -> None:
    """On a flag nobody sets, ``wait(timeout)`` returns False, not before the timeout and
    promptly after it (a float timeout, an int timeout)."""
    event = make_event("never")
    for timeout in (0.25, 1):
        began = time.monotonic()
        assert event.wait(timeout) is False
        took = time.monotonic() - began
        assert timeout <= took < timeout + PROMPT


@pytest.mark.timeout(30)
def test_wait_on_a_set_flag_returns_at_once(make_event: Callable[..., Event]) -> None:
    """``wait`` on a flag that is set returns True at once, with or without a timeout,
    from the setting instance and from others."""
    setter = make_event("up")
    setter.set()
    for event in (setter, make_event("up")):
        for timeout in (None, 5, math.inf):
            began = time.monotonic()
            assert event.wait(timeout) is True
            assert time.monotonic() - began < PROMPT


@pytest.mark.timeout(30)
def test_set_twice_and_clear_twice(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """Setting a set flag and clearing a cleared one change nothing observable; a waiter
    afterwards blocks until the next set."""
    event = make_event("idem")
    event.clear()
    assert event.is_set() is False
    event.set()
    event.set()
    assert event.is_set() is True
    event.clear()
    event.clear()
    assert event.is_set() is False
    thread, waited = start_waiting_thread(make_event("idem"), client, run_id)
    time.sleep(0.2)
    assert thread.is_alive()
    event.set()
    join([thread], PROMPT + 5)
    assert waited.result()[0] is True


@pytest.mark.timeout(60)
def test_is_set_reads_the_shared_state(
    participants: Participants, make_event: Callable[..., Event]
) -> None:
    """``is_set`` reads the flag in Redis: a set by another process is seen here, a clear
    here is seen there, and a fresh instance agrees."""
    event = make_event("shared")
    assert event.is_set() is False
    (record,) = participants.finish(
        [participants.launch("event-op", "shared", op="set")], timeout=30
    )
    assert record["ok"] is True, record
    assert event.is_set() is True
    assert make_event("shared").is_set() is True
    (record,) = participants.finish(
        [participants.launch("event-op", "shared", op="is_set")], timeout=30
    )
    assert record["value"] is True
    event.clear()
    (record,) = participants.finish(
        [participants.launch("event-op", "shared", op="is_set")], timeout=30
    )
    assert record["value"] is False


# -- the common instant (delay > 0) -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_delay_releases_the_waiters_of_one_set_together(
    participants: Participants, make_event: Callable[..., Event], client: redis.Redis
) -> None:
    """``delay=0.3``: the processes woken by one set return at one instant, the setter's
    clock plus the delay: none before it (1 ms tolerance), all within a spread far below
    the delay."""
    nodes = start_waiters(participants, client, "tick", 3)
    before_ns = time.time_ns()
    make_event("tick", delay=0.3).set()
    after_ns = time.time_ns()
    returned = []
    for record in participants.finish(nodes, timeout=30):
        assert record["ok"] is True, record
        assert record["value"] is True
        returned.append(record["returned_ns"])
    assert min(returned) >= before_ns + 0.3e9 - 1e6
    assert max(returned) <= after_ns + 0.3e9 + 0.5e9
    assert (max(returned) - min(returned)) / 1e9 < 0.05


@pytest.mark.timeout(30)
def test_delay_applies_to_threads_and_to_a_wait_while_the_instant_is_ahead(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """Threads already waiting return at set time + delay; a wait that begins while the
    flag is set and the instant is still ahead also returns at that instant, not before."""
    started = [start_waiting_thread(make_event("soon"), client, run_id) for _ in range(2)]
    before = time.time()
    make_event("soon", delay=0.5).set()
    after = time.time()
    assert make_event("soon").wait(LONG) is True
    latecomer_returned = time.time()
    join([thread for thread, _ in started], PROMPT + 5)
    assert all(outcome.result()[0] is True for _, outcome in started)
    returned = [outcome.result()[1] for _, outcome in started]
    for instant in [*returned, latecomer_returned]:
        assert before + 0.5 - 0.001 <= instant < after + 0.5 + PROMPT
    assert max(returned) - min(returned) < 0.05


@pytest.mark.timeout(30)
def test_wait_after_the_instant_passed_returns_at_once(make_event: Callable[..., Event]) -> None:
    """A wait that begins while the flag is set and its release instant is past returns
    True at once (no TooLateError: it was not waiting when the set happened)."""
    make_event("past", delay=0.1).set()
    time.sleep(0.3)
    late = make_event("past")
    began = time.monotonic()
    assert late.wait(LONG) is True
    assert time.monotonic() - began < 0.1


# -- isolation --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_names_do_not_interfere(make_event: Callable[..., Event]) -> None:
    """Setting one flag wakes no waiter of another name, and is_set of that name stays
    False."""
    waiter = make_event("left")
    thread, waited = start_thread(lambda: waiter.wait(0.5))
    make_event("right").set()
    join([thread], PROMPT + 5)
    assert waited.result() is False
    assert make_event("left").is_set() is False
    assert make_event("right").is_set() is True


@pytest.mark.timeout(30)
def test_event_and_sync_point_of_the_same_name_are_apart(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """A flag and a sync point / Barrier of the same name share nothing: their rounds
    neither set the flag nor wake its waiter; setting the flag neither wakes nor breaks
    a Barrier waiter of that name, which then completes its round normally."""
    event = make_event("x")
    flag_waiter, flag_waited = start_waiting_thread(make_event("x"), client, run_id, 1.0)
    with ProcSync(client, run_id, 0) as sync:
        assert sync.sync("x", 1, 5).generation == 0
    with Barrier(client, "x", 1, run_id=run_id, delay=0) as solo:
        assert solo.wait(5) == 0
    join([flag_waiter], PROMPT + 5)
    assert flag_waited.result()[0] is False
    assert event.is_set() is False
    with (
        Barrier(client, "x", 2, run_id=run_id, delay=0) as barrier,
        Barrier(client, "x", 2, run_id=run_id, delay=0) as partner,
    ):
        thread, waited = start_thread(lambda: barrier.wait(LONG))
        wait_until(lambda: partner.n_waiting == 1, 10, "the barrier waiter")
        event.set()
        time.sleep(0.2)
        assert thread.is_alive()
        assert partner.n_waiting == 1
        assert partner.broken is False
        index = partner.wait(10)
        join([thread], PROMPT + 5)
        assert sorted([index, waited.result()]) == [0, 1]
    assert event.is_set() is True
    assert flag_keys(run_id, "x").state != event_keys(run_id, "x").state
    assert client.hget(event_keys(run_id, "x").state, "g") == b"3"


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_lost_pubsub_connection_while_waiting_still_wakes(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """The waiter's pub/sub connection is killed (``CLIENT KILL TYPE pubsub``) while it
    waits; the flag is set right after. Ten times: the waiter still returns True, well
    before its heartbeat (liveness 30 s, so the heartbeat is 6 s away) and its timeout."""
    for attempt in range(10):
        name = f"kill-{attempt}"
        thread, waited = start_waiting_thread(make_event(name, liveness=30), client, run_id)
        assert client.client_kill_filter(_type="pubsub") >= 1
        began = time.time()
        make_event(name).set()
        join([thread], 10)
        value, returned = waited.result()
        assert value is True, f"attempt {attempt}"
        assert returned - began < 3, f"attempt {attempt}: woken by the heartbeat only"


@pytest.mark.timeout(30)
def test_garbage_on_the_flag_channel_neither_wakes_nor_hangs(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """Unparsable messages and stale set announcements (sets the waiter already saw)
    published on the flag's channel do not wake a waiter; a real set afterwards still
    wakes it promptly."""
    setter = make_event("noisy", delay=0.05)
    for _ in range(2):  # the flag has been set twice before the wait begins
        setter.set()
        setter.clear()
    thread, waited = start_waiting_thread(make_event("noisy"), client, run_id)
    past_us = time.time_ns() // 1000 - 10_000_000
    channel = flag_keys(run_id, "noisy").channel
    for text in (
        "garbage", b"\xff\xfe\x00", "", "S", "S 3", "S x y z", "S 3 soon 0", "S -3 1 1",
        "S 3 1 1 1", "R 0 1 1", "B 0 timeout 1 2 []", "s 3 1 1", "S 3 1 x" + "0" * 100_000,
        f"S 1 {past_us} 50000", f"S 2 {past_us} 50000",
    ):  # fmt: skip
        client.publish(channel, text)
    time.sleep(0.3)
    assert thread.is_alive(), waited.error or waited.value
    began = time.time()
    setter.set()
    join([thread], PROMPT + 5)
    value, returned = waited.result()
    assert value is True
    assert began <= returned < began + 0.05 + PROMPT


def corrupt(**fields: str) -> Callable[[redis.Redis, str], object]:
    return lambda client, key: client.hset(key, mapping=fields)


#: name: (how to corrupt the flag hash, the operations that read what is corrupt)
FLAG_CORRUPTIONS: dict[str, tuple[Callable[[redis.Redis, str], object], tuple[str, ...]]] = {
    "flag-is-a-string": (lambda c, k: c.set(k, "hello"), ("set", "clear", "is_set", "wait")),
    "flag-is-a-list": (lambda c, k: c.rpush(k, "a"), ("set", "clear", "is_set", "wait")),
    "v-not-a-number": (corrupt(v="yes", s="1"), ("set", "is_set", "wait")),
    "s-negative": (corrupt(v="0", s="-3"), ("set", "clear", "is_set", "wait")),
    "s-fraction": (corrupt(v="0", s="1.5"), ("set", "clear", "is_set", "wait")),
    "s-huge": (corrupt(v="0", s="1e300"), ("set", "clear", "is_set", "wait")),
    "last-set-garbage": (corrupt(v="1", s="1", o="S soon"), ("set", "is_set", "wait")),
    "last-set-foreign": (corrupt(v="1", s="1", o="R 0 1 2"), ("set", "is_set", "wait")),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("corruption", list(FLAG_CORRUPTIONS))
def test_corrupt_flag_raises_protocol_error(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str, corruption: str
) -> None:
    """Foreign or corrupt data in the flag's hash raises ProtocolError at once from each
    operation that reads it: never another exception, a hang, or a wrong answer."""
    write, operations = FLAG_CORRUPTIONS[corruption]
    write(client, flag_keys(run_id, "bad").state)
    event = make_event("bad")
    calls = {"set": event.set, "clear": event.clear, "is_set": event.is_set}
    calls["wait"] = lambda: event.wait(LONG)
    for operation in operations:
        began = time.monotonic()
        with pytest.raises(ProtocolError):
            calls[operation]()
        assert time.monotonic() - began < PROMPT, operation


@pytest.mark.timeout(30)
def test_corruption_while_waiting_raises_protocol_error(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """The flag hash is corrupted under a waiter: its next heartbeat (liveness 0.5 s, so
    every 0.1 s) raises ProtocolError instead of waiting on."""
    thread, waited = start_waiting_thread(make_event("under", liveness=0.5), client, run_id)
    client.hset(flag_keys(run_id, "under").state, "s", "garbage")
    join([thread], PROMPT + 1)
    assert isinstance(waited.error, ProtocolError), waited.error or waited.value


# -- validation -------------------------------------------------------------------------------


def unreachable_client() -> redis.Redis:
    """A client of a port nobody listens on: any I/O raises ConnectionError."""
    return redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("",), {}, InvalidArgumentError),
        ((5,), {}, ArgumentTypeError),
        ((b"name",), {}, ArgumentTypeError),
        ((None,), {}, ArgumentTypeError),
        (("\ud800",), {}, InvalidArgumentError),
        (("ok",), {"delay": -1}, InvalidArgumentError),
        (("ok",), {"delay": math.nan}, InvalidArgumentError),
        (("ok",), {"run_id": 3}, ArgumentTypeError),
        (("ok",), {"liveness": 0}, InvalidArgumentError),
        (("ok",), {"on_late": "ignore"}, InvalidArgumentError),
    ],
)
def test_constructor_validation(args: tuple, kwargs: dict, error: type[Exception]) -> None:
    """Invalid constructor arguments raise before anything is sent (the client reaches
    no server)."""
    with pytest.raises(error):
        Event(unreachable_client(), *args, **kwargs)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Event(unreachable_client(), "ok", bogus=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (math.nan, InvalidArgumentError),
        (-1e12, InvalidArgumentError),
        ("1", ArgumentTypeError),
        (True, ArgumentTypeError),
    ],
)
def test_wait_timeout_validation(timeout: object, error: type[Exception]) -> None:
    """A bad ``timeout`` raises before any I/O (not the ConnectionError the unreachable
    client would raise)."""
    event = Event(unreachable_client(), "ok")
    with pytest.raises(error):
        event.wait(timeout)  # type: ignore[arg-type]


# -- keys, lifecycle --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_flag_key_has_a_ttl(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """Reading a flag nobody set writes nothing; ``set`` and ``clear`` leave the flag's
    key with the retention lifetime (20 s here), never without a TTL."""
    event = make_event("ttl", retention=20, liveness=1)
    key = flag_keys(run_id, "ttl").state
    assert event.is_set() is False
    assert event.wait(0.05) is False
    assert not client.exists(key)
    for operation in (event.set, event.clear, event.set, event.clear):
        operation()
        assert 0 < client.pttl(key) <= 20_000
    assert event.wait(0.05) is False
    assert 0 < client.pttl(key) <= 20_000


@pytest.mark.timeout(30)
def test_flag_does_not_expire_under_a_waiter(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """A flag set and cleared once, then waited on for longer than its retention (1 s
    here, liveness 0.5 s): the waiter's checks keep the flag alive, so its set count is
    not lost and restarted; a set-then-clear after 1.5 s still wakes the waiter."""
    setter = make_event("kept", liveness=0.5, retention=1.0)
    setter.set()
    setter.clear()
    waiter = make_event("kept", liveness=0.5, retention=1.0)
    thread, waited = start_waiting_thread(waiter, client, run_id)
    time.sleep(1.5)
    assert thread.is_alive()
    assert client.exists(flag_keys(run_id, "kept").state)
    setter.set()
    setter.clear()
    join([thread], PROMPT + 5)
    assert waited.result()[0] is True


def client_count(admin: redis.Redis) -> int:
    return len(admin.client_list())


@pytest.mark.timeout(30)
def test_from_url_and_context_manager(server: EmbeddedServer, run_id: str) -> None:
    """``Event.from_url`` owns its client: inside ``with`` it works (and its waits use
    pub/sub); leaving the block closes every connection it opened, and later calls
    raise ProcSyncError."""
    admin = make_client(server)
    try:
        baseline = client_count(admin)
        with Event.from_url(server.url, "url", run_id=run_id, delay=0) as event:
            assert event.name == "url"
            assert "url" in repr(event)
            assert event.wait(0.05) is False
            event.set()
            assert event.is_set() is True
            assert event.wait(5) is True
        wait_until(lambda: client_count(admin) <= baseline, 5, "connections to close")
        with pytest.raises(ProcSyncError):
            event.wait(1)
        event.close()  # closing twice is harmless
    finally:
        admin.close()


@pytest.mark.timeout(30)
def test_context_manager_leaves_the_callers_client_usable(client: redis.Redis, run_id: str) -> None:
    """An Event built on the caller's client closes only its own connections."""
    with Event(client, "mine", run_id=run_id) as event:
        event.set()
        assert event.wait(5) is True
    assert client.ping()
    with pytest.raises(ProcSyncError):
        event.is_set()
    with Event(client, "mine", run_id=run_id) as again:
        assert again.is_set() is True
