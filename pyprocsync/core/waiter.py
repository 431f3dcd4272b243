"""The subscribe-then-wait loop every flow that waits for an announcement runs.

A :class:`Waiter` subscribes to its channel before it changes any state, so no
announcement can slip between the change and the listening; it then blocks on the
subscription and reads the stored state again (a *check*) whenever the connection was
re-established, an announcement does not parse or is not conclusive, and every
``liveness / 5`` seconds. A lost announcement therefore costs at most one heartbeat,
never a hang.
"""

from __future__ import annotations

import abc
import enum
import threading
from typing import Any, Generic, TypeVar

from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pyprocsync import clock
from pyprocsync.core import limits
from pyprocsync.core.memory import EventMemory
from pyprocsync.core.ops import (
    LINK_ERRORS,
    Flow,
    Instant,
    Listen,
    Receive,
    SleepUntil,
    bound,
    call,
    prepare,
    refused,
    text,
)
from pyprocsync.core.params import Settings
from pyprocsync.core.servertime import ClockState
from pyprocsync.core.wire import NO_BOUND, SERVER_CLOCK, Request, Stamp
from pyprocsync.exceptions import (
    ClockUncertaintyError,
    ConnectionLostError,
    ProcSyncError,
    TimeOutError,
    TooLateError,
)

__all__ = ["RECHECK", "SUBSCRIBED", "Signal", "Waiter", "now_us_for_scripts", "system_clock_bound"]

O = TypeVar("O")  # noqa: E741  # what a waiter waits for


def now_us_for_scripts(settings: Settings) -> int | Stamp:
    """See :meth:`Waiter.now_us_for_scripts`."""
    return SERVER_CLOCK if settings.clock == "server" else Stamp.NOW_US


_told_unsynchronised = threading.Event()


