"""Fault injection (issue 7): connections killed by the server (``CLIENT KILL``) or
reset by a proxy (:mod:`netproxy`) while participants wait, in every round, and while
the arrival's reply is in flight.

``test_faults_messages.py`` covers the simpler case (one killed pub/sub connection per
round of two); this module widens it. Every test measures how long the reaction took
and asserts a generous bound; the figures are printed (``pytest -s``) as ``[figure] ...``.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence

import pytest
import redis
from fault_injection_support import LIVENESS, figure, start_syncs, wait_waiting
from netproxy import Delay, NetProxy
from support import (
    LONG,
    event_keys,
    join,
    make_client,
)

from pyprocsync import (
    ProcSync,
    ProcSyncError,
    SyncResult,
)
from pyprocsync.core.ops import Call, Operation
from pyprocsync.core.scripts import Script
from pyprocsync.tools.server import EmbeddedServer

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
        far = ProcSync(far_client, run_id, 0.02, on_late="proceed")
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
