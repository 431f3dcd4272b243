"""Faults of messages, stored state and clocks on a real server: stale, hostile and
lost announcements, dropped connections, corrupt or foreign data, keys without a TTL,
and late release instants.

Each test names the 0.1.0 defect of PRIOR_ART.md it pins down where there is one.
Durations are generous semantic bounds, never speed measurements.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from runner import Participants
from support import (
    LONG,
    PROMPT,
    event_keys,
    in_threads,
    join,
    make_client,
    start_thread,
    wait_until,
    waiting_members,
)

import pyprocsync.clock
from pyprocsync import (
    ProcSync,
    ProcSyncError,
    ProtocolError,
    SyncResult,
    TimeOutError,
    TooLateError,
)
from pyprocsync.core.keys import encode
from pyprocsync.tools.server import EmbeddedServer

# -- stale and hostile messages (defect 4) --------------------------------------------------


def publish(client: redis.Redis, run_id: str, event: str, *texts: str | bytes) -> None:
    channel = event_keys(run_id, event).channel
    for text in texts:
        client.publish(channel, text)


@pytest.mark.timeout(30)
def test_stale_messages_do_not_poison_a_waiter(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """Defect 4: junk and outcomes of earlier rounds published on the channel while a
    participant waits change nothing: it returns the real release, like its partner."""
    waiter, last = make_sync(0.05), make_sync(0.05)
    for _ in range(2):  # rounds 0 and 1 happen normally first
        in_threads(lambda: waiter.sync("s", 2, 10), lambda: last.sync("s", 2, 10))
    thread, waited = start_thread(lambda: waiter.sync("s", 2, 10))
    wait_until(lambda: waiting_members(client, run_id, "s"), 5, "the waiter")
    past_us = (time.time_ns() // 1000) - 10_000_000
    publish(
        client, run_id, "s",
        "garbage", b"\xff\xfe\x00", "", "R", "R 2", "R x y z",
        f"R 0 {past_us} 50000", f"R 1 {past_us} 50000", "B 1 timeout 1 2 []",
        f"R 99 {past_us} 50000", "B 99 timeout 1 2 []",
        'B 2 timeout 1 2 {"not": "a list"}',
    )  # fmt: skip
    time.sleep(0.2)  # a window in which the garbage may not release the waiter
    assert thread.is_alive()
    result = last.sync("s", 2, 10)
    join([thread], 10)
    assert waited.result().release_at == result.release_at
    assert waited.result().generation == result.generation == 2


@pytest.mark.timeout(30)
def test_stale_messages_buffered_between_rounds(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """Defect 4: stale outcomes published while a participant is *between* rounds (its
    pub/sub connection stays subscribed) are not taken for the next round's, even one
    naming the next round (left over from an earlier run with the same run id): no
    spurious TooLateError, no passing alone."""
    a, b = make_sync(0.05), make_sync(0.05)
    in_threads(lambda: a.sync("buf", 2, 10), lambda: b.sync("buf", 2, 10))
    past_us = (time.time_ns() // 1000) - 10_000_000
    publish(client, run_id, "buf", f"R 0 {past_us} 50000", f"R 1 {past_us} 50000", "junk")
    time.sleep(0.1)  # the stale messages reach a's listener (nothing outside shows it)
    thread, waited = start_thread(lambda: a.sync("buf", 2, 10))
    time.sleep(0.3)  # a window in which it may not pass alone
    assert thread.is_alive(), waited.error or waited.value  # did not pass alone
    result = b.sync("buf", 2, 10)
    join([thread], 10)
    assert waited.result().release_at == result.release_at
    assert waited.result().generation == 1


@pytest.mark.timeout(30)
def test_hostile_announcement_is_checked_not_trusted_to_parse(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """An announcement for the current round with a missing-participants list nested
    100,000 deep must be treated like any unparsable message (the stored state decides),
    not crash the waiter with RecursionError."""
    waiter, last = make_sync(0.05), make_sync(0.05)
    thread, waited = start_thread(lambda: waiter.sync("deep", 2, 10))
    wait_until(lambda: waiting_members(client, run_id, "deep"), 5, "the waiter")
    publish(client, run_id, "deep", "B 0 timeout 1 2 " + "[" * 100_000 + "]" * 100_000)
    time.sleep(0.2)  # the waiter reads the deep message before the release
    result = last.sync("deep", 2, 10)
    join([thread], 10)
    assert waited.result().release_at == result.release_at


# -- lost announcements and dropped connections (defect 13) -----------------------------------


@pytest.mark.timeout(30)
def test_lost_announcement_recovered_from_stored_state(
    make_sync: Callable[..., ProcSync],
    monkeypatch: pytest.MonkeyPatch,
    client: redis.Redis,
    run_id: str,
) -> None:
    """Defect 13: the waiter never receives the announcement (every pub/sub message is
    dropped for its thread); the heartbeat reads the stored outcome and it returns the
    right instant anyway."""
    victim: list[threading.Thread] = []
    original = redis.client.PubSub.get_message

    def lossy(self: redis.client.PubSub, *args: Any, **kwargs: Any) -> Any:
        got = original(self, *args, **kwargs)
        if got is not None and got["type"] == "message" and threading.current_thread() in victim:
            return None
        return got

    monkeypatch.setattr(redis.client.PubSub, "get_message", lossy)
    waiter = make_sync(0.5, liveness=0.5)  # heartbeat every 0.1 s
    last = make_sync(0.5, liveness=0.5)
    thread, waited = start_thread(lambda: waiter.sync("lost", 2, 10))
    victim.append(thread)
    wait_until(lambda: waiting_members(client, run_id, "lost"), 10, "the waiter's arrival")
    result = last.sync("lost", 2, 10)
    join([thread], 10)
    assert waited.result().release_at == result.release_at
    assert waited.result().late_by < 0.05


def constructor_client(server: EmbeddedServer) -> redis.Redis:
    return make_client(server)


def url_client(server: EmbeddedServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("make_waiter_client", [constructor_client, url_client])
def test_killed_pubsub_connection_while_waiting(
    server: EmbeddedServer,
    client: redis.Redis,
    run_id: str,
    make_waiter_client: Callable[[EmbeddedServer], redis.Redis],
) -> None:
    """Defect 13: the waiter's pub/sub connection is killed (``CLIENT KILL TYPE pubsub``)
    just before the last participant arrives. 50 times: the waiter still returns, with
    the partner's release instant; none is lost. The waiter's client is one made by the
    constructor and one made by ``redis.Redis.from_url`` (the kind ``ProcSync.from_url``
    uses)."""
    waiter_client = make_waiter_client(server)
    try:
        for attempt in range(50):
            name = f"kill-{attempt}"
            waiter = ProcSync(waiter_client, run_id, 0.05, liveness=0.5, on_late="proceed")
            last = ProcSync(client, run_id, 0.05, liveness=0.5, on_late="proceed")
            try:
                thread, waited = start_thread(lambda w=waiter, n=name: w.sync(n, 2, 10))
                wait_until(lambda n=name: waiting_members(client, run_id, n), 5, "the waiter")
                assert client.client_kill_filter(_type="pubsub") >= 1
                try:
                    result: Any = last.sync(name, 2, 5)
                except ProcSyncError as exc:
                    result = exc
                join([thread], 15)
                assert waited.error is None, f"attempt {attempt}: waiter raised {waited.error!r}"
                assert isinstance(result, SyncResult), f"attempt {attempt}: {result!r}"
                assert waited.value.release_at == result.release_at
                assert waited.value.generation == result.generation == 0
            finally:
                waiter.close()
                last.close()
    finally:
        waiter_client.close()


# -- corrupt or foreign data ------------------------------------------------------------------


def corrupt_hash(**fields: str) -> Callable[[redis.Redis, str, str], None]:
    def write(client: redis.Redis, state: str, leases: str) -> None:
        client.hset(state, mapping=fields)

    return write


CORRUPTIONS: dict[str, Callable[[redis.Redis, str, str], Any]] = {
    "state-is-a-string": lambda c, s, z: c.set(s, "hello"),
    "state-is-a-list": lambda c, s, z: c.rpush(s, "a", "b"),
    "leases-is-a-string": lambda c, s, z: c.set(z, "hello"),
    "leases-is-a-hash": lambda c, s, z: c.hset(z, "a", "b"),
    "generation-not-a-number": corrupt_hash(g="abc"),
    "generation-negative": corrupt_hash(g="-1"),
    "generation-fraction": corrupt_hash(g="1.5"),
    "generation-huge": corrupt_hash(g="1e300"),
    "generation-nan": corrupt_hash(g="nan"),
    "count-not-a-number": corrupt_hash(g="0", n="many"),
    "count-without-nodes": corrupt_hash(g="0", n="1"),
    "nodes-not-a-number": corrupt_hash(g="0", n="1", k="x"),
    "free-list-garbage": corrupt_hash(g="0", n="1", k="2", f="zz"),
    "free-list-out-of-range": corrupt_hash(g="0", n="1", k="2", f="7"),
    "outcome-garbage": corrupt_hash(g="0", o0="R 0 soon 5"),
    "outcome-released-but-not-advanced": corrupt_hash(g="0", o0="R 0 5 5"),
    "outcome-deep-json": corrupt_hash(g="0", o0="B 0 timeout 1 2 " + "[" * 50_000),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_state_raises_protocol_error(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str, corruption: str
) -> None:
    """Foreign or corrupt data in the event's keys raises ProtocolError at once: never an
    AssertionError (0.1.0), another exception, a hang or a release."""
    keys = event_keys(run_id, "bad")
    CORRUPTIONS[corruption](client, keys.state, keys.leases)
    sync = make_sync(0.01)
    began = time.monotonic()
    with pytest.raises(ProtocolError):
        sync.sync("bad", 2, 5)
    assert time.monotonic() - began < PROMPT


@pytest.mark.timeout(30)
@pytest.mark.parametrize("corruption", ["state-is-a-string", "generation-not-a-number"])
def test_corrupt_state_on_reset_raises_protocol_error(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str, corruption: str
) -> None:
    keys = event_keys(run_id, "bad")
    CORRUPTIONS[corruption](client, keys.state, keys.leases)
    with pytest.raises(ProtocolError):
        make_sync(0.01).reset("bad")


@pytest.mark.timeout(30)
def test_corruption_while_waiting_raises_protocol_error(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """State corrupted under a waiting participant: its next heartbeat raises
    ProtocolError (liveness 0.5 s, so within about 0.1 s)."""
    waiter = make_sync(0.01, liveness=0.5)
    thread, waited = start_thread(lambda: waiter.sync("under", 2, LONG))
    wait_until(lambda: waiting_members(client, run_id, "under"), 5, "the waiter")
    client.hset(event_keys(run_id, "under").state, "g", "garbage")
    join([thread], PROMPT + 1)
    assert isinstance(waited.error, ProtocolError), waited.error


# -- every key has a TTL -------------------------------------------------------------------


def run_keys(client: redis.Redis, run_id: str) -> list[bytes]:
    return list(client.scan_iter(match=f"pyprocsync:{{{encode(run_id)}:*", count=1000))


@pytest.mark.timeout(90)
def test_every_key_always_has_a_ttl(
    participants: Participants, client: redis.Redis, run_id: str
) -> None:
    """Defects 5 and 10: 0.1.0 could leave keys without a TTL. Three processes loop
    (300 rounds) while this test samples PTTL of every key of the run: none is ever -1
    (no TTL) nor above the retention; afterwards each event holds at most two keys."""
    nodes = [participants.start("ttl", 3, rounds=300, delay=0, sync_timeout=20) for _ in range(3)]
    samples = 0
    while any(node.process.poll() is None for node in nodes):
        for key in run_keys(client, run_id):
            ttl = client.pttl(key)
            assert ttl != -1, f"{key!r} has no TTL"
            assert ttl <= 60_000
            samples += ttl >= 0
    participants.wait(nodes, timeout=60)
    for node in nodes:
        assert len(node.results()) == 300
    assert samples > 0
    remaining = run_keys(client, run_id)
    assert 1 <= len(remaining) <= 2
    assert all(client.pttl(key) > 0 for key in remaining)


@pytest.mark.timeout(30)
def test_ttl_after_timeout_withdraw_and_reset(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """Keys written on the unusual paths (a broken round, a withdrawn arrival, a reset)
    carry the retention TTL too."""
    sync = make_sync(0.01, retention=20, liveness=1)

    def check() -> None:
        keys = run_keys(client, run_id)
        assert keys
        for key in keys:
            assert 0 < client.pttl(key) <= 20_000, key

    with pytest.raises(TimeOutError):
        sync.sync("paths", 2, 0.2)
    check()
    sync.reset("paths")
    check()
    thread, waited = start_thread(lambda: sync.sync("paths", 3, 0.3))
    join([thread], 5)
    check()
    assert isinstance(waited.error, TimeOutError)


# -- too late ------------------------------------------------------------------------------------


class SkewedClocks:
    """Per-thread wall-clock offsets, installed as :func:`pyprocsync.clock.time_ns`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offsets: dict[threading.Thread, int] = {}
        real = time.time_ns
        monkeypatch.setattr(
            pyprocsync.clock,
            "time_ns",
            lambda: real() + self.offsets.get(threading.current_thread(), 0),
        )

    def call(self, offset_ns: int, call: Callable[[], Any]) -> Callable[[], Any]:
        """Wrap ``call`` so that it runs with its thread's clock off by ``offset_ns``."""

        def skewed() -> Any:
            self.offsets[threading.current_thread()] = offset_ns
            return call()

        return skewed


