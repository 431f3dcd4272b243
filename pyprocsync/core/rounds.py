"""Rounds: the flows behind ``ProcSync.sync`` and ``Barrier``, free of I/O.

One participant in one round goes through these states::

    LISTENING --confirmed--> ARRIVING --ARRIVE--> WAITING --outcome--> RELEASING
                                 |    \\                |
                                 |     +--> ACTING ----+   (last arrival with an action)
                                 +-- refused ---------+--> raise

* LISTENING: the event's channel is subscribed before the arrival (see
  :class:`pyprocsync.core.waiter.Waiter`).
* ARRIVING: the ARRIVE script counts the arrival atomically; the last arrival decides
  the release instant (its wall clock, or in server-clock mode the server's, plus its
  delay or the automatic lead), stores it and publishes it. If the
  round is full while its action runs, the arrival waits for that round's outcome and
  arrives again (it belongs to the next round).
* ACTING: a last arrival that has a barrier action runs it while the others wait, then
  RELEASE fixes the instant; if the action raises, the round breaks (reason
  ``"action"``) and the action's exception reaches this participant.
* WAITING: block on the subscription; CHECK reads the stored outcome and renews this
  participant's lease (a state found gone yields to this round's announcement if it was
  already received). A member of the run (``member=True``) also breaks the round
  (LOST) when a registered member's registration lapsed and it is not waiting in the
  round. Every :data:`REPORT_INTERVAL_S` seconds the waiter logs who has arrived
  (logger ``pyprocsync``, level WARNING). When the timeout expires, ABANDON breaks
  the round unless it was decided meanwhile. An interruption (KeyboardInterrupt, task
  cancellation, an unexpected error) withdraws the arrival while the round is undecided.
* RELEASING: a broken outcome raises; a release instant is awaited precisely (or
  raises :class:`~pyprocsync.exceptions.TooLateError` when it had passed by more than
  the tolerance when learned).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import Any

from redis.exceptions import ResponseError

from pyprocsync import clock
from pyprocsync.core import params
from pyprocsync.core.keys import EventKeys
from pyprocsync.core.members import decode_lapsed, member_request
from pyprocsync.core.memory import EventMemory
from pyprocsync.core.ops import (
    LINK_ERRORS,
    Due,
    Flow,
    RunAction,
    call,
    prepare,
    text,
)
from pyprocsync.core.params import Settings
from pyprocsync.core.servertime import ClockState
from pyprocsync.core.waiter import RECHECK, Signal, Waiter
from pyprocsync.core.wire import (
    CURRENT_ROUND,
    MEMBER_TAG_HEX,
    NEVER_RELEASED,
    READ_ONLY,
    UNCERTAIN,
    Abandon,
    Abort,
    Arrival,
    Arrive,
    Broken,
    Check,
    Lost,
    Outcome,
    Read,
    Release,
    Released,
    Reset,
    RoundState,
    Verdict,
    Withdraw,
    decode_read,
    parse_outcome,
)
from pyprocsync.exceptions import (
    BrokenBarrierError,
    BrokenByTimeoutError,
    ParameterMismatchError,
    ProcSyncError,
    ProtocolError,
    TimeOutError,
)
from pyprocsync.results import SyncResult

__all__ = [
    "REPORT_INTERVAL_S",
    "Broken",
    "Released",
    "RoundState",
    "abort_flow",
    "parse_outcome",
    "read_flow",
    "reset_flow",
    "sync_flow",
]


#: Seconds between two "still waiting" log records of one waiting participant.
REPORT_INTERVAL_S = 10.0

log = logging.getLogger("pyprocsync")


#: Most buffered messages read for this round's announcement before believing that its
#: state vanished.
_DRAIN_LIMIT = 64


class _Participant(Waiter[Outcome]):
    """One participant's attempt at one round of one synchronization point."""

    def __init__(
        self,
        settings: Settings,
        clocks: ClockState,
        event: str,
        nodes: int,
        timeout: float | None,
        *,
        memory: EventMemory,
        has_action: bool = False,
    ) -> None:
        self.keys = EventKeys.of(settings.prefix, settings.run_id, event)
        super().__init__(settings, clocks, event, self.keys.channel, timeout, memory=memory)
        self.nodes = nodes
        self.has_action = has_action
        self.member = f"{secrets.token_hex(MEMBER_TAG_HEX // 2)}:{settings.member_id}"
        self.generation = CURRENT_ROUND
        self.index = -1
        self._next_report = clock.monotonic() + REPORT_INTERVAL_S

    # -- errors --------------------------------------------------------------------

    def where(self) -> dict[str, Any]:
        gen = self.generation if self.generation >= 0 else None
        return {"event": self.name, "run_id": self.settings.run_id, "generation": gen}

    def _broken(self, outcome: Broken) -> BrokenBarrierError:
        missing = f"; missing: {', '.join(outcome.missing)}" if outcome.missing else ""
        message = (
            f"round {outcome.generation} of {self.name!r} is broken ({outcome.reason}, "
            f"{outcome.arrived} of {outcome.expected} arrived{missing})"
        )
        counts = {"arrived": outcome.arrived, "expected": outcome.expected, **self.where()}
        if outcome.reason == "timeout":  # 0.1.0's TimeOutError on every node
            return BrokenByTimeoutError(message, missing=outcome.missing, **counts)
        if outcome.reason == UNCERTAIN:
            return self.uncertain(
                f"round {outcome.generation} of {self.name!r} is broken, nobody was released",
                outcome.missing[0],
                None if outcome.bound_us is None else outcome.bound_us * 1000,
                (outcome.tolerance_us or 0) * 1000,
                arrived=outcome.arrived,
                expected=outcome.expected,
            )
        return BrokenBarrierError(message, reason=outcome.reason, missing=outcome.missing, **counts)

    def _timed_out(self, arrived: int | None, expected: int | None) -> TimeOutError:
        counts = "" if arrived is None else f" ({arrived} of {expected} arrived)"
        return TimeOutError(
            f"gave up waiting for {self.name!r} after {self.timeout} s{counts}",
            timeout=self.timeout,
            arrived=arrived,
            expected=expected,
            **self.where(),
        )

    def _decision(self, reply: object) -> Outcome | None:
        """Decode a CHECK/ABANDON/WITHDRAW/RELEASE reply: an outcome, or None if undecided."""
        decoded = text(reply)
        if decoded == Verdict.UNDECIDED:
            return None
        if decoded == Verdict.STATE_LOST:
            raise BrokenBarrierError(
                f"the state of {self.name!r} vanished from Redis while waiting "
                "(server restarted or flushed, or keys expired)",
                reason="state-lost",
                **self.where(),
            )
        if decoded == Verdict.EVICTED:
            raise ProtocolError(
                f"the outcome of round {self.generation} of {self.name!r} was evicted "
                "before this participant read it",
                **self.where(),
            )
        return parse_outcome(decoded)

    def _decided(self, reply: object) -> Flow[Outcome | None]:
        """:meth:`_decision`, except that a state found gone yields to this round's
        announcement when it was already received: the round was decided before its
        state vanished (a flush or an expiry right after the release)."""
        if reply in (Verdict.STATE_LOST.value, Verdict.STATE_LOST.value.encode()):
            for _ in range(_DRAIN_LIMIT):
                try:
                    message = yield from self.receive(0)
                except LINK_ERRORS:
                    break  # the subscription's connection failed: nothing more came
                if message is None:
                    break
                announcement = self.classify(message)
                if isinstance(announcement, str):
                    outcome = self.accept(announcement)
                    if isinstance(outcome, Released | Broken):
                        return outcome
        return self._decision(reply)

    # -- transitions ---------------------------------------------------------------

    def run(self) -> Flow[Due[SyncResult]]:
        yield from self.prepare()
        yield from self.prepare_clock()
        # A poll (timeout 0, Barrier.wait only) arrives and, unless that released the
        # round, abandons it at once, as threading's does: no subscription needed.
        if self.timeout != 0 and not (yield from self.listen()):
            raise self._timed_out(None, None)  # nothing was counted: the round is untouched
        try:
            outcome = yield from self._arrive()
            if outcome is None:
                outcome = yield from self.wait()
        except (GeneratorExit, ProcSyncError, ResponseError):
            raise  # decided, or refused by the server: nothing to take back
        except BaseException:
            # Interrupted (even while ARRIVE's reply was in flight): take the arrival back.
            yield from self._withdraw()
            raise
        return (yield from self._release(outcome))

    def _arrive(self) -> Flow[Outcome | None]:
        # Every release this instance saw before now was decided before this arrival:
        # the arrival must land in a later round (ARRIVE refuses an earlier one).
        floor = self._floor()
        while True:
            settings = self.settings
            reply = yield from self.call(
                Arrive(
                    self.keys,
                    nodes=self.nodes,
                    member=self.member,
                    liveness_ms=settings.liveness_ms,
                    retention_ms=settings.retention_ms,
                    now_us=self.now_us_for_scripts(),
                    lead_us=settings.delay_us,
                    hold=self.has_action,
                    reported_us=self.memory.reported_us() or self.clocks.typical_round_trip_us(),
                    floor_us=settings.auto_floor_us,
                    seen=floor,
                    bound_us=self.arrival_bound_us(),
                    tolerance_us=settings.max_uncertainty_us,
                )
            )
            try:
                status, generation, index, announcement = reply
                status, generation, index = Arrival(int(status)), int(generation), int(index)
                announcement = text(announcement)
            except (TypeError, ValueError):
                raise ProtocolError(f"unexpected ARRIVE reply: {reply!r}") from None
            if status != Arrival.CLOSING:
                break
            yield from self._await_round_closed(generation)
        self.generation = generation
        if status == Arrival.STALE:
            raise BrokenBarrierError(
                f"the state of {self.name!r} went back from round {floor} (released) to "
                f"round {generation}: Redis lost writes (a failover to a replica that had "
                "not received them, a restart or a flush); this arrival was not counted",
                reason="state-lost",
                **self.where(),
            )
        if status == Arrival.MISMATCH:
            raise ParameterMismatchError(
                f"{self.name!r} round {generation} was started with nodes={index}, "
                f"this participant passed nodes={self.nodes}; the round is now broken",
                expected=index,
                given=self.nodes,
                **self.where(),
            )
        outcome = parse_outcome(announcement) if announcement else None
        if status == Arrival.REFUSED:
            if not isinstance(outcome, Broken):
                raise ProtocolError(f"unexpected ARRIVE reply: {reply!r}")
            raise self._broken(outcome)
        self.index = index
        if status == Arrival.ACT:
            return (yield from self._act())
        return outcome

    def _floor(self) -> int:
        """The latest round of this event this instance saw released, if recently enough
        that the state cannot have expired since (else :data:`NEVER_RELEASED`): an
        arrival that finds the event at that round or before means Redis lost writes."""
        seen = self.memory.passed.get(self.name)
        if seen is None or clock.monotonic() - seen[1] >= self.settings.retention_ms / 1e3:
            return NEVER_RELEASED
        return seen[0]

    def _await_round_closed(self, generation: int) -> Flow[None]:
        """A full round runs its action: wait for its announcement (or a heartbeat)."""
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise self._timed_out(None, None)
        wait = (
            self.settings.heartbeat_s
            if remaining is None
            else min(remaining, self.settings.heartbeat_s)
        )
        while True:
            try:
                announcement = self.classify((yield from self.receive(wait)))
            except LINK_ERRORS:
                yield from self.listen(renew=True)  # then arrive again: ARRIVE reads the state
                return
            if announcement is None:
                return
            if isinstance(announcement, str):
                with contextlib.suppress(ProtocolError):
                    if parse_outcome(announcement).generation >= generation:
                        return
            wait = 0  # drain what is buffered, then arrive again

    def _act(self) -> Flow[Outcome]:
        """This last arrival runs the action, then releases the round (or breaks it)."""
        try:
            yield RunAction()
        except GeneratorExit:
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                yield from self._abandon_for("action")
            raise
        settings = self.settings
        reply = yield from self.call(
            Release(
                self.keys,
                generation=self.generation,
                member=self.member,
                now_us=self.now_us_for_scripts(),
                lead_us=settings.delay_us,
                retention_ms=settings.retention_ms,
                floor_us=settings.auto_floor_us,
            )
        )
        outcome = self._decision(reply)
        if outcome is None:
            raise ProtocolError(f"unexpected RELEASE reply: {reply!r}")
        return outcome

    def check(self) -> Flow[Outcome | None]:
        settings = self.settings
        reply = yield from self.call(
            Check(
                self.keys,
                generation=self.generation,
                member=self.member,
                liveness_ms=settings.liveness_ms,
                retention_ms=settings.retention_ms,
            )
        )
        outcome = yield from self._decided(reply)
        if outcome is None and settings.member:
            request = member_request(settings, "", READ_ONLY)
            lapsed = decode_lapsed((yield from self.call(request)))
            if lapsed:
                reply = yield from self.call(
                    Lost(self.keys, self.generation, settings.retention_ms, lapsed)
                )
                outcome = yield from self._decided(reply)
        else:
            lapsed = ()
        if outcome is None and clock.monotonic() >= self._next_report:
            yield from self._report(lapsed)
        return outcome

    def _report(self, lapsed: tuple[str, ...]) -> Flow[None]:
        """Log who the round still waits for (at most every :data:`REPORT_INTERVAL_S`)."""
        self._next_report = clock.monotonic() + REPORT_INTERVAL_S
        state = decode_read((yield from self.call(Read(self.keys))))
        if state.generation != self.generation or state.broken is not None:
            return
        shown = ", ".join(state.waiting) + (", ..." if state.arrived > len(state.waiting) else "")
        gone = f"; lapsed members: {', '.join(lapsed)}" if lapsed else ""
        log.warning(
            "still waiting for %r in run %r (round %d): %d of %d arrived (%s)%s",
            self.name,
            self.settings.run_id,
            self.generation,
            state.arrived,
            state.expected or self.nodes,
            shown,
            gone,
        )

    def accept(self, announcement: str) -> Outcome | Signal | None:
        try:
            outcome = parse_outcome(announcement)
        except ProtocolError:  # not ours to trust: the stored state decides
            return RECHECK
        if outcome.generation == self.generation:
            return outcome
        if outcome.generation > self.generation:
            return RECHECK
        return None  # an earlier round's announcement

    def _abandon_for(self, reason: str) -> Flow[Outcome]:
        reply = yield from self.call(
            Abandon(self.keys, self.generation, reason, self.settings.retention_ms)
        )
        outcome = yield from self._decided(reply)
        if outcome is None:
            raise ProtocolError(f"unexpected ABANDON reply: {reply!r}")
        return outcome

    def on_deadline(self) -> Flow[Outcome]:
        outcome = yield from self._abandon_for("timeout")
        if isinstance(outcome, Broken):
            raise self._timed_out(outcome.arrived, outcome.expected)
        return outcome

    def _withdraw(self) -> Flow[None]:
        # Best effort: the interruption that led here is what the caller must see.
        with contextlib.suppress(Exception):
            yield from self.call(
                Withdraw(self.keys, self.generation, self.member, self.settings.retention_ms)
            )

    def _release(self, outcome: Outcome) -> Flow[Due[SyncResult]]:
        if isinstance(outcome, Broken):
            raise self._broken(outcome)
        self.memory.note_released(self.name, outcome.generation)
        met = yield from self.meet_instant(
            outcome.at_us, outcome.lead_us, outcome.server_clock, learned_late_is_error=True
        )
        estimate = met.estimate
        result = SyncResult(
            event=self.name,
            generation=outcome.generation,
            index=self.index,
            nodes=self.nodes,
            release_at=met.release_ns // 1000 / 1e6,
            late_by=met.late_ns / 1e9,  # how late it learned; replaced after the wait
            delay=outcome.lead_us / 1e6,
            clock_offset=None if estimate is None else estimate.wall_offset_ns / 1e9,
            clock_uncertainty=None if met.uncertainty_ns is None else met.uncertainty_ns / 1e9,
            clock_synchronized=met.synchronized,
        )
        return met.deliver(result, "late_by", "clock_step")


