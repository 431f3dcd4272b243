"""Real Redis Cluster set-ups for the tests, from the bundled server binary.

Everything here runs the binary of :func:`pyprocsync.tools.server.find_server_binary` (valkey 8
from the ``test`` extra) on free ports of this machine, keeps nothing on disk but what
the servers need in temporary directories, and removes it all at teardown.

* :func:`start_cluster` starts a cluster of three masters (no replicas) with the 16384
  slots split evenly; :class:`Cluster` reads its slot map, :func:`migrate_slot` moves
  one slot with its keys to another master (as ``valkey-cli --cluster reshard`` does),
  :func:`slot_of` and :func:`names_on_shards` choose names that land on given nodes.

The fixtures built on these are in ``cluster_fixtures.py``; :func:`async_cluster_client`
makes a ``redis.asyncio`` cluster client for :func:`support.arun`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.crc import key_slot
from support import wait_until

import pyprocsync
from pyprocsync.tools.server import EmbeddedServer, ServerError, _free_port

__all__ = [
    "BIND",
    "SETTLE",
    "SLOTS",
    "Cluster",
    "ClusterNode",
    "Migration",
    "assert_one_round",
    "async_cluster_client",
    "migrate_slot",
    "names_on_shards",
    "slot_of",
    "slowly",
    "start_cluster",
    "start_migration",
    "start_on_free_ports",
    "text_of",
]

#: The address every server of these set-ups listens on.
BIND = "127.0.0.1"
#: Hash slots of a Redis Cluster.
SLOTS = 16384
#: How long a set-up may take to come up or to settle after a change, seconds.
SETTLE = 30.0

T = TypeVar("T")


def slowly(predicate: Callable[[], bool], pause: float = 0.02) -> Callable[[], bool]:
    """``predicate`` preceded by a short pause: a poll that asks servers many questions
    per round should leave the two CPUs of a small machine to those servers."""

    def check() -> bool:
        time.sleep(pause)
        return predicate()

    return check


def text_of(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _info_fields(text: object) -> dict[str, str]:
    """``name:value`` lines (``CLUSTER INFO``) as a dict."""
    fields = {}
    for line in text_of(text).splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields


def start_on_free_ports(make: Callable[[int, int], EmbeddedServer]) -> EmbeddedServer:
    """Start ``make(port, second_port)`` on two distinct free ports.

    A port found free may be taken before the server binds it; then it tries again.
    """
    attempts = 4
    for attempt in range(attempts):
        port = _free_port(BIND)
        second = _free_port(BIND)
        if second == port:
            continue
        try:
            return make(port, second).start()
        except ServerError:
            if attempt == attempts - 1:
                raise
    raise ServerError("found no two distinct free ports")


# -- cluster ----------------------------------------------------------------------------


@dataclass
class ClusterNode:
    """One master of a :class:`Cluster` and a plain client of it (not cluster-aware)."""

    server: EmbeddedServer
    node_id: str
    bus_port: int
    redis: redis.Redis

    @property
    def host(self) -> str:
        return self.server.bind

    @property
    def port(self) -> int:
        return self.server.port

    def command(self, *args: Any) -> Any:
        """Send one command to this node only (no redirection is followed)."""
        return self.redis.execute_command(*args)  # type: ignore[no-untyped-call]

    def shard_subscribers(self, channel: str) -> int:
        """``PUBSUB SHARDNUMSUB``: clients of this node subscribed to shard ``channel``."""
        reply = self.command("PUBSUB", "SHARDNUMSUB", channel)
        return int(reply[1])

    def subscribers(self, channel: str) -> int:
        """``PUBSUB NUMSUB``: clients of this node subscribed to classic ``channel``."""
        reply = self.command("PUBSUB", "NUMSUB", channel)
        return int(reply[1])

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored on this node (it must belong to one of its slots)."""
        return bool(self.command("EXISTS", key))

    def stop(self) -> None:
        self.redis.close()
        self.server.stop()

    def __repr__(self) -> str:
        return f"ClusterNode({self.host}:{self.port}, {self.node_id[:8]})"


