"""The protocol's shared machinery, written once and free of I/O.

Every public operation (``ProcSync.sync``, ``Barrier.wait``, ``Event.wait`` and the rest)
is a generator, a *flow*, that yields *operations* (run a script, subscribe, receive a
message, read the server's clock, run the barrier's action) and is sent their results.
A flow that ends at a release instant returns an :class:`AtInstant`: the wait for the
instant is not an operation but the last step of the public method itself.
The blocking shell (:mod:`pyprocsync.shells.blocking`) and the asyncio shell
(:mod:`pyprocsync.asyncio`) drive the same flows, so the state machines, the decoding of
replies and every error exist once. An exception raised while an operation runs is
thrown into the flow at its ``yield``, so the flow decides what it means (and may clean
up before it propagates).

The flows themselves are in :mod:`pyprocsync.core.rounds` (``sync`` and ``Barrier``) and
:mod:`pyprocsync.core.flags` (``Event``); the loop they wait in is
:class:`pyprocsync.core.waiter.Waiter`. This module holds what they share: the
operations and script calls with their error mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pyprocsync import clock
from pyprocsync.core.scripts import Script
from pyprocsync.core.wire import CORRUPT_MARKER, REFUSED_MARKER, Request, Stamp, text
from pyprocsync.exceptions import (
    ConnectionLostError,
    PermissionRefusedError,
    ProcSyncError,
    ProtocolError,
    ServerRefusedError,
)

if TYPE_CHECKING:
    from pyprocsync.core.estimate import ClockEstimate

__all__ = [
    "CALL_TIMEOUT_FLOOR",
    "AtInstant",
    "Call",
    "Due",
    "Flow",
    "Instant",
    "Listen",
    "Operation",
    "Prepare",
    "Receive",
    "RunAction",
    "ServerTime",
    "SleepUntil",
    "Stamp",
    "bound",
    "call",
    "constant",
    "link_lost",
    "prepare",
    "refused",
    "text",
]

T = TypeVar("T")
O = TypeVar("O")  # noqa: E741  # what a waiter waits for


@dataclass(frozen=True, slots=True)
class Call:
    """Run ``script`` with ``keys`` and ``args``; the result is the script's reply.

    The call is sent once, never repeated behind the flow's back (a repeated ARRIVE
    whose first reply was lost could count an arrival twice), and its reply may take
    at most ``timeout`` seconds (``None``: the client's socket timeout); a call that
    fails either way raises a link error.
    """

    script: Script
    keys: tuple[str, ...]
    args: tuple[str | int | Stamp, ...]
    timeout: float | None = None

    def command(self, sha: str) -> tuple[str | int, ...]:
        """The ``EVALSHA`` command that runs the script registered as ``sha``, its
        :class:`Stamp` arguments filled in now (the shells call this last thing before
        sending)."""
        args = (clock.time_ns() // 1000 if arg is Stamp.NOW_US else arg for arg in self.args)
        return ("EVALSHA", sha, len(self.keys), *self.keys, *args)


@dataclass(frozen=True, slots=True)
class Prepare:
    """Make sure the scripts are loaded into the server (once per instance: the first
    call connects here), taking at most ``timeout`` seconds (``None``: the connection
    limits, see :data:`pyprocsync.core.limits.CONNECT_TIMEOUT`). Every flow yields it
    first, before it reads a clock for an instant; the result is ``None``.
    """

    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Listen:
    """Make this participant's subscription cover ``channel``.

    The result is ``True`` when a SUBSCRIBE was sent (the flow then waits for its
    confirmation), ``False`` when the subscription existed already (messages buffered
    on it before this call were discarded). With ``renew``, the pub/sub connection is
    replaced by a new one first (the old one failed). Connecting for it may take at
    most ``timeout`` seconds (``None``: the connection limits).
    """

    channel: str
    renew: bool = False
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Receive:
    """Wait at most ``timeout`` seconds (``None``: no limit) for the next pub/sub message.

    The result is the message as redis-py returns it (a dict), or ``None``.
    """

    timeout: float | None


@dataclass(frozen=True, slots=True)
class SleepUntil:
    """Wait until the wall clock (``on_monotonic``: the monotonic clock) reads ``at_ns``,
    busy-waiting for the last ``spin_ns`` (see :mod:`pyprocsync.clock`).

    Not an operation a flow yields: it is the wait of an :class:`AtInstant`, which the
    public method carries out itself as its very last step.
    """

    at_ns: int
    spin_ns: int
    on_monotonic: bool = False
    #: The agreed instant (epoch µs on its clock, and whether that is the server's),
    #: which every thread (or task of one loop) of this process that waits for it
    #: shares: one of them watches the clock for all (see
    #: :func:`pyprocsync.clock.sleep_until_ns`).
    shared: tuple[int, bool] | None = None


@dataclass(frozen=True, slots=True)
class ServerTime:
    """Read the server's clock (``TIME``) within ``timeout`` seconds (``None``: the
    connection limits); the result is a :class:`~pyprocsync.core.servertime.TimeSample` that
    the shell timed right around the I/O (see
    :class:`~pyprocsync.core.servertime.TimeRequest`), or the bare reply, ``[seconds, µs]``."""

    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class RunAction:
    """Run the barrier's action (the result is ignored; what it raises is thrown in)."""


