"""``pyprocsync lab``: a cell of simulated hosts on this machine, measured on its own clock.

On a real cell the spread of a release comes from what one machine never shows: each
host reaches the server through a link of its own (one-way delays that differ up and
down, jitter, loss, a connection that drops) and reads a clock of its own (offset,
drift, steps by its time daemon). The lab puts that back, in user space (no ``netem``,
no root):

* each simulated host is a process of its own whose :mod:`pyprocsync.clock` (every
  clock reading of the library goes through it) reads a wall clock and a monotonic
  clock with the host's offset, drift and steps (:class:`HostClock`), and whose
  :func:`~pyprocsync.clock.kernel_clock` says what the host's time daemon would: the
  clock synchronised within a bound, or not;
* each host reaches the server through a link emulator of its own (:class:`Link`), a
  process that delays every chunk of data by a one-way delay plus uniform jitter, per
  direction and in order, delivers a lost chunk (and what follows it) after a
  retransmission timeout, and can reset every connection at a moment.

**The truth** is this machine's own wall clock, which every simulated host shares
underneath its simulated one. Each host calls ``sync`` on a new name per point (as
scripts do), idles 2-5 ms after each release, and reads ``time.time_ns()`` on the line
after ``sync`` returns: per round, the *true spread* is the latest minus the earliest
of those readings.

**The bound.** Every release says how far it may be from the agreed instant:
``SyncResult.late_by`` (how late this host's clock read the instant when the library
returned) and ``clock_uncertainty`` (how far this host's reading of the instant may be
from the reference clock: the server's in server-clock mode, true time in system-clock
mode). The lab notes the real time of the library's last clock reading, the one
``late_by`` comes from; the bound *covers* a release when that moment lay within
``clock_uncertainty`` of ``late_by`` after the agreed instant in real time.

:data:`SCENARIOS` holds the cells the documentation's table is made of; ``pyprocsync lab
--json FILE`` writes every figure.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing
import queue
import random
import select
import signal
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from pyprocsync import clock
from pyprocsync.exceptions import ProcSyncError, TooLateError
from pyprocsync.results import SyncResult
from pyprocsync.shells.base import seam
from pyprocsync.shells.blocking import ProcSync
from pyprocsync.tools.bench import die_with_parent, stop_workers
from pyprocsync.tools.stats import machine, summary

__all__ = [
    "LOSS_RECOVERY_S",
    "MODES",
    "SCENARIOS",
    "Delay",
    "Host",
    "HostClock",
    "LabError",
    "LabRun",
    "Link",
    "LinkEmulator",
    "Scenario",
    "SimulatedClocks",
    "figures",
    "format_table",
    "run_block",
    "run_lab",
]

#: How late a lost chunk (and whatever follows it in that direction) is delivered,
#: seconds: Linux's minimum retransmission timeout.
LOSS_RECOVERY_S = 0.2

#: How a block agrees its instants: the clock mode, and a fixed lead or ``"auto"``.
Mode = Literal["system", "server", "server-auto"]
MODES: tuple[Mode, ...] = ("system", "server", "server-auto")

#: How long the lab waits for a host's results after the block should have ended, s.
_RESULT_GRACE_S = 60.0


class LabError(Exception):
    """A simulated host or link could not run; the message says which and why."""


@dataclass(frozen=True)
class Delay:
    """One direction of a link: each chunk takes ``latency_us`` plus a uniform jitter
    in ``[-jitter_us, +jitter_us]`` microseconds (never less than 0)."""

    latency_us: float = 0.0
    jitter_us: float = 0.0

    def draw(self, rng: random.Random) -> float:
        """One chunk's delay, seconds."""
        jitter = rng.uniform(-self.jitter_us, self.jitter_us) if self.jitter_us else 0.0
        return max(0.0, self.latency_us + jitter) / 1e6

    def __str__(self) -> str:
        return f"{self.latency_us:g}" + (f"±{self.jitter_us:g}" if self.jitter_us else "")


