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
    #: ``return`` statements (``pyprocsync bench`` measures the difference, a few µs).
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
    #: How far ``clock_offset`` may be off, seconds: a bound (the samples' intervals
    #: intersected, plus the drift allowance until the instant), not a standard
    #: deviation (see :doc:`/clocks`).
    clock_uncertainty: float | None = None
