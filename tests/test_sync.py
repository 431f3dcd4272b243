"""Synchronizing on a real server: threads, processes, cyclic reuse, clients, lifecycle.

Timing bounds here are generous semantic bounds ("returned at the agreed instant, not a
second later"), never speed measurements.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import pytest
import redis
from runner import Participants, check_rounds
from support import (
    LATE_BOUND,
    event_keys,
    in_threads,
    join,
    make_client,
    start_thread,
    wait_until,
    waiting_members,
)

from pyprocsync import BrokenBarrierError, ProcSync, ProcSyncError, SyncResult
from pyprocsync.tools.server import EmbeddedServer


def check_round(results: list[SyncResult], nodes: int, generation: int) -> None:
    """One round's results: same generation, release instant and delay; indices 0..N-1."""
    assert len(results) == nodes
    assert {r.generation for r in results} == {generation}
    assert len({r.release_at for r in results}) == 1
    assert len({r.delay for r in results}) == 1
    assert sorted(r.index for r in results) == list(range(nodes))
    assert all(r.nodes == nodes for r in results)


# -- basics ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_threads_sync_and_return_at_the_instant(make_sync: Callable[..., ProcSync]) -> None:
    """Three participants (one ProcSync each) return at one agreed instant: the last
    arrival's clock plus the delay, each at or just after it."""
    syncs = [make_sync(0.1) for _ in range(3)]
    before = time.time()
    outcomes = in_threads(*(lambda s=s: (s.sync("start", 3, 10), time.time()) for s in syncs))
    pairs = [o.result() for o in outcomes]
    results = [r for r, _ in pairs]
    check_round(results, 3, 0)
    release_at = results[0].release_at
    assert before + 0.1 <= release_at <= before + 0.1 + 5
    assert results[0].delay == pytest.approx(0.1)
    for result, returned in pairs:
        assert release_at - 0.001 <= returned <= release_at + 1
        assert -0.001 <= result.late_by < LATE_BOUND
        assert result.event == "start"


@pytest.mark.timeout(60)
def test_processes_sync(participants: Participants) -> None:
    """Three processes: identical release instant and generation, indices 0..2, each
    process returns at (not before) the instant."""
    nodes = participants.run(3, "start", 3, timeout=40, rounds=1, delay=0.2, sync_timeout=None)
    (group,) = check_rounds(nodes, rounds=1, count=3)
    for record in group:
        assert record["returned_ns"] / 1e9 >= record["release_at"] - 0.001
        assert -0.001 <= record["late_by"] < LATE_BOUND


def test_single_node_passes_alone(make_sync: Callable[..., ProcSync]) -> None:
    """``nodes=1`` releases at once: generation 0, index 0."""
    result = make_sync(0.01).sync("solo", 1, 5)
    assert (result.generation, result.index, result.nodes) == (0, 0, 1)
    assert -0.001 <= result.late_by < LATE_BOUND


def test_first_arrival_really_waits(make_sync: Callable[..., ProcSync]) -> None:
    """A participant does not return before the last one arrives."""
    first, second = make_sync(0.01), make_sync(0.01)
    thread, outcome = start_thread(lambda: first.sync("gate", 2, 20))
    time.sleep(0.3)  # a window in which the first may not return
    assert thread.is_alive()
    arrived_last_at = time.time()
    second.sync("gate", 2, 20)
    join([thread], 10)
    assert outcome.result().release_at >= arrived_last_at


# -- cyclic reuse (defect 1) --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ten_thousand_rounds_two_processes(participants: Participants) -> None:
    """Defect 1: 0.1.0 failed on the second use of a name. Two processes sync one name
    10,000 times back to back (delay 0): every round passes, generations 0..9999 in
    order, identical release instant per round, indices {0, 1}."""
    nodes = participants.run(2, "step", 2, timeout=90, rounds=10_000, delay=0, sync_timeout=20)
    grouped = check_rounds(nodes, rounds=10_000, count=2)
    releases = [group[0]["release_at"] for group in grouped]
    assert releases == sorted(releases)


