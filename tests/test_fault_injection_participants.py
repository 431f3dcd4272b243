"""Fault injection (issue 7): participants killed (SIGKILL) while waiting or before
their arrival, and frozen (SIGSTOP) past their lease, with real participant processes.

Every test measures how long the reaction took and asserts a generous bound. The
measured figures are printed (``pytest -s`` shows them) as ``[figure] ...`` lines.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator

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
from netproxy import NetProxy
from runner import Node, Participants
from support import (
    LONG,
    PROMPT,
    event_keys,
    join,
    wait_until,
    waiting_members,
)

from pyprocsync import (
    BrokenBarrierError,
    ProcSync,
    ProcSyncError,
    TimeOutError,
)
from pyprocsync.tools.server import EmbeddedServer

HEARTBEAT = LIVENESS / 5


#: Bound on noticing a lost participant, from the fault: the lease, a heartbeat, and
#: slack for a loaded 2-core machine.
LOST_BOUND = LIVENESS * 3 + 2


def lease_expiry(client: redis.Redis, run_id: str, event: str, node_id: str) -> float | None:
    """The expiry (server ms) of the lease of the participant ``node_id``, if it waits."""
    for member in waiting_members(client, run_id, event):
        if member.endswith(":" + node_id):
            score = client.zscore(event_keys(run_id, event).leases, member)
            return None if score is None else float(score)
    return None


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


def assert_lost(error: object, missing: str) -> None:
    """``error`` is BrokenBarrierError(reason="lost") naming exactly ``missing``."""
    assert isinstance(error, BrokenBarrierError), error
    assert error.reason == "lost", error
    assert error.missing == (missing,), error


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
            time.sleep(0.2)  # a window in which the frozen one stays frozen
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
