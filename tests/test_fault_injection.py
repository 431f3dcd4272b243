"""Fault injection (issue 7): crashed, frozen and disconnected participants, a server
that restarts empty or freezes, and a slow, jittery network, on real servers with real
participant processes (threads where only the connection matters).

``test_faults.py`` covers the simpler cases (a participant that dies right after its
arrival, one killed pub/sub connection per round of two, a single waiter across a
server restart); this module widens them. The processes are killed and frozen with
real signals (SIGKILL, SIGSTOP), connections are killed by the server (``CLIENT KILL``)
or reset by a proxy (:mod:`netproxy`), and the server is stopped or frozen.

Every test measures how long the reaction took and asserts a generous bound. The
measured figures are printed (``pytest -s`` shows them) as ``[figure] ...`` lines.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from netproxy import Delay, NetProxy
from redis.backoff import NoBackoff
from redis.retry import Retry
from runner import Node, Participants, check_rounds
from support import (
    LONG,
    PROMPT,
    Outcome,
    event_keys,
    join,
    make_client,
    start_thread,
    wait_until,
    waiting_members,
)

import pyprocsync
from pyprocsync import (
    BrokenBarrierError,
    ConnectionLostError,
    ProcSync,
    ProcSyncError,
    SyncResult,
    TimeOutError,
)
from pyprocsync.core.ops import Call, Operation
from pyprocsync.core.scripts import Script
from pyprocsync.tools.server import EmbeddedServer

#: The lease of the participants here, seconds: they renew it every 0.2 s.
LIVENESS = 1.0
HEARTBEAT = LIVENESS / 5
#: Bound on noticing a lost participant, from the fault: the lease, a heartbeat, and
#: slack for a loaded 2-core machine.
LOST_BOUND = LIVENESS * 3 + 2
#: How long the default retry policy of redis-py 8 (10 retries, backoff at most
#: ``min(1, 0.01 * 2**n)`` s) may spend sleeping before a command gives up: 5.3 s.
RECONNECT_BUDGET = sum(min(1.0, 0.01 * 2**n) for n in range(1, 11))
#: Slack on "on time": a timeout is kept within this, seconds.
MARGIN = 1.0


def figure(name: str, **values: float | str) -> None:
    """Print a measured figure (seen with ``pytest -s``)."""
    shown = ", ".join(
        f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
        for key, value in values.items()
    )
    print(f"[figure] {name}: {shown}")


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """SIGSTOP process ``pid`` for the duration of the block; SIGCONT it whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def lease_expiry(client: redis.Redis, run_id: str, event: str, node_id: str) -> float | None:
    """The expiry (server ms) of the lease of the participant ``node_id``, if it waits."""
    for member in waiting_members(client, run_id, event):
        if member.endswith(":" + node_id):
            score = client.zscore(event_keys(run_id, event).leases, member)
            return None if score is None else float(score)
    return None


def wait_waiting(client: redis.Redis, run_id: str, event: str, count: int, timeout: float) -> None:
    """Wait until ``count`` participants wait in ``event``."""
    wait_until(
        lambda: len(waiting_members(client, run_id, event)) == count,
        timeout,
        f"{count} participants waiting in {event!r}",
    )


def start_syncs(
    syncs: Sequence[ProcSync], event: str, nodes: int, timeout: float
) -> list[tuple[threading.Thread, Outcome]]:
    """Start ``sync(event, nodes, timeout)`` of each of ``syncs`` in a thread of its own."""
    return [start_thread(partial(sync.sync, event, nodes, timeout)) for sync in syncs]


def wait_for_renewal(client: redis.Redis, run_id: str, event: str, node_id: str) -> None:
    """Wait until ``node_id`` waits in ``event`` and has renewed its lease once: it is in
    its waiting loop (heartbeats), not just arrived."""
    wait_until(lambda: lease_expiry(client, run_id, event, node_id), 20, f"{node_id} to arrive")
    first = lease_expiry(client, run_id, event, node_id)
    assert first is not None
    wait_until(
        lambda: (lease_expiry(client, run_id, event, node_id) or 0) > first,
        5,
        f"{node_id} to renew its lease",
    )


