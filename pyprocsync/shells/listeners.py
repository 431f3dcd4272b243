"""The shared pub/sub listener's bookkeeping, free of I/O.

A process keeps one *shared listener* per Redis deployment it talks to: one pub/sub
connection (on a cluster: one per shard that serves a subscribed channel), whatever the
number of ProcSync, Event and Barrier objects, threads and tasks using it. Each waiting
participant registers a *mailbox* (a queue of its own) for its channel; messages read
from the connection are handed to the mailboxes of their channel. A channel stays
subscribed while nobody waits on it, up to :data:`IDLE_LIMIT` channels, so a loop over
one event subscribes once.

:class:`Subscriptions` is that table. The blocking (:mod:`pyprocsync.shells.listener_thread`)
and asyncio (:mod:`pyprocsync.shells.listener_task`) listeners do the I/O around it, and
:class:`Registry` hands out one listener per deployment (and per process; for asyncio,
per event loop).

What a mailbox receives: redis-py's message dicts, with sharded pub/sub's
``ssubscribe``/``smessage`` renamed to ``subscribe``/``message`` (the flows do not
care which kind of pub/sub carried them), or an exception instance when the connection
serving its channel failed (or the server dropped the subscription, as it does for a
sharded channel whose slot moved); the waiter then registers again and reads the
stored state.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from redis.backoff import NoBackoff
from redis.exceptions import AskError, MovedError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

__all__ = [
    "COMMAND_CONNECTIONS",
    "CONNECT_TIMEOUT",
    "IDLE_LIMIT",
    "REPLY_TIMEOUT",
    "Mailbox",
    "Registry",
    "Subscriptions",
    "at_server",
    "connecting_within",
    "describe",
    "link_error",
    "private_pool",
    "private_pool_settings",
    "server_major",
]

#: Connections of a listener's command pool: script calls of all the threads (tasks) of
#: a process that use one client share them, waiting their turn when all are busy.
COMMAND_CONNECTIONS = 8

#: Channels kept subscribed while nobody waits on them; beyond, the least recently
#: used is unsubscribed.
IDLE_LIMIT = 64

#: Longest a connection of pyprocsync's own (command and listener connections) may take
#: to connect and to complete its handshake (AUTH, HELLO, CLIENT SETINFO), seconds, when
#: the call has no earlier deadline and the client's settings allow longer.
CONNECT_TIMEOUT = 5.0

#: Longest a command connection of pyprocsync's own waits for a reply when the call has
#: no timeout and the client's ``socket_timeout`` allows longer, seconds.
REPLY_TIMEOUT = 10.0

#: The deadline (``time.monotonic()``) by which a connection opened now must be ready.
_connect_by: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pyprocsync_connect_by", default=None
)

_KIND = {"ssubscribe": "subscribe", "smessage": "message", "sunsubscribe": "unsubscribe"}


class Mailbox(Protocol):
    """Where a waiting participant's messages go (a ``queue.SimpleQueue``, an
    ``asyncio.Queue``)."""

    def put_nowait(self, item: Any) -> None: ...


def private_pool_settings(pool: Any) -> dict[str, Any] | None:
    """Return the settings for a listener connection of its own, copied from ``pool``.

    ``pool`` is a connection pool (or an asyncio cluster node), anything with
    ``connection_kwargs`` and ``connection_class``. Listener connections never retry: a
    failure reaches the waiters at once, which subscribe again and read the stored state
    within their timeout (redis-py's retries would block for the client's whole retry
    budget). A connection of its own also stays out of the caller's
    ``max_connections``. (A Sentinel pool's settings name the pool itself, which its
    connections ask for the current master; the copies do the same.) ``None`` when
    ``pool`` has no connection settings to copy, or its connection class wants a pool
    argument of its own: the caller's client is then used as it is.
    """
    settings = getattr(pool, "connection_kwargs", None)
    connection_class = getattr(pool, "connection_class", None)
    if not isinstance(settings, dict) or connection_class is None:
        return None
    if "connection_pool" in connection_class.__init__.__code__.co_varnames:
        return None
    copied = {
        name: value
        for name, value in settings.items()
        if not name.startswith("orig_")
        and name not in ("maint_notifications_pool_handler", "event_dispatcher")
    }
    copied["retry"] = Retry(NoBackoff(), 0)
    copied["connection_class"] = _bounded_class(connection_class)
    connect_timeout = settings.get("socket_connect_timeout")
    copied["socket_connect_timeout"] = _within(connect_timeout, CONNECT_TIMEOUT)
    return copied


def private_pool(
    pool: Any, pool_class: Callable[..., Any], *, replies: bool = False, **limits: Any
) -> Any:
    """A new pool of ``pool_class`` (blocking or asyncio, plain or bounded) with the
    settings :func:`private_pool_settings` copies from ``pool``, and ``limits``
    (``max_connections=...``); ``None`` when they cannot be copied. With ``replies`` (a
    command pool), a reply may take at most :data:`REPLY_TIMEOUT` seconds."""
    settings = private_pool_settings(pool)
    if settings is None:
        return None
    if replies:
        settings["socket_timeout"] = _within(settings.get("socket_timeout"), REPLY_TIMEOUT)
    return pool_class(**settings, **limits)


def _within(value: float | None, limit: float) -> float:
    """``value`` (a socket timeout, ``None`` for none) capped at ``limit``."""
    return limit if value is None else min(value, limit)


@contextlib.contextmanager
def connecting_within(timeout: float | None) -> Iterator[None]:
    """A connection that pyprocsync's pools open inside this block is ready within
    ``timeout`` seconds (``None``: :data:`CONNECT_TIMEOUT`) or fails with
    ``redis.exceptions.TimeoutError``. (A context variable: it holds for the thread or
    task that enters the block, and for tasks it starts.)"""
    token = _connect_by.set(None if timeout is None else time.monotonic() + timeout)
    try:
        yield
    finally:
        _connect_by.reset(token)


@contextlib.contextmanager
def _connect_limits(connection: Any) -> Iterator[None]:
    """While ``connection`` connects: its connect and handshake timeouts capped at
    :data:`CONNECT_TIMEOUT` and at the time left before the deadline of
    :func:`connecting_within`; restored afterwards (replies then have the pool's)."""
    connect_timeout, reply_timeout = connection.socket_connect_timeout, connection.socket_timeout
    deadline = _connect_by.get()
    left = CONNECT_TIMEOUT if deadline is None else max(deadline - time.monotonic(), 0.001)
    limit = min(left, CONNECT_TIMEOUT)
    connection.socket_connect_timeout = _within(connect_timeout, limit)
    connection.socket_timeout = _within(reply_timeout, limit)
    try:
        yield
    finally:
        connection.socket_connect_timeout, connection.socket_timeout = (
            connect_timeout,
            reply_timeout,
        )


class _BoundedConnect:
    """Mixin of a blocking connection class: see :func:`_connect_limits`."""

    def connect(self) -> None:
        with _connect_limits(self):
            super().connect()  # type: ignore[misc]


class _BoundedAsyncConnect:
    """Mixin of an asyncio connection class: see :func:`_connect_limits`."""

    async def connect(self) -> None:
        with _connect_limits(self):
            await super().connect()  # type: ignore[misc]


@functools.cache
def _bounded_class(connection_class: Any) -> type:
    """``connection_class`` whose ``connect`` honours :func:`connecting_within`."""
    asynchronous = inspect.iscoroutinefunction(connection_class.connect)
    mixin = _BoundedAsyncConnect if asynchronous else _BoundedConnect
    return type(connection_class.__name__, (mixin, connection_class), {"__module__": __name__})


def describe(client: Any) -> str:
    """Name the server ``client`` talks to in an error message: its address, never a
    password."""
    pool = getattr(client, "connection_pool", None)
    service = getattr(pool, "service_name", None)
    if isinstance(service, str):
        return f"Redis (Sentinel service {service!r})"
    settings = getattr(pool, "connection_kwargs", None)
    if not isinstance(settings, dict):
        return "the Redis cluster" if pool is None else "Redis"
    if settings.get("path"):
        return f"Redis at unix://{settings['path']}"
    return f"Redis at {settings.get('host', 'localhost')}:{settings.get('port', 6379)}"


def at_server(exc: BaseException, server: str) -> Exception:
    """A link error ``exc`` as raised to the flows: of the same kind (a timeout stays a
    timeout), its message naming ``server``."""
    kind = RedisTimeoutError if isinstance(exc, RedisTimeoutError) else RedisConnectionError
    return kind(f"{server}: {exc}")


@dataclass
class _Channel:
    """One subscribed (or subscribing) channel."""

    #: The connection serving it (on a cluster: the shard's address).
    node: Hashable
    #: True once the server confirmed the subscription.
    confirmed: bool = False
    #: Who waits on it; True for those that wait for the confirmation.
    waiting: dict[Mailbox, bool] = field(default_factory=dict)


class Subscriptions:
    """Which channels one shared listener covers, and who waits on each. Not
    thread-safe: the blocking listener holds a lock around every call."""

    def __init__(self, idle_limit: int = IDLE_LIMIT) -> None:
        self._channels: dict[str, _Channel] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()  # oldest first
        self._unsubscribing: Counter[tuple[Hashable, str]] = Counter()
        self._idle_limit = idle_limit

    def join(
        self, channel: str, mailbox: Mailbox, node: Hashable, *, renew: bool = False
    ) -> tuple[bool, bool]:
        """Register ``mailbox`` for ``channel``, to be served by ``node`` unless a
        connection serves it already.

        ``renew`` says that ``node`` was found from a slot map reloaded just now (the
        mailbox's connection failed). A channel served by another node then moves to
        ``node``, with everyone who waits on it: the other node's subscription came from
        an older map, and its failure (``-MOVED``) is no longer theirs. Without
        ``renew``, a channel stays where it is served.

        :returns: ``(subscribe, confirming)``: whether the caller must send a SUBSCRIBE
            now, and whether the mailbox will receive the confirmation (the waiter then
            waits for it). A channel confirmed already needs neither.
        """
        entry = self._channels.get(channel)
        subscribe = entry is None or (renew and entry.node != node)
        if entry is None:
            entry = self._channels[channel] = _Channel(node)
        elif subscribe:  # moves: everyone waiting on it waits for the new confirmation
            entry = self._channels[channel] = _Channel(
                node, waiting=dict.fromkeys(entry.waiting, True)
            )
        self._idle.pop(channel, None)
        entry.waiting[mailbox] = not entry.confirmed
        return subscribe, not entry.confirmed

    def leave(self, channel: str, mailbox: Mailbox) -> list[tuple[Hashable, str]]:
        """Unregister ``mailbox``; return the ``(node, channel)`` pairs to unsubscribe."""
        entry = self._channels.get(channel)
        if entry is None or entry.waiting.pop(mailbox, None) is None or entry.waiting:
            return []
        self._idle[channel] = None
        surplus = []
        while len(self._idle) > self._idle_limit:
            oldest, _ = self._idle.popitem(last=False)
            surplus.append((self._channels[oldest].node, oldest))
            self._forget(oldest)
        return surplus

    def deliver(self, node: Hashable, message: dict[str, Any]) -> list[tuple[Mailbox, Any]]:
        """Route ``message``, read from ``node``'s connection: ``(mailbox, item)`` pairs."""
        kind = _text(message.get("type"))
        kind = _KIND.get(kind, kind)
        channel = _text(message.get("channel"))
        entry = self._channels.get(channel)
        if kind == "unsubscribe":
            if self._unsubscribing[node, channel] > 0:
                self._unsubscribing[node, channel] -= 1
                return []
            if entry is None or entry.node != node:
                return []
            # The server dropped the subscription (a sharded channel's slot moved).
            self._forget(channel, confirmation=False)
            lost = RedisConnectionError(f"the server dropped the subscription to {channel!r}")
            return [(mailbox, lost) for mailbox in entry.waiting]
        if entry is None or entry.node != node or kind not in ("subscribe", "message"):
            return []
        message = {**message, "type": kind}
        if kind == "subscribe":
            entry.confirmed = True
            awaiting = [mailbox for mailbox, confirming in entry.waiting.items() if confirming]
            for mailbox in awaiting:
                entry.waiting[mailbox] = False
            return [(mailbox, message) for mailbox in awaiting]
        return [(mailbox, message) for mailbox in entry.waiting]

    def fail(self, node: Hashable, error: BaseException) -> list[tuple[Mailbox, Any]]:
        """``node``'s connection failed: forget its channels; ``(mailbox, error)`` pairs."""
        lost = [name for name, entry in self._channels.items() if entry.node == node]
        pairs: list[tuple[Mailbox, Any]] = []
        for name in lost:
            pairs.extend((mailbox, error) for mailbox in self._channels[name].waiting)
            self._forget(name, confirmation=False)
        for key in [key for key in self._unsubscribing if key[0] == node]:
            del self._unsubscribing[key]  # that connection is gone
        return pairs

    def channels(self, node: Hashable) -> int:
        """How many channels ``node``'s connection serves (subscribed or subscribing)."""
        return sum(1 for entry in self._channels.values() if entry.node == node)

    def _forget(self, channel: str, *, confirmation: bool = True) -> None:
        """Drop ``channel``; with ``confirmation``, an UNSUBSCRIBE is sent for it and
        its confirmation, when it comes, is expected."""
        entry = self._channels.pop(channel)
        self._idle.pop(channel, None)
        if confirmation:
            self._unsubscribing[entry.node, channel] += 1


def server_major(info: dict[str, Any]) -> int:
    """The major version in an ``INFO server`` reply (valkey reports its Redis level)."""
    version = str(info.get("redis_version", "0"))
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def link_error(exc: BaseException, server: str) -> BaseException:
    """What the waiters of a failed listener connection to ``server`` receive: errors
    in the server's reply (a missing ACL permission) as they are, anything else as a
    lost link (see :func:`at_server`). A cluster redirection (the channel's slot lives
    on another shard now) counts as a lost link: the waiters subscribe again after
    reloading the slot map."""
    if isinstance(exc, ResponseError) and not isinstance(exc, (MovedError, AskError)):
        return exc
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return at_server(exc, server)
    return RedisConnectionError(f"{server}: pub/sub connection failed: {exc!r}")


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Registry(Generic[K, V]):
    """One shared listener per key, alive while anyone holds a reference; thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[K, tuple[V, int]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: K, make: Callable[[], V]) -> V:
        """Return the listener for ``key`` (made by ``make`` if there is none) and count
        one more reference to it."""
        with self._lock:
            value, count = self._entries.get(key) or (make(), 0)
            self._entries[key] = (value, count + 1)
            return value

    def release(self, key: K) -> V | None:
        """Count one reference less; return the listener when that was the last one (the
        caller then closes it), else ``None``."""
        with self._lock:
            value, count = self._entries[key]
            if count > 1:
                self._entries[key] = (value, count - 1)
                return None
            del self._entries[key]
            return value