@pytest.mark.timeout(90)
def test_four_process_loop_with_delay(participants: Participants) -> None:
    """Four processes, 40 rounds with a 30 ms lead time (each idles 2 ms after a round):
    per round one instant, one generation, indices 0..3; each returns at the instant."""
    nodes = participants.run(
        4, "tick", 4, timeout=80, rounds=40, delay=0.03, think=0.002, sync_timeout=20
    )
    grouped = check_rounds(nodes, rounds=40, count=4)
    for group in grouped:
        for record in group:
            assert record["returned_ns"] / 1e9 >= record["release_at"] - 0.001
            assert -0.001 <= record["late_by"] < LATE_BOUND
    releases = [group[0]["release_at"] for group in grouped]
    gaps = [b - a for a, b in itertools.pairwise(releases)]
    assert min(gaps) >= 0.03  # the next round's last arrival came after this release


@pytest.mark.timeout(60)
def test_thread_loop_reuses_the_name(make_sync: Callable[..., ProcSync]) -> None:
    """Threads loop over one name; each round's results agree."""
    syncs = [make_sync(0) for _ in range(3)]
    rounds = 200

    def loop(sync: ProcSync) -> list[SyncResult]:
        return [sync.sync("loop", 3, 10) for _ in range(rounds)]

    outcomes = in_threads(*(lambda s=s: loop(s) for s in syncs), timeout=50)
    per_thread = [o.result() for o in outcomes]
    for generation, results in enumerate(zip(*per_thread, strict=True)):
        check_round(list(results), 3, generation)


# -- clients and instances ---------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_decode_responses_client(
    decoded_client: redis.Redis, client: redis.Redis, run_id: str
) -> None:
    """Defect 7: a ``decode_responses=True`` client works, also next to a bytes client."""
    decoded = ProcSync(decoded_client, run_id, 0.02, on_late="proceed")
    plain = ProcSync(client, run_id, 0.02, on_late="proceed")
    try:
        for generation in range(3):
            outcomes = in_threads(
                lambda: decoded.sync("mixed", 2, 10), lambda: plain.sync("mixed", 2, 10)
            )
            check_round([o.result() for o in outcomes], 2, generation)
        assert decoded.reset("mixed") == 3
    finally:
        decoded.close()
        plain.close()


@pytest.mark.timeout(60)
def test_one_instance_shared_by_many_threads(make_sync: Callable[..., ProcSync]) -> None:
    """Defect 9: one ProcSync used by 8 threads at once, on two events (4 threads each),
    for 20 rounds: every thread is one participant, no message is lost or mis-delivered.
    (``spin=0``: eight threads busy-waiting at one instant would fight for the GIL.)"""
    shared = make_sync(0.05, spin=0)
    rounds = 20

    def loop(event: str) -> list[SyncResult]:
        return [shared.sync(event, 4, 15) for _ in range(rounds)]

    calls = [lambda e=e: loop(e) for e in ("left", "right") for _ in range(4)]
    per_thread = [o.result() for o in in_threads(*calls, timeout=50)]
    for event, group in (("left", per_thread[:4]), ("right", per_thread[4:])):
        for generation, results in enumerate(zip(*group, strict=True)):
            check_round(list(results), 4, generation)
            assert {r.event for r in results} == {event}


@pytest.mark.timeout(30)
def test_zero_delay(make_sync: Callable[..., ProcSync]) -> None:
    """``delay=0``: no common instant; everyone returns as soon as it learns of the
    release; release_at is the last arrival's clock and late_by how long learning took."""
    syncs = [make_sync(0) for _ in range(3)]
    before = time.time()
    results = [o.result() for o in in_threads(*(lambda s=s: s.sync("now", 3, 10) for s in syncs))]
    after = time.time()
    check_round(results, 3, 0)
    assert results[0].delay == 0
    assert before - 0.001 <= results[0].release_at <= after
    assert all(0 <= r.late_by < 1 for r in results)


@pytest.mark.timeout(30)
def test_from_url_and_context_manager(server: EmbeddedServer, run_id: str) -> None:
    """``from_url`` builds an instance that owns its client; leaving the ``with`` block
    closes it, after which ``sync`` raises ProcSyncError."""
    with ProcSync.from_url(server.url, run_id, 0.01, on_late="proceed") as sync:
        assert sync.run_id == run_id
        assert sync.delay == 0.01
        assert sync.sync("url", 1, 5).generation == 0
        assert sync.sync("url", 1, 5).generation == 1
    with pytest.raises(ProcSyncError):
        sync.sync("url", 1, 5)