def error_class(record: dict[str, Any]) -> type[BaseException]:
    """The pyprocsync exception class a participant record names."""
    found = getattr(pyprocsync, record["error"], None)
    assert isinstance(found, type), record
    assert issubclass(found, BaseException), record
    return found


def assert_lost(error: object, missing: str) -> None:
    """``error`` is BrokenBarrierError(reason="lost") naming exactly ``missing``."""
    assert isinstance(error, BrokenBarrierError), error
    assert error.reason == "lost", error
    assert error.missing == (missing,), error


def finished_after(outcome: Outcome, began: float) -> float:
    """Seconds from ``began`` (``time.monotonic``) until ``outcome``'s call ended."""
    assert outcome.finished_at is not None
    return outcome.finished_at - began


# -- 1. a waiting participant is killed (SIGKILL) -------------------------------------------


@pytest.mark.timeout(60)
def test_sigkill_of_a_waiting_participant_breaks_the_round_as_lost(
    participants: Participants, make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """Three processes wait in a round of four; one of them, well into its wait (it
    renewed its lease), is SIGKILLed from outside. The two others raise
    BrokenBarrierError(reason="lost") naming it in ``missing``, about a lease plus a
    heartbeat after the kill (not before its lease could lapse, not at their 30 s
    timeout); a later arrival is refused the same way at once."""
    survivors = [
        participants.start("k", 4, sync_timeout=LONG, liveness=LIVENESS, node_id=f"alive-{i}")
        for i in range(2)
    ]
    victim = participants.start("k", 4, sync_timeout=LONG, liveness=LIVENESS, node_id="victim")
    wait_waiting(client, run_id, "k", 3, 20)
    wait_for_renewal(client, run_id, "k", "victim")
    victim.process.kill()
    killed_ns = time.time_ns()
    participants.wait([victim, *survivors], timeout=LOST_BOUND + 20)
    assert victim.returncode == -signal.SIGKILL
    assert victim.records == []
    latencies = []
    for node in survivors:
        record = node.last()
        assert record["error"] == "BrokenBarrierError", record
        assert record["attrs"]["reason"] == "lost", record
        assert record["attrs"]["missing"] == ["victim"], record
        assert record["attrs"]["event"] == "k"
        latencies.append((record["returned_ns"] - killed_ns) / 1e9)
    figure("sigkill detection latency", min=min(latencies), max=max(latencies))
    assert max(latencies) < LOST_BOUND
    assert min(latencies) > LIVENESS - HEARTBEAT - 0.1, "broke before the lease could lapse"
    began = time.monotonic()
    with pytest.raises(BrokenBarrierError) as info:
        make_sync(0.01, liveness=LIVENESS).sync("k", 4, LONG)
    assert time.monotonic() - began < PROMPT
    assert_lost(info.value, "victim")


# -- 2. a participant is killed before its arrival ------------------------------------------


@pytest.mark.timeout(60)
def test_sigkill_before_arrival_leaves_the_others_to_their_timeout(
    participants: Participants, make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """Two participants wait in a round of three; the third process subscribes and is
    SIGKILLed just before its arrival would be sent. Nothing of it is counted, so the
    round times out: the participant with a 2 s timeout raises TimeOutError (2 of 3
    arrived) on time, the one with a 30 s timeout BrokenBarrierError("timeout") right
    after it."""
    timeout = 2.0
    patient, impatient = make_sync(0.01, liveness=LIVENESS), make_sync(0.01, liveness=LIVENESS)
    began = time.monotonic()
    threads = [*start_syncs([patient], "b", 3, LONG), *start_syncs([impatient], "b", 3, timeout)]
    wait_waiting(client, run_id, "b", 2, 5)
    dying = participants.start("b", 3, sync_timeout=LONG, node_id="dying", die_before_arrival=True)
    participants.wait([dying], timeout=20)
    died = time.monotonic() - began
    assert dying.returncode == -signal.SIGKILL
    assert died < timeout, f"the process took {died:.1f} s to die; the test needs it earlier"
    assert client.hget(event_keys(run_id, "b").state, "n") == b"2"
    assert len(waiting_members(client, run_id, "b")) == 2
    join([thread for thread, _ in threads], timeout + 10)
    (_, waited_long), (_, waited_short) = threads
    assert isinstance(waited_short.error, TimeOutError), waited_short.error
    assert (waited_short.error.arrived, waited_short.error.expected) == (2, 3)
    assert waited_short.error.event == "b"
    assert isinstance(waited_long.error, BrokenBarrierError), waited_long.error
    assert waited_long.error.reason == "timeout"
    lateness = finished_after(waited_short, began) - timeout
    follow = finished_after(waited_long, began) - finished_after(waited_short, began)
    figure("timeout after a kill before arrival", timeout_lateness=lateness, others_after=follow)
    assert 0 <= lateness < MARGIN
    assert follow < PROMPT


# -- 3. connections killed while waiting, in every round ------------------------------------


class ArrivalWatch:
    """Counts the arrivals that the participants of ``syncs`` know of: their ARRIVE
    script's reply came back, so they are subscribed and waiting (or released). A count
    on the server would include an arrival whose reply is still on its way, and a fault
    injected then would hit the arrival, not the wait."""

    def __init__(self, syncs: Sequence[ProcSync]) -> None:
        self._arrived = 0
        self._changed = threading.Condition()
        for sync in syncs:
            self._watch(sync)

    def _watch(self, sync: ProcSync) -> None:
        execute = sync._execute

        def watching(op: Operation) -> object:
            reply = execute(op)
            if isinstance(op, Call) and op.script is Script.ARRIVE:
                with self._changed:
                    self._arrived += 1
                    self._changed.notify_all()
            return reply

        sync._execute = watching  # type: ignore[method-assign]

    def restart(self) -> None:
        """Count from 0 again."""
        with self._changed:
            self._arrived = 0

    def wait(self, count: int, timeout: float) -> None:
        """Wait until ``count`` arrivals were counted; fail the test after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._arrived >= count, timeout):
                pytest.fail(f"only {self._arrived} of {count} arrivals after {timeout} s")


def rounds_under_fault(
    waiters: Sequence[ProcSync], last: ProcSync, rounds: int, fault: Callable[[], int]
) -> list[float]:
    """Run ``rounds`` rounds of ``len(waiters) + 1`` participants on one name; in each,
    once the waiters have arrived (:class:`ArrivalWatch`), inject ``fault`` (it returns
    how many connections it dropped), then let ``last`` arrive. Every participant must
    return from every round with one generation, the round's, and one release instant;
    a failed round is reset and counted, and the test fails with the count. Returns
    each round's largest ``late_by``."""
    nodes = len(waiters) + 1
    watch = ArrivalWatch(waiters)
    failures: list[str] = []
    worst_late: list[float] = []
    expected: int | None = 0
    for number in range(rounds):
        watch.restart()
        threads = start_syncs(waiters, "f", nodes, 10)
        watch.wait(len(waiters), 10)
        dropped = fault()
        assert dropped >= len(waiters), f"round {number}: only {dropped} connections dropped"
        if number % 4:
            time.sleep(0.001 * (number % 4) ** 2)  # the last arrival comes 0-9 ms later
        try:
            outcomes: list[object] = [last.sync("f", nodes, 10)]
        except ProcSyncError as exc:
            outcomes = [exc]
        join([thread for thread, _ in threads], 15)
        outcomes += [outcome.error or outcome.value for _, outcome in threads]
        results = [o for o in outcomes if isinstance(o, SyncResult)]
        generations = {r.generation for r in results}
        if (
            len(results) != nodes
            or len({r.release_at for r in results}) != 1
            or len(generations) != 1
            or expected not in (None, *generations)
        ):
            failures.append(f"round {number} (generation {expected}): {outcomes!r}")
            last.reset("f")
            expected = None
            continue
        expected = generations.pop() + 1
        worst_late.append(max(r.late_by for r in results))
    assert not failures, f"{len(failures)} of {rounds} rounds failed; first: {failures[:3]}"
    return worst_late


def late_figures(name: str, worst_late: list[float]) -> None:
    figure(
        name,
        rounds=str(len(worst_late)),
        late_by_p50=statistics.median(worst_late),
        late_by_max=max(worst_late),
        rounds_late_over_10ms=str(sum(late > 0.01 for late in worst_late)),
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_pubsub_connections_killed_in_every_round(
    fresh_server: Callable[..., EmbeddedServer], run_id: str
) -> None:
    """200 rounds of three participants (threads, each instance on a client of its own,
    so each has a pub/sub connection of its own, kept between rounds): in each, once two
    have arrived, the server kills every pub/sub connection (``CLIENT KILL TYPE
    pubsub``: the waiters' and the idle one of the last participant), then the last
    arrives. Every participant returns from every
    round, with the same release instant; not one round is lost."""
    instance = fresh_server()
    clients = [make_client(instance) for _ in range(4)]
    admin = clients[0]
    syncs = [ProcSync(c, run_id, 0.02, liveness=LIVENESS, on_late="proceed") for c in clients[1:]]
    try:
        worst_late = rounds_under_fault(
            syncs[:2], syncs[2], 200, lambda: int(admin.client_kill_filter(_type="pubsub"))
        )
        late_figures("CLIENT KILL TYPE pubsub, 200 rounds", worst_late)
    finally:
        for sync in syncs:
            sync.close()
        for c in clients:
            c.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_proxied_connections_cut_in_every_round(server: EmbeddedServer, run_id: str) -> None:
    """The same, 100 rounds, with every participant connected through a proxy that resets
    all its connections (pub/sub and command connections, both ends) while the waiters
    wait: a failing network link instead of a server that kills clients."""
    with NetProxy(server.bind, server.port) as proxy:
        proxied = [redis.Redis(host="127.0.0.1", port=proxy.port) for _ in range(3)]
        syncs = [ProcSync(c, run_id, 0.02, liveness=LIVENESS, on_late="proceed") for c in proxied]
        try:
            worst_late = rounds_under_fault(syncs[:2], syncs[2], 100, proxy.cut)
            late_figures("proxy reset of every connection, 100 rounds", worst_late)
        finally:
            for sync in syncs:
                sync.close()
            for c in proxied:
                c.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_connection_cut_while_the_arrival_reply_is_in_flight(
    server: EmbeddedServer, make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """A participant reaches the server over a link whose replies take 0.3 s; its
    connections are reset after its ARRIVE script ran on the server, before the reply
    came back (redis-py's default client then sends the command again on a new
    connection). Its arrival must count once: in a round of three with one other
    waiter, the round is not released (2 arrivals, not 3) and the waiter keeps waiting
    for a real third participant, with whom it then passes."""
    keys = event_keys(run_id, "x")
    with NetProxy(server.bind, server.port, down=Delay(0.3)) as proxy:
        far_client = redis.Redis(host="127.0.0.1", port=proxy.port)
        # Leases of 5 s: the retry (a new connection, then the command: some round trips
        # of 0.3 s) comes long before one lapses.
        far = ProcSync(far_client, run_id, 0.02)
        near, third = make_sync(0.02), make_sync(0.02)
        try:
            assert far.reset("x") == 0  # the scripts are loaded: the next call arrives
            ((near_thread, near_outcome),) = start_syncs([near], "x", 3, LONG)
            wait_waiting(client, run_id, "x", 1, 5)
            ((_far_thread, far_outcome),) = start_syncs([far], "x", 3, LONG)
            wait_waiting(client, run_id, "x", 2, 5)
            assert proxy.cut() >= 1
            time.sleep(2.5)  # redis-py's retry is done
            state = client.hgetall(keys.state)
            assert near_thread.is_alive(), (
                f"released with a participant short: {near_outcome.error or near_outcome.value!r}, "
                f"the far one: {far_outcome.error or far_outcome.value!r}; state {state!r}"
            )
            assert state.get(b"n") == b"2", state
            result = third.sync("x", 3, 10)
            join([near_thread], 10)
            assert near_outcome.result().release_at == result.release_at
            assert result.generation == 0
        finally:
            far.close()
            far_client.close()


# -- 4. the server restarts empty while participants wait ----------------------------------


#: Restarts: (seconds the server stays down, whether the participants reach it through a
#: link that stalls during the restart, so they notice only once it is back).
RESTARTS = {
    "restart-at-once": (0.0, False),
    "down-2s": (2.0, False),
    "unnoticed-restart": (0.0, True),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("restart", list(RESTARTS))
def test_server_restart_while_participants_wait(
    fresh_server: Callable[..., EmbeddedServer], run_id: str, tmp_path: Path, restart: str
) -> None:
    """Two processes and a thread wait (timeout 3 s) in a round of four when the server
    stops, and starts again empty on the same port: at once, after 2 s, or at once
    while their link to it stalls (they learn of the restart only when it is over).
    Each of them raises an error that is a ProcSyncError and either a ConnectionError
    (it could not reach the server: ConnectionLostError) or BrokenBarrierError
    ("state-lost": it found the round gone), naming the event, within its timeout or
    redis-py's reconnect budget (whichever is longer) plus a margin, counted from the
    stop. Once the server is back, the thread's instance and a new one pass a new round
    together (generation 0: the state is gone)."""
    timeout = 3.0
    down, stalled = RESTARTS[restart]
    instance = fresh_server()
    admin = make_client(instance)
    with NetProxy(instance.bind, instance.port) as proxy:
        url = proxy.url if stalled else instance.url
        nodes = Participants(url, run_id, tmp_path)
        local_client = redis.Redis.from_url(url)
        local = ProcSync(local_client, run_id, 0.05, liveness=LIVENESS)
        try:
            procs = [
                nodes.start("r", 4, sync_timeout=timeout, liveness=LIVENESS, node_id=f"p{i}")
                for i in range(2)
            ]
            wait_waiting(admin, run_id, "r", 2, 20)
            ((thread, waited),) = start_syncs([local], "r", 4, timeout)
            wait_waiting(admin, run_id, "r", 3, 5)
            port = instance.port
            if stalled:
                proxy.pause()
            stopped, stopped_ns = time.monotonic(), time.time_ns()
            instance.stop()
            time.sleep(down)
            fresh_server(port=port)
            restarted = time.monotonic() - stopped
            proxy.resume()
            bound = max(timeout, RECONNECT_BUDGET) + MARGIN
            nodes.wait(procs, timeout=bound + 20)
            join([thread], bound + 20)
            assert waited.error is not None, f"released: {waited.value!r}"
            errors = [(type(waited.error), vars(waited.error))]
            took = [finished_after(waited, stopped)]
            for node in procs:
                record = node.last()
                assert record["ok"] is False, record
                errors.append((error_class(record), record["attrs"]))
                took.append((record["returned_ns"] - stopped_ns) / 1e9)
            for cls, attrs in errors:
                assert issubclass(cls, ProcSyncError), cls
                if issubclass(cls, BrokenBarrierError):
                    assert attrs["reason"] == "state-lost", attrs
                else:
                    assert issubclass(cls, ConnectionLostError), cls
                    assert ConnectionError in cls.__mro__, cls
                assert attrs["event"] == "r", attrs
            figure(
                f"server restart ({restart})",
                restarted_after=restarted,
                error_after_stop_min=min(took),
                error_after_stop_max=max(took),
                errors="/".join(cls.__name__ for cls, _ in errors),
            )
            assert max(took) < bound, f"errors came {took} s after the stop"
            other = ProcSync(local_client, run_id, 0.05, liveness=LIVENESS)
            try:
                ((thread, again),) = start_syncs([local], "r", 2, 10)
                result = other.sync("r", 2, 10)
                join([thread], 15)
                assert again.result().release_at == result.release_at
                assert result.generation == 0
            finally:
                other.close()
        finally:
            local.close()
            local_client.close()
            admin.close()
            nodes.kill_all()


# -- 5. the server freezes past the participants' timeout ----------------------------------

#: Clients: redis-py's defaults (no socket timeout, 10 retries), and a client that gives
#: up on a silent server after 0.5 s without retrying.
CLIENTS: dict[str, dict[str, Any]] = {
    "default-client": {},
    "socket-timeout-no-retry": {"socket_timeout": 0.5, "retry": Retry(NoBackoff(), 0)},
}


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("client_options", list(CLIENTS))
def test_server_frozen_past_the_timeout(
    fresh_server: Callable[..., EmbeddedServer], run_id: str, client_options: str
) -> None:
    """Two participants wait (timeout 1 s) in a round of three when the server process
    is frozen (SIGSTOP) for 4 s: a server that accepts nothing and answers nothing, with
    every connection open. Each raises a ProcSyncError (TimeOutError, or
    ConnectionLostError) within its timeout plus a margin, while the server is still
    frozen: a timeout is kept without the server's help. Once it runs again (SIGCONT),
    nothing hangs and the same instances pass a new round. Clients with redis-py's
    defaults (no socket timeout, 10 retries) and with a 0.5 s socket timeout and no
    retries."""
    timeout, frozen_for = 1.0, 4.0
    instance = fresh_server()
    assert instance.process is not None
    clients = [make_client(instance, **CLIENTS[client_options]) for _ in range(2)]
    admin = make_client(instance)
    syncs = [ProcSync(c, run_id, 0.05, liveness=LIVENESS) for c in clients]
    try:
        for sync in syncs:
            sync.reset("warm-up")  # the scripts are loaded: the next call arrives
        began = time.monotonic()
        threads = start_syncs(syncs, "z", 3, timeout)
        wait_waiting(admin, run_id, "z", 2, 5)
        with frozen(instance.process.pid):
            deadline = began + timeout + MARGIN
            for thread, _ in threads:
                thread.join(max(0.0, began + frozen_for - time.monotonic()))
            thawed = time.monotonic()
        join([thread for thread, _ in threads], 30)
        took = [finished_after(outcome, began) for _, outcome in threads]
        figure(
            f"server frozen ({client_options})",
            timeout=timeout,
            returned_after_max=max(took),
            lateness_max=max(took) - timeout,
            thawed_after=thawed - began,
            errors="/".join(type(o.error or o.value).__name__ for _, o in threads),
        )
        for _, outcome in threads:
            assert isinstance(outcome.error, ProcSyncError), outcome.error or outcome.value
            assert outcome.error.event == "z"
        late = [t for t in took if began + t > deadline]
        assert not late, (
            f"the timeout of {timeout} s was overrun: returned after {took} s; the server "
            f"was thawed after {thawed - began:.2f} s ({[o.error for _, o in threads]!r})"
        )
        outcomes = start_syncs(syncs, "after", 2, 10)
        join([thread for thread, _ in outcomes], 15)
        first, second = (outcome.result() for _, outcome in outcomes)
        assert first.release_at == second.release_at
    finally:
        for sync in syncs:
            sync.close()
        for c in [*clients, admin]:
            c.close()


# -- 6. a slow, jittery network with automatic lead times ----------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_latency_and_jitter_with_auto_delay(
    participants: Participants, server: EmbeddedServer, run_id: str
) -> None:
    """Three processes reach the server through a proxy that delays every chunk by
    10-30 ms (uniformly random) in each direction, keeping the order of each direction.
    With ``delay="auto"``, after a warm-up (two rounds of three threads whose lateness
    does not matter: a cold point leads by the floor), they pass 20 rounds: no
    TooLateError, one release instant per round, and they return within a small part of
    the lead time of each other."""
    rounds, warm_up = 20, 2
    jitter = Delay(0.02, 0.01)
    with NetProxy(server.bind, server.port, up=jitter, down=jitter, seed=7) as proxy:
        warm_client = redis.Redis(host="127.0.0.1", port=proxy.port)
        warmers = [ProcSync(warm_client, run_id, "auto", on_late="proceed") for _ in range(3)]
        try:
            for _ in range(warm_up):
                started = start_syncs(warmers, "j", 3, 10)
                join([thread for thread, _ in started], 15)
                for _, outcome in started:
                    outcome.result()
        finally:
            for warmer in warmers:
                warmer.close()
            warm_client.close()
        nodes = participants.run(
            3, "j", 3, timeout=60, url=proxy.url, delay="auto", rounds=rounds, sync_timeout=10
        )
    grouped = check_rounds(nodes, rounds, 3, first_generation=warm_up)
    spreads = [
        (max(r["returned_ns"] for r in group) - min(r["returned_ns"] for r in group)) / 1e9
        for group in grouped
    ]
    leads = [group[0]["delay"] for group in grouped]
    figure(
        "20 +- 10 ms each way, delay=auto, 20 rounds",
        spread_p50=statistics.median(spreads),
        spread_max=max(spreads),
        late_by_max=max(r["late_by"] for group in grouped for r in group),
        lead_min=min(leads),
        lead_p50=statistics.median(leads),
        lead_max=max(leads),
    )
    assert min(leads) >= 0.04, leads  # at least twice the smallest one-way latency
    # Typically within a tenth of the lead; never a whole lead apart (a process that
    # the busy machine does not schedule for a while returns late, by that while).
    assert statistics.median(spreads) < statistics.median(leads) / 10, (spreads, leads)
    assert max(spreads) < min(leads), (spreads, leads)


# -- 7. a participant freezes past its lease -----------------------------------------------


def freeze_process(node: Node, proxy: NetProxy) -> contextlib.AbstractContextManager[None]:
    return frozen(node.process.pid)


@contextlib.contextmanager
def stall_link(node: Node, proxy: NetProxy) -> Iterator[None]:
    proxy.pause()
    try:
        yield
    finally:
        proxy.resume()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("freeze", [freeze_process, stall_link], ids=["sigstop", "link-stall"])
def test_frozen_participant_is_lost_and_told_when_it_thaws(
    participants: Participants,
    make_sync: Callable[..., ProcSync],
    server: EmbeddedServer,
    client: redis.Redis,
    run_id: str,
    *,
    freeze: Callable[[Node, NetProxy], contextlib.AbstractContextManager[None]],
) -> None:
    """A participant process (connected through a proxy) waits in a round of four
    with two threads, and is frozen past its lease: SIGSTOPped, or its network link
    stalls (nothing passes, nothing is reset). The threads raise
    BrokenBarrierError("lost") naming it, about a lease after the freeze. When it thaws
    (SIGCONT, or the link resumes), it raises a typed error promptly (the round was
    broken without it): no hang, and no release."""
    with NetProxy(server.bind, server.port) as proxy:
        frozen_one = participants.start(
            "s", 4, url=proxy.url, sync_timeout=LONG, liveness=LIVENESS, node_id="frozen"
        )
        wait_for_renewal(client, run_id, "s", "frozen")
        syncs = [make_sync(0.02, liveness=LIVENESS) for _ in range(2)]
        threads = start_syncs(syncs, "s", 4, LONG)
        wait_waiting(client, run_id, "s", 3, 5)
        with freeze(frozen_one, proxy):
            froze = time.monotonic()
            join([thread for thread, _ in threads], LOST_BOUND + 5)
            detected = [finished_after(outcome, froze) for _, outcome in threads]
            for _, outcome in threads:
                assert_lost(outcome.error, "frozen")
            time.sleep(0.2)
            assert frozen_one.process.poll() is None
            thawed_ns = time.time_ns()
        participants.wait([frozen_one], timeout=PROMPT + 10)
    record = frozen_one.last()
    told = (record["returned_ns"] - thawed_ns) / 1e9
    figure(
        f"frozen participant ({freeze.__name__})",
        detection_min=min(detected),
        detection_max=max(detected),
        told_after_thaw=told,
        error=f"{record['error']}({record['attrs'].get('reason')})",
    )
    assert max(detected) < LOST_BOUND
    assert min(detected) > LIVENESS - HEARTBEAT - 0.1, "broke before the lease could lapse"
    assert record["ok"] is False, record
    assert issubclass(error_class(record), ProcSyncError), record
    assert record["attrs"]["event"] == "s"
    assert told < PROMPT, f"told {told:.2f} s after it thawed"
