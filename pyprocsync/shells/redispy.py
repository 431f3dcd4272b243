"""Every use pyprocsync makes of redis-py (and fakeredis) beyond their documented API.

redis-py documents its clients' commands, ``pubsub()``, ``register_script``, the cluster
client's node lookups and its exceptions; the rest of the package uses nothing else.
pyprocsync also needs a few things redis-py leaves undocumented, and they are all here,
so that a redis-py release that changes one of them is mended in one place:

* pools of pyprocsync's own, built from the connection settings of a caller's client
  (:func:`own_pool`), whose connections connect within the deadline of the call that
  opens them (:func:`connecting_within`);
* a connection taken from such a pool, a command sent on it and its reply read within
  a timeout (:func:`taken`, :func:`send`, :func:`read_reply`, and their asyncio twins
  :func:`ataken`, :func:`asend`, :func:`aread_reply`);
* the shared listeners' raw pub/sub reading (:func:`read_ready`, :func:`read_message`)
  and the sockets the listener thread sleeps on (:func:`wait_readable`, which also
  knows fakeredis's in-process sockets);
* a cluster client's slot map reloaded (:func:`reload_slots`, :func:`areload_slots`)
  and the pool of the node that holds a key (:func:`node_pool`, :func:`node_client`);
* a server's name for messages (:func:`describe`) and the syntax check of a URL
  (:func:`check_url`).

``tests/test_redispy_boundary.py`` fails when another module of the package touches a
connection, a pool's settings, an undocumented module of redis-py or fakeredis, or a
private attribute of anything but its own objects; ``.ci/run`` runs the suite with the
oldest redis-py (and fakeredis) that ``setup.cfg`` admits and with the newest.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import functools
import inspect
import math
import select
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from pyprocsync.core import limits

if sys.version_info >= (3, 11):
    from asyncio import timeout as _expires_after
else:  # redis-py depends on async-timeout there
    from async_timeout import timeout as _expires_after

__all__ = [
    "Ready",
    "aread_reply",
    "areload_slots",
    "asend",
    "ataken",
    "check_url",
    "connecting_within",
    "describe",
    "node_client",
    "node_pool",
    "own_pool",
    "read_message",
    "read_ready",
    "read_reply",
    "reload_slots",
    "send",
    "taken",
    "wait_readable",
]

# -- pools of pyprocsync's own ---------------------------------------------------------


def _bound_to_its_pool(name: str) -> bool:
    """Whether the connection setting ``name`` belongs to the pool it was made for and
    must not be copied into another: redis-py's maintenance-notification handlers (they
    track that pool's connections), the original host and timeouts they restore after a
    maintenance (``orig_*``), and the event dispatcher of that pool's client."""
    return name.startswith("orig_") or name.endswith("_handler") or name == "event_dispatcher"


def own_pool(source: Any, pool_class: type, *, replies: bool = False, **pool_limits: Any) -> Any:
    """A new pool of ``pool_class`` (``redis.ConnectionPool``, ``BlockingConnectionPool``
    or their ``redis.asyncio`` twins) whose connections have the settings of
    ``source``'s: a client, a connection pool, or an asyncio cluster node.

    Its connections never retry (a failure reaches the caller at once, who decides;
    redis-py's retries would block for the client's whole retry budget), with a retry
    policy of the pool's own kind (a synchronous one reaching an asyncio pool is
    converted with a warning by redis-py 8.2 and later). They connect within
    :data:`~pyprocsync.core.limits.CONNECT_TIMEOUT` and the deadline of
    :func:`connecting_within`; with ``replies`` (a pool for commands), a reply may take
    at most :data:`~pyprocsync.core.limits.REPLY_TIMEOUT`. The pool stays out of the
    caller's ``max_connections``; ``pool_limits`` are its own (``max_connections=``).
    (A Sentinel pool's settings name the pool itself, which its connections ask for the
    current master; the copies do the same.)

    :returns: the pool, or ``None`` when ``source`` has no connection settings to copy
        (a test double) or its connection class wants a pool argument of its own: the
        caller then uses ``source`` as it is.
    """
    pool = getattr(source, "connection_pool", source)
    settings = getattr(pool, "connection_kwargs", None)
    connection_class = getattr(pool, "connection_class", None)
    if not isinstance(settings, dict) or connection_class is None:
        return None
    if "connection_pool" in inspect.signature(connection_class.__init__).parameters:
        return None
    copied = {name: value for name, value in settings.items() if not _bound_to_its_pool(name)}
    asynchronous = issubclass(pool_class, aioredis.ConnectionPool)
    copied["retry"] = (AsyncRetry if asynchronous else Retry)(NoBackoff(), 0)
    copied["connection_class"] = _bounded_class(connection_class)
    copied["socket_connect_timeout"] = _within(
        settings.get("socket_connect_timeout"), limits.CONNECT_TIMEOUT
    )
    if replies:
        copied["socket_timeout"] = _within(settings.get("socket_timeout"), limits.REPLY_TIMEOUT)
    return pool_class(**copied, **pool_limits)


