"""The cross-process Event when things go wrong, and its lifecycle: a lost pub/sub
connection, garbage on the flag channel, a corrupt flag; validation of the constructor
and of ``wait``; the flag key's TTL (which a waiter keeps alive); ``from_url`` and the
context manager.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest
import redis
from primitive_support import flag_keys, start_waiting_thread
from support import LONG, PROMPT, join, make_client, wait_until

from pyprocsync import (
    ArgumentTypeError,
    Event,
    InvalidArgumentError,
    ProcSyncError,
    ProtocolError,
)
from pyprocsync.tools.server import EmbeddedServer

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
    time.sleep(0.3)  # a window in which the garbage may not wake the waiter
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
    time.sleep(1.5)  # longer than the retention (1 s)
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
