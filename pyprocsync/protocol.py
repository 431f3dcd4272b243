"""The synchronization protocol, written once and free of I/O.

A participant's whole part in a round is a generator ("flow") that yields *operations*
(run a script, subscribe, receive a message, sleep until an instant) and is sent their
results. The blocking shell (:mod:`pyprocsync.procsync`) drives them, and any other
shell (an asyncio one, say) drives the same flows, so the state machine, the key names,
the decoding of replies and every error exist once. An exception raised while an
operation runs is thrown into the flow at its ``yield``, so the flow decides what it
means (and may clean up before it propagates).

One participant in one round goes through these states::

    LISTENING --subscription confirmed--> ARRIVING --ARRIVE--> WAITING --outcome--> RELEASING
                                               |                  |
                                               +-- refused -------+--> raise

* LISTENING: the event's channel is subscribed before the arrival, so no announcement
  can slip between arriving and listening.
* ARRIVING: the ARRIVE script counts the arrival atomically; the last arrival decides
  the release instant (its wall clock + its delay), stores it and publishes it.
* WAITING: block on the subscription. The stored outcome is read again (CHECK, which
  also renews this participant's lease) whenever the connection was re-established,
  an announcement does not parse or names a later round, and every ``liveness / 5``
  seconds; so a lost announcement costs at most one heartbeat, never a hang. When the
  timeout expires, ABANDON breaks the round unless it was decided meanwhile. An
  interruption (KeyboardInterrupt, task cancellation, connection error) withdraws the
  arrival while the round is undecided.
* RELEASING: a broken outcome raises; a release instant is awaited precisely (or
  raises :class:`~pyprocsync.exceptions.TooLateError` when it had passed by more than
  the tolerance when learned).
"""

from __future__ import annotations

import contextlib
import enum
import json
import secrets
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import clock, params
from .exceptions import (
    BrokenBarrierError,
    ConnectionLostError,
    ParameterMismatchError,
    ProcSyncError,
    ProtocolError,
    TimeOutError,
    TooLateError,
)
from .keys import EventKeys
from .params import Settings
from .results import SyncResult
from .scripts import CORRUPT_MARKER, Script

