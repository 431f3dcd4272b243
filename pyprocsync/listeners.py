"""Bookkeeping of pub/sub listeners, shared by the blocking and the asyncio shell.

A listener is one pub/sub connection subscribed to (at most) one event channel. A shell
keeps its idle listeners here, each still subscribed to its last channel, and a
participant borrows one for the duration of a call, preferring one already subscribed
to its event, so a loop over one event subscribes once. This module does no I/O: what
must be closed is handed back to the shell, which closes it its own way.
"""

from __future__ import annotations

import threading
from typing import Any, Generic, Protocol, TypeVar

from redis.backoff import NoBackoff
from redis.retry import Retry

from .exceptions import ProcSyncError

__all__ = ["ListenerPool", "private_pool_settings"]


class _Listener(Protocol):
    channel: str | None


L = TypeVar("L", bound=_Listener)


def private_pool_settings(pool: Any) -> dict[str, Any] | None:
    """Return the settings for a listener pool of its own, copied from ``pool``.

    Listener connections never retry: a failure reaches the flow at once, which replaces
    the connection and reads the stored state within the participant's timeout
    (redis-py's retries would block for the client's whole retry budget). A pool of
    their own also keeps listeners out of the caller's ``max_connections``. ``None``
    when ``pool`` has no plain connection settings to copy.
    """
    settings = getattr(pool, "connection_kwargs", None)
    connection_class = getattr(pool, "connection_class", None)
    if not isinstance(settings, dict) or connection_class is None:
        return None
    copied = {
        name: value
        for name, value in settings.items()
        if not name.startswith("orig_") and name != "maint_notifications_pool_handler"
    }
    copied["retry"] = Retry(NoBackoff(), 0)
    copied["connection_class"] = connection_class
    return copied


class ListenerPool(Generic[L]):
    """The idle listeners of one shell instance; thread-safe, free of I/O."""

    #: Idle listeners kept; more are handed back for closing.
    LIMIT = 8

    def __init__(self) -> None:
        self._idle: list[L] = []
        self._lock = threading.Lock()
        self._closed = False

    def ensure_open(self) -> None:
        """Raise :class:`ProcSyncError` once :meth:`close` was called."""
        if self._closed:
            raise ProcSyncError("this ProcSync is closed")

    def take(self, channel: str) -> L | None:
        """Return an idle listener, preferably one on ``channel``; ``None`` if none is idle."""
        with self._lock:
            self.ensure_open()
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i].channel == channel:
                    return self._idle.pop(i)
            return self._idle.pop() if self._idle else None

    def give_back(self, listener: L, reusable: bool) -> list[L]:
        """Keep ``listener`` for later calls; return the listeners the caller must close."""
        if not reusable:
            return [listener]
        with self._lock:
            if self._closed:
                return [listener]
            self._idle.append(listener)
            surplus = self._idle[: max(0, len(self._idle) - self.LIMIT)]
            del self._idle[: len(surplus)]
            return surplus

    def close(self) -> list[L]:
        """Refuse further takes; return the idle listeners the caller must close.

        Listeners in use are handed back for closing when their calls end.
        """
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            return idle
