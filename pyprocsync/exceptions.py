"""Every exception pyprocsync raises on purpose.

All of them derive from :class:`ProcSyncError`, which derives from :class:`Exception`
(0.1.0 derived it from :class:`BaseException`, so ``except Exception`` did not catch it).
Where a standard exception means the same thing it is a second parent, so code written
against the standard library keeps working: :class:`TimeOutError` is a
:class:`TimeoutError`, :class:`BrokenBarrierError` is a :class:`threading.BrokenBarrierError`,
:class:`InvalidArgumentError` and :class:`ParameterMismatchError` are :class:`ValueError`;
:class:`BrokenByTimeoutError` is both a :class:`TimeOutError` and a
:class:`BrokenBarrierError`. Errors that redis-py raised before 1.0 keep its classes
as parents too: :class:`ConnectionLostError` is a ``redis.exceptions.ConnectionError``,
:class:`ServerRefusedError` a ``redis.exceptions.ResponseError`` and
:class:`PermissionRefusedError` a ``redis.exceptions.NoPermissionError`` (and a
:class:`PermissionError`).

Each exception carries what it is about as attributes (``event``, ``run_id``,
``generation``, and more per class), so a handler never has to parse the message.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import redis.exceptions

__all__ = [
    "ArgumentTypeError",
    "BrokenBarrierError",
    "BrokenByTimeoutError",
    "ClockUncertaintyError",
    "ConnectionLostError",
    "InvalidArgumentError",
    "ParameterMismatchError",
    "PermissionRefusedError",
    "ProcSyncError",
    "ProtocolError",
    "ServerRefusedError",
    "TimeOutError",
    "TooLateError",
]


class ProcSyncError(Exception):
    """Root of every pyprocsync exception.

    Subclasses take their own attributes as keyword arguments and pass ``event``,
    ``run_id`` and ``generation`` on to this class.

    :ivar event: the synchronization point the error is about, or ``None``.
    :ivar run_id: the run the event belongs to, or ``None``.
    :ivar generation: the round of the event, or ``None`` when not known.
    """

    def __init__(
        self,
        message: str = "",
        *,
        event: str | None = None,
        run_id: str | None = None,
        generation: int | None = None,
    ) -> None:
        super().__init__(message)
        self.event = event
        self.run_id = run_id
        self.generation = generation


class InvalidArgumentError(ProcSyncError, ValueError):
    """An argument has a value pyprocsync cannot accept; nothing was sent to Redis.

    .. versionadded:: 1.0
    """


class ArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong type; nothing was sent to Redis.

    It is a :class:`TypeError`, and also a :class:`ValueError` because 0.1.0 raised
    :class:`ValueError` for every invalid argument.

    .. versionadded:: 1.0
    """