@dataclass
class Cluster:
    """A running cluster of masters; :meth:`stop` ends every process and removes its files."""

    nodes: list[ClusterNode]

    @property
    def url(self) -> str:
        """``redis://`` URL of the first node, a seed for cluster clients."""
        return f"redis://{self.nodes[0].host}:{self.nodes[0].port}"

    def client(self, **kwargs: Any) -> RedisCluster:
        """A new cluster client seeded with the first node; the caller closes it."""
        return RedisCluster(host=self.nodes[0].host, port=self.nodes[0].port, **kwargs)

    def node(self, port: int) -> ClusterNode:
        """The node listening on ``port``."""
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    def slot_ranges(self, asked: ClusterNode | None = None) -> list[tuple[int, int, ClusterNode]]:
        """``(first, last, owner)`` for every range of slots, as ``asked`` (default: the
        first node) sees them (``CLUSTER SLOTS``)."""
        reply = (asked or self.nodes[0]).command("CLUSTER", "SLOTS")
        ranges = [(int(entry[0]), int(entry[1]), self.node(int(entry[2][1]))) for entry in reply]
        return sorted(ranges, key=lambda entry: entry[0])

    def owner(self, slot: int, asked: ClusterNode | None = None) -> ClusterNode:
        """The node that serves ``slot``, as ``asked`` (default: the first node) sees it."""
        return _owner_in(self.slot_ranges(asked), slot)

    def owner_of(self, key: str) -> ClusterNode:
        """The node that serves ``key`` (and a channel of that name, for sharded pub/sub)."""
        return self.owner(slot_of(key))

    def others(self, node: ClusterNode) -> list[ClusterNode]:
        """Every node but ``node``."""
        return [other for other in self.nodes if other is not node]

    def healthy(self) -> bool:
        """Every node reports ``cluster_state:ok``, knows all nodes as connected masters
        without failure flags, and serves the same complete slot map."""
        maps = []
        for node in self.nodes:
            info = _info_fields(node.command("CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
            if info.get("cluster_known_nodes") != str(len(self.nodes)):
                return False
            for line in text_of(node.command("CLUSTER", "NODES")).splitlines():
                fields = line.split()
                flags = set(fields[2].split(","))
                if "master" not in flags or flags & {"fail", "fail?", "handshake", "noaddr"}:
                    return False
                if fields[7] != "connected":
                    return False
            maps.append(
                [(first, last, owner.port) for first, last, owner in self.slot_ranges(node)]
            )
        covered = sum(last - first + 1 for first, last, _ in maps[0])
        return covered == SLOTS and all(other == maps[0] for other in maps[1:])

    def wait_healthy(self, timeout: float = SETTLE) -> None:
        """Wait until :meth:`healthy`; fail the test after ``timeout`` seconds."""
        wait_until(slowly(self.healthy), timeout, "the cluster to be healthy")

    def stop(self) -> None:
        """Stop every node and remove its directory (stopping twice is harmless)."""
        for node in self.nodes:
            node.stop()


def _owner_in(ranges: Sequence[tuple[int, int, ClusterNode]], slot: int) -> ClusterNode:
    for first, last, owner in ranges:
        if first <= slot <= last:
            return owner
    raise LookupError(f"slot {slot} is not served by any node")


def _start_cluster_node(port: int, bus_port: int) -> EmbeddedServer:
    return EmbeddedServer(
        port=port,
        bind=BIND,
        args=[
            "--cluster-enabled",
            "yes",
            # Relative to the server's temporary directory.
            "--cluster-config-file",
            "nodes.conf",
            # The bus port would be port + 10000, which may lie beyond 65535.
            "--cluster-port",
            str(bus_port),
            "--cluster-node-timeout",
            "5000",
        ],
    )


def start_cluster(masters: int = 3, timeout: float = SETTLE) -> Cluster:
    """Start a cluster of ``masters`` nodes that share the slots evenly; wait until it is ok.

    Each node gets its own config epoch (as ``valkey-cli --cluster create`` does), its
    range of slots (``CLUSTER ADDSLOTSRANGE``), and meets the first node.
    """
    nodes: list[ClusterNode] = []
    try:
        for _ in range(masters):
            server = start_on_free_ports(_start_cluster_node)
            client = redis.Redis(host=server.bind, port=server.port, decode_responses=True)
            node_id = text_of(client.execute_command("CLUSTER", "MYID"))  # type: ignore[no-untyped-call]
            bus_port = int(server.args[server.args.index("--cluster-port") + 1])
            nodes.append(ClusterNode(server, node_id, bus_port, client))
        for number, node in enumerate(nodes):
            node.command("CLUSTER", "SET-CONFIG-EPOCH", number + 1)
            first, end = number * SLOTS // masters, (number + 1) * SLOTS // masters
            node.command("CLUSTER", "ADDSLOTSRANGE", first, end - 1)
        for node in nodes[1:]:
            nodes[0].command("CLUSTER", "MEET", node.host, node.port, node.bus_port)
        cluster = Cluster(nodes)
        cluster.wait_healthy(timeout)
        return cluster
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def slot_of(key: str | bytes) -> int:
    """The hash slot of ``key`` (its hash tag, if any, decides), computed locally."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


@dataclass
class Migration:
    """One slot on its way from ``source`` to ``target`` (see :func:`migrate_slot`)."""

    cluster: Cluster
    slot: int
    source: ClusterNode
    target: ClusterNode

    def move_keys(self, batch: int = 100) -> int:
        """Move every key of the slot to the target (``MIGRATE ... KEYS``); return how many.

        Until :meth:`finish`, the source answers commands on keys it no longer holds
        with ``-ASK`` redirections to the target.
        """
        moved = 0
        while keys := self.source.command("CLUSTER", "GETKEYSINSLOT", self.slot, batch):
            target = self.target
            self.source.command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        return moved

    def finish(self) -> None:
        """Give the slot to the target on every master (target first, then the source),
        and wait until the cluster agrees."""
        others = [node for node in self.cluster.others(self.source) if node is not self.target]
        for node in [self.target, self.source, *others]:
            node.command("CLUSTER", "SETSLOT", self.slot, "NODE", self.target.node_id)
        self.cluster.wait_healthy()


def start_migration(cluster: Cluster, slot: int, target: ClusterNode) -> Migration:
    """Mark ``slot`` IMPORTING on ``target`` and MIGRATING on its owner; move no key yet."""
    source = cluster.owner(slot)
    if source is target:
        raise ValueError(f"slot {slot} is already served by {target}")
    target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    return Migration(cluster, slot, source, target)


def migrate_slot(cluster: Cluster, slot: int, target: ClusterNode) -> ClusterNode:
    """Move ``slot`` with its keys from its owner to ``target``; return the former owner.

    The steps of a live resharding: ``CLUSTER SETSLOT IMPORTING`` / ``MIGRATING``,
    ``MIGRATE ... KEYS`` until the slot is empty on the source, ``CLUSTER SETSLOT NODE``
    on all masters. Sharded pub/sub subscribers of the slot's channels on the source are
    unsubscribed by the server when it loses the slot.
    """
    migration = start_migration(cluster, slot, target)
    migration.move_keys()
    migration.finish()
    return migration.source


def names_on_shards(cluster: Cluster, key_of: Callable[[str], str], stem: str = "ev") -> list[str]:
    """Names ``<stem>-<n>``, one per node in the order of ``cluster.nodes``, such that
    ``key_of(name)`` is served by that node (e.g. ``lambda n: event_keys(run, n).state``)."""
    ranges = cluster.slot_ranges()
    found: dict[str, str] = {}
    for number in range(100 * SLOTS):
        name = f"{stem}-{number}"
        found.setdefault(_owner_in(ranges, slot_of(key_of(name))).node_id, name)
        if len(found) == len(cluster.nodes):
            return [found[node.node_id] for node in cluster.nodes]
    raise LookupError(f"no name {stem}-<n> lands on some node (does each serve slots?)")


def assert_one_round(results: Sequence[pyprocsync.SyncResult], count: int) -> None:
    """``results`` are the ``count`` participants of one released round: one generation,
    one release instant, the arrival indices ``0 .. count-1``."""
    assert len(results) == count, results
    assert len({r.release_at for r in results}) == 1, results
    assert len({r.generation for r in results}) == 1, results
    assert sorted(r.index for r in results) == list(range(count)), results


def async_cluster_client(cluster: Cluster) -> AsyncRedisCluster:
    """A ``redis.asyncio`` cluster client of ``cluster`` (for :func:`support.arun`)."""
    seed = cluster.nodes[0]
    return AsyncRedisCluster(host=seed.host, port=seed.port)
