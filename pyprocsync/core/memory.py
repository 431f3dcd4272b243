"""What one shell instance remembers about each event from one of its calls to the next."""

from __future__ import annotations

import threading

from pyprocsync import clock

__all__ = ["EventMemory"]


class EventMemory:
    """Per event name, what one shell instance learned at a release that a later call
    of the same instance (any thread or task) needs; the protocol's memory, apart from
    the clock state (:class:`~pyprocsync.core.servertime.ClockState`).

    Each entry is read and written whole, so calls running at once never see half an
    update; :meth:`note_released` keeps the latest generation under a lock.

    .. versionadded:: 1.0
    """

    def __init__(self) -> None:
        #: Per event name: µs from the last release's decision to this instance knowing
        #: it, reported at the next arrival so that ``delay="auto"`` can size the lead time.
        self.latency_us: dict[str, int] = {}
        #: Per event name: the latest generation this instance saw released, and when
        #: (monotonic seconds), so that an event whose state went back in time is noticed.
        self.passed: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def note_released(self, name: str, generation: int) -> None:
        """Record that this instance saw ``generation`` of ``name`` released, now: the
        entry in :attr:`passed` keeps the higher of it and the generation already there,
        with the current monotonic time."""
        with self._lock:
            seen = self.passed.get(name, (-1, 0.0))[0]
            self.passed[name] = (max(seen, generation), clock.monotonic())
