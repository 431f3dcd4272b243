"""``ProcSync``: the blocking shell around the protocol in :mod:`pyprocsync.protocol`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from . import clock
from .exceptions import ProcSyncError
from .params import OnLate, Settings
from .protocol import Call, Flow, Listen, Operation, Receive, SleepUntil, reset_flow, sync_flow
from .results import SyncResult
from .scripts import Script

__all__ = ["ProcSync", "drive"]

T = TypeVar("T")


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
    """Return a client for pub/sub listeners: ``client``'s settings, a pool of its own.

    Its connections never retry: a failure reaches the flow at once, which replaces the
    connection and reads the stored state, within the participant's timeout
    (redis-py's retries would block for the client's whole retry budget). Listeners
    also stay out of the caller's pool, so they never exhaust its ``max_connections``.
    """
    pool = getattr(client, "connection_pool", None)
    if not isinstance(pool, redis.ConnectionPool):  # a client that keeps no plain pool
        return client
    kwargs = {
        name: value
        for name, value in pool.connection_kwargs.items()
        if not name.startswith("orig_") and name != "maint_notifications_pool_handler"
    }
    kwargs["retry"] = Retry(NoBackoff(), 0)
    try:
        private = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    except TypeError:  # a pool type whose connections need more than their settings
        return client
    return redis.Redis(connection_pool=private)


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

    def close(self) -> None:
        """Close the pub/sub connection."""
        self.pubsub.close()


class _ListenerPool:
    """Idle pub/sub connections of one ProcSync, each left subscribed to its last channel.

    A participant borrows one for the duration of a ``sync`` call, preferring one that
    is already subscribed to its event's channel, so a loop over one event subscribes
    once. A connection whose use ended in an unexpected exception is closed, not reused.
    """

    #: Idle connections kept; more are closed when they come back.
    LIMIT = 8

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._listener_client: redis.Redis | None = None  # made at the first take()
        self._idle: list[_Listener] = []
        self._lock = threading.Lock()
        self._closed = False

    def ensure_open(self) -> None:
        """Raise :class:`ProcSyncError` if :meth:`close` was called."""
        if self._closed:
            raise ProcSyncError("this ProcSync is closed")

    def take(self, channel: str) -> _Listener:
        """Return an idle listener, preferably one subscribed to ``channel``, or a new one."""
        with self._lock:
            self.ensure_open()
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i].channel == channel:
                    return self._idle.pop(i)
            if self._idle:
                return self._idle.pop()
            if self._listener_client is None:
                self._listener_client = _listener_client(self._client)
            listener_client = self._listener_client
        return _Listener(listener_client)

    def give_back(self, listener: _Listener, reusable: bool) -> None:
        """Keep ``listener`` for later calls, or close it."""
        surplus = [listener]
        if reusable:
            with self._lock:
                if not self._closed:
                    self._idle.append(listener)
                    surplus = self._idle[: max(0, len(self._idle) - self.LIMIT)]
                    del self._idle[: len(surplus)]
        for extra in surplus:
            extra.close()

    def close(self) -> None:
        """Close every idle listener; listeners given back later are closed too."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for listener in idle:
            listener.close()
        if self._listener_client not in (None, self._client):
            # Listeners still in use are closed when their calls end.
            self._listener_client.connection_pool.disconnect(inuse_connections=False)


class _Participation:
    """Carries out the operations of one ``sync`` call with a borrowed listener."""

    def __init__(self, owner: ProcSync) -> None:
        self._owner = owner
        self._listener: _Listener | None = None

    def execute(self, op: Operation) -> object:
        if isinstance(op, SleepUntil):
            # The outcome is known: hand the listener back now, so the instant is not
            # followed by bookkeeping.
            self._give_back(reusable=True)
        elif isinstance(op, Listen):
            if self._listener is None:
                self._listener = self._owner._listeners.take(op.channel)
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
            self._owner._listeners.give_back(self._listener, reusable)
            self._listener = None


