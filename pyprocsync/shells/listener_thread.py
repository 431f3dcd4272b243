"""The blocking classes' shared pub/sub listener: one thread per deployment and process.

:func:`acquire` hands out the :class:`ThreadListener` of a client's deployment (every
client on one connection pool, or one cluster client, shares it); :func:`release` gives
the reference back, and the last one closes the listener. The listener's thread alone
touches its pub/sub connections: waiting participants queue their SUBSCRIBE and
UNSUBSCRIBE requests and wake it through a socket pair, and it hands each message to the
mailboxes of its channel (see :mod:`pyprocsync.shells.listeners`).

The thread sleeps in ``select`` on the connections' sockets, which sees only the bytes
still in the kernel. Bytes already taken from the kernel (into the TLS layer of a
``rediss://`` connection, or into redis-py's read buffer) are invisible to it; the
drain after each wake-up finds them (:func:`~pyprocsync.shells.redispy.read_ready`
looks in every buffer) and reads until nothing is left. A drain cut short at
:data:`_DRAIN_LIMIT` (bytes may be left in those buffers) makes the next ``select`` a
poll, so the rest is read at once, not after :data:`_IDLE_WAIT`.

A connection that leaves a SUBSCRIBE unconfirmed for
:data:`~pyprocsync.core.limits.REPLY_TIMEOUT` seconds is failed (its waiters subscribe
again on a new one): a server that stopped answering, or a link cut without a reset,
never leaves a waiter waiting for a confirmation that cannot come.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Hashable
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from pyprocsync.core import limits
from pyprocsync.shells import redispy
from pyprocsync.shells.listeners import (
    COMMAND_CONNECTIONS,
    Mailbox,
    Registry,
    Subscriptions,
    link_error,
    server_major,
    unconfirmed,
)

__all__ = ["ThreadListener", "acquire", "receive", "release"]

#: The node key of a standalone (or Sentinel-managed) server's only connection.
_MAIN = "main"

#: Messages read from one connection before the others get their turn.
_DRAIN_LIMIT = 1000

#: How long the rest of a message that has begun to arrive may take, seconds.
_REST_OF_MESSAGE = 5.0

#: Longest the thread sleeps without looking at its requests (a safety net: every
#: request also wakes it).
_IDLE_WAIT = 1.0


class ThreadListener:
    """One shared listener of the blocking classes (see the module docstring)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self.server = redispy.describe(client)
        self._sharded: bool | None = None
        self._subscriptions = Subscriptions()
        self._lock = threading.Lock()
        self._requests: list[tuple[str, Hashable, str]] = []
        self._nodes: dict[Hashable, Any] = {}
        self._closed = False
        self._command_pool: Any = None
        self._thread: threading.Thread | None = None
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        # Touched by the thread only:
        self._pubsubs: dict[Hashable, Any] = {}  # redis.client.PubSub
        self._clients: dict[Hashable, Any] = {}
        self._owned: list[Any] = []  # listener clients made here, closed on close

    def command_pool(self) -> Any:
        """The pool script calls use: the caller's settings without retries, at most
        :data:`~pyprocsync.shells.listeners.COMMAND_CONNECTIONS` connections (a call waits for a
        free one), so a process's connections do not grow with its participants. The
        caller's own pool where its settings cannot be copied.

        Its connections connect and answer within the limits of
        :func:`~pyprocsync.shells.redispy.own_pool` (``replies``); a call waits at most
        :data:`~pyprocsync.core.limits.CONNECT_TIMEOUT` seconds for a free one."""
        with self._lock:
            if self._command_pool is None:
                pool = redispy.own_pool(
                    self._client,
                    redis.BlockingConnectionPool,
                    replies=True,
                    max_connections=COMMAND_CONNECTIONS,
                    timeout=limits.CONNECT_TIMEOUT,
                )
                self._command_pool = self._client.connection_pool if pool is None else pool
            return self._command_pool

    def sharded(self) -> bool:
        """Whether announcements travel by sharded pub/sub (a cluster of servers >= 7);
        asks the server once."""
        if self._sharded is None:
            if self._cluster:
                info = self._client.info("server", target_nodes=RedisCluster.RANDOM)
                self._sharded = server_major(info) >= 7
            else:
                self._sharded = False
        return self._sharded

    def listen(self, channel: str, mailbox: Mailbox, renew: bool) -> bool:
        """Cover ``channel`` for ``mailbox``; True when the mailbox is to receive the
        subscription's confirmation (the waiter then waits for it).

        With ``renew`` (the mailbox received an error), a cluster client first reloads
        its slot map, so the channel is subscribed where its slot lives now.
        """
        if renew and self._cluster:
            redispy.reload_slots(self._client)
        node = self._node(channel)
        with self._lock:
            subscribe, confirming = self._subscriptions.join(channel, mailbox, node, renew=renew)
            if subscribe:
                self._requests.append(("subscribe", node, channel))
                self._start()
        if subscribe:
            self._wake()
        return confirming

    def leave(self, channel: str, mailbox: Mailbox) -> None:
        """Unregister ``mailbox`` from ``channel``.

        Surplus idle channels are unsubscribed when the thread next wakes (within a
        second), not at once: a participant leaves right before its release instant,
        when no other work should compete for the processor.
        """
        with self._lock:
            surplus = self._subscriptions.leave(channel, mailbox)
            self._requests.extend(("unsubscribe", node, name) for node, name in surplus)

    def close(self) -> None:
        """Stop the thread, which closes the connections. Waiters left get an error."""
        with self._lock:
            self._closed = True
            started = self._thread is not None
        if started:
            self._wake()
        else:
            self._shut()

    def join(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for the thread of a closed listener to end
        (it has then closed its connections). Returns at once while the listener is
        open, or when its thread never started."""
        with self._lock:
            thread = self._thread if self._closed else None
        if thread is not None:
            thread.join(timeout)

    # -- the thread ----------------------------------------------------------------

    def _node(self, channel: str) -> Hashable:
        if not self._cluster:
            return _MAIN
        node = (
            self._client.get_node_from_key(channel)
            if self.sharded()
            else self._client.get_default_node()
        )
        with self._lock:
            self._nodes[node.name] = node
        return str(node.name)

    def _start(self) -> None:
        """Start the thread if it is not running (the lock is held)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="pyprocsync-listener", daemon=True
            )
            self._thread.start()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # full: it is awake anyway
            self._wake_out.send(b"\0")

    def _run(self) -> None:
        while True:
            with self._lock:
                requests, self._requests = self._requests, []
                closed = self._closed
            if closed:
                self._shut()
                return
            for kind, node, channel in requests:
                self._apply(kind, node, channel)
            # Not a generator: every connection gets its turn.
            cut_short = [self._drain(node) for node in list(self._pubsubs)]
            sleep = self._expire_overdue()
            try:
                redispy.wait_readable(
                    self._wake_in, list(self._pubsubs.values()), 0.0 if any(cut_short) else sleep
                )
            except Exception as exc:  # noqa: BLE001  # a socket closed or broke under us
                for node in list(self._pubsubs):
                    self._fail(node, exc)
            with contextlib.suppress(BlockingIOError, OSError):
                while self._wake_in.recv(4096):
                    pass

    def _apply(self, kind: str, node: Hashable, channel: str) -> None:
        pubsub = self._pubsubs.get(node)
        if pubsub is None and kind == "unsubscribe":
            return
        sharded = self.sharded()
        try:
            if pubsub is None:
                pubsub = self._pubsubs[node] = self._listener_client(node).pubsub()
            if kind == "subscribe":
                (pubsub.ssubscribe if sharded else pubsub.subscribe)(channel)
                with self._lock:
                    self._subscriptions.asked(node, channel, time.monotonic())
            else:
                (pubsub.sunsubscribe if sharded else pubsub.unsubscribe)(channel)
        except Exception as exc:  # noqa: BLE001  # handed to the waiters of that connection
            self._fail(node, exc)

    def _drain(self, node: Hashable) -> bool:
        """Hand out every message that can be read from ``node``'s connection now, up to
        :data:`_DRAIN_LIMIT`; True when the limit cut the drain short (more may be
        buffered where ``select`` does not look)."""
        pubsub = self._pubsubs[node]
        try:
            for _ in range(_DRAIN_LIMIT):
                message = redispy.read_ready(pubsub, _REST_OF_MESSAGE)
                if message is redispy.Ready.NOTHING:
                    return False
                if isinstance(message, dict):
                    with self._lock:
                        deliveries = self._subscriptions.deliver(node, message)
                    for mailbox, item in deliveries:
                        mailbox.put_nowait(item)
        except Exception as exc:  # noqa: BLE001  # handed to the waiters of that connection
            self._fail(node, exc)
            return False
        return True

    def _expire_overdue(self) -> float:
        """Fail the connections that left a SUBSCRIBE unconfirmed for the reply limit;
        return how long the thread may sleep before the next one becomes overdue (at
        most :data:`_IDLE_WAIT`)."""
        limit = limits.REPLY_TIMEOUT
        with self._lock:
            overdue = self._subscriptions.overdue(time.monotonic(), limit)
        for node in overdue:
            self._fail(node, unconfirmed(limit))
        with self._lock:
            due = self._subscriptions.next_due(limit)
        return _IDLE_WAIT if due is None else min(_IDLE_WAIT, max(0.0, due - time.monotonic()))

    def _fail(self, node: Hashable, exc: BaseException) -> None:
        error = link_error(exc, self.server)
        with self._lock:
            deliveries = self._subscriptions.fail(node, error)
        pubsub = self._pubsubs.pop(node, None)
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()
        for mailbox, item in deliveries:
            mailbox.put_nowait(item)

    def _listener_client(self, node: Hashable) -> Any:
        """A client for ``node``'s listener: the caller's settings, no retries."""
        client = self._clients.get(node)
        if client is None:
            source = self._client
            if node != _MAIN:
                with self._lock:
                    source = redispy.node_client(self._client, self._nodes[node])
            pool = redispy.own_pool(source, redis.ConnectionPool)
            client = source
            if pool is not None:
                client = redis.Redis(connection_pool=pool)
                self._owned.append(client)
            self._clients[node] = client
        return client

    def _shut(self) -> None:
        for node in list(self._pubsubs):
            self._fail(node, RedisConnectionError("the listener was closed"))
        if self._command_pool not in (None, getattr(self._client, "connection_pool", None)):
            with contextlib.suppress(Exception):
                self._command_pool.disconnect()
        for client in self._owned:
            with contextlib.suppress(Exception):
                client.connection_pool.disconnect()
        self._owned.clear()
        self._clients.clear()
        self._wake_in.close()
        self._wake_out.close()


_registry: Registry[tuple[int, int], ThreadListener] = Registry()


def _key(client: Any) -> tuple[int, int]:
    """One listener per process and connection pool (or cluster client)."""
    owner = getattr(client, "connection_pool", client)
    return os.getpid(), id(owner)


def acquire(client: Any) -> ThreadListener:
    """The shared listener of ``client``'s deployment, with one more reference."""
    return _registry.acquire(_key(client), lambda: ThreadListener(client))


def release(client: Any) -> None:
    """Give back a reference taken by :func:`acquire`; the last one closes the listener."""
    listener = _registry.release(_key(client))
    if listener is not None:
        listener.close()


def receive(mailbox: queue.SimpleQueue[Any], timeout: float | None) -> object:
    """The next item of ``mailbox`` within ``timeout`` seconds (``None``: no limit), or
    ``None``; an error put there by the listener is raised."""
    try:
        item = mailbox.get(timeout=None if timeout is None else max(0.0, timeout))
    except queue.Empty:
        return None
    if isinstance(item, BaseException):
        raise item
    return item
