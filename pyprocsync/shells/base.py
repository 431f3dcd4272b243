"""What the blocking and the asyncio classes share: configuration, scripts, flows.

Each public class exists twice, blocking and asyncio, as a thin shell that drives the
flows built here; this module does no I/O.

An Event or a Barrier drives its flows with a ProcSync of its own, through a
:class:`Seam`: that instance's settings, clock state and event memory, and its way of
running a flow (:class:`BlockingRun` or :class:`AsyncRun`). The seam is all the Event
and Barrier classes use of their ProcSync, besides its public methods.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from pyprocsync.core import flags, params, rounds
from pyprocsync.core.memory import EventMemory
from pyprocsync.core.ops import Due, Flow
from pyprocsync.core.params import DEFAULTS, ClockMode, OnLate, Settings
from pyprocsync.core.scripts import Script
from pyprocsync.core.servertime import ClockState
from pyprocsync.exceptions import (
    ArgumentTypeError,
    BrokenByTimeoutError,
    ProcSyncError,
    TimeOutError,
)
from pyprocsync.results import SyncResult
from pyprocsync.shells.recorder import OnOutcome, Recorder

__all__ = ["AsyncRun", "BarrierBase", "BlockingRun", "EventBase", "ProcSyncBase", "Seam", "seam"]

L = TypeVar("L")
T = TypeVar("T")


class BlockingRun(Protocol):
    """How the blocking shell runs a flow: ``run(flow, action)`` returns its result.

    ``action`` serves the flow's :class:`~pyprocsync.core.ops.RunAction` (a barrier's).
    """

    def __call__(self, flow: Flow[T], action: Callable[[], object] | None = None, /) -> T: ...


class AsyncRun(Protocol):
    """How the asyncio shell runs a flow: ``await run(flow, action)`` gives its result.

    ``action`` serves the flow's :class:`~pyprocsync.core.ops.RunAction`; what it
    returns is awaited when it is awaitable.
    """

    def __call__(
        self, flow: Flow[T], action: Callable[[], object] | None = None, /
    ) -> Awaitable[T]: ...


#: How a shell runs a flow: :class:`BlockingRun` or :class:`AsyncRun`.
R = TypeVar("R", BlockingRun, AsyncRun)


@dataclass(frozen=True, slots=True)
class Seam(Generic[R]):
    """What an Event or a Barrier needs from the ProcSync that drives it (see
    :func:`seam`)."""

    #: The instance's validated options.
    settings: Settings
    #: Its clock state, shared by all its calls.
    clocks: ClockState
    #: What it remembers about each event, shared by all its calls.
    memory: EventMemory
    #: Runs a flow through the instance: returns a result due at an instant as it is,
    #: for the caller to meet (``meet``, or ``_meet`` in the asyncio shell).
    run: R
    #: Takes the outcomes of its rounds (see :mod:`pyprocsync.shells.recorder`).
    recorder: Recorder


class ProcSyncBase(Generic[R]):
    """Validated settings, registered scripts and the open/closed state of one instance.

    The constructor does no I/O. See :class:`pyprocsync.ProcSync` for the parameters.
    ``R`` is how the shell runs a flow (its ``_run``).
    """

    #: The cluster client class (blocking or asyncio) a shell accepts.
    _cluster_type: type
    #: The client classes a shell accepts, and what to name in an error.
    _client_types: tuple[type, ...]
    _client_kinds: str
    #: How the shell's outcomes reach the run's record and ``on_outcome``.
    _recorder_type: Callable[[Settings, OnOutcome | None, Any], Recorder]

    def __init__(
        self,
        redis_client: Any,
        run_id: str = DEFAULTS.run_id,
        delay: float | Literal["auto"] = DEFAULTS.delay,
        *,
        liveness: float = DEFAULTS.liveness,
        retention: float = DEFAULTS.retention,
        late_tolerance: float = DEFAULTS.late_tolerance,
        on_late: OnLate = DEFAULTS.on_late,
        spin: float = DEFAULTS.spin,
        node_id: str | None = DEFAULTS.node_id,
        prefix: str = DEFAULTS.prefix,
        clock: ClockMode = DEFAULTS.clock,
        clock_samples: int = DEFAULTS.clock_samples,
        clock_refresh: float = DEFAULTS.clock_refresh,
        auto_floor: float = DEFAULTS.auto_floor,
        member: bool = DEFAULTS.member,
        max_uncertainty: float | None = DEFAULTS.max_uncertainty,
        record: bool = DEFAULTS.record,
        record_limit: int = DEFAULTS.record_limit,
        on_outcome: OnOutcome | None = None,
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
            clock=clock,
            clock_samples=clock_samples,
            clock_refresh=clock_refresh,
            auto_floor=auto_floor,
            member=member,
            max_uncertainty=max_uncertainty,
            record=record,
            record_limit=record_limit,
        )
        if not isinstance(redis_client, self._client_types):
            raise ArgumentTypeError(
                f"redis_client must be a {self._client_kinds}, not {type(redis_client).__name__}"
            )
        self._clocks = ClockState()
        self._memory = EventMemory()
        self._client = redis_client
        self._cluster = isinstance(redis_client, self._cluster_type)
        self._owns_client = False
        # Registered at the first call, when it is known how announcements travel.
        self._scripts: dict[Script, Any] = {}
        self._state_lock = threading.Lock()
        self._closed = False
        self._holds_listener = False  # one reference to the shared listener, until closed
        self._listener: Any = None  # that listener (its command pool serves script calls)
        self._recorder = self._recorder_type(self._settings, on_outcome, redis_client)

    def _open_call(self, acquire: Callable[[], L]) -> L:
        """Start a call: check the instance is open and take a reference to the shared
        listener with ``acquire`` for the call (and at the first call, one more that
        the instance holds until it is closed). The caller gives the call's back.

        :raises ProcSyncError: the instance is closed.
        """
        with self._state_lock:
            if self._closed:
                raise ProcSyncError(f"this {type(self).__name__} is closed")
            if not self._holds_listener:
                self._listener = acquire()
                self._holds_listener = True
            return acquire()

    def _mark_closed(self) -> bool:
        """Mark the instance closed; return True when it held a listener reference to
        give back (False also when it was closed already)."""
        with self._state_lock:
            if self._closed:
                return False
            self._closed = True
            return self._holds_listener

    def _register_scripts(self, sharded: bool) -> dict[Script, Any]:
        """Register every script with the client (no I/O)."""
        client: Any = self._client
        return {script: client.register_script(script.source(sharded=sharded)) for script in Script}

    def _runner(self) -> R:
        """How this shell runs a flow through this instance: its ``_run``, bound."""
        raise NotImplementedError

    @property
    def run_id(self) -> str:
        """The run this instance synchronizes in."""
        return self._settings.run_id

    @property
    def delay(self) -> float | Literal["auto"]:
        """The lead time, in seconds, this instance announces when it arrives last, or
        ``"auto"``."""
        return "auto" if self._settings.auto_delay else self._settings.delay_us / 1e6

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} run_id={self.run_id!r} delay={self.delay}>"


def seam(shell: ProcSyncBase[R]) -> Seam[R]:
    """The seam through which an Event or a Barrier drives ``shell``, its own ProcSync.

    Built here, beside :class:`ProcSyncBase`, so that the Event and Barrier classes read
    nothing of their ProcSync but the seam and its public methods.
    """
    return Seam(shell._settings, shell._clocks, shell._memory, shell._runner(), shell._recorder)


class EventBase(Generic[R]):
    """The configuration of an Event and the flows of its methods (no I/O).

    See :class:`pyprocsync.Event` for the parameters. ``_shell_type`` is the ProcSync
    class (blocking or asyncio) that drives the flows, through ``_seam``.
    """

    _shell_type: type[ProcSyncBase[R]]

    def __init__(
        self,
        redis_client: Any,
        name: str,
        *,
        run_id: str = DEFAULTS.run_id,
        delay: float = 0.0,
        **options: Any,
    ) -> None:
        self._name = params.text("name", name, empty=False)
        params.lead("delay", delay)  # a number: "auto" sizes leads from rounds, not sets
        self._shell: ProcSyncBase[R] = self._shell_type(redis_client, run_id, delay, **options)
        self._seam: Seam[R] = seam(self._shell)

    @property
    def name(self) -> str:
        """The flag's name."""
        return self._name

    def _set_flow(self) -> Flow[None]:
        return flags.set_flow(self._seam.settings, self._name)

    def _clear_flow(self) -> Flow[None]:
        return flags.clear_flow(self._seam.settings, self._name)

    def _is_set_flow(self) -> Flow[bool]:
        return flags.is_set_flow(self._seam.settings, self._name)

    def _wait_flow(self, timeout: float | None) -> Flow[Due[bool]]:
        return flags.wait_flow(
            self._seam.settings, self._seam.clocks, self._name, timeout, memory=self._seam.memory
        )

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} name={self._name!r} run_id={self._shell.run_id!r}>"


