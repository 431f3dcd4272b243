"""The asyncio classes' shared pub/sub listener: one per deployment and event loop.

:func:`acquire` hands out the :class:`TaskListener` of a client's deployment for the
running loop; :func:`release` gives the reference back, and the last one closes it. A
waiting task sends its channel's SUBSCRIBE itself (writes do not disturb a pending read
in asyncio); one reader task per connection hands each message to the mailboxes of its
channel (see :mod:`pyprocsync.shells.listeners`). A connection that leaves a SUBSCRIBE
unconfirmed for :data:`~pyprocsync.core.limits.REPLY_TIMEOUT` seconds is failed, as in
the blocking listener.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
from collections.abc import Awaitable, Hashable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
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

__all__ = [
    "TaskListener",
    "TaskMailbox",
    "acquire",
    "cancel_safe",
    "receive",
    "release",
]

_MAIN = "main"

#: How much later than the reply limit a SUBSCRIBE's confirmation is looked for (the
#: loop's timers may fire a hair early).
_CONFIRMATION_GRACE = 0.01

T = TypeVar("T")


if sys.version_info >= (3, 11):

    async def cancel_safe(awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` (redis-py I/O); if the task was cancelled meanwhile and the
        cancellation got lost on the way, raise :class:`asyncio.CancelledError` anyway.

        redis-py's asyncio connections send under :func:`asyncio.wait_for` when a socket
        timeout is set (every handshake, every command); on Python 3.10 and 3.11 it
        returns normally when the cancellation arrives as the send completes, and the
        cancelled call went on waiting until its timeout. A request that nobody
        withdrew (``Task.uncancel``) still shows in ``Task.cancelling()``: it is raised
        here.
        """
        task = asyncio.current_task()
        before = 0 if task is None else task.cancelling()
        result = await awaitable
        if task is not None and task.cancelling() > before:
            raise asyncio.CancelledError
        return result

