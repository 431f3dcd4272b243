"""Redis Cluster (issue 6): participants on cluster clients, events on every shard.

Every key and channel of one event carries the hash tag ``{<run>:<event>}``, so an event
lives in one slot; its announcements go over sharded pub/sub (``SPUBLISH`` /
``SSUBSCRIBE``), which stays on the node that owns that slot. These tests run against the
session's real three-master cluster (``cluster_support``), choose event names that land on
each master, and move slots between masters while participants use them.

The first two tests check the harness with plain redis-py; the others the library.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from cluster_support import (
    Cluster,
    ClusterNode,
    assert_one_round,
    async_cluster_client,
    migrate_slot,
    names_on_shards,
    slot_of,
)
from primitive_support import flag_keys
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from runner import Node, Participants, check_rounds
from support import (
    LONG,
    arun,
    await_until,
    event_keys,
    in_threads,
    join,
    spawn,
    start_thread,
    wait_until,
)

import pyprocsync
import pyprocsync.asyncio as aps

pytest_plugins = ("cluster_fixtures",)

#: How long participant processes of one test may take, start-up included (slow VMs).
PROCESS_DEADLINE = 60


def harness_key(run_id: str, name: str) -> str:
    return f"harness:{{{run_id}:{name}}}"


def event_on(cluster: Cluster, run_id: str, node: ClusterNode, stem: str = "ev") -> str:
    """An event name of ``run_id`` whose keys and channel the master ``node`` serves."""
    names = names_on_shards(cluster, lambda name: event_keys(run_id, name).state, stem)
    return names[cluster.nodes.index(node)]


def assert_one_slot(cluster: Cluster, node: ClusterNode, run_id: str, name: str) -> int:
    """All names of event ``name`` hash to one slot, which ``node`` serves (asked of the
    server, not only computed here); return the slot."""
    keys = event_keys(run_id, name)
    slot = int(node.command("CLUSTER", "KEYSLOT", keys.state))
    assert slot == slot_of(keys.state)
    assert {slot_of(keys.leases), slot_of(keys.channel)} == {slot}
    assert cluster.owner(slot) is node
    return slot


def waiting(client: RedisCluster, run_id: str, name: str) -> int:
    """How many participants hold a lease on event ``name`` (they wait in its round)."""
    return int(client.zcard(event_keys(run_id, name).leases))


def subscribed_waiters(
    client: RedisCluster, node: ClusterNode, run_id: str, name: str, count: int
) -> Callable[[], bool]:
    """A predicate: ``count`` participants wait on ``name`` and ``node`` counts at least
    as many shard subscribers of its channel."""
    channel = event_keys(run_id, name).channel
    return lambda: (
        waiting(client, run_id, name) == count and node.shard_subscribers(channel) >= count
    )


def assert_sharded_only(cluster: Cluster, owner: ClusterNode, channel: str, count: int) -> None:
    """``count`` clients of ``owner`` have ``SSUBSCRIBE``d ``channel``; no node has
    classic subscribers of it."""
    assert owner.shard_subscribers(channel) >= count
    assert [node.subscribers(channel) for node in cluster.nodes] == [0] * len(cluster.nodes)


def rounds_by_name(results: list[pyprocsync.SyncResult]) -> dict[str, list[pyprocsync.SyncResult]]:
    grouped: dict[str, list[pyprocsync.SyncResult]] = {}
    for result in results:
        grouped.setdefault(result.event, []).append(result)
    return grouped


# -- the harness, with plain redis-py ------------------------------------------------------


def test_harness_serves_keys_and_shard_channels_on_every_node(
    cluster: Cluster, cluster_client: RedisCluster, run_id: str
) -> None:
    names = names_on_shards(cluster, lambda name: harness_key(run_id, name))
    for node, name in zip(cluster.nodes, names, strict=True):
        key = harness_key(run_id, name)
        assert int(node.command("CLUSTER", "KEYSLOT", key)) == slot_of(key)
        assert cluster.owner_of(key) is node
        cluster_client.set(key, name, ex=60)
        assert cluster_client.get(key) == name.encode()
        assert node.exists(key)

    owner, channel = cluster.nodes[-1], harness_key(run_id, names[-1])
    pubsub = cluster_client.pubsub()  # type: ignore[no-untyped-call]
    try:
        pubsub.ssubscribe(channel)
        wait_until(lambda: owner.shard_subscribers(channel) == 1, what="the shard subscription")
        assert_sharded_only(cluster, owner, channel, 1)
        cluster_client.spublish(channel, "hello")
        messages = [pubsub.get_sharded_message(timeout=2.0) for _ in range(2)]
        assert [m and m["type"] for m in messages] == ["ssubscribe", "smessage"]
        assert messages[1] is not None
        assert messages[1]["data"] == b"hello"
    finally:
        pubsub.close()


def test_harness_migrates_a_slot_with_its_keys(
    cluster: Cluster, cluster_client: RedisCluster, run_id: str
) -> None:
    key = harness_key(run_id, "moving")
    slot = slot_of(key)
    source = cluster.owner(slot)
    target = cluster.others(source)[0]
    cluster_client.set(key, "value", ex=60)
    stale = cluster.client()
    pubsub = cluster_client.pubsub()  # type: ignore[no-untyped-call]
    try:
        assert stale.get(key) == b"value"
        pubsub.ssubscribe(key)
        wait_until(lambda: source.shard_subscribers(key) == 1, what="the shard subscription")

        assert migrate_slot(cluster, slot, target) is source

        assert cluster.owner(slot) is target
        assert all(cluster.owner(slot, asked=node) is target for node in cluster.nodes)
        assert target.exists(key)
        assert 0 < int(target.command("TTL", key)) <= 60
        # A master that gives a slot away drops the shard subscriptions of its channels.
        assert source.shard_subscribers(key) == 0
        assert target.shard_subscribers(key) == 0
        # The second client still maps the slot to the source: it follows -MOVED.
        assert stale.nodes_manager.get_node_from_slot(slot).port == source.port
        assert stale.get(key) == b"value"
        assert stale.nodes_manager.get_node_from_slot(slot).port == target.port
    finally:
        pubsub.close()
        stale.close()


# -- processes -----------------------------------------------------------------------------


@pytest.mark.slow
def test_processes_sync_on_every_shard_over_sharded_pubsub(
    cluster: Cluster, cluster_client: RedisCluster, cluster_participants: Participants, run_id: str
) -> None:
    """Three processes per event, one event on each master, two rounds each; while two
    of each wait, their subscriptions are sharded ones on the event's master."""
    names = names_on_shards(cluster, lambda name: event_keys(run_id, name).state)
    for node, name in zip(cluster.nodes, names, strict=True):
        assert_one_slot(cluster, node, run_id, name)

    started: dict[str, list[Node]] = {name: [] for name in names}
    for name in names:
        for _ in range(2):
            started[name].append(cluster_participants.start(name, 3, rounds=2, sync_timeout=LONG))
    for node, name in zip(cluster.nodes, names, strict=True):
        wait_until(
            subscribed_waiters(cluster_client, node, run_id, name, 2),
            PROCESS_DEADLINE / 2,
            f"two participants of {name} waiting on {node}",
        )
        assert_sharded_only(cluster, node, event_keys(run_id, name).channel, 2)
    for name in names:
        started[name].append(cluster_participants.start(name, 3, rounds=2, sync_timeout=LONG))
    cluster_participants.wait([n for nodes in started.values() for n in nodes], PROCESS_DEADLINE)

    for node, name in zip(cluster.nodes, names, strict=True):
        check_rounds(started[name], rounds=2, count=3)
        assert node.exists(event_keys(run_id, name).state)


