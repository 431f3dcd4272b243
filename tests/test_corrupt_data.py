"""Corrupt and foreign data (issue 7): every key, every hash field, every channel.

The protocol's data (see :mod:`pyprocsync.core.scripts`): an event's state hash with fields
``g n k f a L m:<member> o0..o7``, its lease set, and a flag's hash with ``v s o``,
plus the channels their outcomes are published on. For each key and field, values that
pyprocsync never writes (non-numbers, negative, fractional, empty, binary, huge, and
keys of the wrong type) are written

* while nobody waits, and then every operation that reads the key is driven: ``sync``,
  ``Barrier.wait`` (with an action, so RELEASE runs too), ``n_waiting``, ``broken``,
  ``reset``, ``abort``, ``read_status`` and ``pyprocsync status``; ``Event.is_set``,
  ``wait``, ``set`` and ``clear``;
* while participants wait in a round of three (two real arrivals, then a third).

Each operation must end within its timeout with a correct result or
:class:`~pyprocsync.ProtocolError` ("foreign or corrupt data"); never another exception
type, never a hang, never a round released with fewer real arrivals than it needs, and
never a corruption that stalls a round without anyone noticing. Garbage published on
the event and flag channels while participants wait must be ignored (or make them read
the stored state): they return at the real instant.

``tests/test_faults.py`` holds the first corruption tests (``sync`` on a corrupt state,
one corruption while waiting); this module sweeps every field, key type and operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from primitive_support import flag_keys
from support import (
    PROMPT,
    arun,
    async_client,
    event_keys,
    spawn,
    start_thread,
    wait_until,
    waiting_members,
)

import pyprocsync
import pyprocsync.asyncio as aps
from pyprocsync import (
    Barrier,
    BrokenBarrierError,
    Event,
    ParameterMismatchError,
    ProcSync,
    ProtocolError,
    SyncResult,
    TimeOutError,
)
from pyprocsync.core.keys import members_key
from pyprocsync.core.scripts import Script
from pyprocsync.tools.cli import ExitCode, main
from pyprocsync.tools.server import EmbeddedServer
from pyprocsync.tools.status import EventStatus, read_members, read_status

T = TypeVar("T")

#: The timeout of every operation driven against corrupt data.
OP_TIMEOUT = 0.5
#: Leases of 0.25 s: a waiter reads the stored state every 50 ms.
LIVENESS = 0.25
NAME = "bad"

# -- what is written ---------------------------------------------------------------------------

#: Values for the integer fields: not a number, negative, fractional, empty, binary,
#: beyond what a script accepts (1e15), and the largest it accepts.
NUMBERS: dict[str, bytes] = {
    "word": b"abc",
    "negative": b"-1",
    "fraction": b"1.5",
    "empty": b"",
    "binary": b"\xff\x00\xfe",
    "huge": b"99999999999999999999",
    "largest": b"999999999999999",
}

#: Values for the outcome slots; ``{gen}`` is the generation the slot belongs to.
OUTCOMES: dict[str, str] = {
    "junk": "junk",
    "almost": "R {gen} x y",
    "negative-instant": "R {gen} -5 0",
    "bad-json": "B {gen} timeout 1 2 {{",
    "json-bomb": "B {gen} timeout 1 2 " + "[" * 50_000,
    "huge-instant": "R {gen} " + "9" * 5000 + " 0",
}


@dataclass(frozen=True)
class Corruption:
    """One foreign write: ``field`` of ``key`` ("state", "leases" or "flag") set to
    ``value``, or with ``kind`` the key replaced by a key of that type."""

    key: str
    field: str = ""
    value: bytes = b""
    kind: str = ""

    @property
    def id(self) -> str:
        if self.kind:
            return f"{self.key}-is-a-{self.kind}"
        value = self.value
        shown = repr(value) if len(value) <= 24 else f"{value[:12]!r}+{len(value) - 12}B"
        return f"{self.key}.{self.field}={shown}"

    def apply(self, client: redis.Redis, key: str, member: str = "") -> None:
        if self.kind:
            client.delete(key)
            {
                "string": lambda: client.set(key, "foreign"),
                "list": lambda: client.rpush(key, "a", "b"),
                "set": lambda: client.sadd(key, "a"),
                "zset": lambda: client.zadd(key, {"a": 1}),
                "hash": lambda: client.hset(key, "a", "b"),
            }[self.kind]()
        else:
            client.hset(key, self.field.replace("<member>", member), self.value)


def number_fields(key: str, fields: str, *, largest: bool = True) -> list[Corruption]:
    """Every value of :data:`NUMBERS` in each of ``fields`` (a flag's without "largest":
    999999999999999 sets is no corruption, and a ``v`` other than 1 reads as clear)."""
    values = [v for name, v in NUMBERS.items() if largest or name != "largest"]
    return [Corruption(key, f, v) for f in fields.split() for v in values]


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

FLAG_CORRUPTIONS = [
    *number_fields("flag", "v s", largest=False),
    *[
        Corruption("flag", "o", text.encode())
        for text in ("junk", "S 1 x y", "", "S -1 2 3", "S 1 " + "9" * 5000 + " 0")
    ],
    *[Corruption("flag", kind=kind) for kind in ("string", "list", "set", "zset")],
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


# -- corruption while participants wait ---------------------------------------------------------


#: Corruptions written while two of three participants wait (the last one sweeps a key
#: type, the others every field; ``m:<member>`` is the first waiter's own index).
WAITING_CORRUPTIONS: dict[str, list[Corruption]] = {
    **{
        field: [Corruption("state", field, v) for v in NUMBERS.values()]
        for field in ("g", "n", "k", "L", "m:<member>")
    },
    "f": [Corruption("state", "f", v) for v in (b"zz", b"-1", b"1.5", b"7", b"\xff")],
    "a": [Corruption("state", "a", v) for v in (b"junk", b"\xff\x00")],
    "o-current": [Corruption("state", "o0", t.format(gen=0).encode()) for t in OUTCOMES.values()],
    "o-other": [Corruption("state", "o3", t.format(gen=3).encode()) for t in OUTCOMES.values()],
    "state-type": [Corruption("state", kind=k) for k in ("string", "list", "set", "zset")],
    "leases-type": [Corruption("leases", kind=k) for k in ("string", "list", "set", "hash")],
}

#: What a participant of a round with corrupt data may end with.
ALLOWED = (SyncResult, ProtocolError, TimeOutError, BrokenBarrierError, ParameterMismatchError)


def settle(predicate: Callable[[], bool], seconds: float) -> None:
    """Poll ``predicate`` for up to ``seconds`` (errors count as "not yet"); never fails."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, ValueError):
            if predicate():
                return
        time.sleep(0.005)