@dataclass(frozen=True)
class Link:
    """A host's link to the server: ``up`` (host to server) and ``down``, chunks lost
    with probability ``loss`` (each delivered :data:`LOSS_RECOVERY_S` late), and every
    connection reset ``drop_at`` seconds after the block starts (``None``: never)."""

    up: Delay = Delay()
    down: Delay = Delay()
    loss: float = 0.0
    drop_at: float | None = None

    def __str__(self) -> str:
        text = f"{self.up}/{self.down} µs"
        if self.loss:
            text += f", loss {self.loss:.1%}"
        if self.drop_at is not None:
            text += f", dropped at {self.drop_at:g} s"
        return text


@dataclass(frozen=True)
class HostClock:
    """A host's clocks against this machine's: its wall clock reads ``offset_s`` ahead
    and both its clocks run ``drift_ppm`` fast (negative: slow); at ``step_at_s``
    seconds into the block its wall clock is stepped by ``step_s``. ``synchronized``
    and ``max_error_us`` are what its kernel says (a time daemon's claim)."""

    offset_s: float = 0.0
    drift_ppm: float = 0.0
    step_at_s: float | None = None
    step_s: float = 0.0
    synchronized: bool = True
    max_error_us: float = 100.0

    def __str__(self) -> str:
        parts = []
        if self.offset_s:
            parts.append(f"{self.offset_s * 1e3:+g} ms")
        if self.drift_ppm:
            parts.append(f"{self.drift_ppm:+g} ppm")
        if self.step_at_s is not None:
            parts.append(f"step {self.step_s * 1e3:+g} ms at {self.step_at_s:g} s")
        parts.append(f"synced ±{self.max_error_us:g} µs" if self.synchronized else "unsynchronised")
        return ", ".join(parts)


@dataclass(frozen=True)
class Host:
    """One simulated host: its name (the participants' ``node_id``), link and clock."""

    name: str
    link: Link = Link()
    clock: HostClock = HostClock()


@dataclass(frozen=True)
class Scenario:
    """A cell: its hosts, the modes it is measured in, and what it shows."""

    name: str
    description: str
    hosts: tuple[Host, ...]
    modes: tuple[Mode, ...] = ("system", "server")


_LAN = Link(Delay(100, 20), Delay(100, 20))
_WIFI = Link(Delay(1500, 1000), Delay(1500, 1000))
_UNSYNCED: dict[str, Any] = {"synchronized": False, "max_error_us": 16e6}

#: The cells of the documentation's table (``pyprocsync lab`` runs them all by default).
SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "lan-synced",
            "LAN, clocks equal and synchronised (the reference)",
            (Host("a", _LAN), Host("b", _LAN)),
        ),
        Scenario(
            "lan",
            "LAN, clocks 0.3 s apart and drifting ±30 ppm (no time daemon)",
            (
                Host("a", _LAN, HostClock(drift_ppm=-30, **_UNSYNCED)),
                Host("b", _LAN, HostClock(offset_s=0.3, drift_ppm=30, **_UNSYNCED)),
            ),
        ),
        Scenario(
            "asymmetric",
            "LAN, 50/150 and 150/50 µs links, clocks 0.3 s apart, +30 ppm",
            (
                Host("a", Link(Delay(50, 20), Delay(150, 20)), HostClock(**_UNSYNCED)),
                Host(
                    "b",
                    Link(Delay(150, 20), Delay(50, 20)),
                    HostClock(offset_s=0.3, drift_ppm=30, **_UNSYNCED),
                ),
            ),
        ),
        Scenario(
            "wifi",
            "Wi-Fi-like links, 1.5 ± 1 ms each way, clocks -0.2 s and -40 ppm apart",
            (
                Host("a", _WIFI, HostClock(**_UNSYNCED)),
                Host("b", _WIFI, HostClock(offset_s=-0.2, drift_ppm=-40, **_UNSYNCED)),
            ),
            ("system", "server", "server-auto"),
        ),
        Scenario(
            "offset",
            "LAN, one clock 0.5 ms off, its daemon claiming ±1 ms",
            (Host("a", _LAN), Host("b", _LAN, HostClock(offset_s=0.0005, max_error_us=1000))),
        ),
        Scenario(
            "step",
            "LAN; one clock starts 20 ms behind and is stepped into line 4 s into the run",
            (
                Host("a", _LAN),
                Host(
                    "b",
                    _LAN,
                    HostClock(offset_s=-0.02, step_at_s=4.0, step_s=0.02, **_UNSYNCED),
                ),
            ),
        ),
    )
}


