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

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from redis.exceptions import AskError, AuthenticationError, MovedError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "COMMAND_CONNECTIONS",
    "IDLE_LIMIT",
    "Mailbox",
    "Registry",
    "Subscriptions",
    "at_server",
    "link_error",
    "server_major",
    "unconfirmed",
]

#: Connections of a listener's command pool: script calls of all the threads (tasks) of
#: a process that use one client share them, waiting their turn when all are busy.
COMMAND_CONNECTIONS = 8

#: Channels kept subscribed while nobody waits on them; beyond, the least recently
#: used is unsubscribed.
IDLE_LIMIT = 64

_KIND = {"ssubscribe": "subscribe", "smessage": "message", "sunsubscribe": "unsubscribe"}


class Mailbox(Protocol):
    """Where a waiting participant's messages go (a ``queue.SimpleQueue``, an
    ``asyncio.Queue``)."""

    def put_nowait(self, item: Any) -> None: ...


def at_server(exc: BaseException, server: str) -> Exception:
    """A link error ``exc`` as raised to the flows: of the same kind (a timeout stays a
    timeout, refused credentials stay an ``AuthenticationError``), its message naming
    ``server``."""
    kind: type[Exception] = RedisConnectionError
    if isinstance(exc, RedisTimeoutError):
        kind = RedisTimeoutError
    elif isinstance(exc, AuthenticationError):
        kind = AuthenticationError
    return kind(f"{server}: {exc}")


@dataclass
class _Channel:
    """One subscribed (or subscribing) channel."""

    #: The connection serving it (on a cluster: the shard's address).
    node: Hashable
    #: True once the server confirmed the subscription.
    confirmed: bool = False
    #: When the SUBSCRIBE went out (``time.monotonic()``); ``None`` until it did.
    asked_at: float | None = None
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

    def asked(self, node: Hashable, channel: str, at: float) -> None:
        """The SUBSCRIBE of ``channel`` went out on ``node``'s connection at ``at``
        (``time.monotonic()``); its confirmation is due within a reply limit."""
        entry = self._channels.get(channel)
        if entry is not None and entry.node == node and not entry.confirmed:
            entry.asked_at = at

    def overdue(self, now: float, limit: float) -> list[Hashable]:
        """The nodes whose connection has left a SUBSCRIBE sent ``limit`` seconds or
        more before ``now`` unconfirmed: the server does not answer on it (stopped, or
        the link is cut without a reset). The listener fails them (see :meth:`fail`)."""
        late = (
            entry.node
            for entry in self._channels.values()
            if not entry.confirmed and entry.asked_at is not None and now - entry.asked_at >= limit
        )
        return list(dict.fromkeys(late))

    def next_due(self, limit: float) -> float | None:
        """When the oldest unconfirmed SUBSCRIBE becomes overdue (see :meth:`overdue`);
        ``None`` while none is awaited."""
        asked = [
            entry.asked_at
            for entry in self._channels.values()
            if not entry.confirmed and entry.asked_at is not None
        ]
        return min(asked) + limit if asked else None

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


def unconfirmed(limit: float) -> RedisTimeoutError:
    """The link error a listener hands to the waiters of a connection that left a
    SUBSCRIBE unconfirmed for ``limit`` seconds (see :meth:`Subscriptions.overdue`)."""
    return RedisTimeoutError(f"the server did not confirm a subscription within {limit:g} s")


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
