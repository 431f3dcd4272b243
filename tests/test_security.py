"""The ACL rule (:func:`pyprocsync.tools.acl.acl_rule`) beyond ``tests/test_acl.py``: every
grant, every server, the cluster variant.

``test_acl.py`` shows that a user with exactly the rule runs everything, that a
representative set of missing grants gives a clear error, and that prefixes keep
applications apart. Here:

* every grant of the rule is taken away in turn, and a workload that reaches every part
  of pyprocsync (``sync`` alone and in a round that waits for heartbeats, an Event, a
  Barrier with an action, ``n_waiting``, ``abort``, ``reset``, membership, the asyncio
  twin with a cancelled waiter, server-clock mode, more channels than the listener
  keeps idle, ``pyprocsync status``) must fail with the server's refusal naming that
  command: a ``redis.exceptions.ResponseError`` (``NoPermissionError`` for what the
  client sends, "ACL failure in script" for what a script runs), or the command line's
  one-line error quoting it. A refusal reported as something else (corrupt data) is a
  failure. Grants a single server does not need at all, and those whose only use is a
  best-effort step, are listed with the reason; for them the workload must still pass;
* the rule must be accepted by every server the tests use (the embedded valkey, and
  Debian's ``/usr/bin/redis-server`` 7.0 when installed; on CI, ``CI=true``, its
  absence fails);
* ``acl_rule(cluster=True)``, set on every node of the session's real cluster, must let
  a cluster client synchronize.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest
import redis
from cluster_support import Cluster
from support import (
    ACL_PASSWORD,
    arun,
    in_threads,
    user_url,
    wait_until,
    waiting_members,
)

import pyprocsync.asyncio as aio
from pyprocsync import Barrier, Event, ProcSync
from pyprocsync.core.ops import text
from pyprocsync.shells.listeners import IDLE_LIMIT
from pyprocsync.tools.acl import RECORD_COMMANDS, acl_rule
from pyprocsync.tools.cli import URL_ENV, main
from pyprocsync.tools.server import EmbeddedServer, find_server_binary

pytest_plugins = ("cluster_fixtures",)

ON_CI = os.environ.get("CI") == "true"
DEBIAN_REDIS = "/usr/bin/redis-server"

#: Grants a single server does not need, and why; without them the workload passes.
NOT_NEEDED_ON_ONE_SERVER = {
    "hello": "HELLO (and AUTH) need no permission",
    "client|setinfo": "redis-py ignores the refusal of CLIENT SETINFO at connect",
    "ssubscribe": "sharded pub/sub is used on clusters only",
    "sunsubscribe": "sharded pub/sub is used on clusters only",
    "spublish": "sharded pub/sub is used on clusters only",
}

#: Grants whose only use is a best-effort step: refused, it is logged in ACL LOG, and
#: nothing fails (documented: an interrupted arrival that cannot be withdrawn stays
#: counted until its lease lapses; a member that cannot leave lapses).
BEST_EFFORT = {
    "zrem": "WITHDRAW (an interrupted arrival) and leaving the member set",
    "xadd": "the run's record, written after the instant (refused: logged once)",
}


def without(rule: str, command: str) -> str:
    """``rule`` without the grant of ``command``."""
    return " ".join(word for word in rule.split() if word != f"+{command}")


def granted(rule: str) -> list[str]:
    return [word[1:] for word in rule.split() if word.startswith("+")]


class CommandLineError(Exception):
    """A ``pyprocsync`` command that ended with an error line."""


def command_line(*argv: str, url: str) -> str:
    """Run ``pyprocsync argv`` in this process against ``url`` (given, password and all,
    as ``$PYPROCSYNC_REDIS_URL``: the command refuses passwords on its command line);
    its output, or CommandLineError with its error line."""
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, {URL_ENV: url}),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = main(list(argv))
    if code != 0:
        raise CommandLineError(f"exit {code}: {err.getvalue().strip()}")
    return out.getvalue()


def workload(url: str, run_id: str, admin: redis.Redis, *, recorded: bool = True) -> None:
    """Every part of pyprocsync once, for a user; raises at the first failure. With
    ``recorded`` false (a user who cannot write the record), ``pyprocsync report`` is
    left out: it would find no record. ``admin`` (a client with every grant) only
    watches.

    Ordered so that a missing grant fails early: most are needed by the first round.
    """
    with ProcSync.from_url(url, run_id, 0.005, liveness=0.25, on_late="proceed") as sync:
        sync.sync("one", 1, 5)  # clock check, scripts, a release
        with Event.from_url(url, "flag", run_id=run_id) as event:
            event.set()
            assert event.is_set()
            assert event.wait(5)
            event.clear()

        def late() -> object:
            time.sleep(0.12)  # the first participant renews its lease meanwhile
            return sync.sync("two", 2, 5)

        for outcome in in_threads(lambda: sync.sync("two", 2, 5), late, timeout=10):
            outcome.result()
        with Barrier.from_url(url, "bar", 2, action=lambda: None, run_id=run_id, delay=0) as bar:
            assert bar.n_waiting == 0
            assert not bar.broken
            bar.abort()
            bar.reset()
        command_line("clock", "--samples", "2", url=url)
    with ProcSync.from_url(url, run_id, 0, member=True, node_id="member", liveness=0.25) as me:
        me.sync("member", 1, 5)
    with ProcSync.from_url(url, run_id, 0, clock="server") as sync:
        assert sync.sync("server-clock", 1, 5).clock_offset is not None

    async def twin() -> None:
        async with aio.ProcSync.from_url(url, run_id, 0, liveness=0.25) as sync:
            await asyncio.gather(*(sync.sync("async", 2, 5) for _ in range(2)))
            waiting = asyncio.ensure_future(sync.sync("cancelled", 2, 5))
            # Time for the arrival before the cancel (this user cannot read the leases).
            await asyncio.sleep(0.1)
            waiting.cancel()  # it withdraws its arrival
            with contextlib.suppress(asyncio.CancelledError):
                await waiting

    arun(twin)
    idle_channels(url, run_id, admin)
    # Closed, every instance has written its record: the tools read it.
    command_line("status", "--run", run_id, url=url)
    if recorded:
        command_line("report", "--run", run_id, url=url)


def idle_channels(url: str, run_id: str, admin: redis.Redis) -> None:
    """Enough points on new names that the listener unsubscribes idle channels, while a
    participant waits on its connection throughout: a refused UNSUBSCRIBE (the thread
    sends it when it next wakes) reaches that waiter whenever it comes."""
    with ThreadPoolExecutor(1) as pool, ProcSync.from_url(url, run_id, 0) as sync:
        held = pool.submit(sync.sync, "held", 2, 30)
        wait_until(lambda: waiting_members(admin, run_id, "held") or held.done(), 15, "held")
        for number in range(IDLE_LIMIT + 2):
            if held.done():
                break
            sync.sync(f"many-{number}", 1, 5)
        if held.done():
            held.result()  # raises what the waiter got
        sync.sync("held", 2, 30)
        held.result()


def test_workload_passes_with_exactly_the_rule(
    server: EmbeddedServer, client: redis.Redis, make_user: Callable[[str], str], run_id: str
) -> None:
    """Control for the sweep below: the workload passes with every grant."""
    workload(user_url(server, make_user(acl_rule())), run_id, client)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", granted(acl_rule()))
def test_every_grant_is_needed_and_named_when_missing(
    server: EmbeddedServer,
    client: redis.Redis,
    make_user: Callable[[str], str],
    run_id: str,
    command: str,
) -> None:
    """Without the grant of ``command``, the workload fails with the server's refusal
    naming it, within its timeouts, unless the grant is one a single server does not
    need or one only a best-effort step uses (then it passes, and ACL LOG shows the
    refusal of a best-effort use)."""
    name = make_user(without(acl_rule(), command))
    url = user_url(server, name)
    if command in NOT_NEEDED_ON_ONE_SERVER or command in BEST_EFFORT:
        workload(url, run_id, client, recorded=command not in RECORD_COMMANDS)
        if command in BEST_EFFORT:
            # redis-py 8.0 hands the entries of a bytes client out as bytes, 8.2 as str
            refused = {(text(e["username"]), text(e["object"])) for e in client.acl_log(128)}
            assert (name, command) in refused
        return
    with pytest.raises((redis.exceptions.ResponseError, CommandLineError)) as caught:
        workload(url, run_id, client)
    message = str(caught.value)
    assert "permission" in message.lower(), message
    assert f"'{command}'" in message, message


@pytest.fixture(params=["embedded", "redis-server"])
def any_server(request: pytest.FixtureRequest) -> Iterator[EmbeddedServer]:
    """The embedded server, and Debian's redis-server (7.0) when installed."""
    if request.param == "embedded":
        binary = find_server_binary()
    else:
        if not os.access(DEBIAN_REDIS, os.X_OK):
            reason = f"{DEBIAN_REDIS} is not installed (apt-get install redis-server)"
            if ON_CI:
                pytest.fail(f"{reason}; CI must install it")
            pytest.skip(reason)
        binary = DEBIAN_REDIS
    with EmbeddedServer(binary=binary) as instance:
        yield instance


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster-variant"])
def test_rule_is_accepted_by_every_server(
    any_server: EmbeddedServer, run_id: str, cluster: bool
) -> None:
    """``ACL SETUSER`` accepts the rule on every server the tests use (a grant the
    server does not know, like ``client|setinfo`` before Redis 7.2, makes it refuse the
    whole rule), and a user with it synchronizes there."""
    with any_server.client() as admin:
        admin.execute_command(
            "ACL", "SETUSER", "app", "on", f">{ACL_PASSWORD}", *acl_rule(cluster=cluster).split()
        )
    with ProcSync.from_url(user_url(any_server, "app"), run_id, 0.005, on_late="proceed") as sync:
        result = sync.sync("e", 1, 5)
    assert (result.generation, result.index, result.nodes) == (0, 0, 1)


@pytest.mark.timeout(120)
def test_cluster_rule_lets_a_cluster_client_synchronize(cluster: Cluster, run_id: str) -> None:
    """``acl_rule(cluster=True)`` on every node of a real three-master cluster: a
    cluster client (``from_url(..., cluster=True)``) of that user synchronizes, sets a
    flag and waits for it."""
    nodes = cluster.nodes
    name = f"sec{uuid.uuid4().hex[:10]}"
    rule = acl_rule(cluster=True).split()
    for node in nodes:
        node.command("ACL", "SETUSER", name, "on", f">{ACL_PASSWORD}", *rule)
    url = f"redis://{name}:{ACL_PASSWORD}@{nodes[0].host}:{nodes[0].port}"
    try:
        with ProcSync.from_url(url, run_id, 0.005, cluster=True, on_late="proceed") as sync:
            results = in_threads(*(lambda: sync.sync("c", 2, 10) for _ in range(2)))
            assert len({o.result().release_at for o in results}) == 1
        with Event.from_url(url, "f", run_id=run_id, cluster=True) as event:
            event.set()
            assert event.wait(5)
    finally:
        for node in nodes:
            node.command("ACL", "DELUSER", name)
