"""The least-privilege ACL rule (:func:`pyprocsync.tools.acl.acl_rule`), on a real server.

A user with exactly the rule runs every part of pyprocsync; a user lacking any of a
representative set of its grants gets the server's NOPERM error naming what is
missing, raised from the call (no hang); the key and channel patterns keep two
prefixes apart.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

import pytest
import redis
from support import arun, in_threads, run_command, user_url

import pyprocsync
import pyprocsync.asyncio as aio
from pyprocsync import Barrier, Event, InvalidArgumentError, ProcSync
from pyprocsync.tools.acl import CLIENT_COMMANDS, SCRIPT_COMMANDS, acl_rule
from pyprocsync.tools.cli import URL_ENV
from pyprocsync.tools.server import EmbeddedServer


def test_rule_text() -> None:
    """The rule resets the user's grants, then grants exactly the documented commands
    on one prefix's keys and channels."""
    rule = acl_rule("cell-7")
    assert rule.startswith("resetkeys resetchannels -@all ~cell-7:* &cell-7:* ")
    granted = {word[1:] for word in rule.split() if word.startswith("+")}
    assert granted >= set(CLIENT_COMMANDS) | set(SCRIPT_COMMANDS)
    assert "scan" in granted
    assert "scan" not in acl_rule(status=False)
    assert "info" in acl_rule(cluster=True)


@pytest.mark.parametrize("prefix", ["", "a*", "a?b", "x[y]", "p{q}", "has space"])
def test_rule_refuses_prefixes_that_would_widen_it(prefix: str) -> None:
    with pytest.raises(InvalidArgumentError):
        acl_rule(prefix)


@pytest.mark.timeout(60)
def test_user_with_exactly_the_rule_runs_everything(
    make_user: Callable[[str], str], server: EmbeddedServer, run_id: str
) -> None:
    """sync (threads), reset, Event, Barrier, server-clock mode, membership, the asyncio
    twin and ``pyprocsync status`` all work for a user with exactly the rule."""
    url = user_url(server, make_user(acl_rule()))
    with ProcSync.from_url(url, run_id, 0.02, member=True, on_late="proceed") as sync:
        results = in_threads(*(lambda: sync.sync("s", 3, 10) for _ in range(3)))
        assert len({o.result().release_at for o in results}) == 1
        sync.reset("s")
    with ProcSync.from_url(url, run_id, 0.02, clock="server", on_late="proceed") as sync:
        assert sync.sync("server-clock", 1, 10).clock_offset is not None
    with Event.from_url(url, "e", run_id=run_id) as event:
        event.set()
        assert event.is_set()
        assert event.wait(5)
    with Barrier.from_url(url, "b", 1, run_id=run_id) as barrier:
        assert barrier.wait(5) == 0

    async def twin() -> None:
        async with aio.ProcSync.from_url(url, run_id, 0.02, on_late="proceed") as sync:
            await asyncio.gather(*(sync.sync("a", 2, 10) for _ in range(2)))

    arun(twin)
    done = run_command(  # the URL holds the user's password: not on the command line
        [sys.executable, "-m", "pyprocsync", "status", "--run", run_id],
        env={**os.environ, URL_ENV: url},
    )
    assert done.returncode == 0, done.stderr
    assert "s" in done.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "missing", ["evalsha", "script|load", "subscribe", "time", "hset", "publish"]
)
def test_user_lacking_a_grant_gets_a_clear_error(
    make_user: Callable[[str], str], server: EmbeddedServer, run_id: str, missing: str
) -> None:
    """Without one of the grants, the call raises the server's refusal naming the
    command (NOPERM, or "ACL failure in script" for a command a script runs), within
    its timeout (no hang, no wrong release)."""
    url = user_url(server, make_user(acl_rule().replace(f" +{missing}", "")))
    with (
        ProcSync.from_url(url, run_id, 0.02, on_late="proceed") as sync,
        pytest.raises(redis.exceptions.ResponseError) as caught,
    ):
        sync.sync("e", 1, 5)
    message = str(caught.value).lower()
    assert "permission" in message
    assert missing.split("|", maxsplit=1)[0] in message


@pytest.mark.timeout(60)
def test_refused_lease_counts_no_arrival(
    make_user: Callable[[str], str], server: EmbeddedServer, client: redis.Redis, run_id: str
) -> None:
    """Without ``zadd`` (the lease), the first arrival of a round of two is refused, and
    nothing of it is counted: the next arrival does not complete the round with it."""
    url = user_url(server, make_user(acl_rule().replace(" +zadd", "")))
    with ProcSync.from_url(url, run_id, 0.02, on_late="proceed") as sync:
        with pytest.raises(redis.exceptions.ResponseError, match="zadd"):
            sync.sync("e", 2, 5)
        state = client.hgetall(f"pyprocsync:{{{run_id}:e}}")
        assert state.get(b"n", b"0") == b"0", state


@pytest.mark.timeout(60)
def test_user_lacking_the_channel_pattern_gets_a_clear_error(
    make_user: Callable[[str], str], server: EmbeddedServer, run_id: str
) -> None:
    url = user_url(server, make_user(acl_rule().replace(" &pyprocsync:*", "")))
    with (
        ProcSync.from_url(url, run_id, 0.02, on_late="proceed") as sync,
        pytest.raises(redis.exceptions.NoPermissionError) as caught,
    ):
        sync.sync("e", 1, 5)
    assert "channel" in str(caught.value).lower()


@pytest.mark.timeout(60)
def test_prefixes_keep_applications_apart(
    make_user: Callable[[str], str], server: EmbeddedServer, client: redis.Redis, run_id: str
) -> None:
    """A user whose rule covers prefix ``app-a`` works there, and is refused with the
    default prefix or another application's; keys stay under their own prefix."""
    url = user_url(server, make_user(acl_rule("app-a")))
    with ProcSync.from_url(url, run_id, 0.01, prefix="app-a", on_late="proceed") as sync:
        sync.sync("e", 1, 5)
    assert client.keys(f"app-a:*{run_id}*")
    for other in ("pyprocsync", "app-b"):
        with (
            ProcSync.from_url(url, run_id, 0.01, prefix=other, on_late="proceed") as sync,
            pytest.raises(redis.exceptions.NoPermissionError),
        ):
            sync.sync("e", 1, 5)
        assert not client.keys(f"{other}:*{run_id}*")


def test_rule_is_exported() -> None:
    assert pyprocsync.tools.acl.acl_rule is acl_rule
