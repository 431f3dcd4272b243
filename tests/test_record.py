"""The run's record: every participant's outcome, written after the instant
(:mod:`pyprocsync.shells.recorder`, :mod:`pyprocsync.core.record`).

Real server, real processes where a participant dies; the entries are read back with
``XRANGE`` and :func:`pyprocsync.core.record.decode`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

import pytest
import redis
from cli_support import run as cli_run
from cli_support import sync_args
from runner import Participants
from support import EmbeddedServer, arun, user_url, wait_until, waiting_members

import pyprocsync.asyncio as aio
from pyprocsync import Barrier, ProcSync
from pyprocsync.core import record
from pyprocsync.core.keys import record_key
from pyprocsync.core.params import Settings
from pyprocsync.exceptions import InvalidArgumentError
from pyprocsync.results import SyncResult
from pyprocsync.shells import recorder
from pyprocsync.tools.acl import acl_rule


def entries(client: redis.Redis, run_id: str) -> list[tuple[int, record.Outcome]]:
    """The run's record: (entry id's milliseconds, outcome) per entry, oldest first."""
    return [
        (int(entry_id.split(b"-")[0]), record.decode(fields))
        for entry_id, fields in client.xrange(record_key("pyprocsync", run_id))
    ]


def in_threads(count: int, body: Callable[[int], object]) -> None:
    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)


def test_every_release_is_recorded_after_its_instant(
    client: redis.Redis, run_id: str, make_sync: Callable[..., ProcSync]
) -> None:
    """Two participants x 3 rounds: 6 entries with the results' fields, each written
    no earlier than its instant (the write never precedes the release), and the record
    expires with the run's retention."""
    node = make_sync(0.02, retention=30, liveness=5)
    results: list[object] = []
    in_threads(2, lambda i: results.extend(node.sync(f"p{r}", 2) for r in range(3)))
    node.close()
    recorded = entries(client, run_id)
    assert len(recorded) == 6
    by_key = {(o.event, o.index): (ms, o) for ms, o in recorded}
    for result in results:
        ms, outcome = by_key[(result.event, result.index)]  # type: ignore[attr-defined]
        assert outcome.kind == "released"
        assert outcome.run_id == run_id
        assert outcome.generation == result.generation  # type: ignore[attr-defined]
        assert outcome.release_at == result.release_at  # type: ignore[attr-defined]
        assert outcome.late_by == result.late_by >= 0  # type: ignore[attr-defined]
        assert outcome.delay == pytest.approx(0.02)
        assert outcome.nodes == 2
        assert outcome.clock == "system"
        assert outcome.called_at <= outcome.release_at
        assert ms >= outcome.release_at * 1000
    assert 0 < client.pttl(record_key("pyprocsync", run_id)) <= 30_000


def test_failures_are_recorded_with_their_cause(
    client: redis.Redis, run_id: str, make_sync: Callable[..., ProcSync]
) -> None:
    """A timeout and a mismatch of ``nodes`` are recorded as they leave the call; a bad
    argument is not a round and is not recorded."""
    node = make_sync(0.02)
    with pytest.raises(Exception, match="gave up"):
        node.sync("alone", 2, timeout=0.2)
    with pytest.raises(InvalidArgumentError):
        node.sync("", 2)
    other = make_sync(0.02)
    errors: list[BaseException] = []

    def join(index: int) -> None:
        try:
            (node if index else other).sync("m", 2 + index, timeout=5)
        except Exception as exc:  # both raise; the test looks at the record
            errors.append(exc)

    in_threads(2, join)
    node.close()
    other.close()
    kinds = sorted((o.event, o.kind) for _ms, o in entries(client, run_id))
    assert ("alone", "timed_out") in kinds
    assert {kind for event, kind in kinds if event == "m"} <= {"mismatch", "broken"}
    assert len([1 for event, _kind in kinds if event == "m"]) == 2
    assert all(event != "" for event, _kind in kinds)


