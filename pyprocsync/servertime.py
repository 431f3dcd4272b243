"""This host's clocks against the Redis server's clock, estimated from ``TIME`` round trips.

Each sample reads this host's monotonic and wall clocks, asks the server for ``TIME``
and reads both clocks again. Assuming the reply was taken halfway through the round
trip (Cristian's method, as NTP does), the server's clock minus this host's clock is
``server - (before + after) / 2``, uncertain by half the round trip. The estimate keeps
the sample with the shortest round trip, the least disturbed one.

In server-clock mode the protocol agrees release instants in server time and each
participant converts them with its offset to the *monotonic* clock, so a step of its
wall clock during the wait changes nothing. The offset to the wall clock is kept too:
it turns the instant into ``SyncResult.release_at`` and feeds the system-mode check
that warns when this host's clock disagrees with the server's by more than the lead
time.

.. versionadded:: 1.0
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from . import clock
from .exceptions import ConnectionLostError, ProcSyncError, ProtocolError
from .protocol import LINK_ERRORS, Flow, ServerTime, bound, text

__all__ = ["ClockEstimate", "ClockState", "estimate_flow", "parse_time"]

log = logging.getLogger("pyprocsync.clock")


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """This host's clocks against the server's, from the best of several samples.

    .. versionadded:: 1.0
    """

    #: Server time minus this host's monotonic clock, ns.
    monotonic_offset_ns: int
    #: Server time minus this host's wall clock, ns (positive: the server is ahead).
    wall_offset_ns: int
    #: Half the shortest round trip plus the server clock's 1 µs resolution, ns: how
    #: far the offsets may be off.
    uncertainty_ns: int
    #: Round trips of all samples, ns, in the order taken.
    rtts_ns: tuple[int, ...]
    #: When it was made, this host's monotonic clock, ns.
    taken_at_ns: int

    def server_to_monotonic(self, server_ns: int) -> int:
        """Convert a server-time instant to this host's monotonic clock."""
        return server_ns - self.monotonic_offset_ns

    def server_to_wall(self, server_ns: int) -> int:
        """Convert a server-time instant to this host's wall clock."""
        return server_ns - self.wall_offset_ns


def parse_time(reply: Any) -> int:
    """Decode a ``TIME`` reply into nanoseconds since the epoch.

    :raises ProtocolError: the reply is not ``[seconds, microseconds]``.
    """
    if not isinstance(reply, (list, tuple)):
        raise ProtocolError(f"unexpected TIME reply: {reply!r}")
    try:
        seconds, micros = (int(text(part) if isinstance(part, bytes) else part) for part in reply)
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(f"unexpected TIME reply: {reply!r}") from None
    if seconds < 0 or not 0 <= micros < 1_000_000:
        raise ProtocolError(f"unexpected TIME reply: {reply!r}")
    return seconds * 1_000_000_000 + micros * 1000


def estimate_flow(
    samples: int, where: dict[str, Any] | None = None, deadline: float | None = None
) -> Flow[ClockEstimate]:
    """Take ``samples`` TIME round trips and return the estimate of the shortest one.

    :param where: context (``event``, ``run_id``) for the errors it raises.
    :param deadline: the call's deadline (monotonic seconds) that bounds each round
        trip (see :func:`~pyprocsync.protocol.bound`), or ``None``.
    :raises ConnectionLostError: the server could not be reached.
    """
    best: tuple[int, int, int] | None = None  # (rtt, monotonic offset, wall offset)
    rtts = []
    for _ in range(samples):
        mono_before, wall_before = clock.monotonic_ns(), clock.time_ns()
        try:
            reply = yield ServerTime(bound(deadline))
        except LINK_ERRORS as exc:
            raise ConnectionLostError(
                f"lost the connection to Redis reading TIME: {exc}", **(where or {})
            ) from exc
        server_ns = parse_time(reply)
        mono_after, wall_after = clock.monotonic_ns(), clock.time_ns()
        rtt = mono_after - mono_before
        rtts.append(rtt)
        if best is None or rtt < best[0]:
            best = (
                rtt,
                server_ns - (mono_before + mono_after) // 2,
                server_ns - (wall_before + wall_after) // 2,
            )
    if best is None:
        raise ValueError("samples must be at least 1")
    rtt, mono_offset, wall_offset = best
    # The server's TIME has a resolution of 1 µs: add it to the round-trip bound.
    return ClockEstimate(
        mono_offset, wall_offset, rtt // 2 + 1000, tuple(rtts), clock.monotonic_ns()
    )


class ClockState:
    """What one shell instance measured about time, shared by its calls (threads, tasks).

    .. versionadded:: 1.0


    The latest clock estimate, renewed when older than ``refresh_ns`` (a renewal by one
    call serves all); the one-time check of this host's clock in system-clock mode (see
    :meth:`check_system_clock`); and, per event name, how long the last announcement
    took to reach this instance (:attr:`latency_us`), reported at the next arrival so
    that ``delay="auto"`` can size the lead time, and the last round it saw released
    (:attr:`passed`), so that an event whose state went back in time is noticed.
    """

    def __init__(self, *, check_system_clock: bool = True) -> None:
        #: Per event name: µs from the last release's decision to this instance knowing it.
        self.latency_us: dict[str, int] = {}
        #: Per event name: the latest generation this instance saw released, and when
        #: (monotonic seconds).
        self.passed: dict[str, tuple[int, float]] = {}
        self._estimate: ClockEstimate | None = None
        self._lock = threading.Lock()
        self._checked = not check_system_clock

    @property
    def estimate(self) -> ClockEstimate | None:
        """The latest estimate, or ``None`` before the first."""
        return self._estimate

    def fresh(
        self,
        refresh_ns: int,
        samples: int,
        where: dict[str, Any] | None = None,
        deadline: float | None = None,
    ) -> Flow[ClockEstimate]:
        """Return an estimate younger than ``refresh_ns``, taking a new one if needed
        (within ``deadline``, see :func:`estimate_flow`)."""
        current = self._estimate
        if current is not None and clock.monotonic_ns() - current.taken_at_ns < refresh_ns:
            return current
        estimate = yield from estimate_flow(samples, where, deadline)
        with self._lock:
            if self._estimate is None or self._estimate.taken_at_ns < estimate.taken_at_ns:
                self._estimate = estimate
        return estimate

    def check_system_clock(
        self, samples: int, lead_ns: int, deadline: float | None = None
    ) -> Flow[None]:
        """Once per instance: warn if this host's clock is off the server's by > ``lead_ns``.

        In system-clock mode the last arrival's clock fixes the instant; a host whose
        clock disagrees with the others by more than the lead time learns of instants
        that have passed (TooLateError). The server's clock stands in for the others'.
        """
        if self._checked:
            return
        self._checked = True
        try:
            estimate = yield from self.fresh(0, samples, deadline=deadline)
        except ProcSyncError as exc:  # advisory only: the call itself reports real trouble
            log.debug("could not compare this host's clock with the server's: %s", exc)
            return
        if abs(estimate.wall_offset_ns) > lead_ns:
            log.warning(
                "this host's clock is %.3f ms %s the Redis server's (+- %.3f ms), more than "
                "the lead time of %.3f ms: expect TooLateError; synchronize the clocks "
                '(NTP/PTP) or use clock="server"',
                abs(estimate.wall_offset_ns) / 1e6,
                "behind" if estimate.wall_offset_ns > 0 else "ahead of",
                estimate.uncertainty_ns / 1e6,
                lead_ns / 1e6,
            )
