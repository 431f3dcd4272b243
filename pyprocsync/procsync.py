"""``ProcSync``: the blocking shell around the protocol in :mod:`pyprocsync.protocol`."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

import redis
from redis.client import PubSub

from . import clock
from .base import ProcSyncBase
from .exceptions import ProcSyncError
from .listeners import ListenerPool, private_pool_settings
from .protocol import Call, Flow, Listen, Operation, Receive, RunAction, ServerTime, SleepUntil
from .results import SyncResult
from .rounds import reset_flow, sync_flow

__all__ = ["ClosingShell", "ProcSync", "drive"]

T = TypeVar("T")
S = TypeVar("S")


def drive(flow: Flow[T], execute: Callable[[Operation], object]) -> T:
    """Run ``flow`` to its end, carrying out each operation it yields with ``execute``.

    An exception raised by ``execute`` is thrown into the flow at the ``yield`` of that
    operation, so the flow can react to it (or clean up and let it propagate).
    """
    reply: object = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as stop:
            return cast(T, stop.value)
        try:
            reply, error = execute(op), None
        except BaseException as exc:  # noqa: BLE001  # thrown into the flow, which decides
            reply, error = None, exc


def _listener_client(client: redis.Redis) -> redis.Redis:
    """A client for listeners: ``client``'s settings in a non-retrying pool of its own."""
    settings = private_pool_settings(getattr(client, "connection_pool", None))
    if settings is None:
        return client
    try:
        return redis.Redis(connection_pool=redis.ConnectionPool(**settings))
    except TypeError:  # connections that need more than their settings: share the pool
        return client


class _Listener:
    """A pub/sub connection and the one channel it is subscribed to (if any)."""

    __slots__ = ("_client", "channel", "pubsub")

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self.pubsub: PubSub = client.pubsub()  # type: ignore[no-untyped-call]
        self.channel: str | None = None

    def listen(self, channel: str, renew: bool) -> bool:
        """Cover ``channel``: True when a SUBSCRIBE was sent, False if it was subscribed."""
        if renew:
            self.pubsub.close()
            self.pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
            self.channel = None
        if self.channel == channel:
            while self.pubsub.get_message(timeout=0) is not None:
                pass
            return False
        if self.channel is not None:
            self.pubsub.unsubscribe(self.channel)  # type: ignore[no-untyped-call]
            self.channel = None
        self.pubsub.subscribe(channel)
        self.channel = channel
        return True


class _Participation:
    """Carries out the operations of one call with a borrowed listener."""

    def __init__(self, owner: ProcSync, action: Callable[[], object] | None) -> None:
        self._owner = owner
        self._action = action
        self._listener: _Listener | None = None

    def execute(self, op: Operation) -> object:
        if isinstance(op, RunAction):
            return None if self._action is None else self._action()
        if isinstance(op, SleepUntil):
            # The outcome is known: hand the listener back now, so the instant is not
            # followed by bookkeeping.
            self._give_back(reusable=True)
        elif isinstance(op, Listen):
            if self._listener is None:
                self._listener = self._owner._take_listener(op.channel)
            return self._listener.listen(op.channel, op.renew)
        if isinstance(op, Receive) and self._listener is not None:
            return self._listener.pubsub.get_message(timeout=op.timeout)  # type: ignore[arg-type]
        return self._owner._execute(op)

    def __enter__(self) -> _Participation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._give_back(reusable=exc is None or isinstance(exc, ProcSyncError))

    def _give_back(self, *, reusable: bool) -> None:
        if self._listener is not None:
            for surplus in self._owner._listeners.give_back(self._listener, reusable):
                surplus.pubsub.close()
            self._listener = None


