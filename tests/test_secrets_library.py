"""Passwords never show: not in exceptions, not in logs, not in the command's output.

Every password here contains ``Pa55``, and none of its pieces (``s3cret``, ``Pa55``,
...) may appear anywhere a user or a log collector could see it: an exception's
``str()``, ``repr()``, ``args``, attributes, its ``__cause__``/``__context__`` chain and
formatted traceback; every log record (root logger and ``pyprocsync`` at DEBUG, from
every thread); whatever reached the process's stdout and stderr; ``repr()`` of the
objects; and the stdout and stderr of ``pyprocsync`` commands.

The failures provoked, against real servers: a wrong password; the right one, then the
server stopped; a port nobody listens on; the server dropping every connection (and
changing its password) while a participant waits. Each for ``ProcSync.sync``,
``Event.wait`` and ``Barrier.wait``, blocking and asyncio; and a participant that
recovers from dropped connections logs no password either. The command line: every
command with a wrong password or nobody listening (``--redis`` and
``$PYPROCSYNC_REDIS_URL``), ``sync`` losing its server, ``bench`` with a password, a
password given as a query argument or with characters special in URLs; and the URL of
``pyprocsync server`` (``EmbeddedServer.url``, redacted) with such passwords. The plain
cases of ``server --password`` and of ``sync`` with an unreachable
``redis://:password@`` URL are in ``test_cli.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from secrets_support import (
    NEW_SECRET,
    assert_no_secret,
    exception_texts,
    url_of,
)
from support import LONG, arun, await_until, join, start_thread, wait_until, waiting_members
from tls_support import free_port

import pyprocsync.asyncio as aps
from pyprocsync import Barrier, ConnectionLostError, Event, ProcSync
from pyprocsync.tools.server import EmbeddedServer

#: How long a failing call may take: failures must come promptly, not at the timeout.
PROMPT = 5.0


#: The timeout of the calls that are to fail (far beyond PROMPT).
CALL_TIMEOUT = 20.0


class Observer:
    """Collects what a user could see: log records and the process's output."""

    def __init__(self, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]):
        self.caplog = caplog
        self.capfd = capfd
        caplog.set_level(logging.DEBUG)
        caplog.set_level(logging.DEBUG, logger="pyprocsync")

    def texts(self) -> dict[str, str]:
        formatter = logging.Formatter()
        texts: dict[str, str] = {"caplog": self.caplog.text}
        for number, record in enumerate(self.caplog.records):
            where = f"log {number} ({record.name})"
            texts[f"{where} message"] = record.getMessage()
            texts[f"{where} args"] = repr(record.args)
            if record.exc_info:
                texts[f"{where} exc_info"] = formatter.formatException(record.exc_info)
            texts[f"{where} stack"] = record.stack_info or ""
        out, err = self.capfd.readouterr()
        texts["stdout"], texts["stderr"] = out, err
        return texts

    def check(self, exc: BaseException | None, *shown: str) -> None:
        """Fail if the exception, the logs, the output or ``shown`` hold a password."""
        texts = self.texts()
        if exc is not None:
            texts.update(exception_texts(exc))
        texts.update({f"shown {i}": text for i, text in enumerate(shown)})
        assert_no_secret(texts)


