"""The protocol's shared machinery, written once and free of I/O.

Every public operation (``ProcSync.sync``, ``Barrier.wait``, ``Event.wait`` and the rest)
is a generator, a *flow*, that yields *operations* (run a script, subscribe, receive a
message, read the server's clock, run the barrier's action) and is sent their results.
A flow that ends at a release instant returns an :class:`AtInstant`: the wait for the
instant is not an operation but the last step of the public method itself.
The blocking shell (:mod:`pyprocsync.procsync`) and the asyncio shell
(:mod:`pyprocsync.asyncio`) drive the same flows, so the state machines, the decoding of
replies and every error exist once. An exception raised while an operation runs is
thrown into the flow at its ``yield``, so the flow decides what it means (and may clean
up before it propagates).

The flows themselves are in :mod:`pyprocsync.rounds` (``sync`` and ``Barrier``) and
:mod:`pyprocsync.flags` (``Event``). This module holds what they share: the operations,
script calls with their error mapping, and :class:`Waiter`, the subscribe-then-wait loop.
A waiter subscribes to its channel before it changes any state, so no announcement can
slip between the change and the listening; it then blocks on the subscription and reads
the stored state again (a *check*) whenever the connection was re-established, an
announcement does not parse or is not conclusive, and every ``liveness / 5`` seconds.
A lost announcement therefore costs at most one heartbeat, never a hang.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

from redis.exceptions import AskError, MovedError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import clock
from .exceptions import (
    ConnectionLostError,
    ProcSyncError,
    ProtocolError,
    TimeOutError,
    TooLateError,
)
from .params import Settings
from .scripts import CORRUPT_MARKER, Script

if TYPE_CHECKING:  # servertime builds on this module
    from .servertime import ClockEstimate, ClockState

__all__ = [
    "CALL_TIMEOUT_FLOOR",
    "REDIRECTS",
    "REDIRECT_BUDGET_S",
    "REDIRECT_PAUSE_S",
    "AtInstant",
    "Budget",
    "Call",
    "Due",
    "Flow",
    "Instant",
    "Listen",
    "Operation",
    "Prepare",
    "Receive",
    "RunAction",
    "ServerTime",
    "Signal",
    "SleepUntil",
    "Stamp",
    "Waiter",
    "bound",
    "call",
    "constant",
    "link_lost",
    "now_us_for_scripts",
    "prepare",
    "text",
]

T = TypeVar("T")
O = TypeVar("O")  # noqa: E741  # what a waiter waits for


class Stamp(enum.Enum):
    """An argument of a :class:`Call` that is filled in as the command is sent."""

    #: This host's wall clock, µs since the epoch, read once the connection is at hand,
    #: right before the command is written to it: a connection opened for the call (the
    #: first one of a process, or one replacing a broken one) does not eat into the lead
    #: time of an instant based on that reading.
    NOW_US = enum.auto()


@dataclass(frozen=True, slots=True)
class Call:
    """Run ``script`` with ``keys`` and ``args``; the result is the script's reply.

    The call is sent once, never repeated behind the flow's back (a repeated ARRIVE
    whose first reply was lost could count an arrival twice), and its reply may take
    at most ``timeout`` seconds (``None``: the client's socket timeout); a call that
    fails either way raises a link error.
    """

    script: Script
    keys: tuple[str, ...]
    args: tuple[str | int | Stamp, ...]
    timeout: float | None = None

    def command(self, sha: str) -> tuple[str | int, ...]:
        """The ``EVALSHA`` command that runs the script registered as ``sha``, its
        :class:`Stamp` arguments filled in now (the shells call this last thing before
        sending)."""
        args = (clock.time_ns() // 1000 if arg is Stamp.NOW_US else arg for arg in self.args)
        return ("EVALSHA", sha, len(self.keys), *self.keys, *args)


@dataclass(frozen=True, slots=True)
class Prepare:
    """Make sure the scripts are loaded into the server (once per instance: the first
    call connects here), taking at most ``timeout`` seconds (``None``: the connection
    limits, see :data:`pyprocsync.listeners.CONNECT_TIMEOUT`). Every flow yields it
    first, before it reads a clock for an instant; the result is ``None``.
    """

    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Listen:
    """Make this participant's subscription cover ``channel``.

    The result is ``True`` when a SUBSCRIBE was sent (the flow then waits for its
    confirmation), ``False`` when the subscription existed already (messages buffered
    on it before this call were discarded). With ``renew``, the pub/sub connection is
    replaced by a new one first (the old one failed). Connecting for it may take at
    most ``timeout`` seconds (``None``: the connection limits).
    """

    channel: str
    renew: bool = False
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Receive:
    """Wait at most ``timeout`` seconds (``None``: no limit) for the next pub/sub message.

    The result is the message as redis-py returns it (a dict), or ``None``.
    """

    timeout: float | None


@dataclass(frozen=True, slots=True)
class SleepUntil:
    """Wait until the wall clock (``on_monotonic``: the monotonic clock) reads ``at_ns``,
    busy-waiting for the last ``spin_ns`` (see :mod:`pyprocsync.clock`).

    Not an operation a flow yields: it is the wait of an :class:`AtInstant`, which the
    public method carries out itself as its very last step.
    """

    at_ns: int
    spin_ns: int
    on_monotonic: bool = False


@dataclass(frozen=True, slots=True)
class ServerTime:
    """Read the server's clock (``TIME``) within ``timeout`` seconds (``None``: the
    connection limits); the result is a :class:`~pyprocsync.servertime.TimeSample` that
    the shell timed right around the I/O (see
    :class:`~pyprocsync.servertime.TimeRequest`), or the bare reply, ``[seconds, µs]``."""

    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class RunAction:
    """Run the barrier's action (the result is ignored; what it raises is thrown in)."""


