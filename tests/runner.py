"""The participant runner of every multi-process test (``from runner import ...``).

:class:`Participants` starts participant subprocesses (``tests/participant.py`` modes, or
any other argv through :meth:`Participants.spawn`), waits for them with a hard deadline
and kills whatever outlives the test; :class:`Node` is one of them and the JSON records it
printed. The ``participants`` fixture (``conftest.py``) and ``cluster_participants``
(``cluster_fixtures.py``) hand out one per test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: The script every participant of :meth:`Participants.launch` runs.
PARTICIPANT = Path(__file__).with_name("participant.py")


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
        """Read the records and stderr of a participant that ended (announcements,
        one-key lines like ``{"arrived": true}``, are not records)."""
        self.records = [r for r in self.printed() if list(r.values()) != [True]]
        self.stderr = self.stderr_path.read_text()

    def printed(self) -> list[dict[str, Any]]:
        """Every complete JSON line printed so far (the process may still run)."""
        text = self.stdout_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def said(self, key: str) -> bool:
        """Whether the participant printed an announcement ``{key: true}`` so far."""
        return any(line.get(key) is True for line in self.printed())

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


def arguments(options: dict[str, Any]) -> list[str]:
    """``--option value`` arguments: ``True`` is a bare flag, ``False``/``None`` are left out."""
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return argv


class Participants:
    """Starts participant subprocesses of one test's run; none of them outlives the test.

    Each child writes to files of its own (a pipe that nobody reads would block it).
    With ``cluster=True`` every :meth:`launch` passes ``--cluster`` (``url`` then names
    one node of a Redis Cluster).
    """

    def __init__(self, url: str, run_id: str, tmp_path: Path, *, cluster: bool = False) -> None:
        self.url = url
        self.run_id = run_id
        self.tmp_path = tmp_path
        self.cluster = cluster
        self.nodes: list[Node] = []

    def spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        make: Callable[[subprocess.Popen[bytes], Path, Path], Node] = Node,
    ) -> Node:
        """Start ``argv`` as one more participant (a ``make(process, out, err)``)."""
        number = len(self.nodes)
        stdout_path = self.tmp_path / f"participant{number}.out"
        stderr_path = self.tmp_path / f"participant{number}.err"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        node = make(process, stdout_path, stderr_path)
        self.nodes.append(node)
        return node

    def launch(self, mode: str, name: str, *, url: str | None = None, **options: Any) -> Node:
        """Start one ``participant.py MODE`` on ``name``; ``options`` become arguments
        (see :func:`arguments`)."""
        argv = [sys.executable, str(PARTICIPANT), mode, "--url", url or self.url]
        argv += ["--run-id", self.run_id, "--name", name]
        return self.spawn(argv + arguments({"cluster": self.cluster, **options}))

    def start(self, event: str, nodes: int, *, url: str | None = None, **options: Any) -> Node:
        """Start one ``sync`` participant of ``nodes`` on ``event`` (lead time 0.05 s
        unless ``delay`` is given; proceeding when it learns of an instant late unless
        ``on_late`` is given, as ``make_sync`` does); ``sync_timeout`` is the ``timeout``
        of each ``sync``."""
        options.setdefault("delay", 0.05)
        options.setdefault("on_late", "proceed")
        if "sync_timeout" in options:
            options["timeout"] = options.pop("sync_timeout")
        return self.launch("sync", event, url=url, parties=nodes, **options)

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
        """Start ``count`` identical ``sync`` participants and wait for all of them."""
        started = [self.start(event, nodes, **options) for _ in range(count)]
        return self.wait(started, timeout)

    def finish(self, nodes: Sequence[Node], timeout: float) -> list[dict[str, Any]]:
        """Wait for ``nodes`` (hard deadline), check each exited 0, return each last record."""
        self.wait(nodes, timeout)
        for node in nodes:
            assert node.returncode == 0, f"exit status {node.returncode}\n{node.stderr}"
        return [node.last() for node in nodes]

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
