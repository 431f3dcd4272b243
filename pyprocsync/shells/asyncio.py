"""The asyncio shell: drives the protocol's flows with ``redis.asyncio`` clients.

The public names are re-exported by :mod:`pyprocsync.asyncio`, whose description
says how they behave.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from pyprocsync import clock
from pyprocsync.core import params
from pyprocsync.core.members import leave_flow, renew_flow
from pyprocsync.core.ops import (
    LINK_ERRORS,
    AtInstant,
    Call,
    Due,
    Flow,
    Listen,
    Operation,
    Prepare,
    Receive,
    RunAction,
    ServerTime,
    constant,
)
from pyprocsync.core.params import DEFAULTS
from pyprocsync.core.rounds import reset_flow, sync_flow
from pyprocsync.core.servertime import TimeRequest
from pyprocsync.exceptions import TimeOutError
from pyprocsync.results import SyncResult
from pyprocsync.shells import listener_task, redispy
from pyprocsync.shells.base import AsyncRun, BarrierBase, EventBase, ProcSyncBase
from pyprocsync.shells.listener_task import TaskListener, TaskMailbox, cancel_safe, receive
from pyprocsync.shells.listeners import at_server
from pyprocsync.shells.recorder import TaskRecorder
from pyprocsync.shells.redirects import REDIRECT_PAUSE_S, REDIRECTS, Budget

__all__ = ["Barrier", "Event", "ProcSync"]

log = logging.getLogger("pyprocsync")

T = TypeVar("T")
S = TypeVar("S")


async def _drive(flow: Flow[T], execute: Callable[[Operation], Awaitable[object]]) -> T:
    """Run ``flow`` to its end, awaiting ``execute`` for each operation it yields.

    The asyncio counterpart of :func:`pyprocsync.shells.blocking.drive`: an exception raised
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


async def _meet(due: Due[T]) -> T:
    """:func:`pyprocsync.shells.blocking.meet` for a coroutine: ``due``'s result, at its
    instant when it is due at one (see :func:`pyprocsync.clock.async_sleep_until_ns`)."""
    if isinstance(due, AtInstant):
        wait = due.wait
        await clock.async_sleep_until_ns(
            wait.at_ns,
            wait.spin_ns,
            on_monotonic=wait.on_monotonic,
            warm=due.finish,
            between=due.watch,
            shared=wait.shared,
        )
        return due.finish()
    return due


class _Participation:
    """Carries out the operations of one call; its pub/sub messages come through a
    mailbox registered with the shared listener."""

    def __init__(
        self, owner: ProcSync, listener: TaskListener, action: Callable[[], object] | None
    ) -> None:
        self._owner = owner
        self._listener = listener  # a reference taken for this call
        self._held = True
        self._action = action
        self._mailbox = TaskMailbox()
        self._channel: str | None = None

    async def execute(self, op: Operation) -> object:
        if isinstance(op, RunAction):
            result = None if self._action is None else self._action()
            return await result if inspect.isawaitable(result) else result
        if isinstance(op, Listen):
            self._channel = op.channel
            return await self._listener.listen(op.channel, self._mailbox, op.renew, op.timeout)
        if isinstance(op, Receive):
            return await receive(self._mailbox, op.timeout)
        return await self._owner._execute(op)

    async def close(self) -> None:
        """Unregister the mailbox and give back the listener reference (once)."""
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await self._listener.leave(channel, self._mailbox)
        if self._held:
            self._held = False
            await listener_task.release(self._owner._client)


