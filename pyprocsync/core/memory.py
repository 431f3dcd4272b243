"""What one shell instance remembers about each event from one of its calls to the next."""

from __future__ import annotations

import threading
from collections import deque

from pyprocsync import clock

__all__ = ["LATENCY_WINDOW", "EventMemory"]

#: How many of the latest announcement latencies an instance keeps to report.
LATENCY_WINDOW = 32


class EventMemory:
    """Per event name, what one shell instance learned at a release that a later call
    of the same instance (any thread or task) needs; the protocol's memory, apart from
    the clock state (:class:`~pyprocsync.core.servertime.ClockState`).

    Each entry is read and written whole, so calls running at once never see half an
    update; :meth:`note_released` keeps the latest generation under a lock.

    .. versionadded:: 1.0
    """

    def __init__(self) -> None:
        #: The latest :data:`LATENCY_WINDOW` announcement latencies of this instance, of
        #: any event: µs from a release's decision to this instance knowing it (with the
        #: clock estimate's uncertainty in server-clock mode); see :meth:`reported_us`.
        self.latencies_us: deque[int] = deque(maxlen=LATENCY_WINDOW)
        #: Per event name: the latest generation this instance saw released, and when
        #: (monotonic seconds), so that an event whose state went back in time is noticed.
        self.passed: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def note_latency(self, latency_us: int) -> None:
        """Record how long this instance took to learn of a release (see
        :attr:`latencies_us`)."""
        self.latencies_us.append(latency_us)

    def reported_us(self) -> int:
        """What an arrival of this instance reports for ``delay="auto"``: the slowest of
        its latest announcement latencies, of any event (the slow tail of this host's
        link, jitter included, whatever the name of the point), each lowered by 1/32
        per later release (rounded down), as the server lowers its record of a point's
        slowest latency: a past stall is forgotten over some tens of rounds. 0 before
        any."""
        reported = 0
        for latency in self.latencies_us:  # oldest first
            reported = max(reported * 31 // 32, latency)
        return reported

    def note_released(self, name: str, generation: int) -> None:
        """Record that this instance saw ``generation`` of ``name`` released, now: the
        entry in :attr:`passed` keeps the higher of it and the generation already there,
        with the current monotonic time."""
        with self._lock:
            seen = self.passed.get(name, (-1, 0.0))[0]
            self.passed[name] = (max(seen, generation), clock.monotonic())