Operation = Prepare | Call | Listen | Receive | RunAction | ServerTime


@dataclass(frozen=True, slots=True)
class AtInstant(Generic[T]):
    """A flow's result that is due at an instant.

    A flow that ends at a release instant returns this instead of its result; the shell
    hands back everything the call held (mailbox, listener reference, connections) and
    returns it to the public method, which carries out :attr:`wait` (calling
    :meth:`watch` between its coarse sleeps) and returns :meth:`finish` as its last step
    (``meet`` in each shell). Between the instant and the caller's next line only
    :meth:`finish` and two ``return`` statements run.
    """

    #: The wait for the instant.
    wait: SleepUntil
    #: The result, built before the wait.
    result: T
    #: The attribute of :attr:`result` (a frozen dataclass) that receives how late the
    #: wait returned, in seconds; ``None`` when the result has no such attribute.
    late_field: str | None = None
    #: The attribute of :attr:`result` that receives how far the wall clock was stepped
    #: during the wait, in seconds (see :meth:`watch`); ``None`` when it has none.
    step_field: str | None = None
    #: This host's wall clock minus its monotonic clock when the wait was planned, and
    #: the monotonic reading it was taken at, ns.
    planned: tuple[int, int] = (0, 0)
    #: How far the wall clock has been stepped since, ns (see :meth:`watch`).
    stepped_ns: int = 0

    def watch(self) -> None:
        """Notice a step of this host's wall clock since the wait was planned: called
        between the wait's coarse sleeps (never in its last :data:`SleepUntil.spin_ns`).

        The wall clock minus the monotonic clock moves only by a step, or by a slew of
        at most :data:`~pyprocsync.clock.MAX_SLEW_PPB`; a change beyond that (and beyond
        :data:`~pyprocsync.clock.STEP_FLOOR_NS`) is a step: logged the first time
        (WARNING, ``pyprocsync.clock``), kept in :attr:`stepped_ns` and in the
        :attr:`step_field` of the result.
        """
        stepped = clock.wall_step_ns(*self.planned)
        if not stepped or stepped == self.stepped_ns:
            return
        first = not self.stepped_ns
        object.__setattr__(self, "stepped_ns", stepped)
        if self.step_field is not None:
            object.__setattr__(self.result, self.step_field, stepped / 1e9)
        if first:
            clock.log.warning(
                "this host's wall clock was stepped by %+.3f ms while waiting for a release "
                "instant (%s)",
                stepped / 1e6,
                "the release follows the monotonic clock and is not moved"
                if self.wait.on_monotonic
                else "the release follows the wall clock and moved with it",
            )

    def finish(self) -> T:
        """Return :attr:`result`, its :attr:`late_field` set from one clock reading taken
        now: the best estimate, inside the library, of how late the caller gets control
        back (what is left to run is this method's return and the public method's).

        The shells also call it once just before the instant, to have its code and data
        in the caches when it counts; the value it sets then is overwritten."""
        if self.late_field is not None:
            wait = self.wait
            now = clock.monotonic_ns() if wait.on_monotonic else clock.time_ns()
            object.__setattr__(self.result, self.late_field, (now - wait.at_ns) / 1e9)
        return self.result


#: What a flow that may end at an instant returns: its result, or the result due later.
Due: TypeAlias = "T | AtInstant[T]"


@dataclass(frozen=True, slots=True)
class Instant:
    """How a participant is to meet a release instant."""

    #: The instant on this host's wall clock, epoch ns.
    release_ns: int
    #: The instant on the clock to wait on (see :attr:`wait`), ns.
    target_ns: int
    #: How long after the instant this participant learned of it, ns.
    late_ns: int
    #: The clock estimate the instant was converted with (server-clock instants only).
    estimate: ClockEstimate | None
    #: The wait, or ``None`` when there is none (lead time 0: return at once).
    wait: SleepUntil | None
    #: How far this host's reading of the instant may be from the reference clock, ns
    #: (see :attr:`pyprocsync.SyncResult.clock_uncertainty`); ``None``: no bound.
    uncertainty_ns: int | None = None
    #: System-clock instants: whether the kernel says this host's clock is
    #: synchronised (``None``: it says nothing, or a server-clock instant).
    synchronized: bool | None = None
    #: This host's wall clock minus its monotonic clock when the instant was planned,
    #: and the monotonic reading it was taken at, ns (see :meth:`AtInstant.watch`).
    planned: tuple[int, int] = (0, 0)

    def deliver(
        self, result: T, late_field: str | None = None, step_field: str | None = None
    ) -> T | AtInstant[T]:
        """``result`` now when there is no wait, else at the instant.

        ``late_field`` names the attribute of ``result`` (a frozen dataclass built
        before the wait) that receives how late the caller got control back, in
        seconds (see :meth:`AtInstant.finish`); ``step_field`` the one that receives a
        step of the wall clock during the wait (see :meth:`AtInstant.watch`).
        """
        if self.wait is None:
            return result
        return AtInstant(self.wait, result, late_field, step_field, self.planned)


