"""Validation of the cross-process Barrier (constructor and ``wait``), its keys' TTLs,
``from_url`` and the context manager.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import redis
from support import (
    event_keys,
    make_client,
    wait_until,
)

from pyprocsync import (
    ArgumentTypeError,
    Barrier,
    InvalidArgumentError,
    ProcSyncError,
)
from pyprocsync.core.keys import encode
from pyprocsync.tools.server import EmbeddedServer

# -- validation ------------------------------------------------------------------------------


def unreachable_client() -> redis.Redis:
    """A client of a port nobody listens on: any I/O raises ConnectionError."""
    return redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("b", 0), {}, InvalidArgumentError),
        (("b", -1), {}, InvalidArgumentError),
        (("b", True), {}, ArgumentTypeError),
        (("b", False), {}, ArgumentTypeError),
        (("b", 1.5), {}, ArgumentTypeError),
        (("b", "2"), {}, ArgumentTypeError),
        (("", 2), {}, InvalidArgumentError),
        ((None, 2), {}, ArgumentTypeError),
        (("b", 2, "not callable"), {}, ArgumentTypeError),
        (("b", 2, 42), {}, ArgumentTypeError),
        (("b", 2), {"timeout": math.nan}, InvalidArgumentError),
        (("b", 2), {"timeout": "1"}, ArgumentTypeError),
        (("b", 2), {"delay": -0.1}, InvalidArgumentError),
        (("b", 2), {"prefix": "a{b}"}, InvalidArgumentError),
    ],
)
def test_constructor_validation(args: tuple, kwargs: dict, error: type[Exception]) -> None:
    """Invalid arguments raise before anything is sent (the client reaches no server)."""
    with pytest.raises(error):
        Barrier(unreachable_client(), *args, **kwargs)


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (math.nan, InvalidArgumentError),
        (1e12, InvalidArgumentError),
        (True, ArgumentTypeError),
        ("5", ArgumentTypeError),
    ],
)
def test_wait_timeout_validation(timeout: object, error: type[Exception]) -> None:
    """A bad ``wait(timeout)`` raises before any I/O."""
    barrier = Barrier(unreachable_client(), "b", 2)
    with pytest.raises(error):
        barrier.wait(timeout)  # type: ignore[arg-type]


def test_valid_numbers_are_accepted() -> None:
    """``parties`` accepts any integer type; the action may be any callable."""
    numpy = pytest.importorskip("numpy")
    barrier = Barrier(unreachable_client(), "b", numpy.int64(3), action=print, timeout=1)
    assert barrier.parties == 3
    assert type(barrier.parties) is int
    assert barrier.name == "b"
    assert "parties=3" in repr(barrier)


# -- keys, lifecycle -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_keys_have_ttls(
    make_barrier: Callable[..., Barrier], client: redis.Redis, run_id: str
) -> None:
    """After rounds, an abort and a reset, every key of the barrier has the retention
    lifetime (20 s here)."""
    barrier = make_barrier("ttl", 1, lambda: None, retention=20, liveness=1)

    def check() -> None:
        keys = list(client.scan_iter(match=f"pyprocsync:{{{encode(run_id)}:*", count=1000))
        assert keys
        for key in keys:
            assert 0 < client.pttl(key) <= 20_000, key

    barrier.wait(5)
    check()
    barrier.abort()
    check()
    barrier.reset()
    check()
    assert client.exists(event_keys(run_id, "ttl").state)


@pytest.mark.timeout(30)
def test_from_url_and_context_manager(server: EmbeddedServer, run_id: str) -> None:
    """``Barrier.from_url`` owns its client: inside ``with`` it works; leaving the block
    closes its connections, and later calls raise ProcSyncError."""
    admin = make_client(server)
    try:
        baseline = len(admin.client_list())
        with Barrier.from_url(server.url, "url", 1, run_id=run_id, delay=0) as barrier:
            assert barrier.parties == 1
            assert [barrier.wait(5), barrier.wait(5)] == [0, 0]
            assert barrier.n_waiting == 0
        wait_until(lambda: len(admin.client_list()) <= baseline, 5, "connections to close")
        with pytest.raises(ProcSyncError):
            barrier.wait(1)
        barrier.close()
    finally:
        admin.close()
