"""The end of ``pyprocsync sync``: wait for the release instant, then exit 0 or exec
the COMMAND, with nothing else after the instant.

Ending a process, by exit or by exec, makes the kernel take its address space apart
first, and that takes time in proportion to what the process has mapped: measured on
the project's 2-core VM, an ``execve`` from a Python process that imported pyprocsync
(redis-py, asyncio, ssl: over 200 mappings) took 2.5-4 ms, from ``python -I -S`` (about
40 mappings) 0.7-1 ms, from a small C program 0.4 ms. Several participants ending at
once on fewer cores queue up behind each other's teardown.

So once ``pyprocsync sync`` knows the instant and has closed its connections, it
replaces itself (same process id) by a minimal interpreter running this file as a
script, ``python -I -S handoff.py TARGET_NS SPIN_NS CLOCK [EXECUTABLE ARGV...]``: no
``site``, no pyprocsync, only modules built into the interpreter or pure Python. That
process does the wait, and at the instant the big address space is long gone. It
starts with SIGINT blocked and unblocks it where Ctrl-C ends it with status 130 and
the command's note, ``pyprocsync: interrupted``. When
too little time is left for the interpreter to start (:data:`HANDOFF_MIN_NS`), the
command waits in its own process with the same functions (:func:`finish`).

This module must stay importable without the rest of pyprocsync and import nothing
that maps shared libraries.
"""

from __future__ import annotations

import os
import signal
import sys
import time

TYPE_CHECKING = False  # typing is not imported at run time: it would slow the start
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import NoReturn

__all__ = [
    "HANDOFF_MIN_NS",
    "INTERRUPTED",
    "NOT_EXECUTABLE",
    "NOT_FOUND",
    "finish",
    "handoff_argv",
    "wait_until_ns",
]

#: Exit status when COMMAND was found but cannot be executed (a shell's 126).
NOT_EXECUTABLE = 126
#: Exit status when COMMAND is not found (a shell's 127).
NOT_FOUND = 127
#: Exit status after Ctrl-C (as the ``pyprocsync`` command's).
INTERRUPTED = 130

#: Least time before the instant for which a hand-off is worth it: a minimal
#: interpreter starts in 10-30 ms on the project's VM; a slow start only makes the
#: end late, as a late wake-up would.
HANDOFF_MIN_NS = 100_000_000

#: Longest single sleep before the spin, so that a wall-clock step is noticed.
_MAX_SLEEP_NS = 50_000_000


def wait_until_ns(target_ns: int, spin_ns: int, now: Callable[[], int]) -> None:
    """Return once ``now()`` (a clock in ns) reads ``target_ns`` or later.

    Sleeps (in steps of at most 50 ms, each aimed anew at the target) until ``spin_ns``
    before the target, then busy-waits, yielding the processor after each look at the
    clock: what :func:`pyprocsync.clock.sleep_until_ns` does, without the rest of
    pyprocsync and without the final yield (the exit or exec follows at once).
    """
    while (left := target_ns - now() - spin_ns) > 0:
        time.sleep(min(left, _MAX_SLEEP_NS) / 1e9)
    while now() < target_ns:
        os.sched_yield()


def finish(executable: str | None, argv: list[str]) -> NoReturn:
    """Exit 0 when ``executable`` is ``None``, else exec it with ``argv``.

    Both skip the interpreter's shutdown (``os._exit``, ``os.execv``). Before the exec,
    the signals Python ignores (SIGPIPE, SIGXFSZ) get their default action back, as a
    shell's child has them. An exec that fails prints one line,
    ``pyprocsync: error: NAME: cannot execute: REASON``, and exits :data:`NOT_FOUND`
    (the file is gone) or :data:`NOT_EXECUTABLE` (any other reason, e.g. a file in no
    executable format).
    """
    if executable is None:
        os._exit(0)
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        os.execv(executable, argv)  # noqa: S606  # the user's COMMAND, as a shell runs it
    except OSError as exc:
        print(f"pyprocsync: error: {argv[0]}: cannot execute: {exc.strerror}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(NOT_FOUND if isinstance(exc, FileNotFoundError) else NOT_EXECUTABLE)


def handoff_argv(
    target_ns: int, spin_ns: int, on_monotonic: bool, executable: str | None, argv: Sequence[str]
) -> list[str] | None:
    """The command line that runs this file as the hand-off: wait for ``target_ns`` (a
    reading of the monotonic clock with ``on_monotonic``, else of the wall clock), then
    :func:`finish` with ``executable`` and ``argv``.

    ``None`` when there is no interpreter to run it with (``sys.executable`` empty, or
    the program of a frozen application) or this file is not on disk (a zip import).
    """
    script = os.path.abspath(__file__)
    if not sys.executable or getattr(sys, "frozen", False) or not os.path.isfile(script):
        return None
    head = [sys.executable, "-I", "-S", script]
    clock = "monotonic" if on_monotonic else "wall"
    tail = [] if executable is None else [executable, *argv]
    return [*head, str(target_ns), str(spin_ns), clock, *tail]


def _main(args: Sequence[str]) -> NoReturn:
    target, spin, clock, *command = args
    now = time.monotonic_ns if clock == "monotonic" else time.time_ns
    try:
        # Blocked by the command before it exec'd this; a Ctrl-C pending since then is
        # delivered here and becomes KeyboardInterrupt inside this block.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        wait_until_ns(int(target), int(spin), now)
    except KeyboardInterrupt:
        print("pyprocsync: interrupted", file=sys.stderr)
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    finish(command[0] if command else None, command[1:])


if __name__ == "__main__":
    _main(sys.argv[1:])
