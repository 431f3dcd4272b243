"""Fault injection (issue 7): a server that restarts empty or freezes past the
participants' timeout while they wait, and a slow, jittery network with automatic lead
times.

Every test measures how long the reaction took and asserts a generous bound; the
figures are printed (``pytest -s``) as ``[figure] ...`` lines.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from fault_injection_support import (
    LIVENESS,
    MARGIN,
    error_class,
    figure,
    finished_after,
    frozen,
    start_syncs,
    wait_waiting,
)
from netproxy import Delay, NetProxy
from redis.backoff import NoBackoff
from redis.retry import Retry
from runner import Participants, check_rounds
from support import (
    join,
    make_client,
)

from pyprocsync import (
    BrokenBarrierError,
    ConnectionLostError,
    ProcSync,
    ProcSyncError,
)
from pyprocsync.tools.server import EmbeddedServer

#: How long the default retry policy of redis-py 8 (10 retries, backoff at most
#: ``min(1, 0.01 * 2**n)`` s) may spend sleeping before a command gives up: 5.3 s.
RECONNECT_BUDGET = sum(min(1.0, 0.01 * 2**n) for n in range(1, 11))


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
            time.sleep(down)  # the server stays down this long
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
            3,
            "j",
            3,
            timeout=60,
            url=proxy.url,
            delay="auto",
            on_late="raise",
            rounds=rounds,
            sync_timeout=10,
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
