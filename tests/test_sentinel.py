"""Redis Sentinel (issue 6): participants on ``Sentinel.master_for`` clients, and failovers.

Each test gets a set-up of its own (``sentinel_support.start_sentinel_setup``): a master,
its replica and three sentinels, all real processes. ``failover()`` asks a sentinel for
``SENTINEL FAILOVER`` and returns once the replica is the master everyone names and the
old master replicates it (the sentinels close the old master's client connections when
they demote it, as after a real failover).

What the library promises across a failover: a round that nobody waits in is not
affected (a participant may need one reconnect, reported at most once, as a
``ProcSyncError``); participants that wait while it happens either leave together with
one release instant or raise a ``ProcSyncError``, within their timeout; none hangs and
none returns an instant the others do not share.

The first test checks the harness with plain redis-py; the others the library.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest
import redis
from cluster_support import assert_one_round
from redis.sentinel import Sentinel
from sentinel_support import SentinelSetup
from support import LONG, Outcome, event_keys, in_threads, join, start_thread, wait_until

import pyprocsync
from pyprocsync import ProcSync

pytest_plugins = ("cluster_fixtures",)

T = TypeVar("T")

#: The timeout of the first round after a failover: long enough for a reconnect, short
#: enough that a round broken by one participant's error does not hold the test long.
AFTER_FAILOVER = 6.0
#: How long after its timeout a participant must have returned or raised, seconds.
MARGIN = 3.0
#: What a participant caught by a failover may raise (all are ``ProcSyncError``s).
TYPED = (
    pyprocsync.ConnectionLostError,
    pyprocsync.BrokenBarrierError,
    pyprocsync.TimeOutError,
    pyprocsync.TooLateError,
)


def once_more(call: Callable[[], T]) -> T:
    """``call()``, repeated once if the connection broke (a client that still talks to
    the demoted master learns so from its error)."""
    try:
        return call()
    except redis.exceptions.ConnectionError:
        return call()


def attempt(syncs: Sequence[ProcSync], name: str, timeout: float) -> list[Outcome]:
    """Every instance of ``syncs`` calls ``sync(name, len(syncs), timeout)`` in a thread
    of its own; return the outcomes once all have ended."""
    calls = [functools.partial(s.sync, name, len(syncs), timeout) for s in syncs]
    return in_threads(*calls, timeout=timeout + MARGIN)


@pytest.mark.slow
def test_harness_master_replica_and_failover(
    sentinel_setup: SentinelSetup,
    sentinel: Sentinel,
    master_client: Callable[..., redis.Redis],
    run_id: str,
) -> None:
    key = f"harness:{run_id}"
    master = master_client()
    master.set(key, "before", ex=60)
    replica = sentinel.slave_for(sentinel_setup.name)  # type: ignore[no-untyped-call]
    try:
        wait_until(lambda: replica.get(key) == b"before", what="the replica to copy the key")
    finally:
        replica.close()
    old = sentinel_setup.master()
    assert sentinel.discover_master(sentinel_setup.name) == (old.bind, old.port)  # type: ignore[no-untyped-call]

    new = sentinel_setup.failover()

    assert new is not old
    assert sentinel.discover_master(sentinel_setup.name) == (new.bind, new.port)  # type: ignore[no-untyped-call]
    assert sentinel_setup.admin(old).info("replication")["role"] == "slave"
    assert once_more(lambda: master.get(key)) == b"before"
    once_more(lambda: master.set(key, "after", ex=60))
    assert sentinel_setup.admin(new).get(key) == "after"


def test_threads_sync_through_sentinel(
    master_client: Callable[..., redis.Redis], run_id: str
) -> None:
    """Three participants, each with its own ``master_for`` client, pass three rounds."""

    def participant() -> list[pyprocsync.SyncResult]:
        with ProcSync(master_client(), run_id, 0.05) as sync:
            return [sync.sync("s", 3, timeout=LONG) for _ in range(3)]

    outcomes = in_threads(participant, participant, participant, timeout=LONG)
    per_participant = [outcome.result() for outcome in outcomes]
    for number, group in enumerate(zip(*per_participant, strict=True)):
        assert_one_round(group, 3)
        assert group[0].generation == number


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_failover_between_rounds(
    sentinel_setup: SentinelSetup, master_client: Callable[..., redis.Redis], run_id: str
) -> None:
    """After a failover with nobody waiting, the same instances go on: the first round
    after it may cost each participant one typed error (a reconnect), no more, and the
    round after that passes."""
    syncs = [ProcSync(master_client(), run_id, 0.05) for _ in range(3)]
    try:
        assert_one_round([o.result() for o in attempt(syncs, "before", LONG)], 3)
        sentinel_setup.failover()

        first = attempt(syncs, "after", AFTER_FAILOVER)
        errors = [o.error for o in first if o.error is not None]
        for error in errors:
            assert isinstance(error, pyprocsync.ProcSyncError), repr(error)
        passed = [o.value for o in first if o.error is None]
        assert len({r.release_at for r in passed}) <= 1, passed
        if errors:
            name = "after-retry"
            retried = attempt(syncs, name, LONG)
            assert_one_round([o.result() for o in retried], 3)
        else:
            name = "after"
            assert_one_round(passed, 3)
        state = event_keys(run_id, name).state
        assert sentinel_setup.admin(sentinel_setup.master()).exists(state)
    finally:
        for sync in syncs:
            sync.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_failover_while_participants_wait(
    sentinel_setup: SentinelSetup, master_client: Callable[..., redis.Redis], run_id: str
) -> None:
    """Two participants wait when the master fails over; the third arrives at the new
    master. Each participant leaves with the instant all leavers share, fixed after the
    third arrived, or raises a typed error, within its timeout; none hangs."""
    timeout = 10.0
    keys = event_keys(run_id, "x")
    syncs = [ProcSync(master_client(), run_id, 0.05) for _ in range(3)]
    try:
        calls = [functools.partial(sync.sync, "x", 3, timeout) for sync in syncs]
        started = [time.monotonic()] * 2
        early = [start_thread(call) for call in calls[:2]]
        admin = sentinel_setup.admin(sentinel_setup.master())
        wait_until(lambda: admin.zcard(keys.leases) == 2, 10, "two participants waiting")
        admin.wait(1, 2000)  # the replica holds their arrivals too

        sentinel_setup.failover()

        before_last = time.time()
        started.append(time.monotonic())
        last = start_thread(calls[2])
        threads = [*early, last]
        join([thread for thread, _ in threads], timeout + MARGIN)

        released = []
        for (_, outcome), since in zip(threads, started, strict=True):
            assert outcome.finished_at is not None
            assert outcome.finished_at - since <= timeout + MARGIN
            if outcome.error is None:
                released.append(outcome.value)
            else:
                assert isinstance(outcome.error, TYPED), repr(outcome.error)
        assert len({(r.generation, r.release_at) for r in released}) <= 1, released
        assert all(r.release_at > before_last for r in released), (before_last, released)
    finally:
        for sync in syncs:
            sync.close()
