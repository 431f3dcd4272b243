"""Faults on a real server: timeouts, disagreement, stale and lost messages, crashes,
corrupt data, interruptions, late release instants, server restarts.

Each test names the 0.1.0 defect of PRIOR_ART.md it pins down where there is one.
Durations are generous semantic bounds ("promptly" = well under the participant's own,
much longer timeout), never speed measurements.
"""

from __future__ import annotations

import json
import signal
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
    BrokenBarrierError,
    ParameterMismatchError,
    ProcSync,
    ProcSyncError,
    ProtocolError,
    SyncResult,
    TimeOutError,
    TooLateError,
)
from pyprocsync.core.keys import encode
from pyprocsync.tools.server import EmbeddedServer

# -- timeouts (defects 2 and 3) ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_timeout_breaks_the_round_for_all_processes(participants: Participants) -> None:
    """Defect 3: one process times out (1 s); the two others, waiting with a 30 s
    timeout, raise BrokenBarrierError promptly instead of at their own timeout."""
    patient = [participants.start("t", 4, sync_timeout=LONG, node_id=f"p{i}") for i in range(2)]
    impatient = participants.start("t", 4, sync_timeout=1.0, node_id="impatient")
    nodes = participants.wait([*patient, impatient], timeout=50)
    gave_up = impatient.last()
    assert gave_up["error"] == "TimeOutError"
    assert gave_up["attrs"]["arrived"] == 3
    assert gave_up["attrs"]["expected"] == 4
    for node in patient:
        record = node.last()
        # a BrokenBarrierError that is also a TimeOutError, as 0.1.0 raised on every node
        assert record["error"] == "BrokenByTimeoutError", record
        assert record["attrs"]["reason"] == "timeout"
        assert record["attrs"]["generation"] == gave_up["attrs"]["generation"] == 0
        assert abs(record["returned_ns"] - gave_up["returned_ns"]) / 1e9 < PROMPT
    assert all(node.returncode == 0 for node in nodes)


@pytest.mark.timeout(60)
def test_broken_until_reset(make_sync: Callable[..., ProcSync]) -> None:
    """After a timeout breaks a round, every later arrival raises BrokenBarrierError at
    once (not after its 30 s timeout) until ``reset``; then the name works again."""
    a, b, c = make_sync(0.01), make_sync(0.01), make_sync(0.01)
    started = time.monotonic()
    outcomes = in_threads(lambda: a.sync("e", 3, 0.5), lambda: b.sync("e", 3, LONG))
    assert isinstance(outcomes[0].error, TimeOutError)
    assert isinstance(outcomes[1].error, BrokenBarrierError)
    assert outcomes[1].finished_at is not None
    assert outcomes[1].finished_at - started < 0.5 + PROMPT
    for sync in (a, b, c, c):
        began = time.monotonic()
        with pytest.raises(BrokenBarrierError) as info:
            sync.sync("e", 3, LONG)
        assert time.monotonic() - began < PROMPT
        assert (info.value.reason, info.value.generation) == ("timeout", 0)
    assert c.reset("e") == 1
    results = [o.result() for o in in_threads(*(lambda s=s: s.sync("e", 3, 10) for s in (a, b, c)))]
    assert {r.generation for r in results} == {1}
    assert len({r.release_at for r in results}) == 1


@pytest.mark.timeout(60)
def test_late_node_never_passes_alone(make_sync: Callable[..., ProcSync]) -> None:
    """Defect 2: in 0.1.0 the counter stayed incremented after a timeout, so a late node
    (or a retry) reached N alone and "succeeded". Here it raises, and after a reset a
    lone node still has to wait for its partner."""
    early, late = make_sync(0.01), make_sync(0.01)
    with pytest.raises(TimeOutError):
        early.sync("pair", 2, 0.3)
    with pytest.raises(BrokenBarrierError):
        late.sync("pair", 2, 5)
    with pytest.raises(BrokenBarrierError):
        early.sync("pair", 2, 5)  # the retry does not pass either
    late.reset("pair")
    with pytest.raises(TimeOutError):
        late.sync("pair", 2, 0.3)