def _within(value: float | None, limit: float) -> float:
    """``value`` (a socket timeout, ``None`` for none) capped at ``limit``."""
    return limit if value is None else min(value, limit)


#: The deadline (``time.monotonic()``) by which a connection opened now must be ready.
_connect_by: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pyprocsync_connect_by", default=None
)


@contextlib.contextmanager
def connecting_within(timeout: float | None) -> Iterator[None]:
    """A connection that pyprocsync's pools open inside this block is ready within
    ``timeout`` seconds (``None``: :data:`~pyprocsync.core.limits.CONNECT_TIMEOUT`) or
    fails with ``redis.exceptions.TimeoutError``. (A context variable: it holds for the
    thread or task that enters the block, and for tasks it starts.)"""
    token = _connect_by.set(None if timeout is None else time.monotonic() + timeout)
    try:
        yield
    finally:
        _connect_by.reset(token)


@contextlib.contextmanager
def _connect_limits(connection: Any) -> Iterator[None]:
    """While ``connection`` connects: its connect and handshake timeouts capped at
    :data:`~pyprocsync.core.limits.CONNECT_TIMEOUT` and at the time left before the
    deadline of :func:`connecting_within`; restored afterwards (replies then have the
    pool's)."""
    connect_timeout, reply_timeout = connection.socket_connect_timeout, connection.socket_timeout
    deadline = _connect_by.get()
    left = limits.CONNECT_TIMEOUT if deadline is None else max(deadline - time.monotonic(), 0.001)
    limit = min(left, limits.CONNECT_TIMEOUT)
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


# -- commands on connections of pyprocsync's own --------------------------------------


@contextlib.contextmanager
def taken(pool: Any, timeout: float | None) -> Iterator[Any]:
    """A connection of the blocking ``pool`` for the block, opened (if it must be)
    within ``timeout`` seconds (see :func:`connecting_within`), given back afterwards.

    A block that fails other than by an error reply of the server (a whole reply was
    read: the connection is in order) closes the connection first: a reply may still be
    on its way.
    """
    with connecting_within(timeout):
        connection = pool.get_connection()
    try:
        yield connection
    except ResponseError:
        raise
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


def send(connection: Any, command: Iterable[str | int]) -> None:
    """Send ``command`` (its name and arguments) on a connection of :func:`taken`."""
    connection.send_command(*command)


def read_reply(connection: Any, timeout: float | None) -> object:
    """The next reply on ``connection``, waiting at most ``timeout`` seconds (``None``:
    the connection's ``socket_timeout``).

    :raises redis.exceptions.TimeoutError: no reply in time.
    """
    if timeout is None:
        timeout = connection.socket_timeout
    if timeout is None:
        return connection.read_response()
    return connection.read_response(timeout=timeout)


@contextlib.asynccontextmanager
async def ataken(source: Any, timeout: float | None) -> AsyncIterator[Any]:
    """:func:`taken` for asyncio: a connection of ``source``, an asyncio pool or an
    asyncio cluster node, open and ready within ``timeout`` seconds.

    A pooled connection that the server has closed meanwhile (or that holds unread
    data) is opened anew first, as redis-py's blocking pool does (its asyncio pool hands
    such a connection out as it is while maintenance notifications are on): nothing
    was sent on it.
    """
    node = isinstance(source, AsyncClusterNode)
    if node:
        connection = source.acquire_connection()
    else:
        with connecting_within(timeout):
            connection = await source.get_connection()
    try:
        await _drop_if_stale(connection)
        with connecting_within(timeout):
            await connection.connect()
        yield connection
    except ResponseError:
        raise
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        if node:
            source.release(connection)
        else:
            await source.release(connection)


async def _drop_if_stale(connection: Any) -> None:
    """Disconnect ``connection`` if the server closed it or it holds unread data, so
    that ``connect()`` opens it anew."""
    if connection.is_connected:
        try:
            stale = await connection.can_read()
        except (redis.ConnectionError, OSError):
            stale = True
        if stale:
            await connection.disconnect()


async def asend(connection: Any, command: Iterable[str | int]) -> None:
    """:func:`send` for asyncio."""
    await connection.send_command(*command)