@pytest.mark.slow
def test_event_set_in_one_process_wakes_waiters_in_others(
    cluster: Cluster,
    cluster_client: RedisCluster,
    cluster_participants: Participants,
    run_id: str,
) -> None:
    owner = cluster.nodes[-1]  # not the node the clients are seeded with
    name = names_on_shards(cluster, lambda n: flag_keys(run_id, n).state, "flag")[-1]
    keys = flag_keys(run_id, name)
    ready = f"ready:{{{run_id}}}"
    waiters = [
        cluster_participants.launch("event-wait", name, timeout=LONG, ready_key=ready)
        for _ in range(2)
    ]
    wait_until(
        lambda: int(cluster_client.get(ready) or 0) >= 2,
        PROCESS_DEADLINE / 2,
        "both waiters to read the flag",
    )
    wait_until(lambda: owner.shard_subscribers(keys.channel) >= 2, what="sharded subscriptions")
    assert_sharded_only(cluster, owner, keys.channel, 2)
    setter = cluster_participants.launch("event-op", name, op="set")

    records = cluster_participants.finish([*waiters, setter], PROCESS_DEADLINE)
    assert [r["ok"] for r in records] == [True, True, True], records
    assert [r["value"] for r in records[:2]] == [True, True]
    assert owner.exists(keys.state)


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["blocking", "asyncio"])
def test_barrier_across_processes(
    cluster: Cluster, cluster_participants: Participants, run_id: str, flavour: str
) -> None:
    """Three processes pass two rounds; ``asyncio`` ones use ``redis.asyncio`` cluster
    clients."""
    owner = cluster.nodes[1]
    name = event_on(cluster, run_id, owner, "barrier")
    assert_one_slot(cluster, owner, run_id, name)
    options = {"parties": 3, "rounds": 2, "timeout": LONG, "flavour": flavour}
    nodes = [cluster_participants.launch("barrier", name, **options) for _ in range(3)]
    cluster_participants.wait(nodes, PROCESS_DEADLINE)
    per_node = [node.results() for node in nodes]
    for number in range(2):
        assert sorted(records[number]["index"] for records in per_node) == [0, 1, 2]
    assert owner.exists(event_keys(run_id, name).state)


