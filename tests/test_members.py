"""Run membership (``member=True``) and the "still waiting" log, against a real server.

A member that dies before it arrives must break the rounds the others wait in, naming
it, within about its lease; a member waiting in the round must not; a closed member
leaves no registration; ``pyprocsync status`` lists members.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import pytest
import redis
from runner import Participants
from support import in_threads, run_command, start_thread, wait_until, waiting_members

from pyprocsync import ProcSync
from pyprocsync.core import rounds
from pyprocsync.core.keys import members_key
from pyprocsync.tools.server import EmbeddedServer
from pyprocsync.tools.status import read_members

LIVENESS = 0.5


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_member_killed_before_arrival_breaks_the_round(participants: Participants) -> None:
    """Three member processes; one is SIGKILLed after registering, before it arrives.
    The two waiting ones raise BrokenBarrierError(reason="lost", missing=["dead"]) in
    about the lease, long before their 30 s timeout."""
    started = time.monotonic()
    options = {"member": True, "liveness": LIVENESS, "sync_timeout": 30}
    dead = participants.start("m", 3, node_id="dead", die_before_arrival=True, **options)
    alive = [participants.start("m", 3, node_id=f"n{i}", **options) for i in range(2)]
    participants.wait([dead, *alive], timeout=30)
    elapsed = time.monotonic() - started
    assert dead.records == []  # it died before printing anything
    for node in alive:
        record = node.last()
        assert record["error"] == "BrokenBarrierError", record
        assert record["attrs"]["reason"] == "lost"
        assert record["attrs"]["missing"] == ["dead"]
    assert elapsed < 20, f"took {elapsed:.1f} s"  # far below the 30 s timeout


@pytest.mark.timeout(30)
def test_lapsed_member_waiting_in_the_round_does_not_break_it(
    make_sync: Callable[..., ProcSync],
) -> None:
    """A member whose registration lapsed but which waits in the round (its lease there
    is live) is not missing: the round completes when the last one arrives."""
    first = make_sync(0.05, member=True, node_id="a", liveness=LIVENESS)
    second = make_sync(0.05, member=True, node_id="b", liveness=LIVENESS)
    third = make_sync(0.05, node_id="c", liveness=LIVENESS)
    second.reset("warm")  # registers "b"
    assert second._membership is not None
    second._membership._stopped.set()  # "b" stops renewing: it lapses, but waits
    waiting = [start_thread(lambda s=s: s.sync("r", 3, 20)) for s in (first, second)]
    time.sleep(LIVENESS * 4)  # "b" lapsed; the members' heartbeats ran LOST
    late = third.sync("r", 3, 20)
    for thread, outcome in waiting:
        thread.join(20)
        assert outcome.result().release_at == late.release_at


@pytest.mark.timeout(30)
def test_close_removes_the_registration(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """A member is listed live from its first call until close(), then not at all."""
    sync = make_sync(0, member=True, node_id="worker-1")
    assert read_members(client, run_id) == []
    sync.sync("e", 1, 5)
    (member,) = read_members(client, run_id)
    assert (member.node_id, member.live) == ("worker-1", True)
    assert 0 < member.expires_in <= 5.0
    assert client.pttl(members_key("pyprocsync", run_id)) > 0
    sync.close()
    assert read_members(client, run_id) == []


@pytest.mark.timeout(30)
def test_status_lists_live_and_lapsed_members(
    make_sync: Callable[..., ProcSync], server: EmbeddedServer, run_id: str
) -> None:
    """``pyprocsync status`` prints each member with its state."""
    live = make_sync(0, member=True, node_id="live-one", liveness=LIVENESS)
    gone = make_sync(0, member=True, node_id="gone-one", liveness=LIVENESS)
    live.sync("e", 1, 5)
    gone.sync("e", 1, 5)
    assert gone._membership is not None
    gone._membership._stopped.set()
    time.sleep(LIVENESS * 3)  # the registration of "gone-one" lapses
    done = run_command(
        [sys.executable, "-m", "pyprocsync", "status", "--redis", server.url, "--run", run_id]
    )
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[-2:]}
    assert lines == {"gone-one": "lapsed", "live-one": "live"}, done.stdout


@pytest.mark.timeout(30)
def test_waiting_participant_logs_who_arrived(
    make_sync: Callable[..., ProcSync],
    client: redis.Redis,
    run_id: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While waiting, a participant logs (WARNING, logger "pyprocsync") how many of how
    many arrived and who they are, at most once per report interval."""
    monkeypatch.setattr(rounds, "REPORT_INTERVAL_S", 0.3)
    caplog.set_level(logging.WARNING, logger="pyprocsync")
    sync = make_sync(0, node_id="waiter-x", liveness=0.25)
    thread, outcome = start_thread(lambda: sync.sync("slow", 2, 20))
    wait_until(lambda: len(waiting_members(client, run_id, "slow")) == 1, 10, "the arrival")
    waited = time.monotonic()
    time.sleep(1.2)  # longer than the report interval (0.3 s)
    make_sync(0).sync("slow", 2, 10)
    waited = time.monotonic() - waited
    thread.join(10)
    outcome.result()
    reports = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert 1 <= len(reports) <= waited / 0.3 + 2, reports
    assert "1 of 2 arrived (waiter-x)" in reports[0]


@pytest.mark.timeout(30)
def test_member_option_is_validated(client: redis.Redis) -> None:
    """``member`` must be a bool; anything else is refused before any I/O."""
    with pytest.raises(TypeError):
        ProcSync(client, "r", 0, member=1)  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_members_in_threads_share_one_registration(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """One member instance used by several threads registers its node id once."""
    sync = make_sync(0.02, member=True, node_id="cell-1")
    results = in_threads(*(lambda: sync.sync("t", 3, 10) for _ in range(3)))
    assert len({o.result().release_at for o in results}) == 1
    assert [m.node_id for m in read_members(client, run_id)] == ["cell-1"]