__all__ = [
    "Broken",
    "Call",
    "Flow",
    "Listen",
    "Operation",
    "Receive",
    "Released",
    "SleepUntil",
    "member_node",
    "parse_outcome",
    "reset_flow",
    "sync_flow",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """Run ``script`` with ``keys`` and ``args``; the result is the script's reply."""

    script: Script
    keys: tuple[str, ...]
    args: tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Listen:
    """Make this participant's subscription cover ``channel``.

    The result is ``True`` when a SUBSCRIBE was sent (the flow then waits for its
    confirmation), ``False`` when the subscription existed already (messages buffered
    on it before this call were discarded). With ``renew``, the pub/sub connection is
    replaced by a new one first (the old one failed).
    """

    channel: str
    renew: bool = False


@dataclass(frozen=True, slots=True)
class Receive:
    """Wait at most ``timeout`` seconds (``None``: no limit) for the next pub/sub message.

    The result is the message as redis-py returns it (a dict), or ``None``.
    """

    timeout: float | None


@dataclass(frozen=True, slots=True)
class SleepUntil:
    """Wait until the wall clock reads ``at_ns``; the result is the wall clock then (ns)."""

    at_ns: int
    spin_ns: int


Operation = Call | Listen | Receive | SleepUntil
Flow = Generator[Operation, Any, T]


@dataclass(frozen=True, slots=True)
class Released:
    """A round released at ``at_us`` (epoch µs) with lead time ``lead_us``."""

    generation: int
    at_us: int
    lead_us: int


@dataclass(frozen=True, slots=True)
class Broken:
    """A round that broke for ``reason``."""

    generation: int
    reason: str
    arrived: int
    expected: int
    missing: tuple[str, ...]


Outcome = Released | Broken

#: Errors of the link to the server (the shells' pub/sub connections never retry).
_LINK_ERRORS = (RedisConnectionError, RedisTimeoutError)
#: CHECK/ABANDON/WITHDRAW replies that are not outcomes (see :mod:`pyprocsync.scripts`).
_UNDECIDED, _STATE_LOST, _EVICTED = "", "L", "E"
#: ARRIVE statuses.
_JOINED, _REFUSED, _MISMATCH = 0, 1, 2


class _Signal(enum.Enum):
    """What ``_Participant._classify`` returns for a subscription confirmation."""

    SUBSCRIBED = enum.auto()


_SUBSCRIBED = _Signal.SUBSCRIBED
#: Length of the random part of a lease member, ``<12 hex>:<node id>``.
_MEMBER_TAG = 13


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise ProtocolError(f"expected a string from Redis, got {type(value).__name__}")


def _nonneg(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(text)
    return int(text)


def member_node(member: str) -> str:
    """Return the node id of a lease member ``<12 hex>:<node id>``."""
    return member[_MEMBER_TAG:]


def parse_outcome(text: str) -> Outcome:
    """Decode an outcome as the scripts store and publish it.

    :raises ProtocolError: ``text`` is not an outcome pyprocsync writes.
    """
    try:
        kind, _, rest = text.partition(" ")
        if kind == "R":
            gen, at_us, lead_us = rest.split(" ")
            return Released(_nonneg(gen), _nonneg(at_us), _nonneg(lead_us))
        if kind == "B":
            gen, reason, arrived, expected, missing = rest.split(" ", 4)
            members = json.loads(missing)
            if not reason.isidentifier() or not isinstance(members, list):
                raise ValueError(text)
            return Broken(
                _nonneg(gen),
                reason,
                _nonneg(arrived),
                _nonneg(expected),
                tuple(member_node(_text(m)) for m in members),
            )
    except (ValueError, RecursionError, ProtocolError):  # RecursionError: absurdly nested JSON
        pass
    raise ProtocolError(f"not a pyprocsync outcome: {text[:80]!r}")


def _call(
    script: Script, keys: EventKeys, args: tuple[str | int, ...], where: dict[str, Any]
) -> Flow[Any]:
    """Run ``script``; map its failures to pyprocsync errors carrying ``where``."""
    try:
        return (yield Call(script, keys.all, args))
    except ResponseError as exc:
        message = str(exc)
        if message.startswith((CORRUPT_MARKER, "WRONGTYPE")):
            raise ProtocolError(f"foreign or corrupt data in Redis: {message}", **where) from exc
        raise
    except _LINK_ERRORS as exc:
        raise ConnectionLostError(f"lost the connection to Redis: {exc}", **where) from exc


class _Participant:
    """One participant's attempt at one round of one synchronization point."""

    def __init__(self, settings: Settings, event: str, nodes: int, timeout: float | None) -> None:
        self.settings = settings
        self.event = event
        self.nodes = nodes
        self.timeout = timeout
        self.keys = EventKeys.of(settings.prefix, settings.run_id, event)
        node_id = settings.node_id or params.default_node_id()
        self.member = f"{secrets.token_hex(6)}:{node_id}"
        self.deadline = None if timeout is None else clock.monotonic() + timeout
        self.generation = -1
        self.index = -1

    # -- context for errors -------------------------------------------------------

    def _where(self) -> dict[str, Any]:
        gen = self.generation if self.generation >= 0 else None
        return {"event": self.event, "run_id": self.settings.run_id, "generation": gen}

    def _broken(self, outcome: Broken) -> BrokenBarrierError:
        missing = f"; missing: {', '.join(outcome.missing)}" if outcome.missing else ""
        return BrokenBarrierError(
            f"round {outcome.generation} of {self.event!r} is broken ({outcome.reason}, "
            f"{outcome.arrived} of {outcome.expected} arrived{missing})",
            reason=outcome.reason,
            missing=outcome.missing,
            arrived=outcome.arrived,
            expected=outcome.expected,
            **self._where(),
        )

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - clock.monotonic()

    def _timed_out(self, arrived: int | None, expected: int | None) -> TimeOutError:
        counts = "" if arrived is None else f" ({arrived} of {expected} arrived)"
        return TimeOutError(
            f"gave up waiting for {self.event!r} after {self.timeout} s{counts}",
            timeout=self.timeout,
            arrived=arrived,
            expected=expected,
            **self._where(),
        )

    def _link_lost(self, exc: Exception) -> ConnectionLostError:
        return ConnectionLostError(
            f"lost the connection to Redis while waiting for {self.event!r}: {exc}",
            **self._where(),
        )

    def _call(self, script: Script, *args: str | int) -> Flow[Any]:
        return (yield from _call(script, self.keys, args, self._where()))

    def _decision(self, reply: object) -> Outcome | None:
        """Decode a CHECK/ABANDON/WITHDRAW reply: an outcome, or None if undecided."""
        text = _text(reply)
        if text == _UNDECIDED:
            return None
        if text == _STATE_LOST:
            raise BrokenBarrierError(
                f"the state of {self.event!r} vanished from Redis while waiting "
                "(server restarted or flushed, or keys expired)",
                reason="state-lost",
                **self._where(),
            )
        if text == _EVICTED:
            raise ProtocolError(
                f"the outcome of round {self.generation} of {self.event!r} was evicted "
                "before this participant read it",
                **self._where(),
            )
        return parse_outcome(text)

    # -- transitions ---------------------------------------------------------------

    def run(self) -> Flow[SyncResult]:
        if not (yield from self._listen()):
            raise self._timed_out(None, None)  # nothing was counted: the round is untouched
        outcome = yield from self._arrive()
        if outcome is None:
            try:
                outcome = yield from self._wait()
            except (GeneratorExit, ProcSyncError):
                raise
            except BaseException:
                yield from self._withdraw()
                raise
        return (yield from self._release(outcome))

    def _listen(self, *, renew: bool = False) -> Flow[bool]:
        """Subscribe to the event's channel; True once confirmed, False at the deadline.

        A failed connection is replaced once; if the new one fails too, the link is lost.
        """
        try:
            if not (yield Listen(self.keys.channel, renew)):
                return True
            while True:
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    return False
                if self._classify((yield Receive(remaining))) is _SUBSCRIBED:
                    return True
        except _LINK_ERRORS as exc:
            if renew:
                raise self._link_lost(exc) from exc
            return (yield from self._listen(renew=True))

    def _arrive(self) -> Flow[Outcome | None]:
        settings = self.settings
        reply = yield from self._call(
            Script.ARRIVE,
            self.nodes,
            self.member,
            settings.liveness_ms,
            settings.retention_ms,
            clock.time_ns() // 1000,
            settings.delay_us,
            self.keys.channel,
        )
        try:
            status, generation, index, text = reply
            status, generation, index, text = int(status), int(generation), int(index), _text(text)
        except (TypeError, ValueError):
            raise ProtocolError(f"unexpected ARRIVE reply: {reply!r}") from None
        self.generation = generation
        if status == _MISMATCH:
            raise ParameterMismatchError(
                f"{self.event!r} round {generation} was started with nodes={index}, "
                f"this participant passed nodes={self.nodes}; the round is now broken",
                expected=index,
                given=self.nodes,
                **self._where(),
            )
        outcome = parse_outcome(text) if text else None
        if status == _REFUSED:
            if not isinstance(outcome, Broken):
                raise ProtocolError(f"unexpected ARRIVE reply: {reply!r}")
            raise self._broken(outcome)
        self.index = index
        return outcome

    def _wait(self) -> Flow[Outcome]:
        heartbeat = self.settings.heartbeat_s
        next_beat = clock.monotonic() + heartbeat
        while True:
            now = clock.monotonic()
            if self.deadline is not None and now >= self.deadline:
                return (yield from self._abandon())
            if now >= next_beat:
                next_beat = now + heartbeat
                outcome = yield from self._check()
            else:
                wait = next_beat - now
                if self.deadline is not None:
                    wait = min(wait, self.deadline - now)
                try:
                    message = yield Receive(wait)
                except _LINK_ERRORS:
                    # The pub/sub connection failed and an announcement may be lost with
                    # it: subscribe on a new one, then read the stored state at once.
                    yield from self._listen(renew=True)
                    message = None
                    next_beat = clock.monotonic()
                outcome = yield from self._on_message(message)
            if outcome is not None:
                return outcome

    def _on_message(self, message: object) -> Flow[Outcome | None]:
        kind = self._classify(message)
        if kind is None:
            return None
        if not isinstance(kind, str):  # resubscribed after a reconnect: re-read the state
            return (yield from self._check())
        try:
            outcome = parse_outcome(kind)
        except ProtocolError:  # not ours to trust: the stored state decides
            return (yield from self._check())
        if outcome.generation == self.generation:
            return outcome
        if outcome.generation > self.generation:
            return (yield from self._check())
        return None  # an earlier round's announcement

    def _classify(self, message: object) -> str | _Signal | None:
        """Return the announcement text, ``_SUBSCRIBED``, or None for anything else."""
        if not isinstance(message, dict):
            return None
        if _text(message.get("channel", b"")) != self.keys.channel:
            return None
        kind = _text(message.get("type", b""))
        if kind == "subscribe":
            return _SUBSCRIBED
        if kind == "message":
            return _text(message.get("data", b""))
        return None

    def _check(self) -> Flow[Outcome | None]:
        settings = self.settings
        reply = yield from self._call(
            Script.CHECK,
            self.generation,
            self.member,
            settings.liveness_ms,
            settings.retention_ms,
            self.keys.channel,
        )
        return self._decision(reply)

    def _abandon(self) -> Flow[Outcome]:
        reply = yield from self._call(
            Script.ABANDON,
            self.generation,
            "timeout",
            self.settings.retention_ms,
            self.keys.channel,
        )
        outcome = self._decision(reply)
        if isinstance(outcome, Broken):
            raise self._timed_out(outcome.arrived, outcome.expected)
        if outcome is None:
            raise ProtocolError(f"unexpected ABANDON reply: {reply!r}")
        return outcome

    def _withdraw(self) -> Flow[None]:
        # Best effort: the interruption that led here is what the caller must see.
        with contextlib.suppress(Exception):
            yield from self._call(
                Script.WITHDRAW,
                self.generation,
                self.member,
                self.index,
                self.settings.retention_ms,
            )

    def _release(self, outcome: Outcome) -> Flow[SyncResult]:
        if isinstance(outcome, Broken):
            raise self._broken(outcome)
        at_ns = outcome.at_us * 1000
        returned = clock.time_ns()
        late_ns = returned - at_ns
        if outcome.lead_us > 0:
            if late_ns > self.settings.late_tolerance_ns and self.settings.on_late == "raise":
                raise TooLateError(
                    f"round {outcome.generation} of {self.event!r} was to be released "
                    f"{late_ns / 1e6:.3f} ms before this participant learned of it; "
                    "increase the delay or check the clocks",
                    late_by=late_ns / 1e9,
                    release_at=at_ns / 1e9,
                    **self._where(),
                )
            returned = yield SleepUntil(at_ns, self.settings.spin_ns)
        return SyncResult(
            event=self.event,
            generation=outcome.generation,
            index=self.index,
            nodes=self.nodes,
            release_at=outcome.at_us / 1e6,
            late_by=(returned - at_ns) / 1e9,
            delay=outcome.lead_us / 1e6,
        )


def sync_flow(
    settings: Settings, event: object, nodes: object, timeout: object
) -> Flow[SyncResult]:
    """Validate the arguments of ``sync`` and return the flow of one participant.

    :raises InvalidArgumentError: an argument is invalid (nothing was sent).
    """
    return _Participant(
        settings,
        params.text("event_name", event, empty=False),
        params.count("nodes", nodes),
        params.timeout(timeout),
    ).run()


def reset_flow(settings: Settings, event: object) -> Flow[int]:
    """Validate ``event`` and return the flow of ``reset``; its result is the next generation.

    :raises InvalidArgumentError: ``event`` is invalid (nothing was sent).
    """
    name = params.text("event_name", event, empty=False)
    return _reset(settings, name)


def _reset(settings: Settings, event: str) -> Flow[int]:
    keys = EventKeys.of(settings.prefix, settings.run_id, event)
    where = {"event": event, "run_id": settings.run_id}
    reply = yield from _call(Script.RESET, keys, (settings.retention_ms, keys.channel), where)
    if not isinstance(reply, int):
        raise ProtocolError(f"unexpected RESET reply: {reply!r}")
    return reply