class _Membership:
    """:class:`pyprocsync.shells.blocking._Membership` for asyncio: a task renews it."""

    def __init__(self, owner: ProcSync) -> None:
        self._owner = owner
        self.member_id = owner._settings.member_id
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await _drive(renew_flow(self._owner._settings, self.member_id), self._owner._execute)
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="pyprocsync-member")

    async def _beat(self) -> None:
        settings = self._owner._settings
        while True:
            await asyncio.sleep(settings.heartbeat_s)
            try:
                await _drive(renew_flow(settings, self.member_id), self._owner._execute)
            except Exception as exc:  # noqa: BLE001  # retried at the next beat
                log.debug("renewing the membership of %r failed: %r", self.member_id, exc)

    async def stop(self) -> None:
        """Stop renewing and remove the registration (best effort)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await _drive(leave_flow(self._owner._settings, self.member_id), self._owner._execute)


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


class ProcSync(ProcSyncBase[AsyncRun], _ClosedOnExit):
    """:class:`pyprocsync.ProcSync` for asyncio: the same parameters and semantics.

    ``redis_client`` is a :class:`redis.asyncio.Redis`. One instance may serve many
    tasks at once; each :meth:`sync` call is one participant.

    .. versionadded:: 1.0
    """

    _client: aioredis.Redis | RedisCluster
    _cluster_type = RedisCluster
    _client_types = (aioredis.Redis, RedisCluster)
    _recorder_type = TaskRecorder
    _recorder: TaskRecorder
    _client_kinds = (
        "redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster (for blocking clients, "
        "use pyprocsync.ProcSync)"
    )
    _membership: _Membership | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        run_id: str = DEFAULTS.run_id,
        delay: float | Literal["auto"] = DEFAULTS.delay,
        *,
        cluster: bool = False,
        **options: Any,
    ) -> ProcSync:
        """Make an instance with its own client for ``url``; :meth:`aclose` closes it.

        With ``cluster=True`` the client is a :class:`redis.asyncio.cluster.RedisCluster`.
        """
        return _owning(cls, url, run_id, delay, cluster=cluster, **options)

    async def sync(self, event_name: str, nodes: int, timeout: float | None = None) -> SyncResult:
        """Wait until ``nodes`` participants reached ``event_name``; return at the agreed instant.

        Exactly :meth:`pyprocsync.ProcSync.sync`, awaited. Cancelling the task before
        the release withdraws the arrival.
        """
        # The flow is not kept in a local: it is freed when _run returns, before the
        # instant, not on the way out after it.
        with self._recorder.noting(event_name, nodes) as note:
            due = await self._run(
                sync_flow(
                    self._settings, self._clocks, event_name, nodes, timeout, memory=self._memory
                )
            )
        self._recorder.due(note, due)
        return await _meet(due)

    async def reset(self, event_name: str) -> int:
        """Exactly :meth:`pyprocsync.ProcSync.reset`, awaited."""
        return await self._run(reset_flow(self._settings, event_name))

    async def aclose(self) -> None:
        """Give back this instance's share of the loop's pub/sub listener (and close its
        client, if it owns one).

        Calls in progress in other tasks finish; new calls raise
        :class:`~pyprocsync.ProcSyncError`. Closing twice is harmless.
        """
        holds_listener = self._mark_closed()
        await self._recorder.aclose()
        if self._membership is not None:
            await self._membership.stop()
        if holds_listener:
            await listener_task.release(self._client)
        if self._owns_client:
            await self._client.aclose()

    def _runner(self) -> AsyncRun:
        return self._run

    async def _run(self, flow: Flow[T], action: Callable[[], object] | None = None) -> T:
        """Drive ``flow`` to its result; ``action`` (plain or async) serves its RunAction.

        A result due at an instant is returned as it is, for :func:`_meet`, after the
        call has handed back its mailbox and listener reference (see the blocking
        shell)."""
        listener = self._open_call(lambda: listener_task.acquire(self._client))
        participation = _Participation(self, listener, action)
        try:
            return await _drive(flow, participation.execute)
        finally:
            await participation.close()

    async def _prepare(self, timeout: float | None) -> None:
        """Carry out :class:`~pyprocsync.core.ops.Prepare` (see the blocking shell)."""
        await self._load_scripts(timeout)
        if self._settings.member and self._membership is None:
            self._membership = _Membership(self)
            await self._membership.start()

    async def _load_scripts(self, timeout: float | None) -> None:
        """Register and load the scripts before the first arrival, within ``timeout``
        seconds (see the blocking shell)."""
        if self._scripts:
            return
        scripts = self._register_scripts(await self._listener.sharded())
        if self._cluster:
            for script in scripts.values():
                await self._client.script_load(script.script)
        else:
            budget = Budget(timeout)
            for script in scripts.values():
                await self._command(constant("SCRIPT", "LOAD", script.script), budget.left())
        self._scripts = scripts

    async def _execute(self, op: Operation) -> object:
        """Carry out an operation that needs no listener; a link error names the server,
        and a cancellation redis-py lost on the way is raised (see
        :func:`~pyprocsync.shells.listener_task.cancel_safe`)."""
        try:
            return await cancel_safe(self._io(op))
        except LINK_ERRORS as exc:
            raise at_server(exc, self._listener.server) from exc

    async def _io(self, op: Operation) -> object:
        if isinstance(op, Call):
            return await self._call(op)
        if isinstance(op, Prepare):
            await self._prepare(op.timeout)
            return None
        if isinstance(op, ServerTime):
            if isinstance(self._client, RedisCluster):
                return await self._client.time()
            request = TimeRequest()  # timed right around the I/O
            return request.sample(await self._command(request.command, op.timeout))
        raise TypeError(f"{op!r} needs a participation")

    async def _command(
        self, command: Callable[[], tuple[Any, ...]], timeout: float | None, script: Any = None
    ) -> object:
        """:func:`_send_once` on a connection of the command pool."""
        return await _send_once(self._listener.command_pool(), command, timeout, script)

    async def _call(self, op: Call) -> object:
        """Run a script once, its reply bounded by ``op.timeout`` (see the blocking
        shell)."""
        script = self._scripts[op.script]
        budget = Budget(op.timeout)
        command = functools.partial(op.command, script.sha)
        client: Any = self._client
        if not isinstance(client, RedisCluster):
            return await self._command(command, budget.left(), script)
        while True:
            node = client.get_node_from_key(op.keys[0])
            try:
                return await _send_once(node, command, budget.left(), script)
            except REDIRECTS as exc:
                if budget.spent():
                    raise
                if isinstance(exc, redis.exceptions.MovedError):
                    await redispy.areload_slots(client)
                else:
                    await asyncio.sleep(REDIRECT_PAUSE_S)


async def _send_once(
    source: Any,
    command: Callable[[], tuple[Any, ...]],
    timeout: float | None,
    script: Any = None,
) -> object:
    """Send the command ``command()`` builds once on a connection of ``source`` (a pool,
    or a cluster node) and read its reply within ``timeout`` s; for an EVALSHA of
    ``script``, load the script and send it again if the server does not know it (see
    the blocking shell). The connection is open and ready (within ``timeout``, see
    :func:`~pyprocsync.shells.redispy.ataken`) before ``command()`` builds the command
    (see :class:`~pyprocsync.core.ops.Stamp`)."""
    async with redispy.ataken(source, timeout) as connection:
        await redispy.asend(connection, command())
        try:
            return await redispy.aread_reply(connection, timeout)
        except redis.exceptions.NoScriptError:  # a restarted or flushed server
            if script is None:
                raise
            await redispy.asend(connection, ("SCRIPT", "LOAD", script.script))
            await redispy.aread_reply(connection, timeout)
            await redispy.asend(connection, command())
            return await redispy.aread_reply(connection, timeout)


class _ClosingShell(_ClosedOnExit):
    """``aclose()``/``close()`` and the async context manager of Event and Barrier."""

    _shell: ProcSync

    async def aclose(self) -> None:
        """Close this object's connections (and its client, if it made it)."""
        await self._shell.aclose()


