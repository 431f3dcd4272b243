"""No warning of pyprocsync's reaches its users (issue 21): the public API of both
shells, against a plain server, a TLS one and a cluster, emits none, whatever redis-py
of the range ``setup.cfg`` admits is installed (``.ci/run`` runs the suite with the
oldest and the newest)."""

from __future__ import annotations

import pytest
from cluster_support import Cluster
from tour_support import assert_tour_is_silent

from pyprocsync.tools.server import EmbeddedServer

pytest_plugins = ("cluster_fixtures",)

pytestmark = pytest.mark.timeout(120)


def test_plain_server(server: EmbeddedServer, run_id: str) -> None:
    assert_tour_is_silent(server.url, run_id)


def test_cluster(cluster: Cluster, run_id: str) -> None:
    assert_tour_is_silent(cluster.url, run_id, cluster=True)