def sync_flow(
    settings: Settings,
    clocks: ClockState,
    event: object,
    nodes: object,
    timeout: object,
    *,
    memory: EventMemory,
    has_action: bool = False,
    poll: bool = False,
) -> Flow[Due[SyncResult]]:
    """Validate the arguments of ``sync`` and return the flow of one participant.

    ``clocks`` and ``memory`` are the calling instance's, shared by all its calls.

    With ``has_action``, this participant runs the shell's action (operation
    :class:`~pyprocsync.core.ops.RunAction`) if it arrives last, before the release.
    With ``poll`` (``Barrier.wait``), a timeout <= 0 is a poll, as in threading: the
    arrival is counted and, unless it completed the round, the round breaks at once.

    :raises InvalidArgumentError: an argument is invalid (nothing was sent).
    """
    return _Participant(
        settings,
        clocks,
        params.text("event_name", event, empty=False),
        params.count("nodes", nodes),
        params.wait_timeout(timeout) if poll else params.timeout(timeout),
        memory=memory,
        has_action=has_action,
    ).run()


def _keys_and_context(settings: Settings, event: object) -> tuple[EventKeys, dict[str, Any]]:
    name = params.text("event_name", event, empty=False)
    keys = EventKeys.of(settings.prefix, settings.run_id, name)
    return keys, {"event": name, "run_id": settings.run_id}