def round_of_three(
    server: EmbeddedServer, run_id: str, corruption: Corruption, event: str
) -> list[Any]:
    """The first of three participants arrives and waits; the corruption is written;
    the second arrives (and is counted or refused), then the third. A participant still
    waiting half a second after the other two are done is ended by deleting the event's
    keys (as a flush would). Returns the three outcomes: a result or an exception each."""
    keys = event_keys(run_id, event)
    client = redis.Redis(host=server.bind, port=server.port)
    nodes = [ProcSync(client, run_id, 0, liveness=LIVENESS) for _ in range(3)]
    try:
        first = start_thread(lambda: nodes[0].sync(event, 3, 4 * OP_TIMEOUT))
        wait_until(lambda: waiting_members(client, run_id, event), 5, "the first arrival")
        member = waiting_members(client, run_id, event)[0]
        corruption.apply(client, keys.state if corruption.key == "state" else keys.leases, member)
        second = start_thread(lambda: nodes[1].sync(event, 3, 2 * OP_TIMEOUT))
        settle(lambda: not second[0].is_alive() or client.zcard(keys.leases) >= 2, OP_TIMEOUT)
        third = start_thread(lambda: nodes[2].sync(event, 3, 2 * OP_TIMEOUT))
        for thread, _ in (second, third):
            thread.join(2 * OP_TIMEOUT + PROMPT)
        first[0].join(OP_TIMEOUT)  # a release reaches it about when it reaches the others
        if first[0].is_alive():
            client.delete(keys.state, keys.leases)
        first[0].join(PROMPT)
        assert not any(t.is_alive() for t, _ in (first, second, third)), "a participant hangs"
        return [outcome.error or outcome.value for _, outcome in (first, second, third)]
    finally:
        for node in nodes:
            node.close()
        client.close()


def verdict(outcomes: list[Any]) -> str:
    """What is wrong with the outcomes of a round of three, or "" if nothing."""
    strange = [o for o in outcomes if not isinstance(o, ALLOWED)]
    if strange:
        return f"unexpected {type(strange[0]).__name__}: {strange[0]!r:.200}"
    released = [o for o in outcomes if isinstance(o, SyncResult)]
    if released:
        if len(released) < 3 or len({(r.generation, r.release_at) for r in released}) != 1:
            return f"released with fewer than 3 real arrivals: {outcomes!r:.400}"
        return ""
    if not any(isinstance(o, (ProtocolError, ParameterMismatchError)) for o in outcomes):
        return f"nobody noticed the corruption and nobody was released: {outcomes!r:.400}"
    return ""


