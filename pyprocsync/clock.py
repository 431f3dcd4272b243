"""Every clock read and every sleep of pyprocsync, in one place.

The rest of the package reads time only through this module's functions, looked up at
call time, so a test can replace :func:`time_ns` or :func:`monotonic` with a fake clock
(``monkeypatch.setattr(pyprocsync.clock, "time_ns", fake)``) and every part follows.

Release instants are wall-clock (epoch) nanoseconds on this host when the hosts' clocks
are trusted to agree (``clock="system"``); in server-clock mode they are converted to
this host's monotonic clock (see :mod:`pyprocsync.core.servertime`). Timeouts and deadlines
use the monotonic clock, which wall-clock steps do not move.

Waiting for an instant happens in two stages: a coarse stage that sleeps in steps of at
most :data:`MAX_SLEEP_NS` and aims each step anew at the wall clock (so a clock step
during the wait moves the wake-up with it; :func:`wall_step_ns` notices it), then, for
the last ``spin_ns``, a busy loop
reading the wall clock: an operating-system sleep wakes up late by its timer slack and
scheduling latency (about 0.1-0.2 ms on a virtual machine), a busy loop does not. The
busy loop yields the processor after every look at the clock until the last
:data:`PURE_SPIN_NS` (see :func:`_spin_until_ns`).
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LOOP_LAST_SLEEP_NS",
    "LOOP_TIMER_SLACK_NS",
    "MAX_LETTING_S",
    "MAX_SLEEP_NS",
    "MAX_SLEW_PPB",
    "PURE_SPIN_NS",
    "STEP_FLOOR_NS",
    "WALL_READS",
    "KernelClock",
    "async_sleep_until_ns",
    "kernel_clock",
    "let_waiting_threads_run",
    "monotonic",
    "monotonic_ns",
    "sleep_until_ns",
    "time_ns",
    "wall_minus_monotonic",
    "wall_step_ns",
]

#: Where clock trouble is logged: a step of this host's wall clock, an unsynchronised
#: clock, a server clock that contradicts earlier samples.
log = logging.getLogger("pyprocsync.clock")

_yield = getattr(os, "sched_yield", lambda: time.sleep(0))


def _sleep(seconds: float) -> None:
    """``time.sleep``, or a ``select`` timeout where it fails.

    Under libfaketime with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` (used to test clock skew),
    CPython's absolute monotonic ``clock_nanosleep`` fails with EINVAL; a relative
    ``select`` timeout still sleeps.
    """
    try:
        time.sleep(seconds)
    except OSError:
        select.select([], [], [], seconds)


#: Longest single sleep of the coarse stage: a wall-clock step is noticed within it.
MAX_SLEEP_NS = 50_000_000


# The clocks are the standard library's functions themselves, not wrappers: a reading
# right after an instant costs no Python call of its own. Tests replace these names.

#: This host's wall clock, nanoseconds since the epoch (:func:`time.time_ns`).
time_ns = time.time_ns

#: The monotonic clock in seconds, for timeouts and deadlines (:func:`time.monotonic`).
monotonic = time.monotonic

#: The monotonic clock in nanoseconds, for instants in server-clock mode
#: (:func:`time.monotonic_ns`).
monotonic_ns = time.monotonic_ns


@dataclass(frozen=True, slots=True)
class KernelClock:
    """What the operating system says of this host's wall clock: whether a time
    daemon (chrony, ntpd, ptp4l with phc2sys) keeps it synchronised, and the bound on
    its error that the daemon maintains.

    .. versionadded:: 1.0
    """

    #: The kernel's clock is synchronised (no ``STA_UNSYNC``, state not ``TIME_ERROR``).
    synchronized: bool
    #: The daemon's bound on the clock's error against true time, ns (``maxerror``).
    max_error_ns: int
    #: The daemon's estimate of that error, ns (``esterror``).
    estimated_error_ns: int


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    """Linux's ``struct timex`` (``adjtimex(2)``); the padding is the kernel's."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    )


#: ``adjtimex`` status bit: the clock is not synchronised.
_STA_UNSYNC = 0x0040
#: ``adjtimex`` return value: the clock is not synchronised.
_TIME_ERROR = 5


@functools.cache
def _adjtimex() -> Callable[[Any], int] | None:
    """The C library's ``adjtimex``, or ``None`` where there is none."""
    with contextlib.suppress(OSError, AttributeError):
        function: Callable[[Any], int] = ctypes.CDLL(None).adjtimex
        return function
    return None


def _read_kernel_clock() -> KernelClock | None:
    """:func:`kernel_clock`, read from the kernel."""
    adjtimex = _adjtimex()
    if adjtimex is None:
        return None
    timex = _Timex()  # modes 0: read only
    state = adjtimex(ctypes.byref(timex))
    if state < 0:
        return None
    return KernelClock(
        synchronized=state != _TIME_ERROR and not timex.status & _STA_UNSYNC,
        max_error_ns=timex.maxerror * 1000,
        estimated_error_ns=timex.esterror * 1000,
    )


#: What the operating system says of this host's wall clock (Linux: ``adjtimex(2)``,
#: read-only); ``None`` where it says nothing (another system, a sandbox that refuses the
#: call). Read at each call: a daemon may step or lose the clock at any time. Tests and
#: the simulated hosts of ``pyprocsync lab`` replace it.
kernel_clock: Callable[[], KernelClock | None] = _read_kernel_clock


#: The fastest a time daemon slews a wall clock, parts per billion (chrony's and ntpd's
#: 500 ppm): the wall clock minus the monotonic clock changes faster only by a step.
MAX_SLEW_PPB = 500_000

#: The smallest change of the wall clock against the monotonic clock taken for a step,
#: ns (below it, two readings of the clocks a little apart may differ by that much).
STEP_FLOOR_NS = 100_000


#: How many times :func:`wall_minus_monotonic` reads the clocks, keeping the closest.
WALL_READS = 3


def wall_minus_monotonic() -> tuple[int, int, int]:
    """This host's wall clock minus its monotonic clock, the monotonic reading it
    refers to, and how far the first may be off, ns: half the time between two
    monotonic readings around a wall-clock reading, the shortest of :data:`WALL_READS`
    tries (a thread preempted between the readings would make it long)."""
    best = (0, 0, -1)
    for _ in range(WALL_READS):
        before = monotonic_ns()
        wall = time_ns()
        after = monotonic_ns()
        middle = (before + after) // 2
        if best[2] < 0 or after - before < 2 * best[2]:
            best = (wall - middle, middle, (after - before + 1) // 2)
    return best


def wall_step_ns(wall_minus_mono_ns: int, since_mono_ns: int) -> int:
    """How far this host's wall clock was stepped since :func:`wall_minus_monotonic`
    returned ``(wall_minus_mono_ns, since_mono_ns, _)``, ns; 0 when the change is within
    a slew (:data:`MAX_SLEW_PPB` of the time since, plus :data:`STEP_FLOOR_NS` and what
    the readings may be off)."""
    difference, mono, off = wall_minus_monotonic()
    change = difference - wall_minus_mono_ns
    allowance = STEP_FLOOR_NS + off + MAX_SLEW_PPB * max(0, mono - since_mono_ns) // 1_000_000_000
    return change if abs(change) > allowance else 0


def _now(on_monotonic: bool) -> int:
    return monotonic_ns() if on_monotonic else time_ns()


def _reader(on_monotonic: bool) -> Callable[[], int]:
    """The clock to read, looked up now (a test may have replaced it)."""
    return monotonic_ns if on_monotonic else time_ns


def _coarse_sleep_ns(target_ns: int, spin_ns: int, on_monotonic: bool = False) -> int:
    """Return how long to sleep before the next look at the clock; 0 means spin now.

    A negative result means the target has been reached.
    """
    remaining = target_ns - _now(on_monotonic)
    if remaining <= 0:
        return -1
    if remaining <= spin_ns:
        return 0
    return min(remaining - spin_ns, MAX_SLEEP_NS)


#: The last stretch before an instant, ns, in which the busy wait no longer gives the
#: processor away: a ``sched_yield`` costs about a microsecond and leaves the processor's
#: caches cold for the code after it (the first lines after a yield-and-look loop ran
#: 2-3 µs slower than warm ones on a 2-core VM), and may hand the processor to another
#: process for a whole time slice right at the instant.
PURE_SPIN_NS = 30_000

#: Threads of this process inside :func:`sleep_until_ns` (their identities).
_waiting: set[int] = set()


def _spin_until_ns(
    target_ns: int, on_monotonic: bool = False, warm: Callable[[], object] | None = None
) -> int:
    """Busy-wait until the clock reaches ``target_ns``; return the reading then.

    Until :data:`PURE_SPIN_NS` before the target, every look at the clock is followed
    by ``sched_yield``, which also releases the interpreter lock: when more processes
    or threads wait for one instant than there are cores, each one gives the core to
    the next instead of holding it. The last stretch is a plain busy loop, so that the
    instant is seen on a warm processor and nothing is given away at it. A clock step
    back during that stretch puts the loop back to yielding. ``warm`` is called once as
    the last stretch begins (see :func:`sleep_until_ns`).
    """
    now_ns = _reader(on_monotonic)
    now = now_ns()
    while now < target_ns:
        if target_ns - now > PURE_SPIN_NS:
            _yield()
        elif warm is not None:
            warm()
            warm = None
        now = now_ns()
    return now


class _Meeting:
    """The waits of one process for one instant (see :func:`sleep_until_ns`'s
    ``shared``): the first watches the clock, the others are parked on a lock each
    (blocking ones, with their thread's identity) or a future each (asyncio), and are
    let go at the instant."""

    __slots__ = ("abandoned", "between", "parked")

    def __init__(self) -> None:
        self.parked: list[Any] = []
        self.between: list[Callable[[], object]] = []
        self.abandoned = False

    def look(self) -> None:
        """Every waiter's look at the clocks between coarse sleeps."""
        for look in self.between:
            look()


_meetings: dict[Hashable, _Meeting] = {}
_meetings_lock = threading.Lock()


def sleep_until_ns(
    target_ns: int,
    spin_ns: int,
    *,
    on_monotonic: bool = False,
    warm: Callable[[], object] | None = None,
    between: Callable[[], object] | None = None,
    shared: Hashable | None = None,
) -> int:
    """Block until the wall clock reads ``target_ns``; return that clock at return.

    :param target_ns: the instant, epoch nanoseconds (with ``on_monotonic``: a reading
        of :func:`monotonic_ns`, which wall-clock steps do not move).
    :param spin_ns: how long before the instant to stop sleeping and busy-wait.
    :param warm: called once as the last stretch (:data:`PURE_SPIN_NS`) begins: the
        code that is to run right after the instant, run once beforehand so that its
        code and data are in the processor's caches when it counts (after a sleep,
        other processes have had them; cold, the few lines between the instant and the
        caller took 3-4 times as long on a 2-core VM).
    :param between: called after each sleep of the coarse stage (at least ``spin_ns``
        before the instant), to look at the clocks (see :func:`wall_step_ns`).
    :param shared: names the instant for every thread of this process that waits for
        it (the agreed instant); those that wait for it with the same ``target_ns`` and
        clock meet: the first thread to wait watches the clock, the others are parked
        on a lock each and let go by it at the instant. One process then spins once,
        not once per thread, and each parked thread's path from the instant to its
        caller is a lock's release. (Its ``warm`` is not called; its ``between`` is, by
        the watching thread.) If the watching thread leaves early (an exception), the
        parked ones wait on their own.
    """
    if shared is None:
        return _watch_until_ns(target_ns, spin_ns, on_monotonic, warm, between)
    key = (shared, target_ns, on_monotonic)
    with _meetings_lock:
        meeting = _meetings.get(key)
        if meeting is None:
            meeting = _meetings[key] = _Meeting()
            parked = None
        else:
            parked = _thread.allocate_lock()
            parked.acquire()
            meeting.parked.append((parked, threading.get_ident()))
        if between is not None:
            meeting.between.append(between)
    if parked is not None:
        parked.acquire()  # let go by the watching thread, at the instant
        _released.discard(threading.get_ident())
        if not _released:
            _all_run.set()
        if meeting.abandoned:
            return sleep_until_ns(
                target_ns, spin_ns, on_monotonic=on_monotonic, warm=warm, between=between
            )
        return _reader(on_monotonic)()
    try:
        reading = _watch_until_ns(target_ns, spin_ns, on_monotonic, warm, meeting.look)
    except BaseException:
        meeting.abandoned = True
        raise
    finally:
        with _meetings_lock:
            del _meetings[key]
        if meeting.parked:
            _released.update(ident for _lock, ident in meeting.parked)
            _all_run.clear()
        for lock, _ident in meeting.parked:
            lock.release()
    return reading


def _watch_until_ns(
    target_ns: int,
    spin_ns: int,
    on_monotonic: bool,
    warm: Callable[[], object] | None,
    between: Callable[[], object] | None,
) -> int:
    """:func:`sleep_until_ns` in this thread: sleep, then spin."""
    thread = threading.get_ident()
    _waiting.add(thread)
    try:
        while (step := _coarse_sleep_ns(target_ns, spin_ns, on_monotonic)) > 0:
            _sleep(step / 1e9)
            if between is not None:
                between()
        return _spin_until_ns(target_ns, on_monotonic, warm)
    finally:
        _waiting.discard(thread)


#: Threads let go at an instant (see :func:`sleep_until_ns`'s ``shared``) that have
#: not run since (their identities), and whether none is left.
_released: set[int] = set()
_all_run = threading.Event()
_all_run.set()

#: Longest :func:`let_waiting_threads_run` waits for the threads let go at an instant, s.
MAX_LETTING_S = 0.05


def let_waiting_threads_run() -> None:
    """Wait (for at most :data:`MAX_LETTING_S`) while other threads of this process that
    were let go at an instant have not run yet, and give the interpreter lock away for
    a moment if one is in :func:`sleep_until_ns`.

    Threads of one process that are released at one instant run one at a time: each
    waits for the lock while the one before it runs. The blocking classes call this
    first thing in every call, so a thread that goes straight from one release into
    its next call lets the threads released with it reach their callers first, blocked
    meanwhile (it takes neither the lock nor a processor from them), instead of holding
    the lock through its next arrival.
    """
    if _released:
        _all_run.wait(MAX_LETTING_S)
    if _waiting:
        _yield()


#: How late an event loop's timer may fire: selectors wait in whole milliseconds.
LOOP_TIMER_SLACK_NS = 1_000_000

#: The longest last sleep of :func:`async_sleep_until_ns`'s coarse stage, ns. An
#: event loop's timer fires up to :data:`LOOP_TIMER_SLACK_NS` late for sleeps this
#: short, but a millisecond later still for some longer ones: the selector rounds the
#: timeout up to whole milliseconds, and the interpreter's epoll rounds the result up
#: again, so a whole number of milliseconds that has no exact binary form (18 ms, 36 ms,
#: ...) becomes one more (measured on the project's VM: ``asyncio.sleep(0.0175)`` woke
#: 1.66 ms late at the median, ``asyncio.sleep(0.005)`` 0.12 ms). Longer sleeps end
#: this much early, and a sleep of at most this long follows.
LOOP_LAST_SLEEP_NS = 5_000_000


async def async_sleep_until_ns(
    target_ns: int,
    spin_ns: int,
    *,
    on_monotonic: bool = False,
    warm: Callable[[], object] | None = None,
    between: Callable[[], object] | None = None,
    shared: Hashable | None = None,
) -> int:
    """Like :func:`sleep_until_ns`, for a coroutine.

    The coarse stage yields to the event loop until ``spin_ns`` plus
    :data:`LOOP_TIMER_SLACK_NS` before the instant (the loop's timer fires up to a
    millisecond late, since selectors wait in whole milliseconds), ending with a sleep
    of at most :data:`LOOP_LAST_SLEEP_NS` (longer ones can fire later); the rest is a busy
    wait that holds the loop, about 1.5 ms with the default spin. With ``shared``, the
    tasks of one event loop that wait for one instant meet as threads do: the first
    watches the clock, the others await a future each, resolved at the instant (the
    loop then resumes them one after the other, right after the first).
    """
    if shared is None:
        return await _async_watch_until_ns(target_ns, spin_ns, on_monotonic, warm, between)
    loop = asyncio.get_running_loop()
    key = (id(loop), shared, target_ns, on_monotonic)
    meeting = _meetings.get(key)
    if meeting is not None:
        parked: asyncio.Future[None] = loop.create_future()
        meeting.parked.append(parked)
        if between is not None:
            meeting.between.append(between)
        await parked
        if meeting.abandoned:
            return await async_sleep_until_ns(
                target_ns, spin_ns, on_monotonic=on_monotonic, warm=warm, between=between
            )
        return _reader(on_monotonic)()
    meeting = _meetings[key] = _Meeting()
    if between is not None:
        meeting.between.append(between)
    try:
        reading = await _async_watch_until_ns(target_ns, spin_ns, on_monotonic, warm, meeting.look)
    except BaseException:
        meeting.abandoned = True
        raise
    finally:
        del _meetings[key]
        for future in meeting.parked:
            if not future.done():
                future.set_result(None)
    return reading


async def _async_watch_until_ns(
    target_ns: int,
    spin_ns: int,
    on_monotonic: bool,
    warm: Callable[[], object] | None,
    between: Callable[[], object] | None,
) -> int:
    """:func:`async_sleep_until_ns` in this task: sleep, then spin."""
    while (step := _coarse_sleep_ns(target_ns, spin_ns + LOOP_TIMER_SLACK_NS, on_monotonic)) > 0:
        if step > LOOP_LAST_SLEEP_NS:  # end early: a short sleep follows
            step = max(step - LOOP_LAST_SLEEP_NS, LOOP_LAST_SLEEP_NS)
        await asyncio.sleep(step / 1e9)
        if between is not None:
            between()
    return _spin_until_ns(target_ns, on_monotonic, warm)
