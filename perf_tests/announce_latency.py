"""Announcement latency over TLS beside plain TCP: one server, one run, same rounds.

Debian's ``redis-server`` (built with TLS) is started with a plain port and a TLS port
that requires client certificates, made with the ``openssl`` tool by the tests' own
helper (``tests/tls_support.py``). Every figure is measured on both ports, the two
transports taking turns round by round so that both see the same load:

* **PUBLISH -> mailbox**: a client PUBLISHes to a channel that the blocking shared
  listener (``pyprocsync.shells.listener_thread``) serves; µs from just before the PUBLISH
  until the listener put the message in a waiter's mailbox.
* **set() -> wait() returns**: an ``Event`` (``delay=0``) is set while a thread of the
  same process waits in ``wait()``; µs from just before ``set()`` until the line after
  ``wait()`` in the waiting thread. Both objects are warm (connections open, scripts
  loaded); the flag is cleared between rounds.
* **first set: clock -> mailbox**: a *new* ``Event`` (its own client: no connection
  open yet) sets the flag; µs from the clock reading that the set announces (its
  instant minus its lead time) until the announcement is in a waiting mailbox. This is
  the part of a lead time the news uses up, where issue 16 lost a TLS handshake.

Each figure: p50 / p90 / p99 / max (nearest rank), µs. Targets: TLS p50 within 2x of
plain TCP, TLS p99 <= 2 ms (loopback).

Usage::

    python perf_tests/announce_latency.py [--rounds 500] [--first-sets 30]
        [--binary /usr/bin/redis-server]
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common
import redis

import pyprocsync
from pyprocsync import Event
from pyprocsync.core.flags import parse_set
from pyprocsync.core.keys import FlagKeys
from pyprocsync.shells import listener_thread
from pyprocsync.tools.server import EmbeddedServer
from pyprocsync.tools.stats import summary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import tls_support  # the tests' certificate helper, not a package

#: Lets the waiting thread block in wait() before the set (not measured).
_SETTLE = 0.005
#: Longest wait for one message or return, seconds.
_PATIENCE = 10.0
_PREFIX = "pyprocsync"  # Event's default key prefix
_TARGET_RATIO = 2.0
_TARGET_P99_US = 2000.0


class _Stamped(queue.SimpleQueue[tuple[int, Any]]):
    """A mailbox that notes (wall clock, ns) when the listener put each item in it."""

    def put_nowait(self, item: Any) -> None:  # type: ignore[override]
        super().put_nowait((time.time_ns(), item))


@dataclass
class _Transport:
    """What one transport (plain or TLS) measures with."""

    name: str
    url: str
    run: str = field(default_factory=lambda: uuid.uuid4().hex)
    opened: list[Any] = field(default_factory=list)

    def open(self, make: Callable[[], Any]) -> Any:
        made = make()
        self.opened.append(made)
        return made

    def close(self) -> None:
        for item in reversed(self.opened):
            with contextlib.suppress(Exception):
                item.close()


class _Listening:
    """A stamped mailbox registered with ``client``'s shared listener for ``channel``."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.mailbox = _Stamped()
        self.listener = listener_thread.acquire(client)
        if self.listener.listen(channel, self.mailbox, renew=False):
            self.next()  # the subscription's confirmation

    def next(self) -> tuple[int, dict[str, Any]]:
        try:
            return self.mailbox.get(timeout=_PATIENCE)
        except queue.Empty:
            raise _common.Failure(f"nothing arrived on {self.channel} in {_PATIENCE} s") from None

    def close(self) -> None:
        self.listener.leave(self.channel, self.mailbox)
        listener_thread.release(self.client)


def publish_rounds(transport: _Transport) -> Generator[float, None, None]:
    """µs from PUBLISH to mailbox, one per ``next()``."""
    client = transport.open(lambda: redis.Redis.from_url(transport.url))
    publisher = transport.open(lambda: redis.Redis.from_url(transport.url))
    channel = f"announce:{transport.run}"
    listening = transport.open(lambda: _Listening(client, channel))
    publisher.ping()
    while True:
        before = time.time_ns()
        publisher.publish(channel, b"x")
        stamp, _message = listening.next()
        yield (stamp - before) / 1e3


