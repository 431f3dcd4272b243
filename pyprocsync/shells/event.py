"""``Event``: :class:`threading.Event` across processes and machines."""

from __future__ import annotations

from typing import Any

from pyprocsync.shells.base import BlockingRun, EventBase
from pyprocsync.shells.blocking import ClosingShell, ProcSync, _owning, meet

__all__ = ["Event"]


class Event(EventBase[BlockingRun], ClosingShell):
    """A flag shared by every process that uses the same Redis, ``run_id`` and ``name``.

    The semantics of :class:`threading.Event`, across machines: :meth:`wait` blocks until
    the flag is set; every waiter returns ``True`` once it is set, and a waiter that was
    already waiting when :meth:`set` happened returns ``True`` even if :meth:`clear`
    follows at once (sets are numbered in Redis). :meth:`is_set` reads the shared flag.

    With ``delay > 0`` the waiters woken by one :meth:`set` all return at one instant,
    the setter's wall clock (or the server's, with ``clock="server"``) plus ``delay``,
    like :meth:`ProcSync.sync`. A call to
    :meth:`wait` while the flag is set returns at that instant if it is still ahead,
    else at once.

    :param redis_client: a :class:`redis.Redis` (it stays the caller's).
    :param name: the flag's name, a non-empty ``str``; it does not share state with a
        :meth:`ProcSync.sync` point or a :class:`Barrier` of the same name.
    :param run_id: the run it belongs to.
    :param delay: lead time between :meth:`set` and the instant its waiters return
        (default 0: each returns as soon as it learns of the set); a number, not
        ``"auto"``.
    :param options: the keyword options of :class:`ProcSync` (``liveness``,
        ``retention``, ``late_tolerance``, ``on_late``, ``spin``, ``node_id``,
        ``prefix``, ``clock``, ``clock_samples``, ``clock_refresh``, ``auto_floor``,
        ``member``); ``auto_floor`` has no effect, since ``delay`` is never
        ``"auto"``.
    :raises InvalidArgumentError: an argument is invalid (nothing was sent).

    .. note::
       Differences from :class:`threading.Event`: the flag lives in Redis, so like every
       key pyprocsync writes it expires when nobody touched it for ``retention``
       seconds (a set flag left alone that long reads as cleared); a waiter that
       learns of a set with ``delay > 0`` after its instant raises
       :class:`~pyprocsync.TooLateError` (unless ``on_late="proceed"``).

    .. versionadded:: 1.0
    """

    _shell_type = ProcSync
    _shell: ProcSync

    @classmethod
    def from_url(cls, url: str, name: str, **kwargs: Any) -> Event:
        """Make an Event with its own client for ``url``; :meth:`close` closes it.

        ``kwargs`` are the constructor's keyword arguments, and ``cluster`` (see
        :meth:`ProcSync.from_url`).
        """
        return _owning(cls, url, name, **kwargs)

    def set(self) -> None:
        """Set the flag: every waiter returns ``True`` (at now + ``delay``)."""
        self._seam.run(self._set_flow())

    def clear(self) -> None:
        """Clear the flag; waiters already woken by an earlier set stay woken."""
        self._seam.run(self._clear_flow())

    def is_set(self) -> bool:
        """Return whether the shared flag is set (one read from Redis)."""
        return self._seam.run(self._is_set_flow())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set (or was set since this call began).

        :param timeout: seconds, or ``None`` (or ``inf``) to wait without limit.
        :returns: ``True``, except ``False`` when ``timeout`` expired with no set.
        :raises TooLateError: see the class notes.
        """
        return meet(self._seam.run(self._wait_flow(timeout)))