@pytest.fixture
def observer(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Observer:
    """Logs at DEBUG and the process's output, collected for a leak check."""
    return Observer(caplog, capfd)


# -- one participant, blocking or asyncio ----------------------------------------------------

KINDS = ["sync", "event", "barrier"]


APIS = ["blocking", "asyncio"]


def make_blocking(kind: str, url: str, run_id: str) -> Any:
    """A participant of ``kind`` with its own client for ``url``, registered as a member
    (its registration is renewed, and may fail, in the background)."""
    options: dict[str, Any] = {"run_id": run_id, "liveness": 1.0, "member": True}
    if kind == "sync":
        return ProcSync.from_url(url, run_id, 0.05, liveness=1.0, member=True)
    if kind == "event":
        return Event.from_url(url, "flag", delay=0.05, **options)
    return Barrier.from_url(url, "gate", 2, **options)


def make_async(kind: str, url: str, run_id: str) -> Any:
    """:func:`make_blocking` for asyncio."""
    options: dict[str, Any] = {"run_id": run_id, "liveness": 1.0, "member": True}
    if kind == "sync":
        return aps.ProcSync.from_url(url, run_id, 0.05, liveness=1.0, member=True)
    if kind == "event":
        return aps.Event.from_url(url, "flag", delay=0.05, **options)
    return aps.Barrier.from_url(url, "gate", 2, **options)


def warm_up(kind: str, participant: Any) -> Any:
    """A call that succeeds while the server is fine (connections, scripts loaded)."""
    if kind == "sync":
        return participant.sync("warm-up", 1, LONG)
    if kind == "event":
        return participant.is_set()
    return participant.n_waiting() if callable(participant.n_waiting) else participant.n_waiting


def wait_call(kind: str, participant: Any) -> Any:
    """The call under test: wait for others (who never come) or for a set."""
    if kind == "sync":
        return participant.sync("point", 2, CALL_TIMEOUT)
    return participant.wait(CALL_TIMEOUT)


def attempt(
    api: str,
    kind: str,
    url: str,
    run_id: str,
    *,
    warm: bool = False,
    after_warm_up: Callable[[], object] | None = None,
    waiting: Callable[[], bool] | None = None,
    while_waiting: Callable[[], object] | None = None,
) -> tuple[BaseException | None, float, list[str]]:
    """Run one participant's call, disturbed as asked; return what it raised (None if it
    returned), the seconds the call took, and ``repr()`` of the participant.

    ``after_warm_up`` runs after a successful warm-up call (``warm``), before the call;
    ``while_waiting`` runs once the call waits (``waiting`` is true).
    """
    how: dict[str, Any] = {
        "url": url,
        "run_id": run_id,
        "warm": warm,
        "after_warm_up": after_warm_up,
        "waiting": waiting,
        "while_waiting": while_waiting,
    }
    if api == "blocking":
        return _attempt_blocking(kind, **how)
    return arun(lambda: _attempt_async(kind, **how), timeout=LONG)


def _attempt_blocking(
    kind: str,
    *,
    url: str,
    run_id: str,
    warm: bool,
    after_warm_up: Callable[[], object] | None,
    waiting: Callable[[], bool] | None,
    while_waiting: Callable[[], object] | None,
) -> tuple[BaseException | None, float, list[str]]:
    participant = make_blocking(kind, url, run_id)
    try:
        if warm:
            warm_up(kind, participant)
        if after_warm_up is not None:
            after_warm_up()
        started = time.monotonic()
        thread, outcome = start_thread(lambda: wait_call(kind, participant))
        if while_waiting is not None:
            wait_until(lambda: waiting is None or waiting() or not thread.is_alive(), 10, "a wait")
            while_waiting()
        join([thread], LONG)
        assert outcome.finished_at is not None
        return outcome.error, outcome.finished_at - started, [repr(participant)]
    finally:
        participant.close()


async def _attempt_async(
    kind: str,
    *,
    url: str,
    run_id: str,
    warm: bool,
    after_warm_up: Callable[[], object] | None,
    waiting: Callable[[], bool] | None,
    while_waiting: Callable[[], object] | None,
) -> tuple[BaseException | None, float, list[str]]:
    participant = make_async(kind, url, run_id)
    try:
        if warm:
            result = warm_up(kind, participant)
            if isinstance(result, Awaitable):
                await result
        if after_warm_up is not None:
            await asyncio.to_thread(after_warm_up)
        started = time.monotonic()
        call = asyncio.ensure_future(wait_call(kind, participant))
        if while_waiting is not None:
            await await_until(
                lambda: waiting is None or waiting() or call.done(), 10, "the call to wait"
            )
            await asyncio.to_thread(while_waiting)
        try:
            await call
        except Exception as exc:
            return exc, time.monotonic() - started, [repr(participant)]
        return None, time.monotonic() - started, [repr(participant)]
    finally:
        await participant.aclose()


def check_failure(
    observer: Observer, outcome: tuple[BaseException | None, float, list[str]]
) -> BaseException:
    """The call failed promptly with a connection error, and nothing shows a password."""
    error, took, shown = outcome
    assert error is not None, "the call returned instead of failing"
    observer.check(error, *shown)
    assert isinstance(error, redis.exceptions.ConnectionError), repr(error)
    assert took < PROMPT, f"took {took:.1f} s to fail"
    return error


# -- the library -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", APIS)
def test_wrong_password(
    locked_server: EmbeddedServer, run_id: str, observer: Observer, api: str, kind: str
) -> None:
    """A URL with a wrong password: ConnectionLostError caused by redis-py's
    AuthenticationError, saying the credentials were refused, neither naming a
    password, and nothing else shows one."""
    url = url_of(locked_server.port)
    error = check_failure(observer, attempt(api, kind, url, run_id))
    assert isinstance(error, ConnectionLostError), repr(error)
    assert "refused the credentials" in str(error), str(error)
    causes = []
    while error is not None:
        causes.append(error)
        error = error.__cause__
    assert any(isinstance(c, redis.exceptions.AuthenticationError) for c in causes), causes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", APIS)
def test_server_stopped(
    own_server: EmbeddedServer, run_id: str, observer: Observer, api: str, kind: str
) -> None:
    """The right password; after a successful call the server stops: the next call
    fails (the participant's membership renewals fail in the background meanwhile),
    and no message or log record names the password."""
    outcome = attempt(
        api, kind, own_server.url, run_id, warm=True, after_warm_up=lambda: stop(own_server)
    )
    assert isinstance(check_failure(observer, outcome), ConnectionLostError)


def stop(server: EmbeddedServer) -> None:
    """Stop ``server`` and give the background renewals (every 0.2 s) time to fail."""
    server.stop()
    time.sleep(0.5)  # the background renewals (every 0.2 s) fail meanwhile


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", APIS)
def test_nobody_listens(run_id: str, observer: Observer, api: str, kind: str) -> None:
    """A URL with a password to a port nobody listens on."""
    check_failure(observer, attempt(api, kind, url_of(free_port()), run_id))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", APIS)
def test_connections_dropped_while_waiting(
    own_server: EmbeddedServer, run_id: str, observer: Observer, api: str, kind: str
) -> None:
    """While the call waits, the server changes its password and drops every client
    connection (CLIENT KILL), so the participant can neither go on nor reconnect: it
    raises ConnectionLostError, and no message or log record names either password."""
    admin = own_server.client(socket_timeout=5)

    def drop_everyone() -> None:
        admin.config_set("requirepass", NEW_SECRET)
        admin.client_kill_filter(_type="normal", skipme=True)
        admin.client_kill_filter(_type="pubsub")

    try:
        outcome = attempt(
            api,
            kind,
            own_server.url,
            run_id,
            waiting=lambda: bool(admin.pubsub_channels()),
            while_waiting=drop_everyone,
        )
    finally:
        admin.close()
    assert isinstance(check_failure(observer, outcome), ConnectionLostError)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("api", APIS)
def test_connections_dropped_and_recovered(
    own_server: EmbeddedServer, run_id: str, observer: Observer, api: str
) -> None:
    """The server drops every connection of a waiting participant, which reconnects
    (same password) and is released with a later arrival: the recovery logs no
    password either."""
    admin = own_server.client(socket_timeout=5)
    other = ProcSync.from_url(own_server.url, run_id, 0.05)

    def drop_then_arrive() -> None:
        dropped = {c["id"] for c in admin.client_list(_type="pubsub")}
        admin.client_kill_filter(_type="normal", skipme=True)
        admin.client_kill_filter(_type="pubsub")
        wait_until(
            lambda: {c["id"] for c in admin.client_list(_type="pubsub")} - dropped,
            10,
            "the waiter's new subscription",
        )
        other.sync("point", 2, LONG)

    try:
        error, _took, shown = attempt(
            api,
            "sync",
            own_server.url,
            run_id,
            waiting=lambda: bool(waiting_members(admin, run_id, "point")),
            while_waiting=drop_then_arrive,
        )
    finally:
        admin.close()
        other.close()
    observer.check(error, *shown)
    assert error is None, (
        f"the {api} participant did not recover from the dropped connections: {error!r}"
    )
