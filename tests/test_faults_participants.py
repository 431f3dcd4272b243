"""Faults of participants on a real server: timeouts, disagreement on ``nodes``,
crashes, interruptions, server restarts.

Each test names the 0.1.0 defect of PRIOR_ART.md it pins down where there is one.
Durations are generous semantic bounds ("promptly" = well under the participant's own,
much longer timeout), never speed measurements.
"""

from __future__ import annotations

import json
import signal
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

from pyprocsync import (
    BrokenBarrierError,
    ParameterMismatchError,
    ProcSync,
    SyncResult,
    TimeOutError,
)
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
    passes (same instant) or nobody does; never a TimeOutError next to a release.
    (Both instances connect and load their scripts beforehand, so that the waiter
    arrives well within its 0.2 s; should a stalled machine keep it from arriving at
    all, the round stays untouched and the last arrival times out alone.)"""
    for attempt in range(30):
        name = f"race-{attempt}"
        waiter, last = make_sync(0.01), make_sync(0.01)
        for warm in (waiter, last):
            warm.sync(f"warm-{attempt}", 1, 10)
        thread, waited = start_thread(lambda w=waiter, n=name: w.sync(n, 2, 0.2))
        # Arrive just before, at or just after the waiter's 0.2 s timeout.
        time.sleep(0.2 + (attempt % 6 - 3) * 0.002)
        try:
            arrived: Any = last.sync(name, 2, 2)
        except (BrokenBarrierError, TimeOutError) as exc:
            arrived = exc
        join([thread], 10)
        first = waited.error if waited.error is not None else waited.value
        if isinstance(first, SyncResult):
            assert isinstance(arrived, SyncResult)
            assert first.release_at == arrived.release_at
        elif isinstance(arrived, BrokenBarrierError):
            assert isinstance(first, TimeOutError), first
        else:
            assert isinstance(first, TimeOutError), first
            assert first.arrived is None, first  # it never arrived: nothing to break
            assert isinstance(arrived, TimeOutError), arrived
            assert arrived.arrived == 1, arrived
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
def test_mismatch_that_would_complete_the_round(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """A round of 3 with one arrival; an arrival saying nodes=2 would make "2 of 2": it
    must not release anyone."""
    a, b = make_sync(0.01), make_sync(0.01)
    thread, waited = start_thread(lambda: a.sync("m2", 3, LONG))
    wait_until(lambda: waiting_members(client, run_id, "m2"), 10, "the first arrival")
    with pytest.raises(ParameterMismatchError) as info:
        b.sync("m2", 2, LONG)
    assert (info.value.expected, info.value.given) == (3, 2)
    join([thread], PROMPT + 1)
    assert isinstance(waited.error, BrokenBarrierError)
    assert waited.error.reason == "mismatch"


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
    child = participants.start("int", 3, sync_timeout=LONG, node_id="interrupted", say_arrived=True)
    wait_until(lambda: child.said("arrived"), 20, "the child to arrive and wait")
    assert any(m.endswith(":interrupted") for m in waiting_members(client, run_id, "int"))
    child.process.send_signal(signal.SIGINT)
    participants.wait([child], timeout=20)
    assert child.last()["error"] == "KeyboardInterrupt"
    assert not any(m.endswith(":interrupted") for m in waiting_members(client, run_id, "int"))
    assert client.hget(event_keys(run_id, "int").state, "n") == b"1"
    t2, o2 = start_thread(lambda: second.sync("int", 3, LONG))
    time.sleep(0.5)  # a window in which nobody may be released
    assert t1.is_alive(), "released with an interrupted participant"
    assert t2.is_alive(), "released with an interrupted participant"
    result = third.sync("int", 3, 10)
    join([t1, t2], 10)
    results = [o1.result(), o2.result(), result]
    assert {r.generation for r in results} == {0}
    assert len({r.release_at for r in results}) == 1
    assert sorted(r.index for r in results) == [0, 1, 2]


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