# -- the simulated host's clocks ------------------------------------------------------


class SimulatedClocks:
    """The clocks of one simulated host, installed into :mod:`pyprocsync.clock`.

    Both clocks run ``1 + drift`` times as fast as this machine's monotonic clock from
    the moment of installation; the wall clock starts ``offset`` ahead of this
    machine's and is stepped once, ``step_at`` seconds after installation. Every
    reading derives from one reading of this machine's monotonic clock, and notes the
    real time it stands for (this machine's wall clock, which keeps pace with its
    monotonic clock in a lab run) in :attr:`last_real_ns`.
    """

    def __init__(self, model: HostClock) -> None:
        self.model = model
        self._rate = 1.0 + model.drift_ppm / 1e6
        self._mono0 = time.monotonic_ns()
        self._real0 = time.time_ns()
        self._offset_ns = round(model.offset_s * 1e9)
        self._step_after = None if model.step_at_s is None else round(model.step_at_s * 1e9)
        self._step_ns = round(model.step_s * 1e9)
        #: This machine's wall clock at the latest reading of either clock, ns.
        self.last_real_ns = 0

    def _elapsed(self) -> tuple[int, int]:
        """Real ns since installation, and the host's ns since then."""
        real = time.monotonic_ns() - self._mono0
        self.last_real_ns = self._real0 + real
        return real, round(real * self._rate)

    def monotonic_ns(self) -> int:
        return self._mono0 + self._elapsed()[1]

    def monotonic(self) -> float:
        return self.monotonic_ns() / 1e9

    def time_ns(self) -> int:
        real, host = self._elapsed()
        stepped = self._step_after is not None and real >= self._step_after
        return self._real0 + self._offset_ns + host + (self._step_ns if stepped else 0)

    def kernel_clock(self) -> clock.KernelClock:
        model = self.model
        error = round(model.max_error_us * 1000)
        return clock.KernelClock(model.synchronized, error, error)

    def install(self) -> None:
        """Make :mod:`pyprocsync.clock` read these clocks (in this process)."""
        clock.time_ns = self.time_ns
        clock.monotonic_ns = self.monotonic_ns
        clock.monotonic = self.monotonic
        clock.kernel_clock = self.kernel_clock


# -- the link emulator ----------------------------------------------------------------