@pytest.mark.timeout(120)
def test_timeout_racing_the_last_arrival_is_all_or_nothing(
    make_sync: Callable[..., ProcSync],
) -> None:
    """Defect 3: when the last arrival races a participant's timeout, either everyone
    passes (same instant) or nobody does; never a TimeOutError next to a release."""
    for attempt in range(30):
        name = f"race-{attempt}"
        waiter, last = make_sync(0.01), make_sync(0.01)
        thread, waited = start_thread(lambda w=waiter, n=name: w.sync(n, 2, 0.2))
        time.sleep(0.2 + (attempt % 6 - 3) * 0.002)
        try:
            arrived: Any = last.sync(name, 2, 5)
        except BrokenBarrierError as exc:
            arrived = exc
        join([thread], 10)
        first = waited.error if waited.error is not None else waited.value
        if isinstance(first, SyncResult):
            assert isinstance(arrived, SyncResult)
            assert first.release_at == arrived.release_at
        else:
            assert isinstance(first, TimeOutError), first
            assert isinstance(arrived, BrokenBarrierError), arrived
        waiter.close()
        last.close()


# -- disagreement on nodes --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_nodes_mismatch_processes(
    participants: Participants, client: redis.Redis, run_id: str
) -> None:
    """Two processes wait for 3 nodes; a third says 2: it raises ParameterMismatchError
    (expected 3, given 2), the waiters BrokenBarrierError("mismatch") promptly; nobody
    hangs and nobody is released."""
    waiters = [participants.start("m", 3, sync_timeout=LONG) for _ in range(2)]
    wait_until(lambda: len(waiting_members(client, run_id, "m")) == 2, 20, "two waiters")
    dissenter = participants.start("m", 2, sync_timeout=LONG)
    participants.wait([*waiters, dissenter], timeout=40)
    mismatch = dissenter.last()
    assert mismatch["error"] == "ParameterMismatchError", mismatch
    assert (mismatch["attrs"]["expected"], mismatch["attrs"]["given"]) == (3, 2)
    for node in waiters:
        record = node.last()
        assert record["error"] == "BrokenBarrierError", record
        assert record["attrs"]["reason"] == "mismatch"
        assert abs(record["returned_ns"] - mismatch["returned_ns"]) / 1e9 < PROMPT


@pytest.mark.timeout(30)
def test_mismatch_that_would_complete_the_round(make_sync: Callable[..., ProcSync]) -> None:
    """A round of 3 with one arrival; an arrival saying nodes=2 would make "2 of 2": it
    must not release anyone."""
    a, b = make_sync(0.01), make_sync(0.01)
    thread, waited = start_thread(lambda: a.sync("m2", 3, LONG))
    time.sleep(0.2)
    with pytest.raises(ParameterMismatchError) as info:
        b.sync("m2", 2, LONG)
    assert (info.value.expected, info.value.given) == (3, 2)
    join([thread], PROMPT + 1)
    assert isinstance(waited.error, BrokenBarrierError)
    assert waited.error.reason == "mismatch"


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
    time.sleep(0.2)
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
    time.sleep(0.1)
    thread, waited = start_thread(lambda: a.sync("buf", 2, 10))
    time.sleep(0.3)
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
    time.sleep(0.2)
    result = last.sync("deep", 2, 10)
    join([thread], 10)
    assert waited.result().release_at == result.release_at


# -- lost announcements and dropped connections (defect 13) -----------------------------------