Operation = Prepare | Call | Listen | Receive | RunAction | ServerTime


@dataclass(frozen=True, slots=True)
class AtInstant(Generic[T]):
    """A flow's result that is due at an instant.

    A flow that ends at a release instant returns this instead of its result; the shell
    hands back everything the call held (mailbox, listener reference, connections) and
    returns it to the public method, which carries out :attr:`wait` and returns
    :meth:`finish` as its last step (``meet`` in each shell). Between the instant and
    the caller's next line only :meth:`finish` and two ``return`` statements run.
    """

    #: The wait for the instant.
    wait: SleepUntil
    #: The result, built before the wait.
    result: T
    #: The attribute of :attr:`result` (a frozen dataclass) that receives how late the
    #: wait returned, in seconds; ``None`` when the result has no such attribute.
    late_field: str | None = None

    def finish(self) -> T:
        """Return :attr:`result`, its :attr:`late_field` set from one clock reading taken
        now: the best estimate, inside the library, of how late the caller gets control
        back (what is left to run is this method's return and the public method's).

        The shells also call it once just before the instant, to have its code and data
        in the caches when it counts; the value it sets then is overwritten."""
        if self.late_field is not None:
            wait = self.wait
            now = clock.monotonic_ns() if wait.on_monotonic else clock.time_ns()
            object.__setattr__(self.result, self.late_field, (now - wait.at_ns) / 1e9)
        return self.result


#: What a flow that may end at an instant returns: its result, or the result due later.
Due: TypeAlias = "T | AtInstant[T]"


@dataclass(frozen=True, slots=True)
class Instant:
    """How a participant is to meet a release instant."""

    #: The instant on this host's wall clock, epoch ns.
    release_ns: int
    #: The instant on the clock to wait on (see :attr:`wait`), ns.
    target_ns: int
    #: How long after the instant this participant learned of it, ns.
    late_ns: int
    #: The clock estimate the instant was converted with (server-clock instants only).
    estimate: ClockEstimate | None
    #: The wait, or ``None`` when there is none (lead time 0: return at once).
    wait: SleepUntil | None

    def deliver(self, result: T, late_field: str | None = None) -> T | AtInstant[T]:
        """``result`` now when there is no wait, else at the instant.

        ``late_field`` names the attribute of ``result`` (a frozen dataclass built
        before the wait) that receives how late the caller got control back, in
        seconds (see :meth:`AtInstant.finish`).
        """
        if self.wait is None:
            return result
        return AtInstant(self.wait, result, late_field)


Flow = Generator[Operation, Any, T]

#: Errors of the link to the server (the shells' pub/sub connections never retry).
LINK_ERRORS = (RedisConnectionError, RedisTimeoutError)

#: Replies of a cluster node meaning that it did not run the command: the slot lives
#: elsewhere (MOVED), is moving (ASK), or its keys are split by a migration (TRYAGAIN).
#: The call is sent again where it belongs (see the shells' ``_call``).
REDIRECTS = (MovedError, AskError, TryAgainError)

