"""What the clock estimation concludes: this host's clocks against the server's.

A record of its own so that the operations (:mod:`pyprocsync.core.ops`) can carry an
estimate without depending on how it is made (:mod:`pyprocsync.core.servertime`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = ["ClockEstimate"]


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """This host's clocks against the server's at one moment, and how they move.

    All offsets are the server's clock minus this host's; they are valid at
    :attr:`taken_at_ns` and carried to other moments along :attr:`drift_ppb`.

    .. versionadded:: 1.0
    """

    #: Server time minus this host's monotonic clock at :attr:`taken_at_ns`, ns.
    monotonic_offset_ns: int
    #: Server time minus this host's wall clock at :attr:`taken_at_ns`, ns (positive:
    #: the server is ahead), with the wall clock as read when the estimate was made.
    wall_offset_ns: int
    #: How far the offsets at :attr:`taken_at_ns` may be off, ns: a bound (see the
    #: module's description), not a standard deviation.
    uncertainty_ns: int
    #: Round trips of the samples it is made of, ns, in the order taken.
    rtts_ns: tuple[int, ...]
    #: The moment its figures refer to, on this host's monotonic clock, ns.
    taken_at_ns: int
    #: How fast the server's clock gains on this host's monotonic clock, parts per
    #: billion (negative: it loses).
    drift_ppb: float
    #: How far :attr:`drift_ppb` may be off, parts per billion.
    drift_bound_ppb: float
    #: How long before :attr:`taken_at_ns` its newest sample was taken, ns.
    sample_age_ns: int

    def offset_at(self, monotonic_ns: int) -> int:
        """Server time minus this host's monotonic clock when it reads ``monotonic_ns``."""
        return self.monotonic_offset_ns + round(
            self.drift_ppb * (monotonic_ns - self.taken_at_ns) / 1e9
        )

    def uncertainty_at(self, monotonic_ns: int) -> int:
        """How far :meth:`offset_at` ``monotonic_ns`` may be off, ns."""
        return self.uncertainty_ns + math.ceil(
            self.drift_bound_ppb * abs(monotonic_ns - self.taken_at_ns) / 1e9
        )

    def at(self, monotonic_ns: int) -> ClockEstimate:
        """The same estimate with its figures as of ``monotonic_ns`` (this host's wall
        clock assumed to keep its pace with the monotonic clock until then)."""
        shift = self.offset_at(monotonic_ns) - self.monotonic_offset_ns
        return replace(
            self,
            monotonic_offset_ns=self.monotonic_offset_ns + shift,
            wall_offset_ns=self.wall_offset_ns + shift,
            uncertainty_ns=self.uncertainty_at(monotonic_ns),
            taken_at_ns=monotonic_ns,
            sample_age_ns=self.sample_age_ns + monotonic_ns - self.taken_at_ns,
        )

    def server_to_monotonic(self, server_ns: int) -> int:
        """Convert a server-time instant to this host's monotonic clock."""
        # server(m) = m + offset + drift * (m - taken_at): solved for m.
        ahead = server_ns - self.monotonic_offset_ns - self.taken_at_ns
        rate = self.drift_ppb / 1e9
        return self.taken_at_ns + ahead - round(ahead * rate / (1 + rate))

    def server_to_wall(self, server_ns: int) -> int:
        """Convert a server-time instant to this host's wall clock."""
        return self.server_to_monotonic(server_ns) + (
            self.monotonic_offset_ns - self.wall_offset_ns
        )