Flow = Generator[Operation, Any, T]

#: Errors of the link to the server (the shells' pub/sub connections never retry).
LINK_ERRORS = (RedisConnectionError, RedisTimeoutError)

#: The least time a waiter's script call may take to answer, seconds, even when its
#: deadline is nearer (or passed: the call that abandons the round at the deadline).
CALL_TIMEOUT_FLOOR = 0.25


def call(request: Request, where: dict[str, Any], timeout: float | None = None) -> Flow[Any]:
    """Run the script of ``request`` (see :mod:`pyprocsync.core.wire`); map its failures
    to pyprocsync errors carrying ``where``.

    :raises ProtocolError: the script found data it did not write.
    :raises ServerRefusedError: the server refused the call (see :func:`refused`).
    :raises ConnectionLostError: the server could not be reached, or did not answer
        within ``timeout`` seconds.
    """
    try:
        return (yield Call(Script[request.script], request.keys(), request.argv(), timeout))
    except ProcSyncError:
        raise  # already mapped (a ServerRefusedError is a ResponseError too)
    except ResponseError as exc:
        raise refused(exc, where) from exc
    except LINK_ERRORS as exc:
        raise link_lost(exc, where) from exc


def prepare(where: dict[str, Any], timeout: float | None = None) -> Flow[None]:
    """The first step of every flow: load the scripts (see :class:`Prepare`).

    :raises ServerRefusedError: the server refused to load them (see :func:`refused`).
    :raises ConnectionLostError: the server could not be reached, or did not answer
        within ``timeout`` seconds.
    """
    try:
        yield Prepare(timeout)
    except ProcSyncError:
        raise  # already mapped: the registration of a member (see the shells)
    except ResponseError as exc:
        raise refused(exc, where) from exc
    except LINK_ERRORS as exc:
        raise link_lost(exc, where) from exc


#: How the server (or a script, see :data:`~pyprocsync.core.wire.REFUSED_MARKER`) words a
#: refusal by its ACL, in the error's message.
_ACL_REFUSALS = (REFUSED_MARKER, "NOPERM", "ACL failure in script")


def refused(exc: ResponseError, where: dict[str, Any]) -> ProcSyncError:
    """The error for the server's error reply ``exc`` to a command of a call about
    ``where`` (the caller raises it ``from exc``), keeping the server's message.

    Found data pyprocsync did not write (:data:`~pyprocsync.core.wire.CORRUPT_MARKER`,
    ``WRONGTYPE``): :class:`ProtocolError`. A refusal by the server's ACL (NOPERM, a
    script's ``ACL failure``, or a script's own check before its first write):
    :class:`PermissionRefusedError`. Any other refusal (out of memory, a read-only
    replica, a script error ...): :class:`ServerRefusedError`.
    """
    message = str(exc)
    if message.startswith((CORRUPT_MARKER, "WRONGTYPE")):
        return ProtocolError(f"foreign or corrupt data in Redis: {message}", **where)
    about = f" ({where['event']!r})" if where.get("event") is not None else ""
    kind = type(exc).__name__
    explained = f"Redis refused a command{about}: {kind}: {message}"
    if isinstance(exc, NoPermissionError) or message.startswith(_ACL_REFUSALS):
        return PermissionRefusedError(explained, reply=message, **where)
    return ServerRefusedError(explained, reply=message, **where)


def link_lost(exc: Exception, where: dict[str, Any]) -> ConnectionLostError:
    """The error for a link error ``exc`` (whose message names the server) of a call
    about ``where``; a refused password or user name says so."""
    about = f" ({where['event']!r})" if where.get("event") is not None else ""
    if isinstance(exc, AuthenticationError):
        return ConnectionLostError(
            f"Redis refused the credentials{about} (check the user name and password of "
            f"the URL): {exc}",
            **where,
        )
    return ConnectionLostError(f"lost the connection to Redis{about}: {exc}", **where)


def bound(deadline: float | None) -> float | None:
    """How long an operation may take for a call whose deadline (monotonic seconds) is
    ``deadline``: until it, but at least :data:`CALL_TIMEOUT_FLOOR`; ``None`` without
    a deadline."""
    return None if deadline is None else max(deadline - clock.monotonic(), CALL_TIMEOUT_FLOOR)


def constant(*command: str | int) -> Callable[[], tuple[str | int, ...]]:
    """What the shells send for a command without :class:`Stamp` arguments: a builder
    of ``command`` as it is (see :meth:`Call.command` for one that has some)."""
    return lambda: command
