"""Real Redis Sentinel set-ups for the tests, from the bundled server binary.

:func:`start_sentinel_setup` starts one master, one replica and three sentinels that
monitor them (on free ports of this machine); :meth:`SentinelSetup.failover` makes the
sentinels promote the replica. The fixtures built on these are in ``cluster_fixtures.py``.
"""

from __future__ import annotations

import itertools
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis
from cluster_support import BIND, SETTLE, slowly, start_on_free_ports, text_of
from redis.sentinel import Sentinel
from support import wait_until

from pyprocsync.tools.server import EmbeddedServer, ServerError, _parent_death_hook


class SentinelServer(EmbeddedServer):
    """The server binary in sentinel mode (``--sentinel``), on an explicit port.

    Sentinel insists on a configuration file on disk, which it rewrites as it learns
    the set-up, so this writes :meth:`EmbeddedServer._config` (with the ``sentinel ...``
    lines passed as ``args``) to a file instead of handing it in on stdin.
    """

    def start(self, timeout: float = 10.0) -> SentinelServer:
        if self.process is not None:
            raise ServerError("the sentinel is already running")
        self._dir = tempfile.mkdtemp(prefix="pyprocsync-sentinel-")
        config = Path(self._dir, "sentinel.conf")
        config.write_text(self._config())
        self.process = subprocess.Popen(
            [self.binary, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self._dir,
            preexec_fn=_parent_death_hook(),  # noqa: PLW1509  # only calls prctl
        )
        failure = self._wait_ready(self.process, timeout)
        if failure is not None:
            self.stop()
            raise ServerError(f"the sentinel did not start on {self.bind}:{self.port}: {failure}")
        return self


#: Sentinel's internal periods, shortened (``SENTINEL DEBUG``) so that a failover and
#: the reconfiguration of the old master take about a second instead of ten or more.
SENTINEL_PERIODS = {"info-period": 300, "publish-period": 300, "ping-period": 300}


def _flags(state: dict[str, Any]) -> set[str]:
    flags = state["flags"]
    return set(flags.split(",")) if isinstance(flags, str) else {text_of(f) for f in flags}


@dataclass
class SentinelSetup:
    """A master, its replica and three sentinels that monitor them under ``name``.

    Which of the two data servers is the master changes with every :meth:`failover`;
    ask :meth:`master` and :meth:`replica`.
    """

    name: str
    servers: list[EmbeddedServer]
    sentinels: list[SentinelServer] = field(default_factory=list)
    _clients: dict[int, redis.Redis] = field(default_factory=dict)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every sentinel, for :class:`redis.sentinel.Sentinel`."""
        return [(sentinel.bind, sentinel.port) for sentinel in self.sentinels]

    def admin(self, server: EmbeddedServer) -> redis.Redis:
        """A ``decode_responses`` client of ``server`` (a data server or a sentinel),
        kept until :meth:`stop`."""
        if server.port not in self._clients:
            self._clients[server.port] = redis.Redis(
                host=server.bind, port=server.port, decode_responses=True, socket_timeout=5
            )
        return self._clients[server.port]

    def client(self, **kwargs: Any) -> Sentinel:
        """A new sentinel client of this set-up; close it with :func:`close_sentinel`."""
        return Sentinel(  # type: ignore[no-untyped-call]
            self.sentinel_addresses, sentinel_kwargs={"socket_timeout": 5}, **kwargs
        )

    def reported_masters(self) -> set[tuple[str, int]]:
        """The master address each sentinel reports (one element when they agree)."""
        found = set()
        for sentinel in self.sentinels:
            reply = self.admin(sentinel).sentinel_get_master_addr_by_name(self.name)
            host, port = cast(tuple[str, int], reply)
            found.add((text_of(host), int(port)))
        return found

    def _by_port(self, port: int) -> EmbeddedServer:
        for server in self.servers:
            if server.port == port:
                return server
        raise KeyError(port)

    def master(self) -> EmbeddedServer:
        """The data server the sentinels agree is the master."""
        (address,) = self.reported_masters()
        return self._by_port(address[1])

    def replica(self) -> EmbeddedServer:
        """The data server that is not the master."""
        master = self.master()
        (replica,) = [server for server in self.servers if server is not master]
        return replica

    def settled(self) -> bool:
        """Every sentinel names the same master, which is a master; the other server
        replicates it with its link up; every sentinel sees both sentinel peers and
        that replica as healthy, and runs no failover."""
        reported = self.reported_masters()
        if len(reported) != 1:
            return False
        master = self._by_port(next(iter(reported))[1])
        (replica,) = [server for server in self.servers if server is not master]
        return self._replicating(master, replica) and all(
            self._sees(sentinel, master, replica) for sentinel in self.sentinels
        )

    def _replicating(self, master: EmbeddedServer, replica: EmbeddedServer) -> bool:
        if self.admin(master).info("replication")["role"] != "master":
            return False
        replication = self.admin(replica).info("replication")
        return (
            replication["role"] == "slave"
            and int(replication["master_port"]) == master.port
            and replication["master_link_status"] == "up"
        )

    def _sees(
        self, sentinel: SentinelServer, master: EmbeddedServer, replica: EmbeddedServer
    ) -> bool:
        client = self.admin(sentinel)
        state = cast(dict[str, Any], client.sentinel_master(self.name))
        if _flags(state) != {"master"} or int(state["num-other-sentinels"]) != 2:
            return False
        seen = [r for r in client.sentinel_slaves(self.name) if int(r["port"]) == replica.port]
        return (
            len(seen) == 1
            and _flags(seen[0]) == {"slave"}
            and seen[0]["master-link-status"] == "ok"
            and int(seen[0]["master-port"]) == master.port
        )

    def wait_settled(self, timeout: float = SETTLE) -> None:
        """Wait until :meth:`settled`; fail the test after ``timeout`` seconds."""
        wait_until(slowly(self.settled, 0.05), timeout, f"sentinel set-up {self.name} to settle")

    def failover(self, timeout: float = SETTLE) -> EmbeddedServer:
        """``SENTINEL FAILOVER``: promote the replica; return the new master once
        every sentinel reports it and the old master replicates it.

        The old master keeps running: the sentinels turn it into a replica of the new
        one (and close its clients' connections) shortly after the promotion.
        """
        old = self.master()
        asked = self.admin(self.sentinels[0])
        deadline = time.monotonic() + timeout
        while True:
            try:
                asked.sentinel_failover(self.name)
                break
            except redis.exceptions.ResponseError as exc:
                # NOGOODSLAVE: the sentinel has not yet judged the replica fit.
                if "NOGOODSLAVE" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        wait_until(
            slowly(lambda: self.reported_masters() not in ({(old.bind, old.port)}, set()), 0.05),
            max(1.0, deadline - time.monotonic()),
            f"the sentinels of {self.name} to report a new master",
        )
        self.wait_settled(max(1.0, deadline - time.monotonic()))
        return self.master()

    def stop(self) -> None:
        """Stop every sentinel and data server and remove their directories."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for server in [*self.sentinels, *self.servers]:
            server.stop()


def _start_data_server(port: int, _unused: int) -> EmbeddedServer:
    # A replica that (re)connects is served at once, not after the default 5 s that
    # wait for more replicas to share one transfer.
    return EmbeddedServer(port=port, bind=BIND, args=["--repl-diskless-sync-delay", "0"])


def start_sentinel_setup(
    name: str = "pyprocsync-main", *, down_after_ms: int = 1000, failover_timeout_ms: int = 5000
) -> SentinelSetup:
    """Start a master, a replica of it and three sentinels (quorum 2); wait until settled."""
    setup = SentinelSetup(name, [])
    try:
        master = start_on_free_ports(_start_data_server)
        setup.servers.append(master)
        replica = start_on_free_ports(_start_data_server)
        setup.servers.append(replica)
        setup.admin(replica).replicaof(master.bind, master.port)
        # The sentinels find the replica in the master's INFO: let it connect first.
        wait_until(
            slowly(lambda: setup.admin(replica).info("replication")["master_link_status"] == "up"),
            SETTLE,
            "the replica to sync",
        )

        def make_sentinel(port: int, _unused: int) -> EmbeddedServer:
            return SentinelServer(
                port=port,
                bind=BIND,
                args=[
                    *("--sentinel", "monitor", name, master.bind, str(master.port), "2"),
                    *("--sentinel", "down-after-milliseconds", name, str(down_after_ms)),
                    *("--sentinel", "failover-timeout", name, str(failover_timeout_ms)),
                ],
            )

        for _ in range(3):
            sentinel = start_on_free_ports(make_sentinel)
            assert isinstance(sentinel, SentinelServer)
            setup.sentinels.append(sentinel)
            periods = itertools.chain.from_iterable(SENTINEL_PERIODS.items())
            setup.admin(sentinel).execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "DEBUG", *periods
            )
        setup.wait_settled()
        return setup
    except BaseException:
        setup.stop()
        raise


def close_sentinel(client: Sentinel) -> None:
    """Close the connections of a :class:`redis.sentinel.Sentinel` to its sentinels."""
    for sentinel in client.sentinels:
        sentinel.close()