# -- asyncio -------------------------------------------------------------------------------


def test_asyncio_tasks_sync_on_every_shard(cluster: Cluster, run_id: str) -> None:
    names = names_on_shards(cluster, lambda name: event_keys(run_id, name).state)

    async def body(client: AsyncRedisCluster) -> list[pyprocsync.SyncResult]:
        async with aps.ProcSync(client, run_id, 0.05) as sync:
            calls = [sync.sync(name, 3, timeout=LONG) for name in names for _ in range(3)]
            return await asyncio.gather(*calls)

    grouped = rounds_by_name(arun(body, async_cluster_client(cluster), timeout=LONG))
    assert sorted(grouped) == sorted(names)
    for node, name in zip(cluster.nodes, names, strict=True):
        assert_one_round(grouped[name], 3)
        assert node.exists(event_keys(run_id, name).state)


def test_asyncio_event_and_barrier(cluster: Cluster, run_id: str) -> None:
    owner = cluster.nodes[-1]
    flag = names_on_shards(cluster, lambda n: flag_keys(run_id, n).state, "flag")[-1]
    barrier_name = event_on(cluster, run_id, owner, "barrier")
    channel = flag_keys(run_id, flag).channel

    async def body(client: AsyncRedisCluster) -> tuple[list[bool], list[int]]:
        async with (
            aps.Event(client, flag, run_id=run_id) as waiter,
            aps.Event(client, flag, run_id=run_id) as setter,
            aps.Barrier(client, barrier_name, 3, run_id=run_id) as barrier,
        ):
            waits = [spawn(waiter.wait(LONG)) for _ in range(2)]
            await await_until(
                lambda: owner.shard_subscribers(channel) >= 1, 10, "a sharded subscription"
            )
            await setter.set()
            woken = list(await asyncio.gather(*waits))
            indices = list(await asyncio.gather(*(barrier.wait(LONG) for _ in range(3))))
            return woken, indices

    woken, indices = arun(body, async_cluster_client(cluster), timeout=LONG)
    assert woken == [True, True]
    assert sorted(indices) == [0, 1, 2]
    assert owner.exists(flag_keys(run_id, flag).state)
    assert owner.exists(event_keys(run_id, barrier_name).state)


# -- from_url(cluster=True) -----------------------------------------------------------------


def test_from_url_with_cluster_true(cluster: Cluster, run_id: str) -> None:
    owner = cluster.nodes[-1]
    name = event_on(cluster, run_id, owner)
    flag = names_on_shards(cluster, lambda n: flag_keys(run_id, n).state, "flag")[-1]
    barrier_name = event_on(cluster, run_id, owner, "barrier")

    with pyprocsync.ProcSync.from_url(cluster.url, run_id, 0.05, cluster=True) as sync:
        outcomes = in_threads(*[lambda: sync.sync(name, 2, timeout=LONG)] * 2, timeout=LONG)
        assert_one_round([o.result() for o in outcomes], 2)
    with pyprocsync.Event.from_url(cluster.url, flag, run_id=run_id, cluster=True) as event:
        event.set()
        assert event.is_set()
        assert event.wait(LONG) is True
    with pyprocsync.Barrier.from_url(
        cluster.url, barrier_name, 2, run_id=run_id, cluster=True
    ) as barrier:
        outcomes = in_threads(*[lambda: barrier.wait(LONG)] * 2, timeout=LONG)
        assert sorted(o.result() for o in outcomes) == [0, 1]
    states = [event_keys(run_id, n).state for n in (name, barrier_name)]
    assert all(owner.exists(key) for key in [*states, flag_keys(run_id, flag).state])

    async def body() -> list[pyprocsync.SyncResult]:
        async with aps.ProcSync.from_url(cluster.url, run_id, 0.05, cluster=True) as sync:
            return await asyncio.gather(*(sync.sync(name, 2, timeout=LONG) for _ in range(2)))

    results = arun(body, timeout=LONG)
    assert_one_round(results, 2)
    assert {r.generation for r in results} == {1}