def set_wait_rounds(transport: _Transport) -> Generator[float, None, None]:
    """µs from set() to the line after wait() in the waiting thread, one per ``next()``."""
    waiter = transport.open(lambda: Event.from_url(transport.url, "flag", run_id=transport.run))
    setter = transport.open(lambda: Event.from_url(transport.url, "flag", run_id=transport.run))
    go: queue.SimpleQueue[bool] = queue.SimpleQueue()
    returned: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()

    def wait_loop() -> None:
        while go.get():
            try:
                woken = waiter.wait(_PATIENCE)
                returned.put(time.time_ns() if woken else TimeoutError("wait() timed out"))
            except BaseException as exc:  # handed to the measuring thread
                returned.put(exc)

    thread = threading.Thread(target=wait_loop, daemon=True)
    thread.start()
    try:
        setter.clear()
        while True:
            go.put(True)
            time.sleep(_SETTLE)
            before = time.time_ns()
            setter.set()
            outcome = returned.get(timeout=_PATIENCE * 2)
            if isinstance(outcome, BaseException):
                raise _common.Failure(f"{transport.name}: the waiter failed: {outcome!r}")
            setter.clear()
            yield (outcome - before) / 1e3
    finally:
        go.put(False)
        thread.join(_PATIENCE)


def first_set_rounds(transport: _Transport) -> Generator[float, None, None]:
    """µs from a new Event's announced clock reading to mailbox, one per ``next()``."""
    client = transport.open(lambda: redis.Redis.from_url(transport.url))
    keys = FlagKeys.of(_PREFIX, transport.run, "first")
    listening = transport.open(lambda: _Listening(client, keys.channel))
    while True:
        with Event.from_url(transport.url, "first", run_id=transport.run) as setter:
            setter.set()
            stamp, message = listening.next()
            setter.clear()
        announced = parse_set(message["data"].decode())  # a flag's channel carries sets only
        yield stamp / 1e3 - (announced.at_us - announced.lead_us)


FIGURES: dict[str, Callable[[_Transport], Generator[float, None, None]]] = {
    "PUBLISH -> mailbox": publish_rounds,
    "set() -> wait() returns": set_wait_rounds,
    "first set: clock -> mailbox": first_set_rounds,
}


def measure(
    figure: Callable[[_Transport], Generator[float, None, None]], urls: dict[str, str], rounds: int
) -> dict[str, dict[str, float]]:
    """``rounds`` values of ``figure`` per transport, taking turns; a summary of each."""
    transports = [_Transport(name, url) for name, url in urls.items()]
    try:
        series = {t.name: figure(t) for t in transports}
        values: dict[str, list[float]] = {name: [] for name in series}
        for _ in range(rounds):
            for name, rounds_of in series.items():
                values[name].append(next(rounds_of))
        for rounds_of in series.values():
            rounds_of.close()
        return {name: summary(found) for name, found in values.items()}
    finally:
        for transport in transports:
            transport.close()


def _row(label: str, transport: str, cells: dict[str, float]) -> str:
    figures = "".join(f"{cells[p]:>9.0f}" for p in _common.PERCENTILES)
    return f"{label:<30}{transport:<7}{figures}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=500, help="rounds per figure (500)")
    parser.add_argument(
        "--first-sets", type=int, default=30, help="new Events for the first-set figure (30)"
    )
    parser.add_argument(
        "--binary", default=tls_support.DEBIAN_SERVER, help="a server built with TLS"
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.first_sets < 1:
        raise _common.Failure("--rounds and --first-sets must be >= 1", 2)
    reason = tls_support.tls_unsupported_reason(args.binary)
    if reason is not None:
        raise _common.Failure(f"{args.binary} cannot serve TLS: {reason}", 2)
    with tempfile.TemporaryDirectory(prefix="pyprocsync-tls-bench-") as workdir:
        certs = tls_support.make_certificates(Path(workdir))
        tls_port = tls_support.free_port()
        server_args = tls_support.tls_args(certs, tls_port)
        with EmbeddedServer(binary=args.binary, args=server_args) as server:
            urls = {"tcp": server.url, "tls": tls_support.tls_url(tls_port, certs)}
            version = server.client().info("server")["redis_version"]
            print(f"announce_latency: pyprocsync {pyprocsync.__version__}, redis-py "
                  f"{redis.__version__}, {args.binary} {version}, loopback")  # fmt: skip
            print(_common.machine_line(_common.machine()))
            results = {
                label: measure(
                    figure, urls, args.first_sets if figure is first_set_rounds else args.rounds
                )
                for label, figure in FIGURES.items()
            }
    print(f"\n{'figure (us)':<30}{'link':<7}" + "".join(f"{p:>9}" for p in _common.PERCENTILES))
    for label, by_transport in results.items():
        for transport, cells in by_transport.items():
            print(_row(label, transport, cells))
    print()
    for label, by_transport in results.items():
        tcp, tls = by_transport["tcp"], by_transport["tls"]
        ratio = tls["p50"] / tcp["p50"]
        verdict = "met" if ratio <= _TARGET_RATIO and tls["p99"] <= _TARGET_P99_US else "NOT met"
        print(f"{label}: TLS p50 {ratio:.2f}x TCP, TLS p99 {tls['p99']:.0f} us -> {verdict}")
    return 0


if __name__ == "__main__":
    _common.run("announce_latency", main)