@pytest.mark.timeout(30)
def test_lost_announcement_recovered_from_stored_state(
    make_sync: Callable[..., ProcSync], monkeypatch: pytest.MonkeyPatch
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
    time.sleep(0.2)
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


# -- crashed participants (defect 5) -------------------------------------------------------------


@pytest.mark.timeout(60)
def test_crashed_waiter_breaks_the_round_as_lost(
    participants: Participants, client: redis.Redis, run_id: str
) -> None:
    """A participant SIGKILLed right after arriving (third of four) stops renewing its
    lease (0.5 s): the live waiters raise BrokenBarrierError(reason="lost") naming it in
    ``missing``, about a lease after the crash (far below their 30 s timeout)."""
    survivors = [
        participants.start("c", 4, sync_timeout=LONG, liveness=0.5, node_id=f"alive-{i}")
        for i in range(2)
    ]
    wait_until(lambda: len(waiting_members(client, run_id, "c")) == 2, 20, "two survivors")
    crasher = participants.start("c", 4, liveness=0.5, node_id="crasher", die_after_arrival=True)
    crasher.process.wait(20)
    crashed_ns = time.time_ns()
    assert crasher.process.returncode == -signal.SIGKILL
    participants.wait(survivors, timeout=40)
    for node in survivors:
        record = node.last()
        assert record["error"] == "BrokenBarrierError", record
        assert record["attrs"]["reason"] == "lost"
        assert record["attrs"]["missing"] == ["crasher"]
        assert (record["returned_ns"] - crashed_ns) / 1e9 < 0.5 + PROMPT


@pytest.mark.timeout(60)
def test_paused_participant_is_declared_lost(
    participants: Participants, client: redis.Redis, run_id: str
) -> None:
    """A waiting process frozen (SIGSTOP) for longer than its lease is declared lost: the
    live waiter raises BrokenBarrierError("lost") naming it; once resumed (SIGCONT), the
    frozen one raises the same error instead of hanging or passing."""
    alive = participants.start("p", 3, sync_timeout=LONG, liveness=0.5, node_id="alive")
    frozen = participants.start("p", 3, sync_timeout=LONG, liveness=0.5, node_id="frozen")
    wait_until(lambda: len(waiting_members(client, run_id, "p")) == 2, 20, "two waiters")
    frozen.process.send_signal(signal.SIGSTOP)
    try:
        participants.wait([alive], timeout=20)
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    participants.wait([frozen], timeout=20)
    for node in (alive, frozen):
        record = node.last()
        assert record["error"] == "BrokenBarrierError", record
        assert record["attrs"]["reason"] == "lost"
        assert record["attrs"]["missing"] == ["frozen"]


@pytest.mark.timeout(60)
def test_crashed_arrival_does_not_count_for_a_later_run(
    participants: Participants, make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """Defect 5: in 0.1.0 a crashed waiter left a counter without TTL, and the next run
    (same run id) passed with too few nodes. Here its arrival expires with its lease:
    a later lone participant is refused (reason "lost", the crasher named) instead of
    being released, the keys keep a TTL, and after a reset a full round works."""
    crasher = participants.start("c5", 2, liveness=0.5, node_id="crasher", die_after_arrival=True)
    crasher.process.wait(20)
    assert crasher.process.returncode == -signal.SIGKILL
    keys = event_keys(run_id, "c5")
    assert client.hget(keys.state, "n") == b"1"
    assert client.pttl(keys.state) > 0
    assert client.pttl(keys.leases) > 0
    time.sleep(0.7)  # the crasher's lease (0.5 s) lapses
    late = make_sync(0.01, liveness=0.5)
    with pytest.raises(BrokenBarrierError) as info:
        late.sync("c5", 2, 5)
    assert info.value.reason == "lost"
    assert info.value.missing == ("crasher",)
    late.reset("c5")
    other = make_sync(0.01, liveness=0.5)
    results = [
        o.result()
        for o in in_threads(lambda: late.sync("c5", 2, 10), lambda: other.sync("c5", 2, 10))
    ]
    assert {r.generation for r in results} == {1}


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


# -- interruption ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_sigint_withdraws_the_arrival(
    participants: Participants, make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """A process interrupted with SIGINT (KeyboardInterrupt) while waiting withdraws its
    arrival: of a round of 3, one thread and the interrupted process had arrived; after
    the interruption one more arrival must NOT release the round (it would, had the
    interrupted arrival stayed counted); a further one does, with indices 0..2."""
    first, second, third = (make_sync(0.01) for _ in range(3))
    t1, o1 = start_thread(lambda: first.sync("int", 3, LONG))
    wait_until(lambda: len(waiting_members(client, run_id, "int")) == 1, 5, "the first waiter")
    child = participants.start("int", 3, sync_timeout=LONG, node_id="interrupted")
    wait_until(
        lambda: any(m.endswith(":interrupted") for m in waiting_members(client, run_id, "int")),
        20,
        "the child to arrive",
    )
    time.sleep(0.2)  # let it settle into waiting
    child.process.send_signal(signal.SIGINT)
    participants.wait([child], timeout=20)
    assert child.last()["error"] == "KeyboardInterrupt"
    assert not any(m.endswith(":interrupted") for m in waiting_members(client, run_id, "int"))
    assert client.hget(event_keys(run_id, "int").state, "n") == b"1"
    t2, o2 = start_thread(lambda: second.sync("int", 3, LONG))
    time.sleep(0.5)
    assert t1.is_alive(), "released with an interrupted participant"
    assert t2.is_alive(), "released with an interrupted participant"
    result = third.sync("int", 3, 10)
    join([t1, t2], 10)
    results = [o1.result(), o2.result(), result]
    assert {r.generation for r in results} == {0}
    assert len({r.release_at for r in results}) == 1
    assert sorted(r.index for r in results) == [0, 1, 2]


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
    ahead, on_time = make_sync(0.05), make_sync(0.05)
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
    ahead, on_time = make_sync(0.05, on_late="proceed"), make_sync(0.05)
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
    waiter = make_sync(0.005, late_tolerance=0.0001)
    thread, waited = start_thread(lambda: waiter.sync("behind", 2, 10))
    wait_until(lambda: waiting_members(client, run_id, "behind"), 5, "the waiter")
    behind = make_sync(0.005, late_tolerance=0.0001)
    last_thread, last = start_thread(
        clocks.call(-500_000_000, lambda: behind.sync("behind", 2, 10))
    )
    join([thread, last_thread], 10)
    assert isinstance(waited.error, TooLateError), waited.error
    assert 0.45 < waited.error.late_by < 0.5 + PROMPT
    assert last.result().late_by < 0.05


# -- server restart ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("restart", "sync_timeout"), [(True, 5.0), (False, 1.0)], ids=["restarted", "stopped"]
)
@pytest.mark.parametrize("from_url", [False, True], ids=["constructor", "from_url"])
def test_server_restart_while_waiting(
    fresh_server: Callable[..., EmbeddedServer],
    run_id: str,
    restart: bool,
    sync_timeout: float,
    from_url: bool,
) -> None:
    """The server stops (and, in one variant, restarts empty on the same port) while a
    participant waits: it raises a typed error (BrokenBarrierError "state-lost" or a
    redis ConnectionError) within its timeout (plus 2 s of slack); it never hangs, never
    passes, and does not overrun its timeout several times over."""
    instance = fresh_server()
    waiter_client = redis.Redis.from_url(instance.url) if from_url else make_client(instance)
    admin = make_client(instance)
    sync = ProcSync(waiter_client, run_id, 0.05, liveness=0.5)
    try:
        started = time.monotonic()
        thread, waited = start_thread(lambda: sync.sync("restart", 2, sync_timeout))
        wait_until(lambda: waiting_members(admin, run_id, "restart"), 5, "the waiter")
        port = instance.port
        instance.stop()
        if restart:
            fresh_server(port=port)
        join([thread], 40)
        error = waited.error
        assert isinstance(error, (BrokenBarrierError, redis.exceptions.ConnectionError)), error
        if isinstance(error, BrokenBarrierError):
            assert error.reason == "state-lost"
        assert waited.finished_at is not None
        took = waited.finished_at - started
        assert took < sync_timeout + PROMPT, f"raised {error!r} after {took:.1f} s"
    finally:
        sync.close()
        waiter_client.close()
        admin.close()


# -- miscellany --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_tiny_timeout_never_leaks_an_arrival(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """A timeout too small to even subscribe raises TimeOutError and leaves no arrival
    behind: the round still needs all its participants."""
    sync = make_sync(0.01)
    with pytest.raises(TimeOutError):
        sync.sync("tiny", 2, 1e-9)
    state = client.hgetall(event_keys(run_id, "tiny").state)
    assert state.get(b"n", b"0") == b"0"


def test_error_records_are_json(participants: Participants) -> None:
    """The helper reports exceptions as JSON with their attributes (used by the tests above)."""
    (node,) = participants.run(1, "helper", 2, timeout=30, sync_timeout=0.2)
    record = node.last()
    assert record["error"] == "TimeOutError"
    assert record["is_procsync_error"] is True
    assert json.loads(json.dumps(record)) == record


@pytest.mark.timeout(30)
def test_state_that_went_back_in_time_is_refused(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """An instance that saw round 0 released, then finds the event at round 0 again
    (Redis lost writes: a failover to a lagging replica, a flush), raises
    BrokenBarrierError(reason="state-lost") without being counted, instead of joining
    an old round with participants of a newer one: here it would have completed the
    round another participant waits in, which must not be released by it."""
    sync = make_sync(0.01)
    assert sync.sync("e", 1, 5).generation == 0
    keys = event_keys(run_id, "e")
    client.delete(*keys.all)  # what a failover that lost the writes looks like
    other = make_sync(0.01)
    thread, outcome = start_thread(lambda: other.sync("e", 2, 1.5))
    wait_until(lambda: len(waiting_members(client, run_id, "e")) == 1, 10, "the other arrival")
    with pytest.raises(BrokenBarrierError) as caught:
        sync.sync("e", 2, 5)
    assert caught.value.reason == "state-lost"
    thread.join(10)
    with pytest.raises(TimeOutError):
        outcome.result()  # nobody completed its round
