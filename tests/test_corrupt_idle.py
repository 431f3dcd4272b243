"""Corrupt and foreign data while nobody waits (issue 7): every key, every hash field.

The protocol's data (see :mod:`pyprocsync.core.scripts`): an event's state hash with fields
``g n k f a L m:<member> o0..o7``, its lease set, and a flag's hash with ``v s o``. For
each key and field, values that pyprocsync never writes (``corrupt_support``) are
written while nobody waits, and then every operation that reads the key is driven:
``sync``, ``Barrier.wait`` (with an action, so RELEASE runs too), ``n_waiting``,
``broken``, ``reset``, ``abort``, ``read_status`` and ``pyprocsync status``;
``Event.is_set``, ``wait``, ``set`` and ``clear``.

Each operation must end within its timeout with a correct result or
:class:`~pyprocsync.ProtocolError` ("foreign or corrupt data"); never another exception
type, never a hang. Nothing read from Redis is ever evaluated.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from corrupt_support import (
    FLAG_CORRUPTIONS,
    LIVENESS,
    OP_TIMEOUT,
    OUTCOMES,
    Corruption,
    number_fields,
)
from primitive_support import flag_keys
from support import (
    PROMPT,
    event_keys,
    start_thread,
)

import pyprocsync
from pyprocsync import (
    Barrier,
    Event,
    ProcSync,
    ProtocolError,
    SyncResult,
)
from pyprocsync.core.keys import members_key
from pyprocsync.core.scripts import Script
from pyprocsync.tools.cli import ExitCode, main
from pyprocsync.tools.server import EmbeddedServer
from pyprocsync.tools.status import EventStatus, read_members, read_status

T = TypeVar("T")


NAME = "bad"


EVENT_CORRUPTIONS = [
    *number_fields("state", "g n k L"),
    *[Corruption("state", "f", v) for v in (b"zz", b"-1", b"1.5", b"7", b"\xff", b"1 x")],
    *[Corruption("state", "a", v) for v in (b"junk", b"\xff\x00")],
    *[
        Corruption("state", f"o{slot}", text.format(gen=slot).encode())
        for slot in range(8)
        for text in OUTCOMES.values()
    ],
    *[Corruption("state", kind=kind) for kind in ("string", "list", "set", "zset")],
    *[Corruption("leases", kind=kind) for kind in ("string", "list", "set", "hash")],
]


MEMBER_CORRUPTIONS = [
    Corruption("members", kind=kind) for kind in ("string", "list", "set", "hash")
]


# -- the state before the corruption --------------------------------------------------------


@dataclass
class Scene:
    """An event (or a flag) of this test's run, restored to a real state before each
    operation and then corrupted."""

    client: redis.Redis
    server: EmbeddedServer
    run_id: str
    corruption: Corruption
    snapshot: dict[str, bytes]
    instances: list[Any] = field(default_factory=list)

    def keys(self) -> dict[str, str]:
        event, flag = event_keys(self.run_id, NAME), flag_keys(self.run_id, NAME)
        return {
            "state": event.state,
            "leases": event.leases,
            "flag": flag.state,
            "members": members_key("pyprocsync", self.run_id),
        }

    def reset(self) -> None:
        """Back to the real state, then the corruption."""
        keys = self.keys()
        self.client.delete(*keys.values())
        for name, dump in self.snapshot.items():
            self.client.restore(keys[name], 60_000, dump)
        self.corruption.apply(self.client, keys[self.corruption.key])

    def options(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "delay": 0, "liveness": LIVENESS}

    def procsync(self) -> ProcSync:
        return self.made(ProcSync(self.client, **self.options()))

    def barrier(self, parties: int = 1) -> Barrier:
        return self.made(
            Barrier(self.client, NAME, parties, lambda: None, OP_TIMEOUT, **self.options())
        )

    def flag(self) -> Event:
        return self.made(Event(self.client, NAME, **self.options()))

    def made(self, instance: T) -> T:
        """Keep ``instance`` to be closed after the operation (see :func:`drive`)."""
        self.instances.append(instance)
        return instance

    def close_instances(self) -> None:
        while self.instances:
            self.instances.pop().close()


def snapshot(client: redis.Redis, run_id: str) -> dict[str, bytes]:
    """Real state of a released round (generation 1 next) and of a set flag, dumped."""
    with ProcSync(client, run_id, 0) as sync:
        sync.sync(NAME, 1, PROMPT)
    with Event(client, NAME, run_id=run_id) as event:
        event.set()
    keys = {"state": event_keys(run_id, NAME).state, "flag": flag_keys(run_id, NAME).state}
    dumps = {name: client.dump(key) for name, key in keys.items()}
    return {name: dump for name, dump in dumps.items() if isinstance(dump, bytes)}


def cli_status(scene: Scene) -> int:
    """``pyprocsync status`` in this process: 0, or 1 with one ``pyprocsync: error:`` line
    (a ProtocolError); any other code is returned as it is for the caller to reject."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["status", "--run", scene.run_id, "--redis", scene.server.url])
    if code == ExitCode.FAILED:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1, err.getvalue()
        assert lines[0].startswith("pyprocsync: error: "), err.getvalue()
        return 0
    return code


def status_of_the_event(scene: Scene) -> list[EventStatus]:
    return read_status(scene.client, scene.run_id)