def _owning(cls: Callable[..., S], url: str, *args: Any, cluster: bool = False, **kwargs: Any) -> S:
    """Build ``cls(client, ...)`` owning a new client for ``url`` (closed on ``aclose``)."""
    # If the constructor raises, the client is simply dropped: an asyncio client opens
    # no connection before its first command, so there is nothing to close.
    params.text("url", url, empty=False)
    client = (RedisCluster if params.flag("cluster", cluster) else aioredis.Redis).from_url(url)
    instance = cls(client, *args, **kwargs)
    shell: Any = getattr(instance, "_shell", instance)
    shell._owns_client = True
    return instance


class Event(EventBase[AsyncRun], _ClosingShell):
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
        await self._seam.run(self._set_flow())

    async def clear(self) -> None:
        """See :meth:`pyprocsync.Event.clear`."""
        await self._seam.run(self._clear_flow())

    async def is_set(self) -> bool:
        """See :meth:`pyprocsync.Event.is_set`."""
        return await self._seam.run(self._is_set_flow())

    async def wait(self, timeout: float | None = None) -> bool:
        """See :meth:`pyprocsync.Event.wait`."""
        return await _meet(await self._seam.run(self._wait_flow(timeout)))


class Barrier(BarrierBase[AsyncRun], _ClosingShell):
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
        state = await self._seam.run(self._read_flow())
        return 0 if state.broken else state.arrived

    async def broken(self) -> bool:
        """See :attr:`pyprocsync.Barrier.broken` (a coroutine here)."""
        return (await self._seam.run(self._read_flow())).broken is not None

    async def wait(self, timeout: float | None = None) -> int:
        """See :meth:`pyprocsync.Barrier.wait`."""
        recorder = self._seam.recorder
        try:
            with recorder.noting(self._name, self._parties) as note:
                due = await self._seam.run(self._wait_flow(timeout), self._action)
        except TimeOutError as exc:
            raise self._timeout_error(exc) from exc
        recorder.due(note, due)
        return (await _meet(due)).index

    async def reset(self) -> None:
        """See :meth:`pyprocsync.Barrier.reset`."""
        await self._shell.reset(self._name)

    async def abort(self) -> None:
        """See :meth:`pyprocsync.Barrier.abort`."""
        await self._seam.run(self._abort_flow())
