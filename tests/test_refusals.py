"""A refused script changes nothing (issue 14): each script that writes, run by an ACL
user lacking one command it needs, on a real server.

Redis does not roll a script back when one of its commands is refused, so a script
that wrote before the refused command left a partial write. Each case below sets up
a state (as the default user, through the scripts themselves), then runs the script
as a user whose grant (:func:`~pyprocsync.tools.acl.acl_rule`) lacks the one command
that the script used to run only *after* an earlier write (or publish). The stored
keys must be byte-identical afterwards (``DUMP``, and no lifetime renewed), nothing
may be published, and the caller gets :class:`~pyprocsync.PermissionRefusedError`
naming the command.

The scripts are driven through :func:`pyprocsync.core.ops.call`, the flows' own way of
calling them, so the error is the one a caller of the public API sees.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from support import user_url

from pyprocsync import PermissionRefusedError, ServerRefusedError
from pyprocsync.core.keys import EventKeys, FlagKeys, members_key
from pyprocsync.core.ops import Call, Prepare, call
from pyprocsync.core.wire import (
    CURRENT_ROUND,
    NEVER_RELEASED,
    Abandon,
    Abort,
    Arrive,
    Check,
    FlagCheck,
    FlagClear,
    FlagSetCall,
    Lost,
    Member,
    Release,
    Request,
    Reset,
    Withdraw,
)
from pyprocsync.shells.blocking import drive
from pyprocsync.tools.acl import acl_rule
from pyprocsync.tools.server import EmbeddedServer

RETENTION_MS = 60_000
LIVENESS_MS = 30_000


def run(client: redis.Redis, request: Request) -> Any:
    """Run ``request``'s script on ``client`` the way the flows do (``ops.call``)."""

    def execute(op: object) -> object:
        if isinstance(op, Prepare):
            return None
        assert isinstance(op, Call)
        return client.execute_command(*op.command(client.script_load(op.script.source())))

    return drive(call(request, {"event": "e", "run_id": "r"}), execute)


def arrive(on: EventKeys, member: str, nodes: int, *, hold: bool = False) -> Arrive:
    return Arrive(
        on,
        nodes=nodes,
        member=member,
        liveness_ms=LIVENESS_MS,
        retention_ms=RETENTION_MS,
        now_us=1_700_000_000_000_000,
        lead_us=50_000,
        hold=hold,
        reported_us=0,
        floor_us=1000,
        seen=NEVER_RELEASED,
    )


def member(tag: str, node: str) -> str:
    """A lease member ``<12 hex>:<node>``."""
    return f"{tag * 12}:{node}"


@dataclass(frozen=True)
class Case:
    """One script, the command its user lacks, how to set up the state, and the call."""

    id: str
    missing: str
    setup: Callable[[redis.Redis, EventKeys, FlagKeys, str], None]
    request: Callable[[EventKeys, FlagKeys, str], Request]


def two_waiting(client: redis.Redis, on: EventKeys, _flag: FlagKeys, _members: str) -> None:
    """A round of three with two participants waiting."""
    run(client, arrive(on, member("a", "n1"), 3))
    run(client, arrive(on, member("b", "n2"), 3))


def one_withdrew(client: redis.Redis, on: EventKeys, flag: FlagKeys, members: str) -> None:
    """Two arrived in a round of three, one withdrew: its index waits in field f."""
    two_waiting(client, on, flag, members)
    run(client, Withdraw(on, CURRENT_ROUND, member("a", "n1"), RETENTION_MS))


def one_lapsed(client: redis.Redis, on: EventKeys, flag: FlagKeys, members: str) -> None:
    """Two waiting, the lease of one of them lapsed long ago."""
    two_waiting(client, on, flag, members)
    client.zadd(on.leases, {member("b", "n2"): 1})


def acting(client: redis.Redis, on: EventKeys, _flag: FlagKeys, _members: str) -> None:
    """A round of two, complete: its last arrival runs the action."""
    run(client, arrive(on, member("a", "n1"), 2))
    run(client, arrive(on, member("b", "n2"), 2, hold=True))


def flag_set(client: redis.Redis, _on: EventKeys, flag: FlagKeys, _members: str) -> None:
    run(client, FlagSetCall(flag, now_us=1_700_000_000_000_000, lead_us=0, retention_ms=60_000))


