"""What a completed synchronization reports."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SyncResult"]


@dataclass(frozen=True, slots=True)
class SyncResult:
    """The record of one participant passing one round of a synchronization point.

    Every participant of one round gets the same ``event``, ``generation`` and
    ``delay``, and the same ``release_at`` (in server-clock mode: the same instant,
    converted to each host's clock); ``index`` differs, ``late_by`` is this
    participant's own.

    .. versionadded:: 1.0
    """

    #: The synchronization point's name.
    event: str
    #: The round: 0 for the first use of the name, one more per released or reset round.
    generation: int
    #: Arrival order in the round, 0 .. nodes-1 (the last arrival has ``nodes - 1``,
    #: unless an interrupted participant gave its index back).
    index: int
    #: How many participants the round had.
    nodes: int
    #: The agreed release instant, epoch seconds on this host's wall clock (in
    #: system-clock mode the protocol assumes it agrees with the other hosts' clocks).
    release_at: float
    #: Seconds after ``release_at`` that this participant's clock read as the call's
    #: last step, after the wait: what is left before the caller's next line is two
    #: ``return`` statements. It is the library's report; ``pyprocsync bench`` shows
    #: it beside the caller's own reading.
    #: In server-clock mode it is read on the monotonic clock the wait used. With
    #: ``delay == 0`` it is the time it took to learn of the release.
    late_by: float
    #: The lead time the round was released with (the last arriver's ``delay``, or the
    #: lead ``delay="auto"`` chose).
    delay: float
    #: With an instant on the server's clock (``clock="server"``): the Redis server's
    #: clock minus this host's wall clock, seconds, as estimated for the release
    #: instant; ``None`` for an instant on the last arriver's clock.
    clock_offset: float | None = None
    #: How far this host's reading of the instant may be from the reference clock,
    #: seconds: a bound, not a standard deviation. This participant was released between
    #: ``late_by - clock_uncertainty`` and ``late_by + clock_uncertainty`` seconds after
    #: the agreed instant. With ``clock="server"`` the reference is the server's clock
    #: and the bound is the clock estimate's (the samples' intervals intersected, plus
    #: the drift allowance until the instant, see :doc:`/clocks`); with
    #: ``clock="system"`` the reference is true time and the bound is the one this
    #: host's time daemon keeps (the kernel's ``maxerror``, see
    #: :func:`pyprocsync.clock.kernel_clock`). ``None`` when there is none: the kernel
    #: says this host's clock is not synchronised, or says nothing.
    clock_uncertainty: float | None = None
    #: With ``clock="system"``: whether this host's kernel says its clock is
    #: synchronised by a time daemon (``None`` where it says nothing); ``None`` with
    #: ``clock="server"``, which does not rely on it.
    clock_synchronized: bool | None = None
    #: How far this host's wall clock was stepped during the wait, seconds (0.0: not at
    #: all). With ``clock="server"`` the wait follows the monotonic clock and the
    #: release is not moved; with ``clock="system"`` the wait follows the wall clock, and
    #: the release moved with it. A step is also logged (``pyprocsync.clock``, WARNING).
    clock_step: float = 0.0