else:  # Python 3.10: no Task.cancelling()

    async def cancel_safe(awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` in a task of its own: a cancellation of the caller always
        raises here, after that task (cancelled in turn) has ended, so the I/O it did is
        over before the caller reacts (see the Python 3.11 version)."""
        inner = asyncio.ensure_future(awaitable)
        try:
            return await asyncio.shield(inner)
        except asyncio.CancelledError:
            inner.cancel()
            await asyncio.wait([inner])
            if not inner.cancelled():
                inner.exception()  # retrieved: the cancellation is what the caller sees
            raise


class TaskListener:
    """One shared listener of the asyncio classes (see the module docstring)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self.server = redispy.describe(client)
        self._sharded: bool | None = None
        self._subscriptions = Subscriptions()
        self._pubsubs: dict[Hashable, Any] = {}  # redis.asyncio.client.PubSub
        self._readers: dict[Hashable, asyncio.Task[None]] = {}
        # One (un)subscribing task at a time: a PubSub connects on its first command,
        # and two first commands at once would open two connections.
        self._subscribing = asyncio.Lock()
        self._clients: dict[Hashable, Any] = {}
        self._owned: list[Any] = []
        self._command_pool: Any = None
        self._expiring: set[asyncio.Task[None]] = set()  # failing overdue connections

    def command_pool(self) -> Any:
        """The pool script calls use (see :meth:`ThreadListener.command_pool
        <pyprocsync.shells.listener_thread.ThreadListener.command_pool>`)."""
        if self._command_pool is None:
            pool = redispy.own_pool(
                self._client,
                aioredis.BlockingConnectionPool,
                replies=True,
                max_connections=COMMAND_CONNECTIONS,
                timeout=limits.CONNECT_TIMEOUT,
            )
            self._command_pool = self._client.connection_pool if pool is None else pool
        return self._command_pool

    async def sharded(self) -> bool:
        """Whether announcements travel by sharded pub/sub (a cluster of servers >= 7);
        asks the server once."""
        if self._sharded is None:
            if self._cluster:
                info = await self._client.info("server", target_nodes=RedisCluster.RANDOM)
                self._sharded = server_major(info) >= 7
            else:
                self._sharded = False
        return self._sharded

    async def listen(
        self, channel: str, mailbox: Mailbox, renew: bool, timeout: float | None = None
    ) -> bool:
        """Cover ``channel`` for ``mailbox``; True when the mailbox is to receive the
        subscription's confirmation. See :meth:`ThreadListener.listen
        <pyprocsync.shells.listener_thread.ThreadListener.listen>`. A connection opened for
        it is ready within ``timeout`` seconds (see
        :func:`~pyprocsync.shells.redispy.connecting_within`)."""
        with redispy.connecting_within(timeout):
            return await cancel_safe(self._listen(channel, mailbox, renew))

    async def _listen(self, channel: str, mailbox: Mailbox, renew: bool) -> bool:
        sharded = await self.sharded()
        if renew and self._cluster:
            await redispy.areload_slots(self._client)
        node, source = _MAIN, self._client
        if self._cluster:
            found = (
                self._client.get_node_from_key(channel)
                if sharded
                else self._client.get_default_node()
            )
            node, source = found.name, found
        subscribe, confirming = self._subscriptions.join(channel, mailbox, node, renew=renew)
        if subscribe:
            async with self._subscribing:
                pubsub = self._pubsub(node, source)
                try:
                    await (pubsub.ssubscribe if sharded else pubsub.subscribe)(channel)
                except BaseException as exc:
                    # The SUBSCRIBE may not have been sent: nobody may wait for its
                    # confirmation. (Its waiters subscribe again on a new connection.)
                    error = link_error(exc, self.server)
                    await self._fail(node, error)
                    if error is not exc and isinstance(exc, Exception):
                        raise error from exc
                    raise
            if self._pubsubs.get(node) is not pubsub:
                # The connection failed meanwhile (this mailbox was told); a SUBSCRIBE
                # sent after that opened a connection nobody reads: close it.
                await pubsub.aclose()
                return confirming
            self._subscriptions.asked(node, channel, time.monotonic())
            asyncio.get_running_loop().call_later(
                limits.REPLY_TIMEOUT + _CONFIRMATION_GRACE, self._expire_overdue
            )
            if node not in self._readers:
                self._readers[node] = asyncio.get_running_loop().create_task(
                    self._read(node, pubsub), name="pyprocsync-listener"
                )
        return confirming

    async def leave(self, channel: str, mailbox: Mailbox) -> None:
        """Unregister ``mailbox`` from ``channel``."""
        sharded = self._sharded
        for node, name in self._subscriptions.leave(channel, mailbox):
            pubsub = self._pubsubs.get(node)
            if pubsub is None:
                continue
            try:
                async with self._subscribing:
                    await (pubsub.sunsubscribe if sharded else pubsub.unsubscribe)(name)
            except Exception as exc:  # noqa: BLE001  # handed to that connection's waiters
                await self._fail(node, link_error(exc, self.server))

    def _expire_overdue(self) -> None:
        """Fail the connections that left a SUBSCRIBE unconfirmed for the reply limit
        (a timer set when one is sent)."""
        limit = limits.REPLY_TIMEOUT
        for node in self._subscriptions.overdue(time.monotonic(), limit):
            task = asyncio.get_running_loop().create_task(self._fail(node, unconfirmed(limit)))
            self._expiring.add(task)
            task.add_done_callback(self._expiring.discard)

    async def aclose(self) -> None:
        """Stop the readers and close the connections; waiters left get an error."""
        for node in list(self._pubsubs):
            await self._fail(node, RedisConnectionError("the listener was closed"))
        if self._command_pool not in (None, getattr(self._client, "connection_pool", None)):
            with contextlib.suppress(Exception):
                await self._command_pool.disconnect()
        for client in self._owned:
            with contextlib.suppress(Exception):
                await client.aclose()
        self._owned.clear()
        self._clients.clear()

    def _pubsub(self, node: Hashable, source: Any) -> Any:
        pubsub = self._pubsubs.get(node)
        if pubsub is None:
            client = self._clients.get(node)
            if client is None:
                pool = redispy.own_pool(source, aioredis.ConnectionPool)
                client = source
                if pool is not None:
                    client = aioredis.Redis(connection_pool=pool)
                    self._owned.append(client)
                self._clients[node] = client
            pubsub = self._pubsubs[node] = client.pubsub()
        return pubsub

    async def _read(self, node: Hashable, pubsub: Any) -> None:
        try:
            while True:
                message = await redispy.read_message(pubsub)
                if isinstance(message, dict):
                    for mailbox, item in self._subscriptions.deliver(node, message):
                        mailbox.put_nowait(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001  # handed to that connection's waiters
            await self._fail(node, link_error(exc, self.server))

    async def _fail(self, node: Hashable, error: BaseException) -> None:
        """Drop ``node``'s connection: its waiters receive ``error``."""
        for mailbox, item in self._subscriptions.fail(node, error):
            mailbox.put_nowait(item)
        reader = self._readers.pop(node, None)
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        pubsub = self._pubsubs.pop(node, None)
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


_registry: Registry[tuple[asyncio.AbstractEventLoop, int], TaskListener] = Registry()


def _key(client: Any) -> tuple[asyncio.AbstractEventLoop, int]:
    """One listener per event loop and connection pool (or cluster client)."""
    owner = getattr(client, "connection_pool", client)
    return asyncio.get_running_loop(), id(owner)


def acquire(client: Any) -> TaskListener:
    """The shared listener of ``client``'s deployment on the running loop, with one
    more reference."""
    return _registry.acquire(_key(client), lambda: TaskListener(client))


async def release(client: Any) -> None:
    """Give back a reference taken by :func:`acquire`; the last one closes the listener."""
    listener = _registry.release(_key(client))
    if listener is not None:
        await listener.aclose()


class TaskMailbox:
    """A waiting task's mailbox: the listener puts items in, one task takes them out.

    Its :meth:`get` waits for an item on a future of its own with a timer beside it,
    not under :func:`asyncio.wait_for`: on Python 3.10 and 3.11, ``wait_for`` returns
    the item and swallows a cancellation that arrives as the item does (the task then
    kept waiting, "cancelling", until its timeout). Here a cancellation always raises
    :class:`asyncio.CancelledError` in the waiting task.
    """

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        """Add ``item`` and wake the waiting task (called on the loop's thread)."""
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, timeout: float | None) -> Any:
        """The next item, waiting at most ``timeout`` seconds (``None``: no limit) for
        one; ``None`` when none came."""
        if not self._items and (timeout is None or timeout > 0):
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        return self._items.popleft() if self._items else None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def receive(mailbox: TaskMailbox, timeout: float | None) -> object:
    """The next item of ``mailbox`` within ``timeout`` seconds (``None``: no limit), or
    ``None``; an error put there by the listener is raised."""
    item = await mailbox.get(timeout)
    if isinstance(item, BaseException):
        raise item
    return item