def _fine_timer_slack() -> None:
    """Let this thread's sleeps end within a nanosecond of their time (Linux), not the
    default 50 µs of timer slack."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(29, 1)  # PR_SET_TIMERSLACK


#: How long before a chunk is due the emulator stops sleeping and busy-waits, s: a
#: sleep wakes up tens of µs late on a busy machine, which would add jitter of its own.
_DELIVERY_SPIN_S = 0.0001


@dataclass(eq=False)
class _Direction:
    """One direction of one proxied connection: what it reads from, writes to, and the
    chunks on their way (due time, data), in order."""

    source: socket.socket
    sink: socket.socket
    delay: Delay
    chunks: deque[tuple[float, bytes]] = field(default_factory=deque)
    last_due: float = 0.0


class LinkEmulator:
    """A TCP proxy from ``127.0.0.1:<port>`` to the server, shaping traffic as ``link``
    says (see :class:`Link`).

    One thread does everything, so no hand-over between threads adds to a delay: it
    waits in ``select`` for data and for the next chunk's due time, reads each chunk as
    it comes and stamps it with its due time (never before the chunk ahead of it in
    that direction: TCP keeps the order), and sends it when due, busy-waiting the last
    :data:`_DELIVERY_SPIN_S` (its sleeps have a timer slack of 1 ns, but a wake-up can
    still be tens of µs late).
    """

    def __init__(self, target: tuple[str, int], link: Link, seed: int) -> None:
        self.target = target
        self.link = link
        self._rng = random.Random(seed)  # noqa: S311  # simulated jitter, not a secret
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._directions: dict[socket.socket, _Direction] = {}
        self._drop_requested = threading.Event()

    def serve(self) -> None:
        """Proxy until the process ends; reset every connection at ``drop_at``."""
        _fine_timer_slack()
        drop_at = None if self.link.drop_at is None else time.monotonic() + self.link.drop_at
        while True:
            now = time.monotonic()
            if self._drop_requested.is_set() or (drop_at is not None and now >= drop_at):
                self._drop_requested.clear()
                drop_at = None
                self._reset_all()
            due = min((d.chunks[0][0] for d in self._directions.values() if d.chunks), default=None)
            timeout = 0.05 if due is None else max(0.0, due - now - _DELIVERY_SPIN_S)
            if drop_at is not None:
                timeout = min(timeout, max(0.0, drop_at - now))
            readable, _, _ = select.select([self._listener, *self._directions], [], [], timeout)
            for sock in readable:
                if sock is self._listener:
                    self._accept()
                else:
                    self._read(sock)
            self._deliver()

    def drop(self) -> None:
        """Reset every open connection at the serving thread's next turn, as a failed
        link does."""
        self._drop_requested.set()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        try:
            server = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._directions[client] = _Direction(client, server, self.link.up)
        self._directions[server] = _Direction(server, client, self.link.down)

    def _read(self, sock: socket.socket) -> None:
        direction = self._directions[sock]
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._close(direction)
            return
        delay = direction.delay.draw(self._rng)
        if self.link.loss and self._rng.random() < self.link.loss:
            delay += LOSS_RECOVERY_S
        direction.last_due = max(direction.last_due, time.monotonic() + delay)
        direction.chunks.append((direction.last_due, data))

    def _deliver(self) -> None:
        """Send every chunk due within the spin, each at its time."""
        while True:
            pending = [d for d in self._directions.values() if d.chunks]
            if not pending:
                return
            direction = min(pending, key=lambda d: d.chunks[0][0])
            due, data = direction.chunks[0]
            if due - time.monotonic() > _DELIVERY_SPIN_S:
                return
            while time.monotonic() < due:
                pass
            direction.chunks.popleft()
            try:
                direction.sink.sendall(data)
            except OSError:
                self._close(direction)

    def _close(self, direction: _Direction) -> None:
        """Close both ends of ``direction``'s connection (its peer direction too)."""
        for sock in (direction.source, direction.sink):
            self._directions.pop(sock, None)
            with contextlib.suppress(OSError):
                sock.close()

    def _reset_all(self) -> None:
        for sock in list(self._directions):
            self._directions.pop(sock, None)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()