def test_repr_and_properties(make_sync: Callable[..., ProcSync], run_id: str) -> None:
    sync = make_sync(0.25)
    assert sync.run_id == run_id
    assert sync.delay == 0.25
    assert run_id in repr(sync)


# -- close --------------------------------------------------------------------------------


def client_count(admin: redis.Redis, kind: str | None = None) -> int:
    clients = admin.client_list(_type=kind) if kind else admin.client_list()
    return len(clients)


@pytest.mark.timeout(30)
def test_close_releases_connections_of_from_url(server: EmbeddedServer, run_id: str) -> None:
    """``close()`` of a ``from_url`` instance leaves no connection behind: the server's
    client count returns to what it was, after threads opened several pub/sub
    connections (defect: 0.1.0 kept a pub/sub connection per instance forever)."""
    admin = make_client(server)
    try:
        baseline = client_count(admin)
        sync = ProcSync.from_url(server.url, run_id, 0)
        results = in_threads(*(lambda: sync.sync("conn", 4, 10) for _ in range(4)))
        check_round([o.result() for o in results], 4, 0)
        assert client_count(admin) > baseline
        sync.close()
        wait_until(lambda: client_count(admin) == baseline, 5, "connections to close")
        sync.close()  # closing twice is harmless
    finally:
        admin.close()


@pytest.mark.timeout(30)
def test_close_releases_pubsub_of_a_borrowed_client(
    client: redis.Redis, server: EmbeddedServer, run_id: str
) -> None:
    """Every instance and thread of a process using one client shares one pub/sub
    connection; closing the last instance closes it but leaves the caller's client
    usable."""
    admin = make_client(server)
    try:
        baseline = client_count(admin, "pubsub")
        sync, other = ProcSync(client, run_id, 0), ProcSync(client, run_id, 0)
        calls = [lambda: sync.sync("b", 4, 10) for _ in range(2)]
        calls += [lambda: other.sync("b", 4, 10) for _ in range(2)]
        check_round([o.result() for o in in_threads(*calls)], 4, 0)
        assert client_count(admin, "pubsub") == baseline + 1
        other.close()
        assert client_count(admin, "pubsub") == baseline + 1  # still used by ``sync``
        sync.close()
        wait_until(lambda: client_count(admin, "pubsub") == baseline, 5, "pub/sub to close")
        assert client.ping()
        with pytest.raises(ProcSyncError):
            sync.sync("b", 1, 5)
    finally:
        admin.close()


@pytest.mark.timeout(30)
def test_closed_instance_touches_no_server(server: EmbeddedServer, run_id: str) -> None:
    """``sync`` and ``reset`` on a closed instance raise ProcSyncError without opening a
    connection again (an instance closed before its first call included): the server's
    client count stays at its baseline and no key is written."""
    admin = make_client(server)
    try:
        baseline = client_count(admin)
        sync = ProcSync.from_url(server.url, run_id, 0)
        sync.close()
        with pytest.raises(ProcSyncError):
            sync.sync("after-close", 1, 5)
        with pytest.raises(ProcSyncError):
            sync.reset("after-close")
        assert client_count(admin) == baseline
        assert not admin.exists(event_keys(run_id, "after-close").state)
    finally:
        admin.close()


@pytest.mark.timeout(30)
def test_close_while_a_call_waits(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """A call in progress when ``close()`` runs in another thread still finishes; new calls
    raise ProcSyncError."""
    sync, other = make_sync(0.01), make_sync(0.01)
    thread, outcome = start_thread(lambda: sync.sync("closing", 2, 10))
    wait_until(lambda: waiting_members(client, run_id, "closing"), 5, "the waiter")
    sync.close()
    with pytest.raises(ProcSyncError):
        sync.sync("closing-2", 1, 5)
    other.sync("closing", 2, 10)
    join([thread], 10)
    assert outcome.result().generation == 0


# -- names ----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "event", ["a:b", "{braces}", "*", "[a-z]?", "üñí©ødé 名前 🙂", "nul\x00byte", "%3A", " "]
)
def test_any_characters_in_names(make_sync: Callable[..., ProcSync], event: str) -> None:
    """Colons, braces, glob characters, unicode and NUL all work as event names."""
    a, b = make_sync(0.01), make_sync(0.01)
    results = [
        o.result() for o in in_threads(lambda: a.sync(event, 2, 10), lambda: b.sync(event, 2, 10))
    ]
    check_round(results, 2, 0)
    assert results[0].event == event