#: Operations on an event: (name, call, check of a result that is not a ProtocolError).
EVENT_OPERATIONS: list[tuple[str, Callable[[Scene], Any], Callable[[Any], bool]]] = [
    (
        "sync",
        lambda s: s.procsync().sync(NAME, 1, OP_TIMEOUT),
        lambda r: isinstance(r, SyncResult) and (r.index, r.nodes) == (0, 1),
    ),
    ("Barrier.wait", lambda s: s.barrier().wait(), lambda r: r == 0),
    ("n_waiting", lambda s: s.barrier(2).n_waiting, lambda r: r >= 0),
    ("broken", lambda s: s.barrier(2).broken, lambda r: r in (False, True)),
    ("reset", lambda s: s.procsync().reset(NAME), lambda r: r >= 0),
    ("abort", lambda s: s.barrier().abort(), lambda r: r is None),
    (
        "read_status",
        status_of_the_event,
        lambda r: (
            [(st.event, st.generation >= 0, st.arrived >= 0) for st in r]
            in ([], [(NAME, True, True)])
        ),
    ),
    ("pyprocsync status", cli_status, lambda code: code == 0),
]


def as_member(scene: Scene) -> SyncResult:
    with ProcSync(scene.client, member=True, node_id="me", **scene.options()) as node:
        return node.sync(NAME, 1, OP_TIMEOUT)


#: Operations on a run's member set (``member=True``).
MEMBER_OPERATIONS: list[tuple[str, Callable[[Scene], Any], Callable[[Any], bool]]] = [
    ("sync as a member", as_member, lambda r: isinstance(r, SyncResult)),
    ("read_members", lambda s: read_members(s.client, s.run_id), lambda r: isinstance(r, list)),
    ("pyprocsync status", cli_status, lambda code: code == 0),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("corruption", MEMBER_CORRUPTIONS, ids=lambda c: c.id)
def test_corrupt_member_set(
    server: EmbeddedServer, client: redis.Redis, run_id: str, corruption: Corruption
) -> None:
    """A run's member set of the wrong type: joining as a member, ``read_members`` and
    ``pyprocsync status`` raise ProtocolError (or work) within their timeouts."""
    scene = Scene(client, server, run_id, corruption, snapshot(client, run_id))
    problems = drive(scene, MEMBER_OPERATIONS)
    assert not problems, "\n".join(problems)


FLAG_OPERATIONS: list[tuple[str, Callable[[Scene], Any], Callable[[Any], bool]]] = [
    ("is_set", lambda s: s.flag().is_set(), lambda r: r is True),
    ("wait", lambda s: s.flag().wait(0.05), lambda r: r is True),
    ("set", lambda s: s.flag().set(), lambda r: r is None),
    ("clear", lambda s: s.flag().clear(), lambda r: r is None),
]


def drive(
    scene: Scene, operations: list[tuple[str, Callable[[Scene], Any], Callable[[Any], bool]]]
) -> list[str]:
    """Run each operation on a freshly corrupted state; return what went wrong."""
    problems = []
    for name, operation, correct in operations:
        scene.reset()
        thread, outcome = start_thread(lambda op=operation: op(scene))
        thread.join(OP_TIMEOUT + PROMPT)
        hung = thread.is_alive()
        if hung:
            problems.append(f"{name}: still running after {OP_TIMEOUT + PROMPT} s")
            thread.join(30)
        scene.close_instances()
        if hung:
            continue
        error = outcome.error
        if isinstance(error, ProtocolError):
            continue
        if error is not None:
            problems.append(f"{name}: {type(error).__module__}.{type(error).__name__}: {error}")
        elif not correct(outcome.value):
            problems.append(f"{name}: wrong result {outcome.value!r:.200}")
    return problems


@pytest.mark.timeout(60)
@pytest.mark.parametrize("corruption", EVENT_CORRUPTIONS, ids=lambda c: c.id)
def test_corrupt_event_while_idle(
    server: EmbeddedServer, client: redis.Redis, run_id: str, corruption: Corruption
) -> None:
    """A corrupt field or key of an idle event: every operation that reads it returns
    correctly or raises ProtocolError within its timeout (0.5 s)."""
    scene = Scene(client, server, run_id, corruption, snapshot(client, run_id))
    problems = drive(scene, EVENT_OPERATIONS)
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("corruption", FLAG_CORRUPTIONS, ids=lambda c: c.id)
def test_corrupt_flag_while_idle(
    server: EmbeddedServer, client: redis.Redis, run_id: str, corruption: Corruption
) -> None:
    """A corrupt field or key of a set flag: ``is_set``, ``wait``, ``set`` and ``clear``
    return correctly or raise ProtocolError within their timeouts."""
    scene = Scene(client, server, run_id, corruption, snapshot(client, run_id))
    problems = drive(scene, FLAG_OPERATIONS)
    assert not problems, "\n".join(problems)


# -- nothing read from Redis is evaluated --------------------------------------------------------

#: Python that deserializes or runs code: pickle and friends, eval/exec/compile, imports
#: by name, YAML's loader.
UNSAFE_PYTHON = re.compile(
    r"\b(c?pickle|marshal|shelve|dill|jsonpickle)\b|(?<![.\w])(eval|exec|compile)\s*\("
    r"|__import__\s*\(|importlib\.import_module|yaml\.(unsafe_)?load"
)


#: Lua that loads or runs code at run time.
UNSAFE_LUA = re.compile(r"\b(loadstring|load|dofile|loadfile|require|setfenv|getfenv)\s*\(")


def test_nothing_read_from_redis_is_evaluated() -> None:
    """No module of pyprocsync pickles, unmarshals or evaluates anything, and no script
    loads code: data found in Redis can at worst fail to parse."""
    package = Path(pyprocsync.__file__).parent
    hits = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if UNSAFE_PYTHON.search(line)
    ]
    assert hits == []
    assert [s.name for s in Script if UNSAFE_LUA.search(s.value)] == []
    assert UNSAFE_PYTHON.search("pickle.loads(data)")
    assert UNSAFE_PYTHON.search("eval(x)")
    assert not UNSAFE_PYTHON.search("client.evalsha(sha)")
    assert UNSAFE_LUA.search("loadstring(ARGV[1])()")
