"""``ProcSync``: the blocking shell around the protocol in :mod:`pyprocsync.core.ops`."""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

import redis
from redis.cluster import RedisCluster

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
from pyprocsync.results import SyncResult
from pyprocsync.shells import listener_thread, redispy
from pyprocsync.shells.base import BlockingRun, ProcSyncBase, seam
from pyprocsync.shells.listener_thread import ThreadListener, receive
from pyprocsync.shells.listeners import at_server
from pyprocsync.shells.recorder import ThreadRecorder
from pyprocsync.shells.redirects import REDIRECT_PAUSE_S, REDIRECTS, Budget

__all__ = ["ClosingShell", "ProcSync", "drive", "meet", "sync_until_instant"]

log = logging.getLogger("pyprocsync")

T = TypeVar("T")
S = TypeVar("S")


def drive(flow: Flow[T], execute: Callable[[Operation], object]) -> T:
    """Run ``flow`` to its end, carrying out each operation it yields with ``execute``;
    return what the flow returns (for a flow that ends at an instant, the
    :class:`~pyprocsync.core.ops.AtInstant` to :func:`meet`).

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


def meet(due: Due[T]) -> T:
    """Return ``due``'s result: at its instant when it is due at one.

    The public methods that release at an instant end with ``return meet(...)``, so
    that after the instant only :meth:`~pyprocsync.core.ops.AtInstant.finish` runs
    before the caller's next line.
    """
    if isinstance(due, AtInstant):
        wait = due.wait
        clock.sleep_until_ns(
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
        self, owner: ProcSync, listener: ThreadListener, action: Callable[[], object] | None
    ) -> None:
        self._owner = owner
        self._listener = listener  # a reference taken for this call
        self._held = True
        self._action = action
        self._mailbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._channel: str | None = None

    def execute(self, op: Operation) -> object:
        if isinstance(op, RunAction):
            return None if self._action is None else self._action()
        if isinstance(op, Listen):
            self._channel = op.channel
            return self._listener.listen(op.channel, self._mailbox, op.renew)
        if isinstance(op, Receive):
            return receive(self._mailbox, op.timeout)
        return self._owner._execute(op)

    def close(self) -> None:
        """Unregister the mailbox and give back the listener reference (once)."""
        if self._channel is not None:
            self._listener.leave(self._channel, self._mailbox)
            self._channel = None
        if self._held:
            self._held = False
            listener_thread.release(self._owner._client)


class _Membership:
    """Keeps an instance's registration in its run's member set alive: registered in
    the caller's thread, renewed by a thread every ``liveness / 5`` s, removed on close.

    A renewal that fails is retried at the next beat; if the server stays unreachable
    for ``liveness``, the registration lapses and the other members see this one as
    lost, which is what it is to them.
    """

    def __init__(self, owner: ProcSync) -> None:
        self._owner = owner
        self.member_id = owner._settings.member_id
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="pyprocsync-member", daemon=True)

    def start(self) -> None:
        drive(renew_flow(self._owner._settings, self.member_id), self._owner._execute)
        self._thread.start()

    def _beat(self) -> None:
        settings = self._owner._settings
        while not self._stopped.wait(settings.heartbeat_s):
            try:
                drive(renew_flow(settings, self.member_id), self._owner._execute)
            except Exception as exc:  # noqa: BLE001  # retried at the next beat
                log.debug("renewing the membership of %r failed: %r", self.member_id, exc)

    def stop(self) -> None:
        """Stop renewing and remove the registration (best effort)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        with contextlib.suppress(Exception):
            drive(leave_flow(self._owner._settings, self.member_id), self._owner._execute)


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


