"""Helpers shared by the test modules: threads, event loops, polling, key names.

Fixtures live in ``conftest.py``; this module holds the plain functions and classes they
and the tests use (``from support import ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis

from pyprocsync.core import params
from pyprocsync.core.keys import EventKeys
from pyprocsync.tools.server import EmbeddedServer

#: Bound on ``late_by`` (and on lateness read at the caller) with a lead time > 0: the
#: release is awaited precisely, yet a loaded 2-core machine (two test workers and a busy
#: loop) stalls a process for over 100 ms now and then. A quarter second still tells a
#: wrong wait (a missed instant, a lead counted twice) from a late one; precision is
#: measured by the benchmarks, not here.
LATE_BOUND = 0.25


T = TypeVar("T")

#: "Promptly": far below the timeouts (``LONG``) the other participants wait with.
PROMPT = 2.0
#: A timeout no test expects to expire.
LONG = 30


def make_client(instance: EmbeddedServer, **kwargs: Any) -> redis.Redis:
    """A client built with the constructor (redis-py's default retry policy applies)."""
    return redis.Redis(host=instance.bind, port=instance.port, **kwargs)


#: The password of the ACL users the ``make_user`` fixture makes.
ACL_PASSWORD = "acl-test-pw"


def user_url(server: Any, name: str) -> str:
    """``redis://`` URL of ``server`` (anything with ``bind`` and ``port``) for the ACL
    user ``name`` (password :data:`ACL_PASSWORD`)."""
    return f"redis://{name}:{ACL_PASSWORD}@{server.bind}:{server.port}/0"


def event_keys(run_id: str, event: str) -> EventKeys:
    """The Redis names of ``event`` in ``run_id`` under the default prefix."""
    return EventKeys.of("pyprocsync", run_id, event)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` (every 2 ms) until it is true; fail the test after ``timeout``
    seconds, naming ``what`` it waited for."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.002)


async def await_until(
    predicate: Callable[[], object], timeout: float = 10.0, what: str = ""
) -> None:
    """:func:`wait_until` inside a running loop, yielding to it between polls;
    ``predicate`` may be a plain or a coroutine function."""
    deadline = time.monotonic() + timeout

    async def holds() -> object:
        value = predicate()
        return await value if inspect.isawaitable(value) else value

    while not await holds():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.002)


def waiting_members(client: redis.Redis, run_id: str, event: str) -> list[str]:
    """Lease members (``<tag>:<node id>``) of the participants waiting on ``event``."""
    return [
        m.decode() if isinstance(m, bytes) else m
        for m in client.zrange(event_keys(run_id, event).leases, 0, -1)
    ]


# -- event loops ---------------------------------------------------------------------------

#: Tasks started with :func:`spawn` and not yet cancelled by :func:`cancel_spawned`.
_spawned: list[asyncio.Task[Any]] = []


def spawn(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Start ``coroutine`` as a task that :func:`cancel_spawned` (and :func:`arun` at its
    end) cancels if it is still running: a failing test leaves nothing pending."""
    task = asyncio.create_task(coroutine)
    _spawned.append(task)
    return task


async def cancel_spawned() -> None:
    """Cancel the tasks started with :func:`spawn` that still run, and await them all."""
    tasks = list(_spawned)
    _spawned.clear()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def async_client(instance: EmbeddedServer) -> aioredis.Redis:
    """A ``redis.asyncio`` client of ``instance`` (it connects on its first command)."""
    return aioredis.Redis(host=instance.bind, port=instance.port)


def arun(body: Callable[..., Awaitable[T]], client: Any = None, *, timeout: float = 30) -> T:
    """Run ``body()`` in a new event loop, or ``body(client)`` when an asyncio ``client``
    is given (closed at the end); fail (``TimeoutError``) after ``timeout`` seconds.
    Tasks it started with :func:`spawn` are cancelled before the client is closed."""

    async def main() -> T:
        try:
            call = body() if client is None else body(client)
            return await asyncio.wait_for(call, timeout)
        finally:
            await cancel_spawned()
            if client is not None:
                await client.aclose()

    return asyncio.run(main())


# -- threads ------------------------------------------------------------------------------


class Outcome:
    """What a call run in a thread returned or raised, and when (``time.monotonic``)."""

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None

    def result(self) -> Any:
        """The return value; re-raises what the call raised."""
        if self.error is not None:
            raise self.error
        return self.value

    def run(self, call: Callable[[], Any]) -> None:
        try:
            self.value = call()
        except BaseException as exc:
            self.error = exc
        self.finished_at = time.monotonic()


def start_thread(call: Callable[[], Any]) -> tuple[threading.Thread, Outcome]:
    """Start ``call`` in a daemon thread; the caller joins it (see :func:`join`)."""
    outcome = Outcome()
    thread = threading.Thread(target=outcome.run, args=(call,), daemon=True)
    thread.start()
    return thread, outcome


def join(threads: Sequence[threading.Thread], timeout: float) -> None:
    """Join ``threads``; fail the test if any is still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = sum(thread.is_alive() for thread in threads)
    if hung:
        pytest.fail(f"{hung} of {len(threads)} threads still running after {timeout} s")


def in_threads(*calls: Callable[[], Any], timeout: float = 30.0) -> list[Outcome]:
    """Run each call in its own thread at once; return their outcomes in order."""
    started = [start_thread(call) for call in calls]
    join([thread for thread, _ in started], timeout)
    return [outcome for _, outcome in started]


# -- processes on this machine (Linux /proc) -----------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name, or None if it is gone.

    The command name may hold spaces and parentheses, so the fields start after the last
    ``)``: state, ppid, pgrp, ...
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def process_group(pgid: int) -> set[int]:
    """PIDs of the live (not zombie) processes in process group ``pgid``."""
    found = set()
    for pid in _pids():
        fields = _stat(pid)
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            found.add(pid)
    return found


def children(pid: int) -> set[int]:
    """PIDs of the live (not zombie) direct children of ``pid``."""
    found = set()
    for other in _pids():
        fields = _stat(other)
        if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
            found.add(other)
    return found


def command_line(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces ("" if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def _ours(pid: int) -> bool:
    """Whether ``pid`` descends from this test process, or is an orphan (its parent has
    ended: a server a command of this test may have left behind). A process that
    descends from any other live process (another xdist worker, another program on a
    busy machine) is not ours."""
    me = os.getpid()
    parent = _parent(pid)
    if parent in (None, 0, 1):
        return True
    ancestor = parent
    while ancestor not in (None, 0, 1):
        if ancestor == me:
            return True
        ancestor = _parent(ancestor)
    return False


def server_pids() -> set[int]:
    """PIDs of the live valkey-server and redis-server processes that are this test
    process's (see :func:`_ours`); those of other processes, also started while the
    test runs, are left out."""
    found = set()
    for pid in _pids():
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if name in ("valkey-server", "redis-server") and alive(pid) and _ours(pid):
            found.add(pid)
    return found


def ignores_sigint(pid: int) -> bool:
    """Whether ``pid`` has SIGINT ignored (``SigIgn`` in ``/proc/<pid>/status``)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def default_sigint() -> None:
    """``preexec_fn`` that gives a child the default SIGINT disposition.

    A process started in the background of a non-interactive shell inherits SIGINT
    ignored; a child that is to be interrupted in a test must not.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    """Wait until none of ``pids`` is alive; return those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = {pid for pid in pids if alive(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = {pid for pid in left if alive(pid)}
    return left


def kill_group(pgid: int) -> None:
    """SIGKILL every process of group ``pgid`` (best effort; for test teardown)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def make_settings(**overrides: Any) -> params.Settings:
    """Validated settings as a ProcSync's defaults make them, with ``overrides``."""
    options: dict[str, Any] = {
        "run_id": "run",
        "delay": 1.0,
        "liveness": 5.0,
        "retention": 60.0,
        "late_tolerance": 0.001,
        "on_late": "raise",
        "spin": 0.0005,
        "node_id": None,
        "prefix": "pyprocsync",
    }
    options.update(overrides)
    return params.Settings.create(**options)


def run_command(
    argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to its end, capturing its text output; fail the test after ``timeout``."""
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(argv)} still running after {timeout} s: {exc}")


def without_warnings(stderr: str) -> str:
    """``stderr`` of a ``pyprocsync`` command without its ``pyprocsync: warning: ...``
    lines: the library's warnings depend on the machine (the kernel of a machine whose
    clock no time daemon keeps says so, and the command shows it)."""
    return "".join(
        line
        for line in stderr.splitlines(keepends=True)
        if not line.startswith("pyprocsync: warning: ")
    )


def assert_one_line_error(stderr: str, *needles: str) -> str:
    """``stderr`` is exactly one ``pyprocsync: error: ...`` line holding every needle
    (besides the command's warnings, see :func:`without_warnings`)."""
    assert "Traceback" not in stderr
    lines = without_warnings(stderr).strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pyprocsync: error: "), stderr
    for needle in needles:
        assert needle in lines[0], stderr
    return lines[0]


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def watch_args(run_id: str, url: str) -> list[str]:
    """The arguments of ``pyprocsync status --watch`` of ``run_id`` at ``url``, refreshed
    every 0.2 s."""
    return ["status", "--watch", "--interval", "0.2", "--run", run_id, "--redis", url]
