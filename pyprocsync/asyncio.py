"""The asyncio twins of :class:`pyprocsync.ProcSync`, :class:`pyprocsync.Event` and
:class:`pyprocsync.Barrier`, for ``redis.asyncio`` clients.

They drive the same protocol flows as the blocking classes (:mod:`pyprocsync.rounds`,
:mod:`pyprocsync.flags`): only the I/O differs. Every method of a blocking class exists
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

import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from . import clock
from .base import BarrierBase, EventBase, ProcSyncBase
from .exceptions import ProcSyncError, TimeOutError
from .listeners import ListenerPool, private_pool_settings
from .protocol import Call, Flow, Listen, Operation, Receive, RunAction, ServerTime, SleepUntil
from .results import SyncResult
from .rounds import reset_flow, sync_flow

__all__ = ["Barrier", "Event", "ProcSync"]

T = TypeVar("T")
S = TypeVar("S")


async def _drive(flow: Flow[T], execute: Callable[[Operation], Awaitable[object]]) -> T:
    """Run ``flow`` to its end, awaiting ``execute`` for each operation it yields.

    The asyncio counterpart of :func:`pyprocsync.procsync.drive`: an exception raised
    while an operation runs (``CancelledError`` included) is thrown into the flow at
    that operation's ``yield``.
    """
    reply: object = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as stop:
            return cast(T, stop.value)
        try:
            reply, error = await execute(op), None
        except BaseException as exc:  # noqa: BLE001  # thrown into the flow, which decides
            reply, error = None, exc


def _listener_client(client: aioredis.Redis) -> aioredis.Redis:
    """A client for listeners: ``client``'s settings in a non-retrying pool of its own."""
    settings = private_pool_settings(getattr(client, "connection_pool", None))
    if settings is None:
        return client
    try:
        return aioredis.Redis(connection_pool=aioredis.ConnectionPool(**settings))
    except TypeError:  # connections that need more than their settings: share the pool
        return client


class _Listener:
    """A pub/sub connection and the one channel it is subscribed to (if any)."""

    __slots__ = ("_client", "channel", "pubsub")

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self.pubsub: PubSub = client.pubsub()
        self.channel: str | None = None

    async def listen(self, channel: str, renew: bool) -> bool:
        """Cover ``channel``: True when a SUBSCRIBE was sent, False if it was subscribed."""
        if renew:
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
            self.pubsub = self._client.pubsub()
            self.channel = None
        if self.channel == channel:
            while await self.pubsub.get_message(timeout=0) is not None:
                pass
            return False
        if self.channel is not None:
            await self.pubsub.unsubscribe(self.channel)
            self.channel = None
        await self.pubsub.subscribe(channel)
        self.channel = channel
        return True


class _Participation:
    """Carries out the operations of one call with a borrowed listener."""

    def __init__(self, owner: ProcSync, action: Callable[[], object] | None) -> None:
        self._owner = owner
        self._action = action
        self._listener: _Listener | None = None

    async def execute(self, op: Operation) -> object:
        if isinstance(op, RunAction):
            result = None if self._action is None else self._action()
            return await result if inspect.isawaitable(result) else result
        if isinstance(op, SleepUntil):
            # The outcome is known: hand the listener back now, so the instant is not
            # followed by bookkeeping.
            await self.give_back(reusable=True)
        elif isinstance(op, Listen):
            if self._listener is None:
                self._listener = self._owner._take_listener(op.channel)
            return await self._listener.listen(op.channel, op.renew)
        if isinstance(op, Receive) and self._listener is not None:
            return await self._listener.pubsub.get_message(timeout=op.timeout)
        return await self._owner._execute(op)

    async def __aenter__(self) -> _Participation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.give_back(reusable=exc is None or isinstance(exc, ProcSyncError))

    async def give_back(self, *, reusable: bool) -> None:
        if self._listener is not None:
            for surplus in self._owner._listeners.give_back(self._listener, reusable):
                await surplus.pubsub.aclose()  # type: ignore[no-untyped-call]
            self._listener = None