@pytest.mark.timeout(30)
def test_colliding_names_stay_apart_on_the_server(client: redis.Redis, run_id: str) -> None:
    """Defect 12: run "<r>" + event "b:c" and run "<r>:b" + event "c" are different
    synchronization points: one participant in each never meets the other."""
    first = ProcSync(client, run_id, 0)
    second = ProcSync(client, run_id + ":b", 0)
    try:
        outcomes = in_threads(lambda: first.sync("b:c", 2, 1.0), lambda: second.sync("c", 2, 1.0))
        for outcome in outcomes:
            assert type(outcome.error).__name__ == "TimeOutError", outcome.error
    finally:
        first.close()
        second.close()


@pytest.mark.timeout(30)
def test_runs_and_prefixes_are_isolated(client: redis.Redis, run_id: str) -> None:
    """Same event name, different run ids or prefixes: separate rounds."""
    a = ProcSync(client, run_id + "-a", 0)
    b = ProcSync(client, run_id + "-b", 0)
    c = ProcSync(client, run_id + "-a", 0, prefix="other-app")
    try:
        for sync in (a, b, c):
            assert sync.sync("same", 1, 5).generation == 0
        assert a.sync("same", 1, 5).generation == 1
        assert b.sync("same", 1, 5).generation == 1
        assert c.sync("same", 1, 5).generation == 1
        assert client.exists("other-app:{" + event_keys(run_id + "-a", "same").state.split("{")[1])
    finally:
        for sync in (a, b, c):
            sync.close()


@pytest.mark.timeout(30)
def test_default_run_id_works(client: redis.Redis, run_id: str) -> None:
    """The default run id "" is usable (the event name carries the test's uniqueness)."""
    with ProcSync(client) as sync:
        assert sync.run_id == ""
        assert sync.delay == 1.0
    sync = ProcSync(client, delay=0)
    try:
        assert sync.sync(run_id, 1, 5).generation == 0
    finally:
        sync.close()


# -- reset ----------------------------------------------------------------------------------


def test_reset_idle_event_changes_nothing(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """Resetting an unknown or idle event returns the generation the next arrival joins
    and does not create or bump anything."""
    sync = make_sync(0)
    assert sync.reset("never-used") == 0
    assert not client.exists(event_keys(run_id, "never-used").state)
    sync.sync("used", 1, 5)
    assert sync.reset("used") == 1
    assert sync.reset("used") == 1
    assert sync.sync("used", 1, 5).generation == 1


@pytest.mark.timeout(30)
def test_reset_breaks_waiters(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """``reset`` while someone waits breaks their round (reason "reset") and opens the next."""
    waiter, admin = make_sync(0), make_sync(0)
    thread, outcome = start_thread(lambda: waiter.sync("r", 2, 20))
    wait_until(lambda: waiting_members(client, run_id, "r"), 5, "the waiter")
    started = time.monotonic()
    assert admin.reset("r") == 1
    join([thread], 10)
    assert isinstance(outcome.error, BrokenBarrierError)
    assert outcome.error.reason == "reset"
    assert outcome.finished_at is not None
    assert outcome.finished_at - started < 2
    results = [
        o.result()
        for o in in_threads(lambda: waiter.sync("r", 2, 10), lambda: admin.sync("r", 2, 10))
    ]
    check_round(results, 2, 1)


@pytest.mark.timeout(60)
def test_long_names_arrive_in_pieces(make_sync: Callable[..., ProcSync]) -> None:
    """A 64 KiB event name makes every subscription confirmation and announcement a
    message that reaches the shared listener in several pieces: it is read whole (it
    once timed out, read with no time for the rest)."""
    sync = make_sync(0.01)
    name = "n" * 65536
    for _ in range(5):
        results = [
            o.result() for o in in_threads(*(lambda: sync.sync(name, 3, 20) for _ in range(3)))
        ]
        assert len({r.release_at for r in results}) == 1