def _link_process(target: tuple[str, int], link: Link, seed: int, ports: Any) -> None:
    """Body of a link emulator's process: report the port, then serve."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    emulator = LinkEmulator(target, link, seed)
    ports.put(emulator.port)
    emulator.serve()


# -- a simulated host -----------------------------------------------------------------


@dataclass(frozen=True)
class BlockConfig:
    """What every host of one block does."""

    url_of: dict[str, str]  # host name -> URL of its link emulator
    run_id: str
    mode: Mode
    rounds: int
    delay: float
    hosts: tuple[Host, ...]
    think: tuple[float, float] = (0.002, 0.005)
    timeout: float = 60.0


def _host_process(config: BlockConfig, rank: int, out: Any) -> None:
    """Body of one simulated host: install its clocks, sync ``rounds`` times on a new
    name per point, and report every round."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    host = config.hosts[rank]
    clocks = SimulatedClocks(host.clock)
    clocks.install()
    nodes = len(config.hosts)
    rng = random.Random(rank)  # noqa: S311  # simulated think times
    delay: float | Literal["auto"] = "auto" if config.mode == "server-auto" else config.delay
    records: list[dict[str, Any]] = []
    client = redis.Redis.from_url(config.url_of[host.name])
    try:
        with ProcSync(
            client,
            config.run_id,
            delay,
            clock="system" if config.mode == "system" else "server",
            node_id=host.name,
            liveness=30.0,
            on_late="raise",
        ) as node:
            _start_together(node, nodes, config.timeout)
            sampled, started = seam(node).clocks.round_trips, time.monotonic()
            for number in range(config.rounds):
                records.append(_round(node, f"p{number}", nodes, config.timeout, clocks))
                time.sleep(rng.uniform(*config.think))
            rate = (seam(node).clocks.round_trips - sampled) / (time.monotonic() - started)
        records[-1]["time_commands_per_s"] = rate
        out.put(("done", rank, records, None))
    except Exception as exc:  # noqa: BLE001  # reported to the lab, which fails the block
        out.put(("done", rank, records, f"{type(exc).__name__}: {exc}"))
    finally:
        client.close()


def _start_together(node: ProcSync, nodes: int, timeout: float) -> None:
    """A first round that starts every host together (and warms them up)."""
    with contextlib.suppress(TooLateError):
        node.sync("start", nodes, timeout)


def _round(
    node: ProcSync, name: str, nodes: int, timeout: float, clocks: SimulatedClocks
) -> dict[str, Any]:
    """One participation: the caller's reading on the next line, and what it reported."""
    try:
        result = node.sync(name, nodes, timeout)
        truth_ns = time.time_ns()  # the caller's next line, on this machine's clock
    except TooLateError as exc:
        return {"outcome": "too late", "truth_ns": time.time_ns(), "late_by": exc.late_by}
    except ProcSyncError as exc:
        return {"outcome": type(exc).__name__, "truth_ns": time.time_ns()}
    record = _result_fields(result)
    record.update(outcome="released", truth_ns=truth_ns, reading_real_ns=clocks.last_real_ns)
    return record


def _result_fields(result: SyncResult) -> dict[str, Any]:
    return {
        name: getattr(result, name)
        for name in ("release_at", "late_by", "delay", "clock_offset", "clock_uncertainty")
    } | {
        name: getattr(result, name)
        for name in ("clock_synchronized", "clock_step")
        if hasattr(result, name)
    }


# -- a block: one scenario in one mode ------------------------------------------------


@contextlib.contextmanager
def _links(server: tuple[str, int], hosts: Sequence[Host]) -> Iterator[dict[str, str]]:
    """A link emulator process per host; yields each host's URL."""
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    processes = []
    try:
        urls = {}
        for seed, host in enumerate(hosts):
            process = context.Process(
                target=_link_process, args=(server, host.link, seed, ports), daemon=True
            )
            process.start()
            processes.append(process)
            try:
                urls[host.name] = f"redis://127.0.0.1:{ports.get(timeout=30)}/0"
            except queue.Empty:
                raise LabError(f"the link emulator of host {host.name} did not start") from None
        yield urls
    finally:
        stop_workers(processes)


def run_block(
    server: tuple[str, int], scenario: Scenario, mode: Mode, rounds: int, delay: float
) -> dict[str, Any]:
    """Run ``scenario`` in ``mode`` for ``rounds`` rounds against the server at
    ``server`` (host, port); return its figures (see :func:`figures`) and, as
    ``run_id``, the run the hosts used (its record is on the server).

    :raises LabError: a host failed or stopped answering.
    """
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    with _links(server, scenario.hosts) as urls:
        config = BlockConfig(
            urls, f"lab-{uuid.uuid4().hex[:8]}", mode, rounds, delay, scenario.hosts
        )
        hosts = []
        try:
            for rank in range(len(scenario.hosts)):
                process = context.Process(
                    target=_host_process, args=(config, rank, out), daemon=True
                )
                process.start()
                hosts.append(process)
            reports = _collect(out, hosts, rounds * (delay + 0.1) + _RESULT_GRACE_S)
        finally:
            stop_workers(hosts)
    failed = [f"host {scenario.hosts[r].name}: {e}" for r, _, e in reports if e]
    if failed:
        raise LabError("; ".join(failed))
    block = figures([records for _, records, _ in sorted(reports)], mode)
    block["run_id"] = config.run_id
    return block