@pytest.mark.timeout(30)
def test_too_late_when_the_clock_is_ahead(
    make_sync: Callable[..., ProcSync],
    client: redis.Redis,
    run_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect 11: a participant whose clock is 1 s ahead learns the instant (50 ms lead)
    ~0.95 s after it passed by its clock: TooLateError with late_by, release_at; the
    on-time partner returns normally."""
    clocks = SkewedClocks(monkeypatch)
    ahead, on_time = make_sync(0.05, on_late="raise"), make_sync(0.05, on_late="raise")
    thread, waited = start_thread(clocks.call(1_000_000_000, lambda: ahead.sync("late", 2, 10)))
    wait_until(lambda: waiting_members(client, run_id, "late"), 5, "the waiter")
    result = on_time.sync("late", 2, 10)
    join([thread], 10)
    assert isinstance(waited.error, TooLateError), waited.error
    assert waited.error.release_at == pytest.approx(result.release_at, abs=1e-6)
    assert 0.9 < waited.error.late_by < 1.0 + PROMPT
    assert waited.error.generation == 0


@pytest.mark.timeout(30)
def test_on_late_proceed_returns_instead(
    make_sync: Callable[..., ProcSync],
    client: redis.Redis,
    run_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``on_late="proceed"`` the late participant returns at once, reporting how late."""
    clocks = SkewedClocks(monkeypatch)
    ahead, on_time = make_sync(0.05, on_late="proceed"), make_sync(0.05, on_late="raise")
    thread, waited = start_thread(clocks.call(1_000_000_000, lambda: ahead.sync("late", 2, 10)))
    wait_until(lambda: waiting_members(client, run_id, "late"), 5, "the waiter")
    result = on_time.sync("late", 2, 10)
    join([thread], 10)
    late = waited.result()
    assert late.release_at == result.release_at
    assert 0.9 < late.late_by < 1.0 + PROMPT


@pytest.mark.timeout(30)
def test_last_arrival_behind_makes_the_others_late(
    make_sync: Callable[..., ProcSync],
    client: redis.Redis,
    run_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last arrival's clock is 0.5 s behind and the lead time tiny (5 ms): the
    instant it fixes is already past for the on-time waiter (TooLateError, with a tiny
    tolerance) — reported explicitly instead of a silent misfire."""
    clocks = SkewedClocks(monkeypatch)
    waiter = make_sync(0.005, late_tolerance=0.0001, on_late="raise")
    thread, waited = start_thread(lambda: waiter.sync("behind", 2, 10))
    wait_until(lambda: waiting_members(client, run_id, "behind"), 5, "the waiter")
    behind = make_sync(0.005, late_tolerance=0.0001, on_late="raise")
    last_thread, last = start_thread(
        clocks.call(-500_000_000, lambda: behind.sync("behind", 2, 10))
    )
    join([thread, last_thread], 10)
    assert isinstance(waited.error, TooLateError), waited.error
    assert 0.45 < waited.error.late_by < 0.5 + PROMPT
    assert last.result().late_by < 0.05
