"""The asyncio twins of :class:`pyprocsync.ProcSync`, :class:`pyprocsync.Event` and
:class:`pyprocsync.Barrier`, for ``redis.asyncio`` clients.

They drive the same protocol flows as the blocking classes (:mod:`pyprocsync.core.rounds`,
:mod:`pyprocsync.core.flags`): only the I/O differs. Every method of a blocking class exists
here as a coroutine with the same parameters, and each class is an async context
manager. Two deliberate differences: ``aclose()`` is the asyncio spelling of
``close()`` (both exist), and :meth:`Barrier.n_waiting` and :meth:`Barrier.broken`,
properties of the blocking class, are coroutine methods here (they read Redis).

The release wait yields to the event loop until ``spin`` plus
:data:`~pyprocsync.clock.LOOP_TIMER_SLACK_NS` (about 1.5 ms in all) before the instant
and busy-waits, holding the loop, only for that stretch: the loop's timer fires up to a
millisecond late.

Cancelling a task that waits in :meth:`ProcSync.sync` before the round is released
withdraws its arrival (atomically, like an interrupted blocking call), so the round
still needs ``nodes`` live participants. Cancelled after the release was announced,
it leaves the round as it is: released for the others.

.. versionadded:: 1.0
"""

from __future__ import annotations

from pyprocsync.shells.asyncio import Barrier, Event, ProcSync

__all__ = ["Barrier", "Event", "ProcSync"]