def _collect(out: Any, hosts: list[Any], within: float) -> list[tuple[int, Any, str | None]]:
    """Every host's report; :class:`LabError` if one ends without it or time runs out."""
    reports: list[tuple[int, Any, str | None]] = []
    deadline = time.monotonic() + within
    while len(reports) < len(hosts):
        try:
            _, rank, records, error = out.get(timeout=1.0)
            reports.append((rank, records, error))
        except queue.Empty:
            ended = [p for p in hosts if p.exitcode not in (None, 0)]
            if ended:
                raise LabError(f"a host ended with exit code {ended[0].exitcode}") from None
            if time.monotonic() > deadline:
                raise LabError("the hosts did not finish in time") from None
    return reports


def _agreed_real_ns(record: dict[str, Any], mode: Mode) -> float:
    """The agreed instant in real time: on the server's clock (this machine's) in
    server-clock mode; in system-clock mode a moment of true time, which this machine's
    clock stands for."""
    if mode == "system":
        return float(record["release_at"]) * 1e9
    return (float(record["release_at"]) + float(record["clock_offset"])) * 1e9


def figures(per_host: list[list[dict[str, Any]]], mode: Mode) -> dict[str, Any]:
    """The figures of one block, from each host's records (one per round):

    * ``spread_us``: the true spread of the rounds every host passed (summary);
    * ``too_late``: participations that raised ``TooLateError``; ``failed``: other errors;
    * ``bounds``, ``covered``: releases that stated a clock bound, and how many of those
      the bound covered; ``unbounded``: releases without one (an unsynchronised clock
      in system-clock mode); ``bound_us``: the stated bounds (summary);
    * ``error_us``: each release's true error, the real time of the library's last
      reading minus the agreed instant minus ``late_by`` (summary of its magnitude);
    * ``steps``: releases that reported a wall-clock step during their wait;
    * ``time_commands_per_s``: the ``TIME`` round trips a host made per second after the
      first round, at most over the hosts (the cost of keeping the clocks estimated).
    """
    spreads, errors, bounds = [], [], []
    counts = dict.fromkeys(("too_late", "failed", "covered", "unbounded", "steps"), 0)
    for records in zip(*per_host, strict=True):
        released = [r for r in records if r["outcome"] == "released"]
        counts["too_late"] += sum(r["outcome"] == "too late" for r in records)
        counts["failed"] += sum(r["outcome"] not in ("released", "too late") for r in records)
        if len(released) == len(records):
            truths = [r["truth_ns"] for r in records]
            spreads.append((max(truths) - min(truths)) / 1e3)
        for record in released:
            counts["steps"] += bool(record.get("clock_step"))
            bound = record["clock_uncertainty"]
            if bound is None:
                counts["unbounded"] += 1
                continue
            error = (
                record["reading_real_ns"] - _agreed_real_ns(record, mode) - record["late_by"] * 1e9
            )
            errors.append(abs(error) / 1e3)
            bounds.append(bound * 1e6)
            counts["covered"] += abs(error) <= bound * 1e9 + 1000  # the µs of TIME
    return {
        "mode": mode,
        "rounds": len(per_host[0]) if per_host else 0,
        "time_commands_per_s": max(
            (records[-1].get("time_commands_per_s", 0.0) for records in per_host if records),
            default=0.0,
        ),
        "spread_us": summary(spreads),
        "error_us": summary(errors),
        "bound_us": summary(bounds),
        "bounds": len(bounds),
        **counts,
    }


# -- the whole lab --------------------------------------------------------------------