class ProcSync(ProcSyncBase[BlockingRun], _ClosedOnExit):
    """Synchronization points shared by processes on any number of machines.

    ``ProcSync(redis_client, run_id, delay).sync(name, nodes)`` blocks until ``nodes``
    participants (in any process on any machine that uses the same Redis, ``run_id``
    and ``name``) have called it, then all of them return at one agreed wall-clock
    instant: the last arriver's clock (with ``clock="server"``: the Redis server's)
    plus its ``delay``.

    One instance may be used by many threads at once; each ``sync`` call is one
    participant. The instance does no I/O until the first call.

    :param redis_client: a :class:`redis.Redis` (redis-py 8.0 or later; any
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
    :param clock_samples: round trips of the first offset estimate, back to back
        (1 to 1000).
    :param clock_refresh: seconds per round trip that renews the estimate afterwards, on
        average: a back-to-back pair when its newest sample is ``2 * clock_refresh`` old.
    :param auto_floor: the smallest lead time ``delay="auto"`` chooses, seconds.
        (Every duration, here and in calls, may be at most ten years.)
    :param member: register this instance as an expected member of the run while it
        is open (from its first call until :meth:`close`), under ``node_id`` (set it
        when several threads share the instance). Its registration is renewed every
        ``liveness / 5`` s; if it lapses (process killed, host gone), every member
        waiting in a round of the run in which it has not arrived raises
        ``BrokenBarrierError(reason="lost", missing=[its node id])`` within about
        ``liveness``, instead of waiting for its timeout. ``pyprocsync status`` lists
        the members. A lapsed member counts as missing until it registers again or
        ``retention`` passes.
    :param max_uncertainty: the widest clock bound (seconds) this participant accepts
        for any participant of a round, or ``None`` (any). Each arrival states how far
        its reading of an instant may be from the reference clock (see
        :attr:`SyncResult.clock_uncertainty`); when the widest of a round exceeds the
        smallest ``max_uncertainty`` of its participants, the round breaks for all of
        them before any instant is agreed, with
        :class:`~pyprocsync.ClockUncertaintyError` naming the participant and its
        bound (see :doc:`/precision`). An ``Event`` waiter checks only its own bound.
    :param record: add this instance's outcome of every round (of ``sync`` and of a
        :class:`~pyprocsync.Barrier`'s ``wait``) to the run's record in Redis, read by
        ``pyprocsync report`` (see :doc:`/record`). Written from a background thread
        (task) 50 ms after the instant, never on the way to it; a write the server
        refuses is logged once and ends the recording, never the call.
    :param record_limit: the most entries the run's record keeps, about (the oldest
        go first); it expires with ``retention`` after its last entry.
    :param on_outcome: called with an :class:`~pyprocsync.Outcome` for every round this
        instance took part in, released or failed, in that background thread (task),
        after the instant; what it raises is logged. With ``record=False`` too.
    :raises InvalidArgumentError: an argument is invalid.

    A waiting participant logs who has arrived every 10 s (logger ``pyprocsync``,
    level WARNING), naming lapsed members too.

    ``redis_client`` may also be a :class:`redis.cluster.RedisCluster` (see
    :doc:`/scaling`) or a client from :meth:`redis.sentinel.Sentinel.master_for`.
    All ProcSync, Event and Barrier objects of a process that use one client (one
    connection pool) share one pub/sub connection (on a cluster: one per shard).

    .. versionchanged:: 1.0
       Keyword-only options; a run id and event names may hold any character;
       events can be synchronized again and again; a crashed participant's arrival
       stops counting after ``liveness`` seconds (see :doc:`/migration`).
    """

    _client: redis.Redis | RedisCluster
    _cluster_type = RedisCluster
    _client_types = (redis.Redis, RedisCluster)
    _recorder_type = ThreadRecorder
    _recorder: ThreadRecorder
    _client_kinds = (
        "redis.Redis or redis.cluster.RedisCluster (for redis.asyncio clients, use "
        "pyprocsync.asyncio)"
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
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``).

        With ``cluster=True`` the client is a :class:`redis.cluster.RedisCluster`
        (``url`` names any node; it reads the cluster's layout at once). The instance
        owns that client: :meth:`close` closes it. ``options`` are the keyword options
        of the constructor.

        .. versionchanged:: 1.0
           ``cluster``.
        """
        return _owning(cls, url, run_id, delay, cluster=cluster, **options)

    def sync(self, event_name: str, nodes: int, timeout: float | None = None) -> SyncResult:
        """Wait until ``nodes`` participants reached ``event_name``; return at the agreed instant.

        Each call is one participant of the event's current round. When the last of
        ``nodes`` participants arrives it fixes the release instant (its wall clock, or
        the server's in server-clock mode, plus its ``delay``); every participant then
        returns at that instant by its own clock. The next call with the same name joins
        the next round, so a name can be used in a loop.

        :param event_name: the synchronization point, a non-empty ``str``.
        :param nodes: how many participants the round needs, an int from 1 to
            1,000,000. All participants of a round must pass the same number.
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
        :raises ServerRefusedError: the server refused a command (out of memory,
            a read-only replica; :class:`~pyprocsync.PermissionRefusedError`: a missing
            ACL permission); the refused command changed nothing.

        If the call is interrupted (``KeyboardInterrupt``, or any other exception
        raised inside it) before the round is released, its arrival is withdrawn, so
        the round still needs ``nodes`` live participants. A participant that lost
        the server cannot withdraw; its lease lapses after ``liveness`` seconds.
        """
        # The flow is not kept in a local: it is freed when _run returns, before the
        # instant, not on the way out after it.
        with self._recorder.noting(event_name, nodes) as note:
            due = self._run(
                sync_flow(
                    self._settings, self._clocks, event_name, nodes, timeout, memory=self._memory
                )
            )
        self._recorder.due(note, due)
        return meet(due)

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
        """Give back this instance's share of the process's pub/sub listener (and close
        its client, if it owns one).

        Calls in progress in other threads finish; new :meth:`sync` and :meth:`reset`
        calls raise :class:`~pyprocsync.ProcSyncError`. Closing twice is harmless. The
        listener's connections close when the last instance using them is closed.
        """
        holds_listener = self._mark_closed()
        self._recorder.close()
        if self._membership is not None:
            self._membership.stop()
        if holds_listener:
            listener_thread.release(self._client)
        if self._owns_client:
            self._client.close()

    def _runner(self) -> BlockingRun:
        return self._run

    def _run(self, flow: Flow[T], action: Callable[[], object] | None = None) -> T:
        """Drive ``flow`` to its result; ``action`` serves its RunAction (a barrier's).

        A result due at an instant is returned as it is, for :func:`meet`, after the
        call has handed back its mailbox and listener reference: the wait is the
        public method's own last step.
        """
        clock.let_waiting_threads_run()
        listener = self._open_call(lambda: listener_thread.acquire(self._client))
        participation = _Participation(self, listener, action)
        try:
            return drive(flow, participation.execute)
        finally:
            participation.close()

    def _join_run(self) -> None:
        with self._state_lock:
            if self._membership is not None:
                return
            self._membership = _Membership(self)
        self._membership.start()

    def _prepare(self, timeout: float | None) -> None:
        """Carry out :class:`~pyprocsync.core.ops.Prepare`: load the scripts, and
        register this instance as a member of its run if it is to be one."""
        self._load_scripts(timeout)
        if self._settings.member and self._membership is None:
            self._join_run()

    def _load_scripts(self, timeout: float | None) -> None:
        """Register the scripts and load them into the server before the first arrival,
        within ``timeout`` seconds (``None``: the connection limits).

        The last arrival's release instant is its clock plus the delay, read before its
        ARRIVE is sent; a NOSCRIPT retry on that path would eat into the lead time.
        (After a server restart the retry still happens, once.) They are loaded through
        the command pool (no retries, bounded like every call); threads of a first burst
        of calls may each load them, which is harmless.
        """
        if self._scripts:
            return
        scripts = self._register_scripts(self._listener.sharded())
        if self._cluster:  # SCRIPT LOAD goes to every primary
            for script in scripts.values():
                self._client.script_load(script.script)
        else:
            budget = Budget(timeout)
            pool = self._listener.command_pool()
            for script in scripts.values():
                _send_once(pool, constant("SCRIPT", "LOAD", script.script), budget.left())
        self._scripts = scripts

    def _execute(self, op: Operation) -> object:
        """Carry out an operation that needs no listener; a link error names the server."""
        try:
            if isinstance(op, Call):
                return self._call(op)
            if isinstance(op, Prepare):
                self._prepare(op.timeout)
                return None
            if isinstance(op, ServerTime):
                if isinstance(self._client, RedisCluster):
                    return self._client.time()
                request = TimeRequest()  # timed right around the I/O
                pool = self._listener.command_pool()
                return request.sample(_send_once(pool, request.command, op.timeout))
        except LINK_ERRORS as exc:
            raise at_server(exc, self._listener.server) from exc
        raise TypeError(f"{op!r} needs a participation")

    def _call(self, op: Call) -> object:
        """Run a script once, its reply bounded by ``op.timeout`` (see
        :class:`~pyprocsync.core.ops.Call`). On a cluster, a reply saying the script did
        not run there (the slot is elsewhere or moving) sends it again where it belongs,
        until the call's time is up."""
        script = self._scripts[op.script]
        budget = Budget(op.timeout)
        while True:
            pool = self._pool_for(op.keys[0])
            try:
                return _send_once(
                    pool, functools.partial(op.command, script.sha), budget.left(), script
                )
            except REDIRECTS as exc:
                if not isinstance(self._client, RedisCluster) or budget.spent():
                    raise
                if isinstance(exc, redis.exceptions.MovedError):
                    redispy.reload_slots(self._client)
                else:
                    time.sleep(REDIRECT_PAUSE_S)

    def _pool_for(self, key: str) -> Any:
        """The connection pool of the server that holds ``key``: on a single server,
        the shared listener's command pool."""
        if isinstance(self._client, RedisCluster):
            return redispy.node_pool(self._client, key)
        return self._listener.command_pool()


def _send_once(
    pool: Any, command: Callable[[], tuple[Any, ...]], timeout: float | None, script: Any = None
) -> object:
    """Send the command that ``command()`` builds once on a connection of ``pool`` and
    read its reply within ``timeout`` s (``None``: the socket's timeout); a connection
    opened for it is ready within ``timeout`` too (see
    :func:`~pyprocsync.shells.redispy.taken`). The command is built once the connection
    is at hand (see :class:`~pyprocsync.core.ops.Stamp`). For an EVALSHA of ``script``,
    load the script and send it again if the server does not know it."""
    with redispy.taken(pool, timeout) as connection:
        redispy.send(connection, command())
        try:
            return redispy.read_reply(connection, timeout)
        except redis.exceptions.NoScriptError:  # a restarted or flushed server
            if script is None:
                raise
            redispy.send(connection, ("SCRIPT", "LOAD", script.script))
            redispy.read_reply(connection, timeout)
            redispy.send(connection, command())
            return redispy.read_reply(connection, timeout)


def sync_until_instant(
    node: ProcSync, event_name: str, nodes: int, timeout: float | None = None
) -> Due[SyncResult]:
    """Join a round as ``node.sync(event_name, nodes, timeout)`` does, but leave its
    last step, the wait for the release instant, to the caller: for a process that is
    to end (or exec) at the instant, ``pyprocsync sync``.

    Before it returns, the outcome is added to the run's record (its ``late_by``
    unknown: nothing of pyprocsync runs after the instant), ``node`` is closed (its
    client too, if it owns it) and, when that gave back the last reference to the
    shared listener, the listener's thread
    has been given until the instant to close its connections and end. So nothing of
    pyprocsync runs any more in the process.

    :returns: the :class:`~pyprocsync.SyncResult` when there is no instant to wait for
        (lead time 0), else an :class:`~pyprocsync.core.ops.AtInstant`: the caller
        waits as its ``wait`` (a :class:`~pyprocsync.core.ops.SleepUntil`) says, and
        ``finish()`` gives the result.
    :raises: what :meth:`ProcSync.sync` raises; ``node`` is closed then too.
    """
    shell = seam(node)
    try:
        with shell.recorder.noting(event_name, nodes) as note:
            flow = sync_flow(
                shell.settings, shell.clocks, event_name, nodes, timeout, memory=shell.memory
            )
            due = shell.run(flow)
        shell.recorder.due(note, due)
    finally:
        node._recorder.close(settle=False)  # its write goes out now, before the instant
        node.close()
    if isinstance(due, AtInstant):
        wait = due.wait
        now_ns = clock.monotonic_ns() if wait.on_monotonic else clock.time_ns()
        node._listener.join(max(0, wait.at_ns - now_ns) / 1e9)
    return due


class ClosingShell(_ClosedOnExit):
    """``close()`` and the context manager of the classes built on a ProcSync."""

    _shell: ProcSync

    def close(self) -> None:
        """Close this object's connections (and its client, if it made it)."""
        self._shell.close()


def _owning(cls: Callable[..., S], url: str, *args: Any, cluster: bool = False, **kwargs: Any) -> S:
    """Build ``cls(client, ...)`` owning a new client for ``url`` (closed on close)."""
    params.text("url", url, empty=False)
    client = (RedisCluster if params.flag("cluster", cluster) else redis.Redis).from_url(url)
    try:
        instance = cls(client, *args, **kwargs)
    except BaseException:
        client.close()
        raise
    shell: Any = getattr(instance, "_shell", instance)
    shell._owns_client = True
    return instance
