"""``Barrier``: :class:`threading.Barrier` across processes and machines."""

from __future__ import annotations

from typing import Any

from pyprocsync.exceptions import TimeOutError
from pyprocsync.shells.base import BarrierBase, BlockingRun
from pyprocsync.shells.blocking import ClosingShell, ProcSync, _owning, meet

__all__ = ["Barrier"]


class Barrier(BarrierBase[BlockingRun], ClosingShell):
    """A barrier for ``parties`` participants in any processes on any machines.

    The semantics of :class:`threading.Barrier`, across machines: :meth:`wait` blocks
    until ``parties`` participants (same Redis, ``run_id`` and ``name``) wait, then
    returns to each of them a distinct index ``0 .. parties - 1`` (arrival order) and
    the barrier can be used again. ``action``, if given, runs exactly once per round,
    in the last participant to arrive, before anyone is released; if it raises, the
    round breaks: that participant gets the exception, the others
    :class:`~pyprocsync.BrokenBarrierError`. A timeout breaks the round for every
    waiter; :meth:`abort` breaks it; :meth:`reset` wakes the current waiters with
    ``BrokenBarrierError`` and makes the barrier usable again. :attr:`n_waiting` and
    :attr:`broken` read the shared state.

    All participants are released at one instant: the last arrival's wall clock (or the
    server's, with ``clock="server"``), read after its action, plus ``delay``, like
    :meth:`ProcSync.sync`.

    :param redis_client: a :class:`redis.Redis` (it stays the caller's).
    :param name: the barrier's name, a non-empty ``str``. A barrier shares its rounds
        with :meth:`ProcSync.sync` calls of the same name and run.
    :param parties: how many participants a round needs, an int >= 1.
    :param action: a callable without arguments, run as described above. Give the same
        action to every participant, since any of them may arrive last.
    :param timeout: the default timeout of :meth:`wait`, seconds or ``None``.
    :param run_id: the run it belongs to.
    :param delay: lead time of the release instant (default 0.05 s: enough for a
        local network; raise it for slower links, 0 for no common instant, ``"auto"``
        to size it from measured latency).
    :param options: the keyword options of :class:`ProcSync` (``liveness``,
        ``retention``, ``late_tolerance``, ``on_late``, ``spin``, ``node_id``,
        ``prefix``, ``clock``, ``clock_samples``, ``clock_refresh``, ``auto_floor``,
        ``member``).
    :raises InvalidArgumentError: an argument is invalid (nothing was sent).

    .. note::
       Differences from :class:`threading.Barrier`: the participant whose own timeout
       expired also raises ``BrokenBarrierError`` (``reason="timeout"``), as in
       threading, but the others learn the reason too; the action must finish within
       ``liveness`` seconds, or the others take its runner for lost and the round
       breaks; ``n_waiting`` and ``broken`` are one read from Redis each, so they may
       be stale by the time they are used.

    .. versionadded:: 1.0
    """

    _shell_type = ProcSync
    _shell: ProcSync

    @classmethod
    def from_url(cls, url: str, name: str, parties: int, **kwargs: Any) -> Barrier:
        """Make a Barrier with its own client for ``url``; :meth:`close` closes it.

        ``kwargs`` are the constructor's keyword arguments, and ``cluster`` (see
        :meth:`ProcSync.from_url`).
        """
        return _owning(cls, url, name, parties, **kwargs)

    @property
    def n_waiting(self) -> int:
        """How many participants wait in the current round (0 while it is broken)."""
        state = self._seam.run(self._read_flow())
        return 0 if state.broken else state.arrived

    @property
    def broken(self) -> bool:
        """Whether the current round is broken (until :meth:`reset`)."""
        return self._seam.run(self._read_flow()).broken is not None

    def wait(self, timeout: float | None = None) -> int:
        """Wait until ``parties`` participants wait; return this one's index at the instant.

        :param timeout: seconds, or ``None`` for the barrier's default ``timeout``.
        :returns: the arrival index, ``0 .. parties - 1``, distinct in the round.
        :raises BrokenBarrierError: the round is or became broken (a timeout, this
            one's included, :meth:`abort`, :meth:`reset`, a lost participant, a
            mismatch of ``parties``, or a failed action in another participant).
        :raises TooLateError: the release instant had passed when this one learned it.
        :raises Exception: whatever ``action`` raised, in the participant that ran it.
        """
        recorder = self._seam.recorder
        try:
            with recorder.noting(self._name, self._parties) as note:
                due = self._seam.run(self._wait_flow(timeout), self._action)
        except TimeOutError as exc:
            raise self._timeout_error(exc) from exc
        recorder.due(note, due)
        return meet(due).index

    def reset(self) -> None:
        """Wake the current waiters with ``BrokenBarrierError`` and open a fresh round."""
        self._shell.reset(self._name)

    def abort(self) -> None:
        """Break the barrier: current and later waiters raise ``BrokenBarrierError``."""
        self._seam.run(self._abort_flow())