@dataclass
class LabRun:
    """What :func:`run_lab` measured: per scenario and mode, one figures dict per
    repeat; the command that ran it and the machine it ran on."""

    rounds: int
    delay: float
    repeat: int
    results: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    command: str = "pyprocsync lab"
    info: dict[str, Any] = field(default_factory=machine)

    def as_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready data (what ``--json`` writes)."""
        info = self.info
        return dataclasses.asdict(self) | {
            "measured": info["date"][:10],
            "machine": f"{info['cores']} cores ({info['cpu']}), Python {info['python']}, "
            f"pyprocsync {info['pyprocsync']}",
            "scenarios": {
                name: {
                    "description": SCENARIOS[name].description,
                    "hosts": [
                        {"name": h.name, "link": str(h.link), "clock": str(h.clock)}
                        for h in SCENARIOS[name].hosts
                    ],
                }
                for name in self.results
            },
        }


def run_lab(
    server: tuple[str, int],
    scenarios: Sequence[str],
    *,
    rounds: int = 200,
    delay: float = 0.05,
    repeat: int = 3,
    modes: Sequence[Mode] = MODES,
    progress: Callable[[str], None] = lambda _line: None,
    command: str = "pyprocsync lab",
    after_block: Callable[[str, Mode, int, dict[str, Any]], None] = lambda *_: None,
) -> LabRun:
    """Run each scenario in each of its modes (among ``modes``) ``repeat`` times, the
    modes of one scenario one right after the other; ``progress`` gets a line per
    block, ``command`` is recorded as what ran it. ``after_block`` gets the scenario,
    mode, repeat (from 0) and figures of each block right after it, while the run's
    record is still on the server."""
    run = LabRun(rounds, delay, repeat, command=command)
    for number in range(repeat):
        for name in scenarios:
            scenario = SCENARIOS[name]
            for mode in (m for m in scenario.modes if m in modes):
                block = run_block(server, scenario, mode, rounds, delay)
                after_block(name, mode, number, block)
                run.results.setdefault(name, {}).setdefault(mode, []).append(block)
                progress(
                    f"repeat {number + 1}/{repeat} {name} {mode}: true spread p50 "
                    f"{block['spread_us']['p50']:.1f} µs, too late {block['too_late']}"
                )
    return run


def _median(values: Sequence[float]) -> float:
    return summary(values)["p50"]


def format_table(run: LabRun) -> str:
    """One row per scenario and mode: medians across the repeats of the percentiles,
    and sums of the counts."""
    rows = [
        f"{'scenario':<11} {'mode':<11} | {'true spread, µs':^31} | {'too':>4} {'fail':>4} "
        f"| {'bound covered':>13} {'bound p50':>9} {'|err| p99':>9} | {'steps':>5} {'TIME':>5}",
        f"{'':<11} {'':<11} | {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} | {'late':>4} "
        f"{'':>4} | {'':>13} {'µs':>9} {'µs':>9} | {'':>5} {'/s':>5}",
    ]
    for name, modes in run.results.items():
        for mode, blocks in modes.items():
            spread = " ".join(
                f"{_median([b['spread_us'][p] for b in blocks]):7.1f}"
                for p in ("p50", "p90", "p99", "max")
            )
            bounds = sum(b["bounds"] for b in blocks)
            covered = sum(b["covered"] for b in blocks)
            unbounded = sum(b["unbounded"] for b in blocks)
            coverage = f"{covered}/{bounds}" if bounds else f"none ({unbounded})"
            rows.append(
                f"{name:<11} {mode:<11} | {spread} | {sum(b['too_late'] for b in blocks):>4} "
                f"{sum(b['failed'] for b in blocks):>4} | {coverage:>13} "
                f"{_median([b['bound_us']['p50'] for b in blocks]):9.1f} "
                f"{_median([b['error_us']['p99'] for b in blocks]):9.1f} | "
                f"{sum(b['steps'] for b in blocks):>5} "
                f"{_median([b['time_commands_per_s'] for b in blocks]):5.2f}"
            )
    return "\n".join(rows)