def flag_exists(client: redis.Redis, _on: EventKeys, flag: FlagKeys, _members: str) -> None:
    flag_set(client, _on, flag, _members)
    run(client, FlagClear(flag, RETENTION_MS))


def registered(client: redis.Redis, _on: EventKeys, _flag: FlagKeys, members: str) -> None:
    run(client, Member(members, "n1", LIVENESS_MS, RETENTION_MS))


CASES = [
    # ARRIVE used to take index 0 back from field f before its ZADD was refused.
    Case("ARRIVE", "zadd", one_withdrew, lambda on, _f, _m: arrive(on, member("c", "n3"), 3)),
    # CHECK used to renew its lease, then find a lapsed one and fail to announce it.
    Case(
        "CHECK",
        "publish",
        one_lapsed,
        lambda on, _f, _m: Check(on, 0, member("a", "n1"), LIVENESS_MS, RETENTION_MS),
    ),
    # ABANDON, RESET, ABORT, LOST and RELEASE used to announce and store the outcome,
    # then fail to drop the waiters' indices.
    Case("ABANDON", "hdel", two_waiting, lambda on, _f, _m: Abandon(on, 0, "timeout", 60_000)),
    Case("RESET", "hdel", two_waiting, lambda on, _f, _m: Reset(on, RETENTION_MS)),
    Case("ABORT", "hdel", two_waiting, lambda on, _f, _m: Abort(on, RETENTION_MS)),
    Case("LOST", "hdel", two_waiting, lambda on, _f, _m: Lost(on, 0, RETENTION_MS, ("n9",))),
    Case(
        "RELEASE",
        "hdel",
        acting,
        lambda on, _f, _m: Release(
            on,
            generation=0,
            member=member("b", "n2"),
            now_us=1_700_000_000_000_000,
            lead_us=50_000,
            retention_ms=RETENTION_MS,
            floor_us=1000,
        ),
    ),
    # WITHDRAW used to drop its lease, then fail to drop its index.
    Case(
        "WITHDRAW",
        "hdel",
        two_waiting,
        lambda on, _f, _m: Withdraw(on, 0, member("a", "n1"), RETENTION_MS),
    ),
    # MEMBER used to add the registration, then fail to give the set its lifetime.
    Case("MEMBER", "pexpire", registered, lambda _o, _f, m: Member(m, "n2", 5000, RETENTION_MS)),
    # FLAG_SET used to store the set, then fail to announce it.
    Case(
        "FLAG_SET",
        "publish",
        flag_exists,
        lambda _o, f, _m: FlagSetCall(f, now_us=1_700_000_000_000_000, lead_us=0, retention_ms=1),
    ),
    # FLAG_CLEAR used to clear the flag, then fail to renew its lifetime.
    Case("FLAG_CLEAR", "pexpire", flag_set, lambda _o, f, _m: FlagClear(f, RETENTION_MS)),
    # FLAG_CHECK writes only the lifetime: refused, it changes nothing either.
    Case("FLAG_CHECK", "pexpire", flag_set, lambda _o, f, _m: FlagCheck(f, -1, RETENTION_MS)),
]


def snapshot(client: redis.Redis, keys: tuple[str, ...]) -> dict[str, tuple[Any, int]]:
    """Each key's ``DUMP`` (its value, byte for byte) and remaining lifetime (ms)."""
    return {key: (client.dump(key), int(client.pttl(key))) for key in keys}


def assert_unchanged(before: dict[str, tuple[Any, int]], after: dict[str, tuple[Any, int]]):
    for key, (dumped, pttl) in before.items():
        assert after[key][0] == dumped, f"{key} changed"
        assert after[key][1] <= pttl, f"{key}'s lifetime was renewed"


@pytest.fixture
def names(run_id: str) -> tuple[EventKeys, FlagKeys, str]:
    return (
        EventKeys.of("pyprocsync", run_id, "e"),
        FlagKeys.of("pyprocsync", run_id, "f"),
        members_key("pyprocsync", run_id),
    )