def reset_flow(settings: Settings, event: object) -> Flow[int]:
    """Validate ``event`` and return the flow of ``reset``; its result is the next generation.

    :raises InvalidArgumentError: ``event`` is invalid (nothing was sent).
    """
    keys, where = _keys_and_context(settings, event)
    return _reset(settings, keys, where)


def _reset(settings: Settings, keys: EventKeys, where: dict[str, Any]) -> Flow[int]:
    yield from prepare(where)
    reply = yield from call(Reset(keys, settings.retention_ms), where)
    if not isinstance(reply, int):
        raise ProtocolError(f"unexpected RESET reply: {reply!r}")
    return reply


def abort_flow(settings: Settings, event: object) -> Flow[None]:
    """Validate ``event`` and return the flow that breaks its current round ("abort").

    :raises InvalidArgumentError: ``event`` is invalid (nothing was sent).
    """
    keys, where = _keys_and_context(settings, event)
    return _abort(settings, keys, where)


def _abort(settings: Settings, keys: EventKeys, where: dict[str, Any]) -> Flow[None]:
    yield from prepare(where)
    yield from call(Abort(keys, settings.retention_ms), where)


def read_flow(settings: Settings, event: object) -> Flow[RoundState]:
    """Validate ``event`` and return the flow that reads its current round.

    :raises InvalidArgumentError: ``event`` is invalid (nothing was sent).
    """
    keys, where = _keys_and_context(settings, event)
    return _read(keys, where)


def _read(keys: EventKeys, where: dict[str, Any]) -> Flow[RoundState]:
    yield from prepare(where)
    return decode_read((yield from call(Read(keys), where)))