class _ClosedOnExit:
    """An async context manager whose exit awaits ``self.aclose()``; ``close`` too."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """The same as :meth:`aclose` (the blocking classes' spelling)."""
        await self.aclose()

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ProcSync(ProcSyncBase, _ClosedOnExit):
    """:class:`pyprocsync.ProcSync` for asyncio: the same parameters and semantics.

    ``redis_client`` is a :class:`redis.asyncio.Redis`. One instance may serve many
    tasks at once; each :meth:`sync` call is one participant.

    .. versionadded:: 1.0
    """

    _client: aioredis.Redis
    _listeners: ListenerPool[_Listener]
    _listener_client: aioredis.Redis | None

    @classmethod
    def from_url(
        cls, url: str, run_id: str = "", delay: float | Literal["auto"] = 1.0, **options: Any
    ) -> ProcSync:
        """Make an instance with its own client for ``url``; :meth:`aclose` closes it."""
        return _owning(cls, url, run_id, delay, **options)

    async def sync(self, event_name: str, nodes: int, timeout: float | None = None) -> SyncResult:
        """Wait until ``nodes`` participants reached ``event_name``; return at the agreed instant.

        Exactly :meth:`pyprocsync.ProcSync.sync`, awaited. Cancelling the task before
        the release withdraws the arrival.
        """
        flow = sync_flow(self._settings, self._clocks, event_name, nodes, timeout)
        return await self._run(flow)

    async def reset(self, event_name: str) -> int:
        """Exactly :meth:`pyprocsync.ProcSync.reset`, awaited."""
        return await self._run(reset_flow(self._settings, event_name))

    async def aclose(self) -> None:
        """Close the pub/sub connections of this instance (and its client, if it owns one).

        Calls in progress in other tasks finish; new calls raise
        :class:`~pyprocsync.ProcSyncError`. Closing twice is harmless.
        """
        for listener in self._listeners.close():
            await listener.pubsub.aclose()  # type: ignore[no-untyped-call]
        if self._listener_client not in (None, self._client):
            # Listeners still in use are closed when their calls end.
            await self._listener_client.connection_pool.disconnect(inuse_connections=False)
        if self._owns_client:
            await self._client.aclose()

    async def _run(self, flow: Flow[T], action: Callable[[], object] | None = None) -> T:
        """Drive ``flow`` to its result; ``action`` (plain or async) serves its RunAction."""
        self._listeners.ensure_open()
        await self._load_scripts()
        async with _Participation(self, action) as participation:
            return await _drive(flow, participation.execute)

    async def _load_scripts(self) -> None:
        """Load the scripts before the first arrival (see the blocking shell)."""
        if not self._scripts_loaded:
            async with self._client.pipeline(transaction=False) as pipe:
                for script in self._scripts.values():
                    pipe.script_load(script.script)
                await pipe.execute()
            self._scripts_loaded = True

    def _take_listener(self, channel: str) -> _Listener:
        listener = self._listeners.take(channel)
        if listener is None:
            if self._listener_client is None:
                self._listener_client = _listener_client(self._client)
            listener = _Listener(self._listener_client)
        return listener

    async def _execute(self, op: Operation) -> object:
        """Carry out an operation that needs no listener."""
        if isinstance(op, Call):
            return await self._scripts[op.script](keys=op.keys, args=op.args)
        if isinstance(op, SleepUntil):
            return await clock.async_sleep_until_ns(
                op.at_ns, op.spin_ns, on_monotonic=op.on_monotonic
            )
        if isinstance(op, ServerTime):
            return await self._client.time()
        raise TypeError(f"{op!r} needs a listener")


class _ClosingShell(_ClosedOnExit):
    """``aclose()``/``close()`` and the async context manager of Event and Barrier."""

    _shell: ProcSync

    async def aclose(self) -> None:
        """Close this object's connections (and its client, if it made it)."""
        await self._shell.aclose()


def _owning(cls: Callable[..., S], url: str, *args: Any, **kwargs: Any) -> S:
    """Build ``cls(client, ...)`` owning a new client for ``url`` (closed on ``aclose``)."""
    # If the constructor raises, the client is simply dropped: an asyncio client opens
    # no connection before its first command, so there is nothing to close.
    instance = cls(aioredis.Redis.from_url(url), *args, **kwargs)
    shell: Any = getattr(instance, "_shell", instance)
    shell._owns_client = True
    return instance


class Event(EventBase, _ClosingShell):
    """:class:`pyprocsync.Event` for asyncio: the same parameters and semantics.

    .. versionadded:: 1.0
    """

    _shell_type = ProcSync
    _shell: ProcSync

    @classmethod
    def from_url(cls, url: str, name: str, **kwargs: Any) -> Event:
        """Make an Event with its own client for ``url``; :meth:`aclose` closes it."""
        return _owning(cls, url, name, **kwargs)

    async def set(self) -> None:
        """See :meth:`pyprocsync.Event.set`."""
        await self._shell._run(self._set_flow())

    async def clear(self) -> None:
        """See :meth:`pyprocsync.Event.clear`."""
        await self._shell._run(self._clear_flow())

    async def is_set(self) -> bool:
        """See :meth:`pyprocsync.Event.is_set`."""
        return await self._shell._run(self._is_set_flow())

    async def wait(self, timeout: float | None = None) -> bool:
        """See :meth:`pyprocsync.Event.wait`."""
        return await self._shell._run(self._wait_flow(timeout))


class Barrier(BarrierBase, _ClosingShell):
    """:class:`pyprocsync.Barrier` for asyncio: the same parameters and semantics.

    ``action`` may be a plain callable or return an awaitable (an ``async def``
    function), which is awaited before the release.

    .. versionadded:: 1.0
    """

    _shell_type = ProcSync
    _shell: ProcSync

    @classmethod
    def from_url(cls, url: str, name: str, parties: int, **kwargs: Any) -> Barrier:
        """Make a Barrier with its own client for ``url``; :meth:`aclose` closes it."""
        return _owning(cls, url, name, parties, **kwargs)

    async def n_waiting(self) -> int:
        """See :attr:`pyprocsync.Barrier.n_waiting` (a coroutine here)."""
        state = await self._shell._run(self._read_flow())
        return 0 if state.broken else state.arrived

    async def broken(self) -> bool:
        """See :attr:`pyprocsync.Barrier.broken` (a coroutine here)."""
        return (await self._shell._run(self._read_flow())).broken is not None

    async def wait(self, timeout: float | None = None) -> int:
        """See :meth:`pyprocsync.Barrier.wait`."""
        try:
            return (await self._shell._run(self._wait_flow(timeout), self._action)).index
        except TimeOutError as exc:
            raise self._timeout_error(exc) from exc

    async def reset(self) -> None:
        """See :meth:`pyprocsync.Barrier.reset`."""
        await self._shell.reset(self._name)

    async def abort(self) -> None:
        """See :meth:`pyprocsync.Barrier.abort`."""
        await self._shell._run(self._abort_flow())