@pytest.fixture
def restricted(
    make_user: Callable[[str], str], server: EmbeddedServer
) -> Iterator[Callable[[str], redis.Redis]]:
    """Factory: a client of a user with the documented rule less ``+<command>``."""
    made: list[redis.Redis] = []

    def make(missing: str) -> redis.Redis:
        rule = acl_rule()
        assert f" +{missing}" in rule
        made.append(
            redis.Redis.from_url(user_url(server, make_user(rule.replace(f" +{missing}", ""))))
        )
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_refused_script_changes_nothing(
    case: Case,
    client: redis.Redis,
    restricted: Callable[[str], redis.Redis],
    names: tuple[EventKeys, FlagKeys, str],
) -> None:
    on, flag, members = names
    case.setup(client, on, flag, members)
    keys = (*on.all, *flag.all, members)
    request = case.request(on, flag, members)
    channel = getattr(request, "on", on).channel
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    before = snapshot(client, keys)
    with pytest.raises(PermissionRefusedError) as caught:
        run(restricted(case.missing), request)
    assert_unchanged(before, snapshot(client, keys))
    assert pubsub.get_message(timeout=0.2) is None, "the refused script announced"
    pubsub.close()
    error = caught.value
    assert f"'{case.missing}'" in str(error)
    assert "permission" in str(error).lower()
    assert isinstance(error, ServerRefusedError)
    assert isinstance(error, PermissionError)
    assert isinstance(error.__cause__, redis.ResponseError)
    assert error.reply in str(error)
    assert error.event == "e"


def test_every_writing_script_has_a_case() -> None:
    """Every script but READ writes (FLAG_CHECK only renews a lifetime): each one is
    covered above."""
    from pyprocsync.core.scripts import Script  # noqa: PLC0415

    assert {case.id for case in CASES} == {script.name for script in Script} - {"READ"}


def test_the_documented_rule_needs_no_grant_for_the_checks(
    make_user: Callable[[str], str], server: EmbeddedServer, names: tuple[EventKeys, FlagKeys, str]
) -> None:
    """``redis.acl_check_cmd`` needs no permission of its own: the documented rule runs
    every writing script (here the ones of a full round of two and a flag)."""
    on, flag, _members = names
    with redis.Redis.from_url(user_url(server, make_user(acl_rule()))) as user:
        assert run(user, arrive(on, member("a", "n1"), 2))[0] == 0
        assert run(user, arrive(on, member("b", "n2"), 2))[3].startswith(b"R 0 ")
        assert run(user, FlagSetCall(flag, now_us=1, lead_us=0, retention_ms=1000)) == b"S 1 1 0"


@pytest.fixture
def out_of_memory(fresh_server: Callable[..., EmbeddedServer]) -> Iterator[redis.Redis]:
    """A client of a server of this test's own that refuses writes: ``maxmemory 1``,
    ``noeviction`` (set once its keys exist, see each test)."""
    with redis.Redis.from_url(fresh_server().url) as instance:
        yield instance


def full(client: redis.Redis) -> None:
    client.config_set("maxmemory", 1)
    client.config_set("maxmemory-policy", "noeviction")


#: Scripts whose first write out of memory is one memory does not limit (ZREM,
#: ZREMRANGEBYSCORE, PEXPIRE): the server then lets their other writes through too.
RUN_OUT_OF_MEMORY = {"WITHDRAW", "MEMBER", "FLAG_CHECK"}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_script_refused_for_memory_changes_nothing(case: Case, out_of_memory: redis.Redis) -> None:
    """Out of memory, a server refuses a script's first write that may grow memory,
    unless something was written before (then it lets the rest through). Each script
    stores what it announces before announcing it, so a refusal announces nothing
    (``ABANDON`` and the others used to publish an outcome they then failed to store)."""
    client = out_of_memory
    run_id = uuid.uuid4().hex
    on, flag = EventKeys.of("pyprocsync", run_id, "e"), FlagKeys.of("pyprocsync", run_id, "f")
    members = members_key("pyprocsync", run_id)
    case.setup(client, on, flag, members)
    request = case.request(on, flag, members)
    keys = (*on.all, *flag.all, members)
    pubsub = client.pubsub()
    pubsub.subscribe(getattr(request, "on", on).channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    before = snapshot(client, keys)
    full(client)
    if case.id in RUN_OUT_OF_MEMORY:
        run(client, request)
        pubsub.close()
        return
    with pytest.raises(ServerRefusedError) as caught:
        run(client, request)
    assert_unchanged(before, snapshot(client, keys))
    assert pubsub.get_message(timeout=0.2) is None, "the refused script announced"
    pubsub.close()
    assert not isinstance(caught.value, PermissionRefusedError)
    assert isinstance(caught.value.__cause__, redis.exceptions.OutOfMemoryError)
    assert "OutOfMemoryError" in str(caught.value)