def system_clock_bound() -> tuple[bool | None, int | None]:
    """What this host's kernel says of its wall clock (see
    :func:`pyprocsync.clock.kernel_clock`): whether it is synchronised (``None``: it
    says nothing), and the bound on its error, ns (``None`` unless synchronised).

    An unsynchronised clock is logged once per process (WARNING, ``pyprocsync.clock``):
    across machines, ``clock="system"`` then rests on clocks nobody keeps in step.
    """
    kernel = clock.kernel_clock()
    if kernel is None:
        return None, None
    if kernel.synchronized:
        return True, kernel.max_error_ns
    if not _told_unsynchronised.is_set():
        _told_unsynchronised.set()
        clock.log.warning(
            "the kernel says this host's clock is not synchronised (no time daemon keeps "
            'it): with clock="system", releases on different machines are as far apart '
            "as their clocks, and none reports a clock bound (SyncResult.clock_uncertainty "
            'is None); set up chrony or PTP, or use clock="server"'
        )
    return False, None


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
        *,
        memory: EventMemory,
    ) -> None:
        self.settings = settings
        self.clocks = clocks
        self.memory = memory
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

    def call(self, request: Request) -> Flow[Any]:
        """Run ``request``'s script (see :func:`call`) with this waiter's error context.

        Its reply may take until the deadline, but at least :data:`CALL_TIMEOUT_FLOOR`
        seconds: a server that stops answering (paused, overloaded, cut off without a
        reset) cannot hold a participant far past its timeout.
        """
        try:
            return (yield from call(request, self.where(), bound(self.deadline)))
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
        The confirmation counts as a reply: one that has not come after the link's
        limits (:data:`~pyprocsync.core.limits.CONNECT_TIMEOUT` to open a connection for
        it, :data:`~pyprocsync.core.limits.REPLY_TIMEOUT` for the reply) is a failed
        connection too, so a call without a timeout never waits for it forever. (The
        listener fails such a connection itself after the reply limit; this bound holds
        whatever it does.)
        """
        try:
            if not (yield from self.served(Listen(self.channel, renew, bound(self.deadline)))):
                return True
            given_up_at = clock.monotonic() + limits.CONNECT_TIMEOUT + limits.REPLY_TIMEOUT
            while True:
                remaining = self.remaining()
                if remaining is not None and remaining <= 0:
                    return False
                left = given_up_at - clock.monotonic()
                if left <= 0:
                    raise RedisTimeoutError(
                        f"the subscription to {self.channel!r} was not confirmed within "
                        f"{limits.CONNECT_TIMEOUT + limits.REPLY_TIMEOUT:g} s"
                    )
                wait = left if remaining is None else min(remaining, left)
                if self.classify((yield from self.receive(wait))) is SUBSCRIBED:
                    return True
        except LINK_ERRORS as exc:
            remaining = self.remaining()
            if remaining is not None and remaining <= 0:
                return False
            if renew:
                raise self.link_lost(exc) from exc
            return (yield from self.listen(renew=True))

    def served(self, op: Listen | Receive) -> Flow[Any]:
        """Carry out a pub/sub operation; the server's refusal (of the subscription)
        raises :func:`refused`'s error with this waiter's context."""
        try:
            return (yield op)
        except ProcSyncError:
            raise  # already mapped (a ServerRefusedError is a ResponseError too)
        except ResponseError as exc:
            raise refused(exc, self.where()) from exc

    def receive(self, timeout: float | None) -> Flow[object]:
        """The next pub/sub message, or ``None`` (see :class:`Receive` and :meth:`served`)."""
        return (yield from self.served(Receive(timeout)))

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
                    message = yield from self.receive(wait)
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

    def uncertain(
        self,
        what: str,
        node: str,
        bound_ns: int | None,
        tolerance_ns: int,
        **counts: int,
    ) -> ClockUncertaintyError:
        """The error for participant ``node`` whose clock bound (``None``: none) exceeds
        the tolerance ``max_uncertainty``; ``what`` says what happened to the call."""
        stated = (
            "no clock bound" if bound_ns is None else f"a clock bound of {bound_ns / 1e6:.3f} ms"
        )
        return ClockUncertaintyError(
            f"{what}: participant {node!r} has {stated}, more than max_uncertainty "
            f"{tolerance_ns / 1e6:.3f} ms (pyprocsync clock --max-uncertainty checks a host)",
            node=node,
            bound=None if bound_ns is None else bound_ns / 1e9,
            max_uncertainty=tolerance_ns / 1e9,
            **counts,
            **self.where(),
        )

    def arrival_bound_us(self) -> int:
        """How far this participant's reading of an instant agreed now may be from the
        reference clock, µs, as an arrival states it (:data:`NO_BOUND`: none): with the
        server's clock, the estimate's bound carried to the end of the lead; with the
        system clock, the bound this host's time daemon keeps."""
        settings = self.settings
        if settings.clock == "server":
            estimate = self.clocks.estimate
            if estimate is None:
                return NO_BOUND
            lead_ns = max(settings.delay_us, settings.auto_floor_us) * 1000
            return -(-estimate.uncertainty_at(clock.monotonic_ns() + lead_ns) // 1000)
        _synchronized, bound_ns = system_clock_bound()
        return NO_BOUND if bound_ns is None else -(-bound_ns // 1000)

    def now_us_for_scripts(self) -> int | Stamp:
        """The caller's "now" that scripts base instants on: this host's wall clock, read
        as the command is sent (:attr:`Stamp.NOW_US`), or :data:`SERVER_CLOCK` in server-clock mode
        (the script then reads the server's)."""
        return now_us_for_scripts(self.settings)

    def meet_instant(
        self, at_us: int, lead_us: int, server_clock: bool, *, learned_late_is_error: bool
    ) -> Flow[Instant]:
        """Plan how to meet the instant ``at_us``: wait for it (at once if ``lead_us``
        is 0: there is no wait), see :meth:`Instant.deliver`.

        ``server_clock`` says the instant is on the server's clock: it is converted with
        the clock estimate, carried forward (see
        :meth:`pyprocsync.core.servertime.ClockState.usable`), and awaited
        on the monotonic clock, which wall-clock steps do not move. A passed instant is
        met at once.

        :raises TooLateError: ``learned_late_is_error`` and the instant had passed by
            more than the tolerance (with ``on_late="raise"``).
        """
        at_ns, lead_ns = at_us * 1000, lead_us * 1000
        estimate = None
        synchronized: bool | None = None
        planned = clock.wall_minus_monotonic()[:2]
        if server_clock:
            settings = self.settings
            estimate = yield from self.clocks.usable(
                settings.clock_refresh_ns, settings.clock_samples, self.where(), self.deadline
            )
            target = estimate.server_to_monotonic(at_ns)
            estimate = estimate.at(target)  # its figures as of the instant
            release_ns = estimate.server_to_wall(at_ns)
            uncertainty: int | None = estimate.uncertainty_ns
            now = clock.monotonic_ns()
        else:
            target = release_ns = at_ns
            synchronized, uncertainty = system_clock_bound()
            now = clock.time_ns()
        late_ns = now - target
        # How long the news took from the decision (instant - lead) to this participant,
        # with the estimate's uncertainty: reported at arrivals, it sizes automatic leads.
        carried = 0 if estimate is None else estimate.uncertainty_ns
        self.memory.note_latency(max(0, late_ns + lead_ns + carried) // 1000)
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
                clock_uncertainty=None if uncertainty is None else uncertainty / 1e9,
                **self.where(),
            )
        wait = (
            SleepUntil(target, self.settings.spin_ns, server_clock, (at_us, server_clock))
            if lead_us > 0
            else None
        )
        return Instant(
            release_ns, target, late_ns, estimate, wait, uncertainty, synchronized, planned
        )