class ProcSync:
    """Synchronization points shared by processes on any number of machines.

    ``ProcSync(redis_client, run_id, delay).sync(name, nodes)`` blocks until ``nodes``
    participants (in any process on any machine that uses the same Redis, ``run_id``
    and ``name``) have called it, then all of them return at one agreed wall-clock
    instant: the last arriver's clock plus its ``delay``.

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
        and busy-waits on the wall clock (see :mod:`pyprocsync.clock`).
    :param node_id: this participant's name in error reports and in Redis;
        default ``host:pid:thread``.
    :param prefix: first part of every key and channel name, to keep applications that
        share a Redis apart. Must not contain ``{`` or ``}``.
    :raises InvalidArgumentError: an argument is invalid.

    .. versionchanged:: 1.0
       Keyword-only options; a run id and event names may hold any character;
       events can be synchronized again and again; a crashed participant's arrival
       stops counting after ``liveness`` seconds (see :doc:`/migration`).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        run_id: str = "",
        delay: float = 1.0,
        *,
        liveness: float = 5.0,
        retention: float = 60.0,
        late_tolerance: float = 0.001,
        on_late: OnLate = "raise",
        spin: float = 0.0005,
        node_id: str | None = None,
        prefix: str = "pyprocsync",
    ) -> None:
        self._settings = Settings.create(
            run_id=run_id,
            delay=delay,
            liveness=liveness,
            retention=retention,
            late_tolerance=late_tolerance,
            on_late=on_late,
            spin=spin,
            node_id=node_id,
            prefix=prefix,
        )
        self._client = redis_client
        self._owns_client = False
        self._scripts = {script: redis_client.register_script(script.value) for script in Script}
        self._scripts_loaded = False
        self._listeners = _ListenerPool(redis_client)

    @classmethod
    def from_url(cls, url: str, run_id: str = "", delay: float = 1.0, **options: Any) -> ProcSync:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``).

        The instance owns that client: :meth:`close` closes it. ``options`` are the
        keyword options of the constructor.
        """
        client = redis.Redis.from_url(url)
        try:
            instance = cls(client, run_id, delay, **options)
        except BaseException:
            client.close()
            raise
        instance._owns_client = True
        return instance

    @property
    def run_id(self) -> str:
        """The run this instance synchronizes in."""
        return self._settings.run_id

    @property
    def delay(self) -> float:
        """The lead time, in seconds, this instance announces when it arrives last."""
        return self._settings.delay_us / 1e6

    def sync(self, event_name: str, nodes: int, timeout: float | None = None) -> SyncResult:
        """Wait until ``nodes`` participants reached ``event_name``; return at the agreed instant.

        Each call is one participant of the event's current round. When the last of
        ``nodes`` participants arrives it fixes the release instant (its wall clock plus
        its ``delay``); every participant then returns at that instant by its own wall
        clock. The next call with the same name joins the next round, so a name can be
        used in a loop.

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
        :raises redis.exceptions.RedisError: the server could not be reached.

        If the call is interrupted (``KeyboardInterrupt``, a connection error) before
        the round is released, its arrival is withdrawn, so the round still needs
        ``nodes`` live participants.
        """
        flow = sync_flow(self._settings, event_name, nodes, timeout)
        self._listeners.ensure_open()
        self._load_scripts()
        with _Participation(self) as participation:
            return drive(flow, participation.execute)

    def reset(self, event_name: str) -> int:
        """Break the current round of ``event_name`` if anyone waits in it, and open the next.

        Participants waiting in the round raise ``BrokenBarrierError(reason="reset")``;
        a broken round becomes usable again. Resetting an idle event does nothing.

        :returns: the generation the next arrival will join.
        :raises InvalidArgumentError: ``event_name`` is invalid.

        .. versionadded:: 1.0
        """
        flow = reset_flow(self._settings, event_name)
        self._listeners.ensure_open()
        return drive(flow, self._execute)

    def close(self) -> None:
        """Close the pub/sub connections of this instance (and its client, if it owns one).

        Calls in progress in other threads finish; new :meth:`sync` and :meth:`reset`
        calls raise :class:`~pyprocsync.ProcSyncError`. Closing twice is harmless.
        """
        self._listeners.close()
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> ProcSync:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ProcSync run_id={self.run_id!r} delay={self.delay}>"

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

    def _execute(self, op: Operation) -> object:
        """Carry out an operation that needs no listener."""
        if isinstance(op, Call):
            return self._scripts[op.script](keys=op.keys, args=op.args)
        if isinstance(op, SleepUntil):
            return clock.sleep_until_ns(op.at_ns, op.spin_ns)
        raise TypeError(f"{op!r} needs a listener")