def each_at_once(
    corruptions: list[Corruption], scenario: Callable[[int, Corruption], list[Any]]
) -> dict[str, list[Any]]:
    """Run ``scenario(number, corruption)`` for every corruption at once, in threads;
    return the outcomes of each (fails the test if a scenario itself failed)."""
    results: dict[str, list[Any]] = {}
    failures: dict[str, BaseException] = {}

    def one(number: int, corruption: Corruption) -> None:
        try:
            results[corruption.id] = scenario(number, corruption)
        except BaseException as exc:
            failures[corruption.id] = exc

    threads = [
        threading.Thread(target=one, args=(n, c), daemon=True) for n, c in enumerate(corruptions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == {}
    assert len(results) == len(corruptions)
    return results


@pytest.mark.timeout(60)
@pytest.mark.parametrize("field", list(WAITING_CORRUPTIONS))
def test_corruption_while_waiting(server: EmbeddedServer, run_id: str, field: str) -> None:
    """Corrupt data written while the first of three participants waits (each value of
    the field in a round of its own, all at once): every participant ends within its
    timeout, with a ProtocolError, a refusal (timeout, broken round, mismatch) or the
    release of all three together. A round is never released without its three real
    arrivals, and never stalled silently: someone raises ProtocolError (or a mismatch),
    or all three pass."""
    results = each_at_once(
        WAITING_CORRUPTIONS[field],
        lambda number, corruption: round_of_three(server, run_id, corruption, f"w{number}"),
    )
    problems = [f"{name}: {verdict(outcomes)}" for name, outcomes in results.items()]
    assert not [p for p in problems if not p.endswith(": ")], "\n".join(problems)


def waiter_and_setter(
    server: EmbeddedServer, run_id: str, corruption: Corruption, name: str
) -> list[Any]:
    """A flag that was set and cleared; a waiter begins to wait; the corruption is
    written; another participant sets the flag. Returns the outcomes of the waiter and
    of the setter."""
    client = redis.Redis(host=server.bind, port=server.port)
    waiter, setter = (Event(client, name, run_id=run_id, liveness=LIVENESS) for _ in range(2))
    try:
        setter.set()
        setter.clear()
        key = flag_keys(run_id, name).state
        waiting = start_thread(lambda: waiter.wait(4 * OP_TIMEOUT))
        wait_until(lambda: client.pubsub_numsub(key)[0][1] >= 1, 5, "the waiter")
        time.sleep(0.1)  # it read the flag
        corruption.apply(client, key)
        setting = start_thread(setter.set)
        for thread, _ in (setting, waiting):
            thread.join(4 * OP_TIMEOUT + PROMPT)
        assert not any(t.is_alive() for t, _ in (waiting, setting)), "a participant hangs"
        return [outcome.error or outcome.value for _, outcome in (waiting, setting)]
    finally:
        waiter.close()
        setter.close()
        client.close()


def flag_verdict(outcomes: list[Any]) -> str:
    """What is wrong with the outcomes of a waiter and a setter, or "" if nothing."""
    woken, set_ = outcomes
    if not isinstance(woken, (bool, ProtocolError)) or not isinstance(
        set_, (type(None), ProtocolError)
    ):
        return f"unexpected outcome: {outcomes!r:.300}"
    if woken is False and set_ is None:
        return "the flag was set but its waiter returned False"
    return ""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("field", ["v", "s", "o", "type"])
def test_flag_corruption_while_waiting(server: EmbeddedServer, run_id: str, field: str) -> None:
    """A flag's field (or key type) corrupted under a waiting ``Event.wait``, then
    ``set()``: the waiter is woken, or someone raises ProtocolError (a waiter may time
    out only if the set was refused); nobody hangs or raises anything else."""
    if field == "type":
        corruptions = [c for c in FLAG_CORRUPTIONS if c.kind]
    else:
        corruptions = [c for c in FLAG_CORRUPTIONS if c.field == field]
    results = each_at_once(
        corruptions,
        lambda number, corruption: waiter_and_setter(server, run_id, corruption, f"f{number}"),
    )
    problems = [f"{name}: {flag_verdict(outcomes)}" for name, outcomes in results.items()]
    assert not [p for p in problems if not p.endswith(": ")], "\n".join(problems)


# -- garbage on the channels -------------------------------------------------------------------


def garbage(generation: int, at_us: int, lead_us: int) -> list[bytes]:
    """Announcements pyprocsync never publishes, for a round in ``generation`` (or a
    flag seen ``generation`` times): junk, huge, almost valid, wrong generation, JSON
    bombs. None of them is a well-formed outcome of the current round."""
    g = generation
    texts = [
        "",
        "\x00",
        "🙂 R 0",
        "R",
        "S",
        f"R {g} x y",
        f"R {g} {at_us} {lead_us} extra",
        f"R {g} -{at_us} 0",
        f"R {g + 1} {at_us} {lead_us}",
        f"R {g + 8} {at_us} {lead_us}",
        f"B {g} time-out 1 2 []",
        f"B {g} timeout 1 2 [1e99999]",
        f"B {g} timeout 1 2 [" + "9" * 100_000 + "]",
        f"B {g} timeout 1 2 " + '{"a":' * 100_000,
        f"B {g} timeout 1 2 " + "[" * 200_000,
        "R " + "9" * 100_000 + f" {at_us} {lead_us}",
        "S",
        "S x y z",
        f"S {g + 1} {at_us}",
        f"S -1 {at_us} {lead_us}",
        f"S {g + 1} {at_us} {lead_us} x",
        f"S {g} {at_us} {lead_us}",
        f"S {g + 1} -{at_us} {lead_us}",
        "S " + "9" * 5000 + f" {at_us} {lead_us}",
        json.dumps({"R": g, "at": at_us}),
    ]
    return [b"\xff\xfe\x00\x80", b"x" * (1 << 20), *(t.encode() for t in texts)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["blocking", "asyncio"])
@pytest.mark.parametrize("kind", ["sync", "Barrier", "Event"])
def test_garbage_published_while_waiting(
    server: EmbeddedServer, client: redis.Redis, run_id: str, kind: str, mode: str
) -> None:
    """Garbage published on the channel of a waiting participant (a ``sync``, a
    ``Barrier.wait`` or an ``Event.wait``, blocking or asyncio) is ignored or makes it
    read the stored state: it keeps waiting, and when its partner arrives (or the flag
    is set) it returns at the real instant (lead 0.3 s), not late, not early."""
    classes = {
        "blocking": {"sync": ProcSync, "Barrier": Barrier, "Event": Event},
        "asyncio": {"sync": aps.ProcSync, "Barrier": aps.Barrier, "Event": aps.Event},
    }
    channel = (flag_keys if kind == "Event" else event_keys)(run_id, "g").state
    options = {"run_id": run_id, "delay": 0.3, "liveness": LIVENESS}

    def make(made_client: Any, cls: type[Any]) -> Any:
        if cls in (ProcSync, aps.ProcSync):
            return cls(made_client, **options)
        return (
            cls(made_client, "g", 2, **options)
            if kind == "Barrier"
            else cls(made_client, "g", **options)
        )

    async def body(aclient: aioredis.Redis) -> tuple[Any, float, int]:
        own = aclient if mode == "asyncio" else client
        waiter = make(own, classes[mode][kind])
        partner = make(client, classes["blocking"][kind])

        def call(method: Callable[..., Any], *args: Any) -> Any:
            return method(*args) if mode == "asyncio" else asyncio.to_thread(method, *args)

        if kind == "sync":
            waiting = spawn(call(waiter.sync, "g", 2, 10))
        else:
            waiting = spawn(call(waiter.wait, 10))
        deadline = time.monotonic() + 5
        while client.pubsub_numsub(channel)[0][1] < 1 or (
            kind != "Event" and not waiting_members(client, run_id, "g")
        ):
            assert time.monotonic() < deadline, "the waiter never started waiting"
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # an Event waiter reads the flag once it subscribed
        now_us = time.time_ns() // 1000
        for message in garbage(0, now_us - 10_000_000, 300_000):
            client.publish(channel, message)
        await asyncio.sleep(0.3)
        assert not waiting.done(), (
            waiting.result() if not waiting.exception() else waiting.exception()
        )
        if kind == "sync":
            theirs = await asyncio.to_thread(partner.sync, "g", 2, 10)
            at_us = round(theirs.release_at * 1e6)
        elif kind == "Barrier":
            await asyncio.to_thread(partner.wait, 10)
            at_us = stored_instant(client, event_keys(run_id, "g").state, "o0")
        else:
            await asyncio.to_thread(partner.set)
            at_us = stored_instant(client, channel, "o")
        mine = await waiting
        returned_us = time.time_ns() // 1000
        for instance in (waiter, partner):
            closing = instance.close()
            if asyncio.iscoroutine(closing):
                await closing
        return mine, returned_us, at_us

    mine, returned_us, at_us = arun(body, async_client(server))
    if kind == "sync":
        assert abs(mine.release_at * 1e6 - at_us) <= 1
        assert mine.late_by < 0.05
    else:
        assert mine in (0, 1, True), mine
    assert -1000 <= returned_us - at_us < 50_000, "returned away from the agreed instant"


def stored_instant(client: redis.Redis, key: str, field: str) -> int:
    """The release instant (µs) of the outcome stored in ``field`` of ``key``."""
    stored = client.hget(key, field)
    assert stored is not None
    return int(stored.split()[2])


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