# -- slots that move -----------------------------------------------------------------------


@pytest.mark.slow
def test_slot_migration_while_participants_wait(
    cluster: Cluster, cluster_client: RedisCluster, cluster_participants: Participants, run_id: str
) -> None:
    """Two participants wait; the event's slot moves to another master (the server drops
    their shard subscriptions there); they follow it; the third arrives on the new
    master; all three leave with one release instant."""
    source = cluster.nodes[0]
    target = cluster.nodes[1]
    name = event_on(cluster, run_id, source, "moving")
    slot = assert_one_slot(cluster, source, run_id, name)
    keys = event_keys(run_id, name)
    early = [cluster_participants.start(name, 3, sync_timeout=LONG) for _ in range(2)]
    wait_until(
        subscribed_waiters(cluster_client, source, run_id, name, 2),
        PROCESS_DEADLINE / 2,
        "two participants waiting",
    )

    migrate_slot(cluster, slot, target)
    assert target.exists(keys.state)
    assert target.exists(keys.leases)
    assert source.shard_subscribers(keys.channel) == 0
    wait_until(
        lambda: target.shard_subscribers(keys.channel) >= 2,
        10,
        "the waiting participants to subscribe on the slot's new master",
    )
    assert [n.process.poll() for n in early] == [None, None]  # still waiting, none lost

    last = cluster_participants.start(name, 3, sync_timeout=LONG)
    cluster_participants.wait([*early, last], PROCESS_DEADLINE)
    check_rounds([*early, last], rounds=1, count=3)
    assert target.exists(keys.state)


@pytest.fixture
def stale_client(cluster: Cluster) -> Iterator[RedisCluster]:
    """A cluster client that has read the slot map; the test then moves slots under it."""
    client = cluster.client()
    yield client
    client.close()


def move_under(cluster: Cluster, client: RedisCluster, key: str, target: ClusterNode) -> None:
    """Migrate the slot of ``key`` to ``target`` behind ``client``'s back: its cached slot
    map still names the former owner."""
    slot = slot_of(key)
    source = migrate_slot(cluster, slot, target)
    assert client.nodes_manager.get_node_from_slot(slot).port == source.port


def test_stale_slot_map_sync_follows_moved(
    cluster: Cluster, stale_client: RedisCluster, run_id: str
) -> None:
    """A client whose slot map predates a migration still works: what its map routes to
    the former owner (a script call, a subscription) comes back with ``-MOVED``."""
    source, target = cluster.nodes[2], cluster.nodes[0]
    name = event_on(cluster, run_id, source, "stale")
    move_under(cluster, stale_client, event_keys(run_id, name).state, target)

    with pyprocsync.ProcSync(stale_client, run_id, 0.05) as sync:
        outcomes = in_threads(*[lambda: sync.sync(name, 2, timeout=LONG)] * 2, timeout=LONG)
        assert_one_round([o.result() for o in outcomes], 2)
    assert target.exists(event_keys(run_id, name).state)


def test_stale_slot_map_event_follows_moved(
    cluster: Cluster, stale_client: RedisCluster, run_id: str
) -> None:
    source, target = cluster.nodes[2], cluster.nodes[1]
    flag = names_on_shards(cluster, lambda n: flag_keys(run_id, n).state, "stale-flag")[2]
    assert cluster.owner_of(flag_keys(run_id, flag).state) is source
    move_under(cluster, stale_client, flag_keys(run_id, flag).state, target)

    channel = flag_keys(run_id, flag).channel
    with (
        pyprocsync.Event(stale_client, flag, run_id=run_id) as waiter,
        pyprocsync.Event(stale_client, flag, run_id=run_id) as setter,
    ):
        # The waiter goes first: its calls, not the setter's, meet the stale map.
        thread, outcome = start_thread(lambda: waiter.wait(LONG))
        wait_until(
            lambda: target.shard_subscribers(channel) >= 1 or outcome.finished_at is not None,
            10,
            "the waiter to subscribe on the slot's new master",
        )
        setter.set()
        join([thread], LONG)
        assert outcome.result() is True
        assert waiter.is_set()
    assert target.exists(flag_keys(run_id, flag).state)