#: Pause before sending a call again after ASK or TRYAGAIN, seconds.
REDIRECT_PAUSE_S = 0.01

#: How long a call without a timeout may keep following redirections, seconds.
REDIRECT_BUDGET_S = 5.0


class Budget:
    """The time left to a script call that may be sent again after a redirection."""

    def __init__(self, timeout: float | None) -> None:
        self._limited = timeout is not None
        self._end = clock.monotonic() + (REDIRECT_BUDGET_S if timeout is None else timeout)

    def left(self) -> float | None:
        """Seconds the next reply may take (``None``: no limit of the call's own)."""
        return max(0.0, self._end - clock.monotonic()) if self._limited else None

    def spent(self) -> bool:
        """Whether no more time is left for another attempt."""
        return clock.monotonic() >= self._end


#: The least time a waiter's script call may take to answer, seconds, even when its
#: deadline is nearer (or passed: the call that abandons the round at the deadline).
CALL_TIMEOUT_FLOOR = 0.25


def text(value: object) -> str:
    """Decode a string from Redis (``bytes`` or, with ``decode_responses``, ``str``).

    :raises ProtocolError: ``value`` is not a string.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise ProtocolError(f"expected a string from Redis, got {type(value).__name__}")


def call(
    script: Script,
    keys: tuple[str, ...],
    args: tuple[str | int | Stamp, ...],
    where: dict[str, Any],
    timeout: float | None = None,
) -> Flow[Any]:
    """Run ``script``; map its failures to pyprocsync errors carrying ``where``.

    :raises ProtocolError: the script found data it did not write.
    :raises ConnectionLostError: the server could not be reached, or did not answer
        within ``timeout`` seconds.
    """
    try:
        return (yield Call(script, keys, args, timeout))
    except ResponseError as exc:
        message = str(exc)
        if message.startswith((CORRUPT_MARKER, "WRONGTYPE")):
            raise ProtocolError(f"foreign or corrupt data in Redis: {message}", **where) from exc
        raise
    except LINK_ERRORS as exc:
        raise link_lost(exc, where) from exc


def prepare(where: dict[str, Any], timeout: float | None = None) -> Flow[None]:
    """The first step of every flow: load the scripts (see :class:`Prepare`).

    :raises ConnectionLostError: the server could not be reached, or did not answer
        within ``timeout`` seconds.
    """
    try:
        yield Prepare(timeout)
    except LINK_ERRORS as exc:
        raise link_lost(exc, where) from exc


def link_lost(exc: Exception, where: dict[str, Any]) -> ConnectionLostError:
    """The error for a link error ``exc`` (whose message names the server) of a call
    about ``where``."""
    about = f" ({where['event']!r})" if where.get("event") is not None else ""
    return ConnectionLostError(f"lost the connection to Redis{about}: {exc}", **where)


def bound(deadline: float | None) -> float | None:
    """How long an operation may take for a call whose deadline (monotonic seconds) is
    ``deadline``: until it, but at least :data:`CALL_TIMEOUT_FLOOR`; ``None`` without
    a deadline."""
    return None if deadline is None else max(deadline - clock.monotonic(), CALL_TIMEOUT_FLOOR)


def constant(*command: str | int) -> Callable[[], tuple[str | int, ...]]:
    """What the shells send for a command without :class:`Stamp` arguments: a builder
    of ``command`` as it is (see :meth:`Call.command` for one that has some)."""
    return lambda: command


def now_us_for_scripts(settings: Settings) -> int | Stamp:
    """See :meth:`Waiter.now_us_for_scripts`."""
    return -1 if settings.clock == "server" else Stamp.NOW_US


class Signal(enum.Enum):
    """Markers for messages and for announcements that need a check."""

    SUBSCRIBED = enum.auto()
    RECHECK = enum.auto()


#: What :meth:`Waiter.classify` returns for a subscription confirmation.
SUBSCRIBED = Signal.SUBSCRIBED
#: What :meth:`Waiter.accept` returns for an announcement that calls for a check.
RECHECK = Signal.RECHECK


class Waiter(abc.ABC, Generic[O]):
    """One caller waiting on one channel for an outcome of type ``O``.

    Subclasses say how to read the stored state (:meth:`check`), what an announcement
    means (:meth:`accept`) and what happens at the deadline (:meth:`on_deadline`).
    """

    def __init__(
        self,
        settings: Settings,
        clocks: ClockState,
        name: str,
        channel: str,
        timeout: float | None,
    ) -> None:
        self.settings = settings
        self.clocks = clocks
        self.name = name
        self.channel = channel
        self.timeout = timeout
        self.deadline = None if timeout is None else clock.monotonic() + timeout

    # -- what subclasses provide ---------------------------------------------------

    @abc.abstractmethod
    def where(self) -> dict[str, Any]:
        """Context for errors: ``event``, ``run_id``, ``generation``."""

    @abc.abstractmethod
    def check(self) -> Flow[O | None]:
        """Read the stored state: the outcome, or ``None`` while there is none."""

    @abc.abstractmethod
    def accept(self, announcement: str) -> O | Signal | None:
        """Judge an announcement: the outcome, ``RECHECK``, or ``None`` to ignore it."""

    @abc.abstractmethod
    def on_deadline(self) -> Flow[O]:
        """The timeout expired: return an outcome or raise."""

    # -- the shared loop -----------------------------------------------------------

    def remaining(self) -> float | None:
        """Seconds until the deadline (negative once passed), or ``None``."""
        return None if self.deadline is None else self.deadline - clock.monotonic()

    def call(self, script: Script, keys: tuple[str, ...], *args: str | int | Stamp) -> Flow[Any]:
        """Run ``script`` (see :func:`call`) with this waiter's error context.

        Its reply may take until the deadline, but at least :data:`CALL_TIMEOUT_FLOOR`
        seconds: a server that stops answering (paused, overloaded, cut off without a
        reset) cannot hold a participant far past its timeout.
        """
        try:
            return (yield from call(script, keys, args, self.where(), bound(self.deadline)))
        except ConnectionLostError as exc:
            raise self.past_deadline(exc) from exc.__cause__

    def prepare(self) -> Flow[None]:
        """:func:`prepare` within this waiter's deadline."""
        try:
            yield from prepare(self.where(), bound(self.deadline))
        except ConnectionLostError as exc:
            raise self.past_deadline(exc) from exc.__cause__

    def past_deadline(self, exc: ConnectionLostError) -> ProcSyncError:
        """``exc`` as the caller is to see it: a server that did not answer (or could
        not be connected to) before the deadline is, to the caller, its timeout
        (:class:`TimeOutError`); anything else stays a lost connection."""
        late = self.remaining()
        if late is None or late > 0 or not isinstance(exc.__cause__, RedisTimeoutError):
            return exc
        return TimeOutError(
            f"gave up waiting for {self.name!r} after {self.timeout} s: the server did "
            f"not answer in time ({exc.__cause__})",
            timeout=self.timeout,
            **self.where(),
        )

    def link_lost(self, exc: Exception) -> ProcSyncError:
        """The error for a pub/sub connection that could not be replaced (see
        :meth:`past_deadline`)."""
        lost = ConnectionLostError(
            f"lost the connection to Redis while waiting for {self.name!r}: {exc}",
            **self.where(),
        )
        lost.__cause__ = exc
        return self.past_deadline(lost)

    def listen(self, *, renew: bool = False) -> Flow[bool]:
        """Subscribe to the channel; True once confirmed, False at the deadline.

        A failed connection is replaced once; if the new one fails too, the link is lost.
        """
        try:
            if not (yield Listen(self.channel, renew, bound(self.deadline))):
                return True
            while True:
                remaining = self.remaining()
                if remaining is not None and remaining <= 0:
                    return False
                if self.classify((yield Receive(remaining))) is SUBSCRIBED:
                    return True
        except LINK_ERRORS as exc:
            remaining = self.remaining()
            if remaining is not None and remaining <= 0:
                return False
            if renew:
                raise self.link_lost(exc) from exc
            return (yield from self.listen(renew=True))

    def classify(self, message: object) -> str | Signal | None:
        """Return the announcement text, ``SUBSCRIBED``, or None for anything else."""
        if not isinstance(message, dict):
            return None
        if text(message.get("channel", b"")) != self.channel:
            return None
        kind = text(message.get("type", b""))
        if kind == "subscribe":
            return SUBSCRIBED
        if kind == "message":
            return text(message.get("data", b""))
        return None

    def wait(self) -> Flow[O]:
        """Block on the subscription until there is an outcome (or the deadline)."""
        heartbeat = self.settings.heartbeat_s
        next_beat = clock.monotonic() + heartbeat
        while True:
            now = clock.monotonic()
            if self.deadline is not None and now >= self.deadline:
                return (yield from self.on_deadline())
            if now >= next_beat:
                next_beat = now + heartbeat
                if self.settings.clock == "server":  # renew the estimate while waiting
                    yield from self.clocks.keep_fresh(
                        self.settings.clock_refresh_ns,
                        self.settings.clock_samples,
                        self.where(),
                        self.deadline,
                    )
                outcome = yield from self.check()
            else:
                wait = next_beat - now
                if self.deadline is not None:
                    wait = min(wait, self.deadline - now)
                try:
                    message = yield Receive(wait)
                except LINK_ERRORS:
                    # The pub/sub connection failed and an announcement may be lost with
                    # it: subscribe on a new one, then read the stored state at once.
                    yield from self.listen(renew=True)
                    message = None
                    next_beat = clock.monotonic()
                outcome = yield from self._on_message(message)
            if outcome is not None:
                return outcome

    def _on_message(self, message: object) -> Flow[O | None]:
        kind = self.classify(message)
        if kind is None:
            return None
        judged = self.accept(kind) if isinstance(kind, str) else RECHECK
        if isinstance(judged, Signal):  # reconnected, or not to be trusted: read the state
            return (yield from self.check())
        return judged

    def prepare_clock(self) -> Flow[None]:
        """Before changing any state: in server-clock mode, make sure of a fresh clock
        estimate; in system-clock mode, check this host's clock once per instance."""
        settings = self.settings
        if settings.clock == "server":
            try:
                yield from self.clocks.fresh(
                    settings.clock_refresh_ns, settings.clock_samples, self.where(), self.deadline
                )
            except ConnectionLostError as exc:
                raise self.past_deadline(exc) from exc.__cause__
        else:
            lead_us = settings.auto_floor_us if settings.auto_delay else settings.delay_us
            if lead_us > 0:
                yield from self.clocks.check_system_clock(
                    settings.clock_samples, lead_us * 1000, self.deadline
                )

    def now_us_for_scripts(self) -> int | Stamp:
        """The caller's "now" that scripts base instants on: this host's wall clock, read
        as the command is sent (:attr:`Stamp.NOW_US`), or ``-1`` in server-clock mode
        (the script then reads the server's)."""
        return now_us_for_scripts(self.settings)

    def meet_instant(
        self, at_us: int, lead_us: int, server_clock: bool, *, learned_late_is_error: bool
    ) -> Flow[Instant]:
        """Plan how to meet the instant ``at_us``: wait for it (at once if ``lead_us``
        is 0: there is no wait), see :meth:`Instant.deliver`.

        ``server_clock`` says the instant is on the server's clock: it is converted with
        the clock estimate, carried forward (see
        :meth:`pyprocsync.servertime.ClockState.usable`), and awaited
        on the monotonic clock, which wall-clock steps do not move. A passed instant is
        met at once.

        :raises TooLateError: ``learned_late_is_error`` and the instant had passed by
            more than the tolerance (with ``on_late="raise"``).
        """
        at_ns, lead_ns = at_us * 1000, lead_us * 1000
        estimate = None
        if server_clock:
            settings = self.settings
            estimate = yield from self.clocks.usable(
                settings.clock_refresh_ns, settings.clock_samples, self.where(), self.deadline
            )
            target = estimate.server_to_monotonic(at_ns)
            estimate = estimate.at(target)  # its figures as of the instant
            release_ns = estimate.server_to_wall(at_ns)
            now = clock.monotonic_ns()
        else:
            target = release_ns = at_ns
            now = clock.time_ns()
        late_ns = now - target
        # How long the news took from the decision (instant - lead) to this participant:
        # reported at the next arrival, it sizes automatic lead times.
        uncertainty = 0 if estimate is None else estimate.uncertainty_ns
        self.clocks.latency_us[self.name] = max(0, late_ns + lead_ns + uncertainty) // 1000
        if (
            lead_us > 0
            and learned_late_is_error
            and late_ns > self.settings.late_tolerance_ns
            and self.settings.on_late == "raise"
        ):
            raise TooLateError(
                f"{self.name!r} was to be released {late_ns / 1e6:.3f} ms before this "
                "participant learned of it; increase the delay or check the clocks",
                late_by=late_ns / 1e9,
                release_at=release_ns / 1e9,
                **self.where(),
            )
        wait = SleepUntil(target, self.settings.spin_ns, server_clock) if lead_us > 0 else None
        return Instant(release_ns, target, late_ns, estimate, wait)
