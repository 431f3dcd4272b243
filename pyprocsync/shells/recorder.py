"""Each instance's outcomes: to the run's record and to its ``on_outcome`` callback,
after the instant, never on the way to it.

A call notes what it is before it runs (:meth:`Recorder.noting`); once it knows its
result it hands it over *before* it waits for the instant. A background writer (a
thread, or a task of the instance's event loop) takes the outcomes once their
participants have returned (``late_by`` is then final) and no instant of this instance
lies ahead, in batches (once the oldest is :data:`WRITE_AFTER_NS` old), at a *quiet*
moment: a call of this instance waiting for the others to arrive (its instant not known
yet: the caller is parked in the library anyway), or :data:`QUIET_WAIT_NS` later when
no call comes, and :data:`MAX_DEFER_NS` after the instant in any case. It calls
``on_outcome`` with each and adds them to the run's record in one pipeline per batch:
an ``XADD`` per outcome (the stream trimmed to about ``record_limit`` entries, the
oldest first, in whole blocks of the server's stream nodes) and, every tenth of the
run's ``retention``, a ``PEXPIRE`` to it. A write that fails is logged once (logger
``pyprocsync``) and ends this instance's recording; it never reaches a caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pyprocsync import clock
from pyprocsync.core import record
from pyprocsync.core.keys import record_key
from pyprocsync.core.ops import AtInstant, Due
from pyprocsync.core.params import Settings
from pyprocsync.exceptions import InvalidArgumentError, ProcSyncError
from pyprocsync.results import SyncResult

__all__ = [
    "EXPIRE_EVERY",
    "MAX_DEFER_NS",
    "QUIET_WAIT_NS",
    "RETURN_NS",
    "WRITE_AFTER_NS",
    "Note",
    "OnOutcome",
    "Recorder",
    "TaskRecorder",
    "ThreadRecorder",
]

log = logging.getLogger("pyprocsync")

#: How old the oldest outcome is at least when the writer takes what is pending, ns:
#: the outcomes of back-to-back rounds go out in batches.
WRITE_AFTER_NS = 50_000_000

#: How long after an instant its outcomes are taken at the latest, ns, also when a
#: participant of this process has not returned (a thread descheduled right at it: its
#: ``late_by`` is then recorded as unknown) or instants follow one another so closely
#: that no quiet moment comes.
MAX_DEFER_NS = 1_000_000_000

#: How long after an instant the writer leaves it alone for its participants to
#: return, ns.
RETURN_NS = 1_000_000

#: How much longer than :data:`WRITE_AFTER_NS` the writer waits for a quiet moment, ns.
QUIET_WAIT_NS = 50_000_000

#: The record's lifetime is renewed when a tenth of ``retention`` has passed since the
#: last renewal: the record lives at least 9/10 of ``retention`` after its last entry,
#: and its writes cost one command per outcome, not two.
EXPIRE_EVERY = 10

#: Longest ``close()`` waits for the outcomes still to be taken, seconds.
CLOSE_WAIT_S = 5.0

#: A callback that receives every outcome of an instance (see ``on_outcome``).
OnOutcome = Callable[[record.Outcome], object]


@dataclass(slots=True)
class Note:
    """One call, as noted when it began."""

    event: str
    nodes: int
    node: str
    called_ns: int
    #: The instant, on this host's monotonic clock (0: none, a failure).
    instant_ns: int = 0
    #: The release to record, or the failure's outcome.
    result: SyncResult | record.Outcome | None = None
    #: Whether the call is still learning its instant (counted in ``_calling``).
    open: bool = False


class Recorder:
    """The outcomes of one instance not yet taken (no I/O: see the subclasses)."""

    def __init__(self, settings: Settings, on_outcome: OnOutcome | None) -> None:
        if on_outcome is not None and not callable(on_outcome):
            raise InvalidArgumentError("on_outcome must be callable or None")
        self._settings = settings
        self._on_outcome = on_outcome
        self._writing = settings.record
        self._active = settings.record or on_outcome is not None
        self._pending: list[Note] = []
        #: Calls of this instance that do not know their instant yet.
        self._calling = 0
        self._lock = threading.Lock()
        self._closing = False
        #: Closing takes the releases at once, their ``late_by`` unknown.
        self._unsettled = False
        self._expire_due_ns = 0
        self._host = socket.gethostname()
        self._pid = os.getpid()

    @contextlib.contextmanager
    def noting(self, event: str, nodes: int) -> Iterator[Note | None]:
        """Note a call of ``event`` with ``nodes``; a :class:`~pyprocsync.ProcSyncError`
        it raises (but a bad argument) is recorded as it leaves. Yields ``None`` when
        this instance records nothing."""
        if not self._active:
            yield None
            return
        note = Note(event, nodes, self._settings.member_id, clock.time_ns())
        note.open = True
        with self._lock:
            self._calling += 1
            oldest = min((n.instant_ns for n in self._pending), default=None)
        if oldest is not None and clock.monotonic_ns() - oldest >= WRITE_AFTER_NS:
            self._wake()  # a quiet moment for a batch that is due
        try:
            yield note
        except BaseException as exc:
            if not isinstance(exc, ProcSyncError) or isinstance(exc, InvalidArgumentError):
                with self._lock:
                    self._settle(note)
                raise
            note.result = record.failed(
                exc,
                run_id=self._settings.run_id,
                event=event,
                nodes=nodes,
                node=note.node,
                host=self._host,
                pid=self._pid,
                called_ns=note.called_ns,
                clock=self._settings.clock,
            )
            self._add(note)
            raise

    def _settle(self, note: Note) -> None:
        """The call knows its instant, or has ended: it no longer counts in
        ``_calling``. Called with the lock held."""
        if note.open:
            note.open = False
            self._calling -= 1

    def due(self, note: Note | None, due: Due[SyncResult]) -> None:
        """Hand over a call's result (before its instant: nothing is read of it until
        its participant has returned)."""
        if note is None:
            return
        if isinstance(due, AtInstant):
            note.result = due.result
            wait = due.wait
            note.instant_ns = wait.at_ns
            if not wait.on_monotonic:
                note.instant_ns += clock.monotonic_ns() - clock.time_ns()
        else:
            note.result = due
        self._add(note)

    def _add(self, note: Note) -> None:
        if not note.instant_ns:  # a failure, or a result due at once
            note.instant_ns = clock.monotonic_ns()
        with self._lock:
            self._settle(note)
            if self._closing:
                return
            first = not self._pending
            self._pending.append(note)
        if first:  # else the writer is already waiting for the oldest
            self._wake()

    def _wake(self) -> None:
        """Start the writer if needed and let it look at the pending outcomes."""
        raise NotImplementedError

    def _take(self, now_ns: int, *, closing: bool) -> tuple[list[record.Outcome], float | None]:
        """The outcomes to write at ``now_ns`` (monotonic), and how long to wait before
        looking again (seconds; ``None``: none is pending).

        The returned outcomes go out together once the oldest is :data:`WRITE_AFTER_NS`
        old and no instant of this instance lies ahead (or has just passed), at a quiet
        moment (a call of this instance waiting for arrivals) or, when none comes,
        :data:`QUIET_WAIT_NS` later; each goes out :data:`MAX_DEFER_NS` after its
        instant in any case."""
        taken: list[record.Outcome] = []
        with self._lock:
            ahead = [n.instant_ns for n in self._pending if n.instant_ns + RETURN_NS > now_ns]
            ready = [n.instant_ns for n in self._pending if self._returned(n)]
            oldest = now_ns - min(ready, default=now_ns)
            go = closing or (
                not ahead
                and oldest >= WRITE_AFTER_NS
                and (self._calling > 0 or oldest >= WRITE_AFTER_NS + QUIET_WAIT_NS)
            )
            left: list[Note] = []
            for note in self._pending:
                outcome = self._outcome(note, now_ns, go=go, closing=closing)
                if outcome is None:
                    left.append(note)
                else:
                    taken.append(outcome)
            self._pending = left
            times = [n.instant_ns + MAX_DEFER_NS for n in left]
            if ready:
                times.append(min(ready) + WRITE_AFTER_NS)
                times.append(min(ready) + WRITE_AFTER_NS + QUIET_WAIT_NS)
            if ahead:
                times.append(min(ahead) + RETURN_NS)
            if len(ready) < len(left):  # one has not returned: look again soon
                times.append(now_ns)
        if not left:
            return taken, None
        later = [t for t in times if t > now_ns] or [now_ns]
        return taken, max(0.001, (min(later) - now_ns) / 1e9)

    @staticmethod
    def _returned(note: Note) -> bool:
        """Whether ``note`` holds a failure, or a release whose participant returned
        (its ``late_by`` is no longer the one of the warm-up before the instant, below
        0)."""
        result = note.result
        return isinstance(result, record.Outcome) or (result is not None and result.late_by >= 0)

    def _outcome(
        self, note: Note, now_ns: int, *, go: bool, closing: bool
    ) -> record.Outcome | None:
        """The outcome of ``note`` if it is to be written now: when the batch goes
        (``go``) and its participant has returned; :data:`MAX_DEFER_NS` after its
        instant, or when closing without settling (``_unsettled``), in any case (its
        ``late_by`` unknown if its participant has not returned)."""
        result = note.result
        if result is None:
            return None
        returned = self._returned(note)
        forced = now_ns - note.instant_ns >= MAX_DEFER_NS or (closing and self._unsettled)
        if not forced and not (go and returned):
            return None
        if isinstance(result, record.Outcome):
            return result
        outcome = record.released(
            result,
            run_id=self._settings.run_id,
            node=note.node,
            host=self._host,
            pid=self._pid,
            called_ns=note.called_ns,
        )
        return outcome if returned else dataclasses.replace(outcome, late_by=None)

    def _call_back(self, outcomes: list[record.Outcome]) -> None:
        if self._on_outcome is None:
            return
        for outcome in outcomes:
            try:
                self._on_outcome(outcome)
            except Exception:
                log.exception(
                    "on_outcome raised for %s round %s", outcome.event, outcome.generation
                )

    def _batch(self, client: Any, outcomes: list[record.Outcome]) -> Any:
        """Call ``on_outcome`` with ``outcomes``; then, if the record is written, a
        pipeline of ``client`` holding their commands (see :meth:`_commands`), else
        ``None``."""
        self._call_back(outcomes)
        if not self._writing:
            return None
        pipe = client.pipeline(transaction=False)
        self._commands(pipe, outcomes)
        return pipe

    def _commands(self, pipe: Any, outcomes: list[record.Outcome]) -> None:
        """Queue the record's commands for ``outcomes`` on ``pipe``: an ``XADD`` each,
        and a ``PEXPIRE`` when the last is :data:`EXPIRE_EVERY` of ``retention`` old."""
        key = record_key(self._settings.prefix, self._settings.run_id)
        for outcome in outcomes:
            pipe.xadd(key, record.encode(outcome), maxlen=self._settings.record_limit)  # ~
        now_ns = clock.monotonic_ns()
        if now_ns >= self._expire_due_ns:
            pipe.pexpire(key, self._settings.retention_ms)
            self._expire_due_ns = now_ns + self._settings.retention_ms * 1_000_000 // EXPIRE_EVERY

    def _failed(self, exc: Exception) -> None:
        """A write failed: say so once and stop writing."""
        self._writing = False
        log.warning(
            "the run's record could not be written (%s: %s); this instance records no more "
            "outcomes (see `pyprocsync report`)",
            type(exc).__name__,
            exc,
        )


class ThreadRecorder(Recorder):
    """A :class:`Recorder` whose writer is a daemon thread, using ``client``."""

    def __init__(self, settings: Settings, on_outcome: OnOutcome | None, client: Any) -> None:
        super().__init__(settings, on_outcome)
        self._client = client
        self._signal = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def _wake(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="pyprocsync-record", daemon=True
                )
                self._thread.start()
            self._signal.notify()

    def _serve(self) -> None:
        while True:
            with self._lock:
                closing = self._closing
            outcomes, wait = self._take(clock.monotonic_ns(), closing=closing)
            if outcomes:
                self._deliver(outcomes)
                continue
            with self._lock:
                if self._closing and not self._pending:
                    return
                self._signal.wait(wait)

    def _deliver(self, outcomes: list[record.Outcome]) -> None:
        pipe = self._batch(self._client, outcomes)
        if pipe is None:
            return
        try:
            pipe.execute()
        except Exception as exc:  # noqa: BLE001  # logged; never reaches a caller
            self._failed(exc)

    def close(self, *, settle: bool = True) -> None:
        """Take what is pending, then end the writer: with ``settle``, once the
        participants have returned (waiting for instants still ahead, at most
        :data:`CLOSE_WAIT_S`); without, at once, the releases' ``late_by`` unknown (a
        process that is to end at the instant: ``pyprocsync sync``)."""
        with self._lock:
            self._closing = True
            self._unsettled = not settle
            thread = self._thread
            self._signal.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT_S)


class TaskRecorder(Recorder):
    """A :class:`Recorder` whose writer is a task of the event loop it was first
    used in, using ``client`` (a ``redis.asyncio`` client)."""

    def __init__(self, settings: Settings, on_outcome: OnOutcome | None, client: Any) -> None:
        super().__init__(settings, on_outcome)
        self._client = client
        self._task: asyncio.Task[None] | None = None
        self._signal: asyncio.Event | None = None

    def _wake(self) -> None:
        if self._task is None:
            self._signal = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._serve(), name="pyprocsync-record"
            )
        if self._signal is not None:
            self._signal.set()

    async def _serve(self) -> None:
        signal = self._signal
        if signal is None:
            return
        while True:
            outcomes, wait = self._take(clock.monotonic_ns(), closing=self._closing)
            if outcomes:
                await self._deliver(outcomes)
                continue
            if self._closing and not self._pending:
                return
            signal.clear()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(signal.wait(), wait)

    async def _deliver(self, outcomes: list[record.Outcome]) -> None:
        pipe = self._batch(self._client, outcomes)
        if pipe is None:
            return
        try:
            await pipe.execute()
        except Exception as exc:  # noqa: BLE001  # logged; never reaches a caller
            self._failed(exc)

    async def aclose(self) -> None:
        """:meth:`ThreadRecorder.close` for the task."""
        self._closing = True
        task = self._task
        if task is None or task.done():
            return
        if self._signal is not None:
            self._signal.set()
        if task.get_loop() is not asyncio.get_running_loop():
            return
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), CLOSE_WAIT_S)