class BarrierBase(Generic[R]):
    """The configuration of a Barrier and the flows of its methods (no I/O).

    See :class:`pyprocsync.Barrier` for the parameters. ``_shell_type`` is the ProcSync
    class (blocking or asyncio) that drives the flows, through ``_seam``.
    """

    _shell_type: type[ProcSyncBase[R]]

    def __init__(
        self,
        redis_client: Any,
        name: str,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
        *,
        run_id: str = DEFAULTS.run_id,
        delay: float | Literal["auto"] = 0.05,
        **options: Any,
    ) -> None:
        self._name = params.text("name", name, empty=False)
        self._parties = params.count("parties", parties)
        if action is not None and not callable(action):
            raise ArgumentTypeError("action must be callable or None")
        self._action = action
        self._timeout = params.wait_timeout(timeout)
        self._shell: ProcSyncBase[R] = self._shell_type(redis_client, run_id, delay, **options)
        self._seam: Seam[R] = seam(self._shell)

    @property
    def name(self) -> str:
        """The barrier's name."""
        return self._name

    @property
    def parties(self) -> int:
        """How many participants a round needs."""
        return self._parties

    def _wait_flow(self, timeout: float | None) -> Flow[Due[SyncResult]]:
        return rounds.sync_flow(
            self._seam.settings,
            self._seam.clocks,
            self._name,
            self._parties,
            self._timeout if timeout is None else timeout,
            memory=self._seam.memory,
            has_action=self._action is not None,
            poll=True,
        )

    def _read_flow(self) -> Flow[rounds.RoundState]:
        return rounds.read_flow(self._seam.settings, self._name)

    def _abort_flow(self) -> Flow[None]:
        return rounds.abort_flow(self._seam.settings, self._name)

    @staticmethod
    def _timeout_error(exc: TimeOutError) -> BrokenByTimeoutError:
        """The error of a participant whose own timeout expired: a BrokenBarrierError
        (as threading's) that is also a TimeOutError."""
        return BrokenByTimeoutError(
            str(exc),
            timeout=exc.timeout,
            arrived=exc.arrived,
            expected=exc.expected,
            event=exc.event,
            run_id=exc.run_id,
            generation=exc.generation,
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__qualname__} name={self._name!r} parties={self._parties} "
            f"run_id={self._shell.run_id!r}>"
        )
