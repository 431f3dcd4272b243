"""This host's clocks against the Redis server's clock, estimated from ``TIME`` round trips.

**A sample** (:class:`TimeSample`) reads this host's monotonic clock right before a
``TIME`` request is sent and right after its reply is read. The server read its clock
somewhere in between, and ``TIME`` truncates to the microsecond, so the *offset* (the
server's clock minus this host's monotonic clock) was then within
``[server - received, server + 1 µs - sent]``. This interval is a hard bound: it holds
whatever the delays of the two directions, however slow the round trip. Its middle is
Cristian's estimate, as in NTP.

**The filter** (:class:`ClockFilter`) combines a sliding window of samples (at most
:data:`WINDOW`, none older than :data:`MAX_AGE_NS`), in the spirit of NTP and chrony:

* *Drift.* The server's clock and this host's monotonic clock need not run at the same
  rate (quartz crystals differ by 5-30 ppm, more with temperature). Two samples ``i``
  and ``j`` taken ``d`` apart bound the rate difference ``f``:
  ``(low_j - high_i) / d <= f <= (high_j - low_i) / d``. Intersected over all pairs and
  with ``±`` :data:`MAX_DRIFT_PPB`, this gives exactly the rates that all samples
  allow; the longer the window, the narrower the range. The drift is estimated by
  least squares over the samples' midpoints, weighted by the inverse square of their
  round trips (the quick samples decide, as in NTP's and chrony's minimum-delay
  selection). It is carried forward once the samples span :data:`DRIFT_MIN_SPAN_NS`
  and show it beyond their noise, at least :data:`DRIFT_SIGNIFICANCE` standard errors
  from 0 (else it is 0: a burst of back-to-back samples, or one host, where the rates
  are equal, shows none), and kept
  within the range. The standard error comes from the fit's residuals (from
  :data:`RESIDUAL_SAMPLES` samples on), never more than the samples' intervals allow:
  a LAN host drifting 30 ppm is followed after some seconds of samples, long before
  the hard bounds alone exclude equal rates. The drift bound is the distance from the
  estimate to the farther end of the range.
* *Offset.* Each sample's interval is carried forward to the newest sample's time
  along the estimated drift; the estimate is the middle of their intersection (never
  empty: the drift is one that all samples allow). A sample delayed in either direction
  has a wide interval and drops out of the intersection by itself (minimum-delay
  selection, for each direction separately), so the intersection is narrower than the
  best single sample's interval. The uncertainty is the distance from the estimate to
  the farther end of the hard range: the intervals carried forward with the lowest
  rate for their lower ends and the highest rate for their upper ends.
* *Outliers.* Samples that cannot all be true at one constant rate (an empty range of
  rates or an empty intersection: the server's clock was stepped, or a rate changed)
  are discarded oldest first until the rest agree; the newest sample always stays.
* *Carried forward.* Between samples, the offset at a moment ``t`` is the offset at the
  newest sample plus the drift times the time since, and its uncertainty grows by the
  drift bound times the time since (:class:`ClockEstimate`).

The uncertainty is a bound, not a standard deviation: the true offset lies within it
as long as the rate difference stays constant across the window and within
:data:`MAX_DRIFT_PPB`; a clock step or rate change shows as contradicting samples.
It is typically several times the real error, which on a symmetric path is half the
difference between the quickest forward and the quickest return trip.

**Sampling** (:class:`ClockState`) is spread out so that it never competes with an
instant: a burst of ``clock_samples`` back-to-back round trips for the first estimate;
then one round trip per ``clock_refresh`` on average: a back-to-back pair (the first
wakes up the server and the path to it, so the second is quick and symmetric)
whenever the newest sample is ``2 * clock_refresh`` old, before an arrival and at a
waiter's heartbeats, by whichever call of the instance notices first. While the window
is young, the pairs come sooner: once the newest sample is as old as the window spans,
but at least ``clock_refresh / 8`` (after the first burst: at 1/8, 1/4, 1/2, 1 and 2
refresh periods), so the rate between the clocks, and with it the bound carried
forward, is narrowed within the first seconds of a run; a fresh process pays a few
round trips more in its first seconds, none later. After an
announcement, the estimate is carried forward; round trips are made then only when
there is no estimate or its newest sample is older than :data:`STALE_REFRESHES` times
``clock_refresh``.

In server-clock mode the protocol agrees release instants in server time and each
participant converts them with the estimate to the *monotonic* clock, so a step of its
wall clock during the wait changes nothing. The offset to the wall clock is derived at
each use from the monotonic offset and this host's wall clock read then: it turns the
instant into ``SyncResult.release_at`` and feeds the system-mode check that warns when
this host's clock disagrees with the server's by more than the lead time.

.. versionadded:: 1.0
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from pyprocsync import clock
from pyprocsync.core.estimate import ClockEstimate
from pyprocsync.core.ops import LINK_ERRORS, Flow, ServerTime, bound, refused, text
from pyprocsync.exceptions import ConnectionLostError, ProcSyncError, ProtocolError

__all__ = [
    "DRIFT_MIN_SPAN_NS",
    "DRIFT_SIGNIFICANCE",
    "MAX_AGE_NS",
    "MAX_DRIFT_PPB",
    "RESIDUAL_SAMPLES",
    "RESOLUTION_NS",
    "STALE_REFRESHES",
    "WINDOW",
    "ClockEstimate",
    "ClockFilter",
    "ClockState",
    "TimeRequest",
    "TimeSample",
    "parse_time",
    "sample_flow",
]

log = logging.getLogger("pyprocsync.clock")

#: The resolution of the server's ``TIME``, ns: it truncates to the microsecond.
RESOLUTION_NS = 1000

#: The largest rate difference between the server's clock and this host's monotonic
#: clock assumed before the samples bound it, parts per billion: 500 ppm, the most that
#: NTP and chrony slew a clock by (free-running quartz clocks are within about 100 ppm).
MAX_DRIFT_PPB = 500_000

#: The most samples the filter keeps.
WINDOW = 32

#: The oldest sample the filter keeps, ns (the rate of a quartz clock wanders with
#: temperature over minutes, so older samples would bound a rate that no longer holds).
MAX_AGE_NS = 120_000_000_000

#: After an announcement, an estimate is carried forward unless its newest sample is
#: older than this many ``clock_refresh`` periods (it is then renewed by one round trip).
STALE_REFRESHES = 10


@dataclass(frozen=True, slots=True)
class TimeSample:
    """One ``TIME`` round trip.

    .. versionadded:: 1.0
    """

    #: This host's monotonic clock right before the request was sent, ns.
    sent_ns: int
    #: This host's monotonic clock right after the reply was read, ns.
    received_ns: int
    #: The server's clock in the reply, ns since the epoch (whole microseconds).
    server_ns: int

    @property
    def rtt_ns(self) -> int:
        """The round trip, ns."""
        return self.received_ns - self.sent_ns

    @property
    def midpoint_ns(self) -> int:
        """The middle of the round trip on this host's monotonic clock, ns."""
        return (self.sent_ns + self.received_ns) // 2

    def bounds(self) -> tuple[int, int]:
        """The lowest and highest offset (server minus monotonic) at :attr:`midpoint_ns`
        that the sample allows: the server read its clock between the two local
        readings (plus the drift from that moment to the midpoint, at most
        :data:`MAX_DRIFT_PPB` of half the round trip)."""
        slack = -(-MAX_DRIFT_PPB * self.rtt_ns // 2_000_000_000)
        return (
            self.server_ns - self.received_ns - slack,
            self.server_ns + RESOLUTION_NS - self.sent_ns + slack,
        )


class TimeRequest:
    """Times one ``TIME`` round trip as tightly as the shell can: :meth:`command` is
    called right before the request is written (it reads the clock), :meth:`sample`
    right after the reply is read.

    .. versionadded:: 1.0
    """

    sent_ns = 0

    def command(self) -> tuple[str]:
        """The command to send; reads this host's monotonic clock."""
        self.sent_ns = clock.monotonic_ns()
        return ("TIME",)

    def sample(self, reply: Any) -> TimeSample:
        """The sample of the round trip whose reply is ``reply`` (read just now).

        :raises ProtocolError: the reply is not a ``TIME`` reply.
        """
        received = clock.monotonic_ns()
        return TimeSample(self.sent_ns, received, parse_time(reply))


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


def sample_flow(
    where: dict[str, Any] | None = None, deadline: float | None = None
) -> Flow[TimeSample]:
    """Take one sample with the ``ServerTime`` operation.

    The shells answer with a :class:`TimeSample` they timed themselves (see
    :class:`TimeRequest`); a bare ``TIME`` reply is timed here, around the operation.

    :param where: context (``event``, ``run_id``) for the errors it raises.
    :param deadline: the call's deadline (monotonic seconds) that bounds the round
        trip (see :func:`~pyprocsync.core.ops.bound`); ``None``: the connection limits.
    :raises ConnectionLostError: the server could not be reached.
    :raises ServerRefusedError: the server refused ``TIME`` (see
        :func:`~pyprocsync.core.ops.refused`).
    :raises ProtocolError: the reply is not a ``TIME`` reply.
    """
    sent = clock.monotonic_ns()
    try:
        reply = yield ServerTime(bound(deadline))
    except ProcSyncError:
        raise  # already mapped (a ServerRefusedError is a ResponseError too)
    except ResponseError as exc:
        raise refused(exc, where or {}) from exc
    except LINK_ERRORS as exc:
        raise ConnectionLostError(
            f"lost the connection to Redis reading TIME: {exc}", **(where or {})
        ) from exc
    if isinstance(reply, TimeSample):
        return reply
    server = parse_time(reply)
    return TimeSample(sent, clock.monotonic_ns(), server)


@dataclass(frozen=True, slots=True)
class _Fit:
    """What the filter concluded from its window, as of its newest sample."""

    reference_ns: int
    offset_ns: int
    uncertainty_ns: int
    drift_ppb: float
    drift_bound_ppb: float
    rtts_ns: tuple[int, ...]

    def estimate(self, now_ns: int, wall_minus_mono_ns: int, read_gap_ns: int) -> ClockEstimate:
        """The estimate for the moment ``now_ns`` (monotonic), with this host's wall
        clock minus its monotonic clock measured then to within ``read_gap_ns``."""
        age = now_ns - self.reference_ns
        offset = self.offset_ns + round(self.drift_ppb * age / 1e9)
        return ClockEstimate(
            monotonic_offset_ns=offset,
            wall_offset_ns=offset - wall_minus_mono_ns,
            uncertainty_ns=self.uncertainty_ns
            + math.ceil(self.drift_bound_ppb * abs(age) / 1e9)
            + read_gap_ns,
            rtts_ns=self.rtts_ns,
            taken_at_ns=now_ns,
            drift_ppb=self.drift_ppb,
            drift_bound_ppb=self.drift_bound_ppb,
            sample_age_ns=age,
        )


class ClockFilter:
    """Offset and drift from a sliding window of samples (see the module's description).

    Free of I/O: it combines the samples it is given, and reads this host's clocks only
    in :meth:`current`. Not thread-safe (:class:`ClockState` guards it).

    .. versionadded:: 1.0
    """

    def __init__(
        self,
        window: int = WINDOW,
        max_age_ns: int = MAX_AGE_NS,
        max_drift_ppb: int = MAX_DRIFT_PPB,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._window = window
        self._max_age_ns = max_age_ns
        self._max_drift = max_drift_ppb / 1e9
        self._samples: deque[TimeSample] = deque()
        self._fit: _Fit | None = None
        #: Samples discarded because they contradicted newer ones.
        self.discarded = 0

    @property
    def samples(self) -> tuple[TimeSample, ...]:
        """The samples in the window, oldest first."""
        return tuple(self._samples)

    @property
    def newest_ns(self) -> int | None:
        """The midpoint of the newest sample (monotonic ns), or ``None`` before any."""
        return self._samples[-1].midpoint_ns if self._samples else None

    def add(self, sample: TimeSample) -> None:
        """Add ``sample``, drop what falls out of the window or contradicts it, refit."""
        samples = self._samples
        samples.append(sample)
        while len(samples) > self._window or (
            sample.midpoint_ns - samples[0].midpoint_ns > self._max_age_ns
        ):
            samples.popleft()
        dropped = 0
        while (fit := self._refit()) is None:
            samples.popleft()
            dropped += 1
        if dropped:
            self.discarded += dropped
            log.info(
                "the server's clock moved against this host's by more than %d earlier "
                "samples allow (a clock step or a rate change): they were discarded",
                dropped,
            )
        self._fit = fit

    def estimate(self, now_ns: int, wall_minus_mono_ns: int, read_gap_ns: int = 0) -> ClockEstimate:
        """The estimate for the monotonic moment ``now_ns``, given this host's wall clock
        minus its monotonic clock then (to within ``read_gap_ns``).

        :raises ValueError: no sample was added yet.
        """
        if self._fit is None:
            raise ValueError("no sample yet")
        return self._fit.estimate(now_ns, wall_minus_mono_ns, read_gap_ns)

    def current(self) -> ClockEstimate:
        """The estimate for now, this host's clocks read now.

        :raises ValueError: no sample was added yet.
        """
        wall_minus_mono, now, gap = clock.wall_minus_monotonic()
        return self.estimate(now, wall_minus_mono, gap)

    def _refit(self) -> _Fit | None:
        """Fit the window, or ``None`` if its samples contradict each other."""
        samples = self._samples
        mids = [s.midpoint_ns for s in samples]
        bounds = [s.bounds() for s in samples]
        slow, fast = -self._max_drift, self._max_drift
        for j in range(1, len(samples)):
            low_j, high_j = bounds[j]
            for i in range(j):
                span = mids[j] - mids[i]
                if span > 0:
                    slow = max(slow, (low_j - bounds[i][1]) / span)
                    fast = min(fast, (high_j - bounds[i][0]) / span)
        if slow > fast:
            return None
        reference = mids[-1]
        aged = [(lo, hi, reference - m) for (lo, hi), m in zip(bounds, mids, strict=True)]
        drift = min(max(_fitted_drift(samples), slow), fast)

        def intersection(low_rate: float, high_rate: float) -> tuple[int, int]:
            """The offsets at the reference that every sample allows if the rate is
            between ``low_rate`` and ``high_rate``."""
            return (
                max(math.floor(lo + low_rate * age) for lo, _, age in aged),
                min(math.ceil(hi + high_rate * age) for _, hi, age in aged),
            )

        low, high = intersection(slow, fast)
        if low > high:
            return None
        # At the estimated rate the intervals still intersect (the rate is one they
        # allow): the middle of that intersection is the estimate.
        at_low, at_high = intersection(drift, drift)
        offset = min(max((at_low + at_high) // 2, low), high)
        return _Fit(
            reference_ns=reference,
            offset_ns=offset,
            uncertainty_ns=max(high - offset, offset - low),
            drift_ppb=drift * 1e9,
            drift_bound_ppb=max(fast - drift, drift - slow) * 1e9,
            rtts_ns=tuple(s.rtt_ns for s in samples),
        )


#: From this many samples on, the drift's standard error comes from the fit's residuals.
RESIDUAL_SAMPLES = 5

#: How many standard errors from 0 a fitted drift must be to be carried forward.
DRIFT_SIGNIFICANCE = 2.0

#: The shortest span of samples over which a drift is estimated, ns: over less, a few
#: noisy samples in two clusters (the first burst and a pair) can fake a steep rate.
DRIFT_MIN_SPAN_NS = 1_000_000_000


def _fitted_drift(samples: deque[TimeSample]) -> float:
    """The rate at which the offset changes (a fraction), by least squares over the
    samples' midpoints weighted by the inverse square of their round trips (a sample
    twice as slow counts a quarter as much); 0 unless it is :data:`DRIFT_SIGNIFICANCE`
    standard errors from 0 (see the module's description)."""
    base = samples[-1].midpoint_ns
    if base - samples[0].midpoint_ns < DRIFT_MIN_SPAN_NS:
        return 0.0
    points = [
        (
            float(s.midpoint_ns - base),
            float(s.server_ns + RESOLUTION_NS // 2 - s.midpoint_ns),
            1.0 / float(s.rtt_ns + RESOLUTION_NS) ** 2,
        )
        for s in samples
    ]
    total = sum(w for _, _, w in points)
    mean_t = sum(w * t for t, _, w in points) / total
    mean_y = sum(w * y for _, y, w in points) / total
    spread = sum(w * (t - mean_t) ** 2 for t, _, w in points)
    if spread <= 0:
        return 0.0
    slope = sum(w * (t - mean_t) * (y - mean_y) for t, y, w in points) / spread
    # A sample's offset is somewhere in an interval as wide as its round trip: at most
    # the variance of a uniform spread over it, 1/12 of the width squared (weight 1).
    unit_variance = 1 / 12
    if len(points) >= RESIDUAL_SAMPLES:
        residuals = sum(w * (y - mean_y - slope * (t - mean_t)) ** 2 for t, y, w in points) / (
            len(points) - 2
        )
        unit_variance = min(unit_variance, residuals)
    significant = slope**2 > DRIFT_SIGNIFICANCE**2 * unit_variance / spread
    return slope if significant else 0.0


class ClockState:
    """What one shell instance measured about time, shared by its calls (threads, tasks).

    .. versionadded:: 1.0

    The clock filter and its sampling schedule (see the module's description; one
    renewal by one call serves all), and the one-time check of this host's clock in
    system-clock mode (see :meth:`check_system_clock`). What the instance remembers
    about each event is kept apart, in :class:`~pyprocsync.core.memory.EventMemory`.
    """

    def __init__(self, *, check_system_clock: bool = True) -> None:
        #: ``TIME`` round trips taken so far.
        self.round_trips = 0
        self._filter = ClockFilter()
        self._lock = threading.Lock()
        self._sampling = False
        self._checked = not check_system_clock

    @property
    def estimate(self) -> ClockEstimate | None:
        """The estimate for now from the samples so far, or ``None`` before the first."""
        with self._lock:
            return None if self._filter.newest_ns is None else self._filter.current()

    @property
    def filter(self) -> ClockFilter:
        """The filter (read it only; the state adds the samples)."""
        return self._filter

    def fresh(
        self,
        refresh_ns: int,
        samples: int,
        where: dict[str, Any] | None = None,
        deadline: float | None = None,
    ) -> Flow[ClockEstimate]:
        """Return the estimate for now, after renewing it if it is due.

        With no sample yet, it takes a burst of ``samples`` back-to-back round trips.
        Afterwards, one round trip per ``refresh_ns`` on average: when the newest sample
        is ``2 * refresh_ns`` old, a back-to-back pair (the first round trip wakes up the
        server and this host's path to it, so that the second is quick and symmetric);
        if another call of this instance is taking that pair, this one uses the estimate
        as it is.

        Each round trip is bounded by ``deadline`` (see :func:`sample_flow`).

        :raises ConnectionLostError: the server could not be reached.
        :raises ProtocolError: a reply is not a ``TIME`` reply.
        """
        return (yield from self._renewed(self._refresh_age(refresh_ns), samples, where, deadline))

    def _refresh_age(self, refresh_ns: int) -> int:
        """How old the newest sample may grow before :meth:`fresh` renews the estimate:
        ``2 * refresh_ns``, or while the window spans less, that span (at least
        ``refresh_ns / 8``; see the module's description)."""
        with self._lock:
            samples = self._filter.samples
        if not samples:
            return 2 * refresh_ns
        span = samples[-1].midpoint_ns - samples[0].midpoint_ns
        return min(2 * refresh_ns, max(refresh_ns // 8, span))

    def usable(
        self,
        refresh_ns: int,
        samples: int,
        where: dict[str, Any] | None = None,
        deadline: float | None = None,
    ) -> Flow[ClockEstimate]:
        """Like :meth:`fresh`, for an instant already announced: the estimate is carried
        forward, and renewed (a burst if there is none, else a pair) only when its newest
        sample is older than :data:`STALE_REFRESHES` times ``refresh_ns``: a round trip
        now comes out of the lead time."""
        return (yield from self._renewed(STALE_REFRESHES * refresh_ns, samples, where, deadline))

    def _renewed(
        self,
        max_age_ns: int,
        samples: int,
        where: dict[str, Any] | None,
        deadline: float | None = None,
    ) -> Flow[ClockEstimate]:
        """The estimate for now, renewed first if its newest sample is ``max_age_ns``
        old (see :meth:`fresh`)."""
        with self._lock:
            newest = self._filter.newest_ns
            burst = newest is None
            due = newest is None or clock.monotonic_ns() - newest >= max_age_ns
            take = due and (burst or not self._sampling)
            if take and not burst:
                self._sampling = True
        if take:
            try:
                for _ in range(samples if burst else 2):
                    sample = yield from sample_flow(where, deadline)
                    with self._lock:
                        self.round_trips += 1
                        self._filter.add(sample)
            finally:
                if not burst:
                    with self._lock:
                        self._sampling = False
        estimate = self.estimate
        assert estimate is not None  # a sample was added above, or before
        return estimate

    def typical_round_trip_us(self) -> int:
        """The median round trip of the samples in the window, µs (0 before any): what
        an arrival reports for ``delay="auto"`` before this instance has learned of any
        release (an announcement travels one way, after the connection is warm: the
        median leaves out the first, slow round trip of a new connection)."""
        with self._lock:
            rtts = sorted(sample.rtt_ns for sample in self._filter.samples)
        return rtts[len(rtts) // 2] // 1000 if rtts else 0

    def keep_fresh(
        self,
        refresh_ns: int,
        samples: int,
        where: dict[str, Any] | None = None,
        deadline: float | None = None,
    ) -> Flow[None]:
        """:meth:`fresh`, for a participant waiting for an announcement, so that a long
        wait does not leave the estimate to be renewed after it. A failure only logs
        (``DEBUG``): what the waiter does next meets real trouble on its own."""
        try:
            yield from self.fresh(refresh_ns, samples, where, deadline)
        except ProcSyncError as exc:
            log.debug("could not renew the clock estimate while waiting: %s", exc)

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
