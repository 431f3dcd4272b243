"""Fixtures of the Redis Cluster and Redis Sentinel tests, a plugin of their own.

Test modules name it as a plugin, ``pytest_plugins = ("cluster_fixtures",)``, and import
helpers from ``cluster_support`` and ``sentinel_support`` only, so ``conftest.py`` stays
as it is. (The fixtures cannot live in those modules themselves: a module that a test
module imports before pytest registers it as a plugin cannot have its asserts
rewritten, which pytest reports as an error.)

* ``cluster`` (session): one running three-master :class:`~cluster_support.Cluster` for
  the whole session; tests stay apart through their ``run_id``.
* ``cluster_client``: a :class:`redis.cluster.RedisCluster` of it, closed at teardown.
* ``cluster_participants``: a :class:`runner.Participants` whose participants connect
  with ``--cluster``.
* ``sentinel_setup``: a :class:`~sentinel_support.SentinelSetup` of the test's own.
* ``sentinel``: a :class:`redis.sentinel.Sentinel` client of it, closed at teardown;
  ``master_client``: a factory of ``sentinel.master_for(...)`` clients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cluster_support import Cluster, start_cluster
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel
from runner import Participants
from sentinel_support import SentinelSetup, close_sentinel, start_sentinel_setup


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """One three-master cluster for the whole session.

    Tests stay apart through their ``run_id``; a test that migrates a slot leaves the
    cluster healthy, so later tests only read the slot map anew.
    """
    instance = start_cluster()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def cluster_client(cluster: Cluster) -> Iterator[RedisCluster]:
    """A bytes :class:`~redis.cluster.RedisCluster` client of the session cluster."""
    client = cluster.client()
    yield client
    client.close()


@pytest.fixture
def cluster_participants(cluster: Cluster, run_id: str, tmp_path: Path) -> Iterator[Participants]:
    """``participant.py --cluster`` participants against the session cluster."""
    runner = Participants(cluster.url, run_id, tmp_path, cluster=True)
    yield runner
    runner.kill_all()


@pytest.fixture
def sentinel_setup() -> Iterator[SentinelSetup]:
    """A sentinel set-up of this test's own (it starts in about half a second), so a
    failover in one test leaves nothing behind for the next."""
    setup = start_sentinel_setup()
    try:
        yield setup
    finally:
        setup.stop()


@pytest.fixture
def sentinel(sentinel_setup: SentinelSetup) -> Iterator[Sentinel]:
    """A :class:`redis.sentinel.Sentinel` client of the set-up, closed at teardown."""
    client = sentinel_setup.client()
    yield client
    close_sentinel(client)


@pytest.fixture
def master_client(
    sentinel_setup: SentinelSetup, sentinel: Sentinel
) -> Iterator[Callable[..., redis.Redis]]:
    """Factory: ``master_client(**kwargs)`` is ``sentinel.master_for(<name>, **kwargs)``,
    a client that finds the current master through the sentinels; all are closed at
    teardown."""
    made: list[redis.Redis] = []

    def make(**kwargs: Any) -> redis.Redis:
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            sentinel_setup.name, **kwargs
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