async def aread_reply(connection: Any, timeout: float | None) -> object:
    """:func:`read_reply` for asyncio.

    Not with redis-py's own ``read_response(timeout=...)``: when that expires it returns
    ``None``, which is also what a script that returns nothing replies.

    :raises redis.exceptions.TimeoutError: no reply in time (the caller's block of
        :func:`ataken` then closes the connection).
    """
    if timeout is None:
        return await connection.read_response()
    try:
        async with _expires_after(timeout):
            # inf: the deadline alone bounds it, not the connection's socket_timeout
            return await connection.read_response(timeout=math.inf)
    except asyncio.TimeoutError as exc:
        raise RedisTimeoutError(f"no reply within {timeout:.3f} s") from exc


# -- the shared listeners' pub/sub reading --------------------------------------------


class Ready(enum.Enum):
    """What :func:`read_ready` returns when no message could be read."""

    #: Nothing is buffered on the connection (or it is closed).
    NOTHING = enum.auto()


def read_ready(pubsub: Any, rest_timeout: float) -> object:
    """Read one message of the blocking ``pubsub`` if one has begun to arrive, without
    waiting for one; the rest of a long message may take ``rest_timeout`` seconds.

    Looks in the kernel's buffer and in those above it (TLS, redis-py's read buffer),
    which ``select()`` does not see.

    :returns: the message as redis-py hands it out (a dict, or ``None`` for a reply it
        keeps to itself), or :attr:`Ready.NOTHING`.
    :raises: redis-py's error when the connection failed.
    """
    connection = pubsub.connection
    if connection is None or not connection.can_read(timeout=0):
        return Ready.NOTHING
    response = connection.read_response(
        disconnect_on_error=False, push_request=True, timeout=rest_timeout
    )
    return pubsub.handle_message(response)


async def read_message(pubsub: Any) -> object:
    """The next message of the asyncio ``pubsub``, waiting as long as it takes: a dict,
    or ``None`` for a reply redis-py keeps to itself.

    :raises: redis-py's error when the connection failed.
    """
    response = await pubsub.parse_response(block=True)
    return await pubsub.handle_message(response)


#: Longest :func:`wait_readable` waits on a connection that ``select()`` cannot watch
#: before it returns to look at the wake-up socket, seconds.
_UNSELECTABLE_SLICE = 0.01


def wait_readable(wake: socket.socket, pubsubs: Iterable[Any], timeout: float) -> None:
    """Return when the connection of one of the blocking ``pubsubs`` may have a message,
    ``wake`` has bytes, or ``timeout`` seconds passed.

    A connection whose socket is a real :class:`socket.socket` (plain, TLS, Unix) is
    watched with ``select()`` together with ``wake``. A connection whose socket is some
    other object (fakeredis's in-process socket, whose ``fileno()`` is a made-up number
    that may name an unrelated descriptor of this process) is waited on through its own
    ``can_read()`` for at most :data:`_UNSELECTABLE_SLICE`, and ``wake`` is only glanced
    at afterwards: its messages are seen at once, requests within that slice. Of several
    such connections only the first is waited on (fakeredis has no cluster client, so
    there is one). Connections not yet (or no longer) open are skipped.
    """
    sockets: list[socket.socket] = [wake]
    unselectable: list[Any] = []
    for pubsub in pubsubs:
        connection = pubsub.connection
        sock = getattr(connection, "_sock", None)
        if isinstance(sock, socket.socket):
            sockets.append(sock)
        elif sock is not None:
            unselectable.append(connection)
    if unselectable:
        unselectable[0].can_read(timeout=min(timeout, _UNSELECTABLE_SLICE))
        timeout = 0
    select.select(sockets, [], [], timeout)


# -- cluster clients ---------------------------------------------------------------------


def reload_slots(client: Any) -> None:
    """Reload the blocking cluster ``client``'s map of which node serves which slot."""
    client.nodes_manager.initialize()


async def areload_slots(client: Any) -> None:
    """:func:`reload_slots` for an asyncio cluster client."""
    await client.nodes_manager.initialize()


def node_client(client: Any, node: Any) -> Any:
    """The blocking cluster ``client``'s client of ``node`` (a ``ClusterNode``)."""
    return client.get_redis_connection(node)


def node_pool(client: Any, key: str) -> Any:
    """The connection pool of the node of the blocking cluster ``client`` that holds
    ``key``."""
    return node_client(client, client.get_node_from_key(key)).connection_pool


# -- names -------------------------------------------------------------------------------


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


def check_url(url: str) -> None:
    """Parse ``url`` as redis-py's ``from_url`` will.

    :raises ValueError: redis-py would refuse it; the message says why.
    """
    parse_url(url)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
