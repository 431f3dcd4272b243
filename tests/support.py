"""Helpers shared by the test modules: threads, subprocess participants, polling, key names.

Fixtures live in ``conftest.py``; this module holds the plain functions and classes they
and the tests use (``from support import ...``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from pyprocsync.core import params
from pyprocsync.core.keys import EventKeys
from pyprocsync.tools.server import EmbeddedServer

#: "Promptly": far below the timeouts (``LONG``) the other participants wait with.
PROMPT = 2.0
#: A timeout no test expects to expire.
LONG = 30


HELPER = Path(__file__).with_name("node_helper.py")


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


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.002)


def waiting_members(client: redis.Redis, run_id: str, event: str) -> list[str]:
    """Lease members (``<tag>:<node id>``) of the participants waiting on ``event``."""
    return [
        m.decode() if isinstance(m, bytes) else m
        for m in client.zrange(event_keys(run_id, event).leases, 0, -1)
    ]


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


# -- subprocess participants ----------------------------------------------------------------


@dataclass
class Node:
    """One participant subprocess and, once it ended, the JSON records it printed."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def collect(self) -> None:
        text = self.stdout_path.read_text()
        self.records = [json.loads(line) for line in text.splitlines() if line.strip()]
        self.stderr = self.stderr_path.read_text()

    def results(self) -> list[dict[str, Any]]:
        """The records of all rounds; fails the test if any round raised."""
        failed = [r for r in self.records if not r["ok"]]
        assert not failed, f"node failed: {failed[0]}\nstderr:\n{self.stderr}"
        assert self.returncode == 0, f"exit status {self.returncode}\nstderr:\n{self.stderr}"
        return self.records

    def last(self) -> dict[str, Any]:
        """The last record; fails the test if there is none."""
        assert self.records, f"no output (exit status {self.returncode})\n{self.stderr}"
        return self.records[-1]


class NodeRunner:
    """Starts ``tests/node_helper.py`` participants; none of them outlives the test.

    Each child writes to its own file (a pipe that nobody reads would block it).
    """

    def __init__(self, url: str, run_id: str, tmp_path: Path) -> None:
        self.url = url
        self.run_id = run_id
        self.tmp_path = tmp_path
        self.nodes: list[Node] = []

    def start(self, event: str, nodes: int, *, url: str | None = None, **options: Any) -> Node:
        """Start one participant; ``options`` become ``--option value`` arguments.

        ``True`` becomes a bare flag; ``False`` and ``None`` are left out.
        ``sync_timeout`` is the helper's ``--timeout`` (the ``timeout`` of each ``sync``).
        """
        argv = [sys.executable, str(HELPER), "--url", url or self.url]
        argv += ["--run-id", self.run_id, "--event", event, "--nodes", str(nodes)]
        for name, value in options.items():
            flag = "--timeout" if name == "sync_timeout" else "--" + name.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not None and value is not False:
                argv += [flag, str(value)]
        number = len(self.nodes)
        stdout_path = self.tmp_path / f"node{number}.out"
        stderr_path = self.tmp_path / f"node{number}.err"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(argv, stdout=out, stderr=err)
        node = Node(process, stdout_path, stderr_path)
        self.nodes.append(node)
        return node

    def wait(self, nodes: Sequence[Node], timeout: float) -> list[Node]:
        """Wait for ``nodes`` to exit; kill every child and fail if one is still running."""
        deadline = time.monotonic() + timeout
        for node in nodes:
            try:
                node.process.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill_all()
                for other in nodes:
                    other.collect()
                tails = "\n".join(f"node {i}: {n.records[-2:]}" for i, n in enumerate(nodes))
                pytest.fail(f"participant processes still running after {timeout} s\n{tails}")
        for node in nodes:
            node.collect()
        return list(nodes)

    def run(
        self, count: int, event: str, nodes: int, *, timeout: float, **options: Any
    ) -> list[Node]:
        """Start ``count`` identical participants and wait for all of them."""
        started = [self.start(event, nodes, **options) for _ in range(count)]
        return self.wait(started, timeout)

    def kill_all(self) -> None:
        """Kill every child still running and reap all of them."""
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.kill()
            node.process.wait()


def check_rounds(
    nodes: Sequence[Node], rounds: int, count: int, first_generation: int = 0
) -> list[list[dict[str, Any]]]:
    """Check that ``nodes`` passed ``rounds`` rounds of ``count`` participants together.

    Per round: one generation (``first_generation``, the next, ... in order), one
    ``release_at`` for everyone, indices exactly ``0 .. count-1``. Returns the records
    grouped by round.
    """
    per_node = [node.results() for node in nodes]
    for records in per_node:
        assert len(records) == rounds
    grouped = [list(group) for group in zip(*per_node, strict=True)]
    for number, group in enumerate(grouped, first_generation):
        assert {r["generation"] for r in group} == {number}, group
        assert len({r["release_at"] for r in group}) == 1, group
        assert sorted(r["index"] for r in group) == list(range(count)), group
        assert all(r["nodes"] == count for r in group), group
    return grouped


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


def server_pids() -> set[int]:
    """PIDs of the live valkey-server and redis-server processes on this machine."""
    found = set()
    for pid in _pids():
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if name in ("valkey-server", "redis-server") and alive(pid):
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


def assert_one_line_error(stderr: str, *needles: str) -> str:
    """``stderr`` is exactly one ``pyprocsync: error: ...`` line holding every needle."""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
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