class _ClosedOnExit:
    """A context manager whose exit calls ``self.close()``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: S) -> S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ProcSync(ProcSyncBase, _ClosedOnExit):
    """Synchronization points shared by processes on any number of machines.

    ``ProcSync(redis_client, run_id, delay).sync(name, nodes)`` blocks until ``nodes``
    participants (in any process on any machine that uses the same Redis, ``run_id``
    and ``name``) have called it, then all of them return at one agreed wall-clock
    instant: the last arriver's clock (with ``clock="server"``: the Redis server's)
    plus its ``delay``.

    One instance may be used by many threads at once; each ``sync`` call is one
    participant. The instance does no I/O until the first call.

    :param redis_client: a :class:`redis.Redis` (redis-py 5 or later; any
        ``decode_responses`` setting). It stays the caller's: :meth:`close` does not
        close it (see :meth:`from_url` for an instance that owns its client).
    :param run_id: names the run; every participant of a run uses the same one. Events
        of different runs never meet. Any ``str``, also empty.
    :param delay: lead time in seconds between the last arrival and the release instant
        (finite, >= 0). It must cover the time the announcement needs to reach every
        participant, and the disagreement of their clocks. ``0`` releases everyone as
        soon as they learn that the last participant arrived (no common instant).
        ``"auto"`` sizes it from measured latency: twice the slowest recent
        announcement, at least ``auto_floor`` (see :doc:`/clocks`).
    :param liveness: seconds a waiting participant's lease lasts; it is renewed every
        ``liveness / 5`` s while waiting. A participant whose lease lapses (process
        killed, host or network gone) breaks the round for the others with
        ``BrokenBarrierError(reason="lost")``. Also bounds how long a crashed
        participant's arrival can be counted in a later run that reuses the run id.
    :param retention: seconds the state of an event is kept after its last change
        (at least ``2 * liveness``). Every key pyprocsync writes has this lifetime;
        an event idle for longer starts over at generation 0.
    :param late_tolerance: how far (seconds) the release instant may already have
        passed when this participant learns it before that counts as too late.
    :param on_late: ``"raise"`` (default) raises :class:`~pyprocsync.TooLateError`
        when the instant passed by more than ``late_tolerance``; ``"proceed"`` returns
        at once instead (see :attr:`SyncResult.late_by`).
    :param spin: seconds before the release instant at which the wait stops sleeping
        and busy-waits on the clock (see :mod:`pyprocsync.clock`).
    :param node_id: this participant's name in error reports and in Redis;
        default ``host:pid:thread``.
    :param prefix: first part of every key and channel name, to keep applications that
        share a Redis apart. Must not contain ``{`` or ``}``.
    :param clock: ``"system"`` (default) trusts the hosts' synchronized wall clocks;
        ``"server"`` agrees instants on the Redis server's clock and converts them with
        an offset estimated from ``TIME`` round trips (see :doc:`/clocks`).
    :param clock_samples: round trips per offset estimate (>= 1).
    :param clock_refresh: seconds after which an offset estimate is renewed.
    :param auto_floor: the smallest lead time ``delay="auto"`` chooses, seconds.
    :raises InvalidArgumentError: an argument is invalid.

    .. versionchanged:: 1.0
       Keyword-only options; a run id and event names may hold any character;
       events can be synchronized again and again; a crashed participant's arrival
       stops counting after ``liveness`` seconds (see :doc:`/migration`).
    """

    _client: redis.Redis
    _listeners: ListenerPool[_Listener]
    _listener_client: redis.Redis | None

    @classmethod
    def from_url(
        cls, url: str, run_id: str = "", delay: float | Literal["auto"] = 1.0, **options: Any
    ) -> ProcSync:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``).

        The instance owns that client: :meth:`close` closes it. ``options`` are the
        keyword options of the constructor.
        """
        return _owning(cls, redis.Redis.from_url(url), run_id, delay, **options)

    def sync(self, event_name: str, nodes: int, timeout: float | None = None) -> SyncResult:
        """Wait until ``nodes`` participants reached ``event_name``; return at the agreed instant.

        Each call is one participant of the event's current round. When the last of
        ``nodes`` participants arrives it fixes the release instant (its wall clock, or
        the server's in server-clock mode, plus its ``delay``); every participant then
        returns at that instant by its own clock. The next call with the same name joins
        the next round, so a name can be used in a loop.

        :param event_name: the synchronization point, a non-empty ``str``.
        :param nodes: how many participants the round needs, an int >= 1. All
            participants of a round must pass the same number.
        :param timeout: seconds to wait for the others, counted from this call, or
            ``None`` (or ``inf``) to wait without limit; must be > 0.
        :returns: the round's :class:`~pyprocsync.SyncResult`.
        :raises InvalidArgumentError: an argument is invalid (nothing was sent).
        :raises TimeOutError: ``timeout`` expired first; the round is now broken for
            everyone (unless it was released at that very moment: then this returns
            normally). See :class:`~pyprocsync.TimeOutError`.
        :raises BrokenBarrierError: the round is (or became) broken: another participant
            timed out, disagreed on ``nodes`` or vanished, or the event was reset.
            Every later arrival raises it too, until :meth:`reset`.
        :raises ParameterMismatchError: the round was started with a different ``nodes``;
            it is now broken for the others.
        :raises TooLateError: the release instant had passed by more than
            ``late_tolerance`` when this participant learned it.
        :raises ProtocolError: data pyprocsync did not write was found in Redis.
        :raises ConnectionLostError: the server could not be reached (a dropped pub/sub
            connection alone is replaced, and the call goes on).
        :raises redis.exceptions.ResponseError: the server refused a command (out of
            memory, missing ACL permission).

        If the call is interrupted (``KeyboardInterrupt``, or any other exception
        raised inside it) before the round is released, its arrival is withdrawn, so
        the round still needs ``nodes`` live participants. A participant that lost
        the server cannot withdraw; its lease lapses after ``liveness`` seconds.
        """
        return self._run(sync_flow(self._settings, self._clocks, event_name, nodes, timeout))

    def reset(self, event_name: str) -> int:
        """Break the current round of ``event_name`` if anyone waits in it, and open the next.

        Participants waiting in the round raise ``BrokenBarrierError(reason="reset")``;
        a broken round becomes usable again. Resetting an idle event does nothing.

        :returns: the generation the next arrival will join.
        :raises InvalidArgumentError: ``event_name`` is invalid.

        .. versionadded:: 1.0
        """
        return self._run(reset_flow(self._settings, event_name))

    def close(self) -> None:
        """Close the pub/sub connections of this instance (and its client, if it owns one).

        Calls in progress in other threads finish; new :meth:`sync` and :meth:`reset`
        calls raise :class:`~pyprocsync.ProcSyncError`. Closing twice is harmless.
        """
        for listener in self._listeners.close():
            listener.pubsub.close()
        if self._listener_client not in (None, self._client):
            # Listeners still in use are closed when their calls end.
            self._listener_client.connection_pool.disconnect(inuse_connections=False)
        if self._owns_client:
            self._client.close()

    def _run(self, flow: Flow[T], action: Callable[[], object] | None = None) -> T:
        """Drive ``flow`` to its result; ``action`` serves its RunAction (a barrier's)."""
        self._listeners.ensure_open()
        self._load_scripts()
        with _Participation(self, action) as participation:
            return drive(flow, participation.execute)

    def _load_scripts(self) -> None:
        """Load the scripts into the server before the first arrival.

        The last arrival's release instant is its clock plus the delay, read before its
        ARRIVE is sent; a NOSCRIPT retry on that path would eat into the lead time.
        (After a server restart the retry still happens, once.)
        """
        if not self._scripts_loaded:
            with self._client.pipeline(transaction=False) as pipe:
                for script in self._scripts.values():
                    pipe.script_load(script.script)
                pipe.execute()
            self._scripts_loaded = True

    def _take_listener(self, channel: str) -> _Listener:
        listener = self._listeners.take(channel)
        if listener is None:
            if self._listener_client is None:
                self._listener_client = _listener_client(self._client)
            listener = _Listener(self._listener_client)
        return listener

    def _execute(self, op: Operation) -> object:
        """Carry out an operation that needs no listener."""
        if isinstance(op, Call):
            return self._scripts[op.script](keys=op.keys, args=op.args)
        if isinstance(op, SleepUntil):
            return clock.sleep_until_ns(op.at_ns, op.spin_ns, on_monotonic=op.on_monotonic)
        if isinstance(op, ServerTime):
            return self._client.time()
        raise TypeError(f"{op!r} needs a listener")


class ClosingShell(_ClosedOnExit):
    """``close()`` and the context manager of the classes built on a ProcSync."""

    _shell: ProcSync

    def close(self) -> None:
        """Close this object's connections (and its client, if it made it)."""
        self._shell.close()


def _owning(cls: Callable[..., S], client: redis.Redis, *args: Any, **kwargs: Any) -> S:
    """Build ``cls(client, ...)`` that owns ``client`` (closing it on close), or close it."""
    try:
        instance = cls(client, *args, **kwargs)
    except BaseException:
        client.close()
        raise
    shell: Any = getattr(instance, "_shell", instance)
    shell._owns_client = True
    return instance