def test_on_outcome_gets_every_outcome_and_a_failing_callback_is_logged(
    client: redis.Redis,
    run_id: str,
    make_sync: Callable[..., ProcSync],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The callback runs for each outcome, off the caller's thread; one that raises is
    logged and changes nothing else (the record still gets every entry)."""
    seen: list[tuple[record.Outcome, str]] = []

    def callback(outcome: record.Outcome) -> None:
        seen.append((outcome, threading.current_thread().name))
        if outcome.event == "boom":
            raise RuntimeError("the monitoring failed")

    node = make_sync(0.01, on_outcome=callback)
    node.sync("a", 1)
    node.sync("boom", 1)
    node.sync("b", 1)
    node.close()
    assert [o.event for o, _thread in seen] == ["a", "boom", "b"]
    assert {thread for _o, thread in seen} == {"pyprocsync-record"}
    assert "on_outcome raised" in caplog.text
    assert len(entries(client, run_id)) == 3
    with pytest.raises(InvalidArgumentError):
        make_sync(on_outcome="print")


def test_record_off_writes_nothing_and_still_calls_back(
    client: redis.Redis, run_id: str, make_sync: Callable[..., ProcSync]
) -> None:
    seen: list[record.Outcome] = []
    node = make_sync(0.01, record=False, on_outcome=seen.append)
    node.sync("a", 1)
    node.close()
    assert [o.event for o in seen] == ["a"]
    assert not client.exists(record_key("pyprocsync", run_id))


def test_the_record_stays_within_its_limit(
    client: redis.Redis, run_id: str, make_sync: Callable[..., ProcSync]
) -> None:
    """A run past its ``record_limit`` keeps about that many entries, the newest (the
    server trims in whole blocks of its stream nodes, at most 100 entries each)."""
    node = make_sync(0, record_limit=150)
    for number in range(600):
        node.sync(f"e{number}", 1)
    node.close()
    recorded = entries(client, run_id)
    assert 150 <= len(recorded) <= 250
    assert recorded[-1][1].event == "e599"


def test_a_refused_write_is_logged_once_and_never_reaches_the_caller(
    server: EmbeddedServer,
    run_id: str,
    make_user: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user whose ACL lacks XADD: every sync returns normally, one warning says the
    record cannot be written."""
    limited = redis.Redis.from_url(user_url(server, make_user(acl_rule().replace(" +xadd", ""))))
    node = ProcSync(limited, run_id, 0.01, on_late="proceed")
    with caplog.at_level(logging.WARNING, logger="pyprocsync"):
        for number in range(3):
            node.sync(f"r{number}", 1)
        node.close()
    limited.close()
    assert caplog.text.count("could not be written") == 1


def test_a_barrier_records_its_rounds(
    client: redis.Redis, run_id: str, make_barrier: Callable[..., Barrier]
) -> None:
    barrier = make_barrier("door", 2)
    in_threads(2, lambda _i: barrier.wait(timeout=10))
    barrier.close()
    outcomes = [o for _ms, o in entries(client, run_id)]
    assert sorted((o.event, o.kind, o.index) for o in outcomes) == [
        ("door", "released", 0),
        ("door", "released", 1),
    ]


def test_asyncio_tasks_are_recorded(
    server: EmbeddedServer, run_id: str, client: redis.Redis
) -> None:
    seen: list[record.Outcome] = []

    async def main() -> None:
        async with aio.ProcSync.from_url(server.url, run_id, 0.02, on_outcome=seen.append) as node:
            await asyncio.gather(*(node.sync("t", 3) for _ in range(3)))

    arun(main)
    outcomes = [o for _ms, o in entries(client, run_id)]
    assert sorted(o.index for o in outcomes) == [0, 1, 2]
    assert {o.kind for o in outcomes} == {"released"}
    assert len(seen) == 3


@pytest.mark.timeout(60)
def test_a_killed_participant_leaves_its_entry_missing(
    participants: Participants, client: redis.Redis, run_id: str
) -> None:
    """Four of a round: the third SIGKILLed after arriving. The survivors record the
    broken round (reason "lost"); the killed one has no entry, so the round's record
    shows two of four participants."""
    survivors = [
        participants.start("k", 4, sync_timeout=30, liveness=0.5, node_id=f"alive-{i}")
        for i in range(2)
    ]
    wait_until(lambda: len(waiting_members(client, run_id, "k")) == 2, 20, "two survivors")
    crasher = participants.start("k", 4, liveness=0.5, node_id="crasher", die_after_arrival=True)
    crasher.process.wait(20)
    assert crasher.process.returncode == -signal.SIGKILL
    participants.wait(survivors, timeout=40)
    outcomes = [o for _ms, o in entries(client, run_id)]
    assert sorted(o.node for o in outcomes) == ["alive-0", "alive-1"]
    assert {(o.kind, o.reason, o.nodes) for o in outcomes} == {("broken", "lost", 4)}


def release(instant_ns: int, late_by: float) -> recorder.Note:
    """A noted release whose instant is ``instant_ns`` on the monotonic clock."""
    result = SyncResult("e", 0, 0, 1, release_at=100.0, late_by=late_by, delay=0.05)
    note = recorder.Note("e", 1, "n", called_ns=99_950_000_000, instant_ns=instant_ns)
    note.result = result
    return note


@pytest.fixture
def book(monkeypatch: pytest.MonkeyPatch) -> recorder.Recorder:
    """A recorder without a writer: the tests call ``_take`` with their own times."""
    instance = recorder.Recorder(Settings.create(run_id="r"), None)
    monkeypatch.setattr(instance, "_wake", lambda: None)
    return instance


def test_late_by_unknown_when_the_participant_never_returns(book: recorder.Recorder) -> None:
    """The writer takes a release once its participant has returned (``late_by`` >= 0);
    one that has not returned MAX_DEFER_NS after the instant is taken with ``late_by``
    unknown, not with the warm-up's reading."""
    instant = 100_000_000_000
    note = release(instant, -30e-6)
    book._add(note)
    assert book._take(instant + recorder.WRITE_AFTER_NS, closing=False)[0] == []
    taken, _wait = book._take(instant + recorder.MAX_DEFER_NS, closing=False)
    assert [(o.event, o.late_by) for o in taken] == [("e", None)]
    object.__setattr__(note.result, "late_by", 12e-6)
    book._add(note)
    idle = instant + recorder.WRITE_AFTER_NS + recorder.QUIET_WAIT_NS
    assert [o.late_by for o in book._take(idle, closing=False)[0]] == [12e-6]


def test_the_writer_waits_for_a_quiet_moment(book: recorder.Recorder) -> None:
    """Returned outcomes go out together once the oldest is WRITE_AFTER_NS old, never
    while an instant of the instance lies ahead (or has just passed), at once while a
    call of the instance waits for arrivals, else QUIET_WAIT_NS later; MAX_DEFER_NS
    after its instant an outcome goes out in any case."""
    instant = 100_000_000_000
    book._add(release(instant, 5e-6))
    young = instant + 2 * recorder.RETURN_NS
    taken, wait = book._take(young, closing=False)
    assert taken == []
    assert wait == pytest.approx((recorder.WRITE_AFTER_NS - 2 * recorder.RETURN_NS) / 1e9)
    ripe = instant + recorder.WRITE_AFTER_NS
    ahead = release(ripe + 10_000_000, -1e-6)
    book._add(ahead)
    taken, wait = book._take(ripe, closing=False)
    assert taken == []  # an instant is ahead: look again just after it
    assert wait == pytest.approx((10_000_000 + recorder.RETURN_NS) / 1e9)
    after = ahead.instant_ns + 2 * recorder.RETURN_NS
    taken, wait = book._take(after, closing=False)
    assert taken == []  # its participant has not returned, nobody waits for arrivals
    object.__setattr__(ahead.result, "late_by", 3e-6)
    with book.noting("next", 1) as note:  # a call waits for the others: a quiet moment
        assert [o.late_by for o in book._take(after, closing=False)[0]] == [5e-6, 3e-6]
    assert note is not None
    with book._lock:
        book._settle(note)  # the call learned its instant (or ended)
    book._add(release(ripe, 4e-6))
    idle = ripe + recorder.WRITE_AFTER_NS
    assert book._take(idle, closing=False)[0] == []  # no call: wait for one a while
    assert len(book._take(idle + recorder.QUIET_WAIT_NS, closing=False)[0]) == 1
    book._add(release(instant, 5e-6))
    book._add(release(instant + recorder.MAX_DEFER_NS + 5_000_000, -1e-6))  # always ahead
    forced = book._take(instant + recorder.MAX_DEFER_NS, closing=False)[0]
    assert [o.late_by for o in forced] == [5e-6]


@pytest.mark.parametrize("delay", ["0.3", "0.02"], ids=["hand-off", "own-wait"])
def test_the_sync_command_records_its_release_before_the_instant(
    server: EmbeddedServer, client: redis.Redis, run_id: str, delay: str
) -> None:
    """``pyprocsync sync`` ends (or execs) at the instant, so its entry goes out before
    it, ``late_by`` unknown: with a hand-off to the waiting interpreter and without."""
    done = cli_run(*sync_args("cli", 1, run_id, "--delay", delay, "--redis", server.url))
    assert done.returncode == 0, done.stderr
    recorded = entries(client, run_id)
    assert [(o.event, o.kind, o.late_by) for _ms, o in recorded] == [("cli", "released", None)]
    if delay == "0.3":  # a lead far longer than one write (a short one may not be)
        assert recorded[0][0] <= recorded[0][1].release_at * 1000
