"""Following a Redis Cluster's redirections: which replies mean "not here", and for how long.

The shells send a script call again where it belongs when a node answers MOVED, ASK or
TRYAGAIN (see their ``_send``); this module holds the limits they share.
"""

from __future__ import annotations

from redis.exceptions import AskError, MovedError, TryAgainError

from pyprocsync import clock

__all__ = ["REDIRECTS", "REDIRECT_BUDGET_S", "REDIRECT_PAUSE_S", "Budget"]

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