class TimeOutError(ProcSyncError, TimeoutError):
    """This participant's timeout expired before every participant arrived.

    If this participant had arrived, the round is now broken for every other participant
    too (they raise :class:`BrokenByTimeoutError`, a :class:`BrokenBarrierError` that is
    also a :class:`TimeOutError`), and for later arrivals until the event is reset. If
    the timeout expired before its arrival could even be sent (the subscription was not
    confirmed in time), the round was not touched.

    :ivar timeout: the timeout that expired, in seconds (``None`` if not given).
    :ivar arrived: how many participants had arrived, or ``None`` when not known.
    :ivar expected: how many were expected, or ``None`` when not known.
    """

    def __init__(
        self,
        message: str = "",
        *,
        timeout: float | None = None,
        arrived: int | None = None,
        expected: int | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.timeout = timeout
        self.arrived = arrived
        self.expected = expected


class TooLateError(ProcSyncError):
    """The agreed release instant had already passed when this participant learned it.

    Raised only when the instant had passed by more than the ``late_tolerance`` of the
    :class:`~pyprocsync.ProcSync`; with ``on_late="proceed"`` the call returns instead.
    Causes: a lead time (``delay``) shorter than the latency of the network or of the
    scheduler, or clocks that disagree by more than the lead time.

    :ivar late_by: seconds between the release instant and the moment this participant
        learned it (by this participant's clock); ``None`` only when raised by hand.
    :ivar release_at: the agreed instant, epoch seconds (``None`` likewise).
    :ivar clock_uncertainty: how far this host's reading of the instant may be from the
        reference clock, seconds (see :attr:`pyprocsync.SyncResult.clock_uncertainty`);
        ``None`` when there is no bound.
    """

    def __init__(
        self,
        message: str = "",
        *,
        late_by: float | None = None,
        release_at: float | None = None,
        clock_uncertainty: float | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.late_by = late_by
        self.release_at = release_at
        self.clock_uncertainty = clock_uncertainty


class BrokenBarrierError(ProcSyncError, threading.BrokenBarrierError):
    """The round this participant waits for, or tries to join, is broken.

    A round breaks when a participant times out, when participants disagree on the
    number of nodes, when a waiting participant stops renewing its lease (it crashed or
    lost its connection), when the event is reset, when a :class:`~pyprocsync.Barrier`
    is aborted or its action raises. It stays broken for later
    arrivals until :meth:`~pyprocsync.ProcSync.reset` is called, or until nobody has
    touched the event for its ``retention`` and its state expires.

    :ivar reason: why the round broke: ``"timeout"``, ``"mismatch"``, ``"lost"``,
        ``"reset"``, ``"abort"``, ``"action"``, ``"uncertain"`` (see
        :class:`ClockUncertaintyError`) or ``"state-lost"`` (the event's state vanished
        from Redis, e.g. a server restart or flush).
    :ivar missing: node ids of participants known to be absent (may be empty).
    :ivar arrived: how many participants had arrived when it broke, if known.
    :ivar expected: how many were expected, if known.
    """

    def __init__(
        self,
        message: str = "",
        *,
        reason: str = "unknown",
        missing: Sequence[str] = (),
        arrived: int | None = None,
        expected: int | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.reason = reason
        self.missing = tuple(missing)
        self.arrived = arrived
        self.expected = expected


class BrokenByTimeoutError(BrokenBarrierError, TimeOutError):
    """The round broke because a participant's timeout expired.

    What every other participant waiting in that round raises (and every later arrival
    until the event is reset), and what :meth:`Barrier.wait <pyprocsync.Barrier.wait>`
    raises when its own timeout expires. It is both a :class:`BrokenBarrierError`
    (``reason="timeout"``), so threading-style ``except BrokenBarrierError`` catches it,
    and a :class:`TimeOutError`, so 0.1.0 code's ``except TimeOutError`` still catches
    it on every node (in 0.1.0 every node raised ``TimeOutError``). A
    :meth:`ProcSync.sync <pyprocsync.ProcSync.sync>` participant whose own timeout
    expired raises a plain :class:`TimeOutError`.

    Its attributes are those of both parents; ``timeout`` is the timeout that expired
    when it was this participant's own, else ``None`` (another participant's).

    .. versionadded:: 1.0
    """

    def __init__(
        self,
        message: str = "",
        *,
        timeout: float | None = None,
        missing: Sequence[str] = (),
        arrived: int | None = None,
        expected: int | None = None,
        **context: Any,
    ) -> None:
        super().__init__(
            message,
            reason="timeout",
            missing=missing,
            arrived=arrived,
            expected=expected,
            timeout=timeout,
            **context,
        )


class ClockUncertaintyError(BrokenBarrierError):
    """A participant's clock could not honour the round's ``max_uncertainty``: nobody
    was released (``reason="uncertain"``).

    Each arrival states how far its reading of the instant may be from the reference
    clock (see :attr:`pyprocsync.SyncResult.clock_uncertainty`); when the widest of
    these exceeds the smallest ``max_uncertainty`` of the round's participants, the
    round breaks for all of them before any instant is agreed. Later arrivals raise it
    too, until :meth:`~pyprocsync.ProcSync.reset`.

    :ivar node: the participant with the widest bound (also in ``missing``).
    :ivar bound: its bound, seconds; ``None`` when it had none (its kernel says its
        clock is not synchronised, or says nothing).
    :ivar max_uncertainty: the tolerance it exceeded, seconds.

    .. versionadded:: 1.0
    """

    def __init__(
        self,
        message: str = "",
        *,
        node: str | None = None,
        bound: float | None = None,
        max_uncertainty: float | None = None,
        arrived: int | None = None,
        expected: int | None = None,
        **context: Any,
    ) -> None:
        super().__init__(
            message,
            reason="uncertain",
            missing=() if node is None else (node,),
            arrived=arrived,
            expected=expected,
            **context,
        )
        self.node = node
        self.bound = bound
        self.max_uncertainty = max_uncertainty


class ParameterMismatchError(ProcSyncError, ValueError):
    """This participant's ``nodes`` differs from what the round's first arrival said.

    The round breaks: the other participants raise :class:`BrokenBarrierError`.

    :ivar expected: the number of nodes the round was started with.
    :ivar given: the number this participant passed.
    """

    def __init__(
        self,
        message: str = "",
        *,
        expected: int | None = None,
        given: int | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.expected = expected
        self.given = given


class ConnectionLostError(ProcSyncError, redis.exceptions.ConnectionError, ConnectionError):
    """The connection to Redis failed while this participant took part in a round.

    A dropped pub/sub connection alone is repaired at once (the participant subscribes
    again and reads the stored state); this is raised when that does not work, or
    when a script call fails to reach the server. The participant's arrival, if any,
    stays counted until its lease lapses (``liveness``); then the round breaks for the
    others with ``reason="lost"``. It is a :class:`ConnectionError` and a
    ``redis.exceptions.ConnectionError`` too.

    .. versionadded:: 1.0
    """


class ProtocolError(ProcSyncError):
    """Data found in Redis is not what pyprocsync writes: corrupt, foreign or hostile.

    Nothing read from Redis is ever evaluated; a value that does not parse raises this.
    """


class ServerRefusedError(ProcSyncError, redis.exceptions.ResponseError):
    """The Redis server refused a command of the call: out of memory (``maxmemory``
    with ``noeviction``), a read-only replica, a missing ACL permission
    (:class:`PermissionRefusedError`), a script error.

    Every script pyprocsync runs checks before its first write that nothing it is
    about to run can be refused (see :mod:`pyprocsync.core.scripts`), so a refused call
    changed nothing in Redis: the caller's arrival, set or reset did not happen. (A
    server older than Redis 7 cannot tell ACL refusals in advance.) A participant
    already waiting when a later call is refused (a lease renewal) raises it too; its
    arrival stays counted until its lease lapses, as after a lost connection.

    It is a ``redis.exceptions.ResponseError`` too (the error redis-py raised before
    1.0); ``__cause__`` is redis-py's error.

    :ivar reply: the server's error message.

    .. versionadded:: 1.0
    """

    def __init__(self, message: str = "", *, reply: str = "", **context: Any) -> None:
        super().__init__(message, **context)
        self.reply = reply


class PermissionRefusedError(
    ServerRefusedError, redis.exceptions.NoPermissionError, PermissionError
):
    """The server's ACL does not let this user run a command the call needs (its
    message names it): ``NOPERM``, or a script's check before its first write.

    The user needs the grant of :func:`pyprocsync.tools.acl.acl_rule`. It is a
    :class:`PermissionError` and a ``redis.exceptions.NoPermissionError`` too.

    .. versionadded:: 1.0
    """
