"""Argument validation (defect 8 of PRIOR_ART.md), all of it before anything touches Redis.

Every invalid argument raises :class:`~pyprocsync.InvalidArgumentError` (a ``ValueError``);
a wrong type raises :class:`~pyprocsync.ArgumentTypeError` (a ``TypeError`` and, as in
0.1.0, a ``ValueError``). The checks run against a client that records every call, so a
test fails if validation lets a single command through.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from fractions import Fraction
from typing import Any
from unittest import mock

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import make_settings

from pyprocsync import (
    ArgumentTypeError,
    InvalidArgumentError,
    ProcSync,
    ProcSyncError,
)
from pyprocsync.asyncio import ProcSync as AsyncProcSync
from pyprocsync.core import params
from pyprocsync.core.memory import EventMemory
from pyprocsync.core.ops import Prepare
from pyprocsync.core.rounds import sync_flow
from pyprocsync.core.servertime import ClockState


def quiet_clocks() -> ClockState:
    """A clock state that skips the once-per-instance system-clock check (no TIME calls)."""
    return ClockState(check_system_clock=False)


@pytest.fixture
def recording_client() -> mock.NonCallableMagicMock:
    """A stand-in for ``redis.Redis`` that records every call made on it or its products
    (its connection pool's included)."""
    client = mock.create_autospec(redis.Redis, instance=True)
    client.attach_mock(mock.create_autospec(redis.ConnectionPool, instance=True), "connection_pool")
    return client


def sent_commands(client: mock.NonCallableMagicMock) -> list[Any]:
    """Every recorded call except the (local, command-free) ``register_script``."""
    return [c for c in client.mock_calls if c[0] != "register_script"]


@pytest.fixture
def unreachable() -> redis.Redis:
    """A client of a port nobody listens on: any command would raise ConnectionError."""
    return redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


def settings(**overrides: Any) -> params.Settings:
    return make_settings(**{"delay": 0.1, **overrides})


# -- the exception classes ------------------------------------------------------------------


def test_invalid_argument_error_is_value_error() -> None:
    """InvalidArgumentError is a ValueError (0.1.0 raised ValueError) and a ProcSyncError."""
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(InvalidArgumentError, ProcSyncError)


def test_argument_type_error_is_type_error_and_value_error() -> None:
    """ArgumentTypeError is a TypeError, and also a ValueError for 0.1.0 handlers."""
    assert issubclass(ArgumentTypeError, TypeError)
    assert issubclass(ArgumentTypeError, ValueError)
    assert issubclass(ArgumentTypeError, InvalidArgumentError)


# -- nodes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [True, False, np.True_, np.bool_(False)])
def test_nodes_bool_rejected(unreachable: redis.Redis, nodes: object) -> None:
    """``nodes=True`` is not 1: bools (also numpy's) raise ArgumentTypeError."""
    with ProcSync(unreachable, "run") as sync, pytest.raises(ArgumentTypeError):
        sync.sync("event", nodes)  # type: ignore[arg-type]


@pytest.mark.parametrize("nodes", [2, np.int64(2), np.int32(2), np.uint8(2), np.intp(2)], ids=repr)
def test_nodes_index_types_accepted(nodes: object) -> None:
    """Anything ``operator.index`` accepts counts (0.1.0 rejected numpy ints, defect 8)."""
    assert params.count("nodes", nodes) == 2
    assert type(params.count("nodes", nodes)) is int


@pytest.mark.parametrize("nodes", [0, -1, -100, np.int64(0)], ids=repr)
def test_nodes_below_one_rejected(unreachable: redis.Redis, nodes: object) -> None:
    """0 or negative ``nodes`` raise InvalidArgumentError (a ValueError, not a TypeError)."""
    with ProcSync(unreachable, "run") as sync, pytest.raises(InvalidArgumentError) as info:
        sync.sync("event", nodes)  # type: ignore[arg-type]
    assert not isinstance(info.value, TypeError)


@pytest.mark.parametrize("nodes", [2.0, 1.5, np.float64(2.0), "2", None, Fraction(2)], ids=repr)
def test_nodes_non_integers_rejected(unreachable: redis.Redis, nodes: object) -> None:
    """Floats (even whole ones), strings and None are not a count of nodes."""
    with ProcSync(unreachable, "run") as sync, pytest.raises(ArgumentTypeError):
        sync.sync("event", nodes)  # type: ignore[arg-type]


# -- timeout --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, math.inf, float("inf"), np.float64(np.inf)], ids=repr)
def test_timeout_none_or_infinite_means_forever(value: object) -> None:
    """``None`` and ``inf`` both mean "no limit" (0.1.0 crashed on inf after INCR, defect 8)."""
    assert params.timeout(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1.0), (0.25, 0.25), (np.float32(0.5), 0.5), (np.int64(3), 3.0), (Fraction(1, 4), 0.25)],
    ids=repr,
)
def test_timeout_numbers_accepted(value: object, expected: float) -> None:
    """Any real number > 0 is a timeout in seconds, numpy scalars and fractions too."""
    assert params.timeout(value) == expected
    assert type(params.timeout(value)) is float


@pytest.mark.parametrize(
    "value", [0, 0.0, -1, -0.5, -math.inf, math.nan, np.float64("nan")], ids=repr
)
def test_timeout_zero_negative_nan_rejected(unreachable: redis.Redis, value: object) -> None:
    """``timeout=0`` is an error, not "forever" as in 0.1.0 (defect 8); so are < 0 and NaN."""
    with ProcSync(unreachable, "run") as sync, pytest.raises(InvalidArgumentError):
        sync.sync("event", 2, value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["1", True, b"1", [1], 1j], ids=repr)
def test_timeout_wrong_type_rejected(unreachable: redis.Redis, value: object) -> None:
    """A timeout must be a real number: strings, bools, complex numbers are refused."""
    with ProcSync(unreachable, "run") as sync, pytest.raises(ArgumentTypeError):
        sync.sync("event", 2, value)  # type: ignore[arg-type]


# -- delay and the other options --------------------------------------------------------


@pytest.mark.parametrize("delay", [math.inf, math.nan, -0.001, -1, np.float64("inf")], ids=repr)
def test_delay_infinite_nan_negative_rejected(unreachable: redis.Redis, delay: object) -> None:
    """The lead time must be finite and >= 0 (0.1.0 accepted ``delay=inf``, defect 8)."""
    with pytest.raises(InvalidArgumentError):
        ProcSync(unreachable, "run", delay)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("delay", "expected"), [(0, 0.0), (0.25, 0.25), (np.float32(0.5), 0.5), (Fraction(1, 8), 0.125)]
)
def test_delay_accepted(unreachable: redis.Redis, delay: object, expected: float) -> None:
    """``delay=0`` is valid (no common instant); numpy and Fraction values are accepted."""
    assert ProcSync(unreachable, "run", delay).delay == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("delay", ["1", True, None], ids=repr)
def test_delay_wrong_type_rejected(unreachable: redis.Redis, delay: object) -> None:
    """The lead time is a number; a string, bool or None raises ArgumentTypeError."""
    with pytest.raises(ArgumentTypeError):
        ProcSync(unreachable, "run", delay)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        {"liveness": 0},
        {"liveness": math.inf},
        {"retention": -1},
        {"liveness": 5, "retention": 9.99},
        {"late_tolerance": -0.1},
        {"late_tolerance": math.nan},
        {"spin": math.inf},
        {"on_late": "ignore"},
        {"prefix": ""},
        {"prefix": "a{b"},
        {"prefix": "a}b"},
        {"node_id": ""},
    ],
    ids=repr,
)
def test_invalid_options_rejected(unreachable: redis.Redis, options: dict[str, Any]) -> None:
    """Out-of-range keyword options raise InvalidArgumentError in the constructor."""
    with pytest.raises(InvalidArgumentError):
        ProcSync(unreachable, "run", 0.1, **options)


@pytest.mark.parametrize(
    "options",
    [
        {"clock": 5},
        {"clock": b"server"},
        {"clock": None},
        {"on_late": 1},
        {"on_late": True},
        {"member": "yes"},
        {"prefix": 7},
        {"clock_samples": 2.5},
    ],
    ids=repr,
)
def test_wrong_option_types_raise_argument_type_error(
    unreachable: redis.Redis, options: dict[str, Any]
) -> None:
    """A keyword option of the wrong type (``clock=5``, ``on_late=1``...) raises
    ArgumentTypeError, as the README says, not merely InvalidArgumentError."""
    with pytest.raises(ArgumentTypeError):
        ProcSync(unreachable, "run", 0.1, **options)


@pytest.mark.parametrize("options", [{"clock": "monotonic"}, {"on_late": "ignore"}], ids=repr)
def test_unknown_option_strings_are_invalid_not_mistyped(
    unreachable: redis.Redis, options: dict[str, Any]
) -> None:
    """A string that is none of the choices is a bad value: InvalidArgumentError naming
    the choices, and not ArgumentTypeError."""
    with pytest.raises(InvalidArgumentError, match="must be '") as caught:
        ProcSync(unreachable, "run", 0.1, **options)
    assert not isinstance(caught.value, ArgumentTypeError)


def test_option_defaults_come_from_one_definition() -> None:
    """The constructors of both ProcSync classes default each option (``run_id`` and
    ``delay`` included) to its field of ``params.DEFAULTS``, which has no other field,
    and ``Settings.create()`` without arguments builds the settings of those defaults."""
    expected = dataclasses.asdict(params.DEFAULTS)
    not_settings = ("redis_client", "on_outcome")  # the client, and a callback (default None)
    for cls in (ProcSync, AsyncProcSync):
        parameters = inspect.signature(cls).parameters
        assert parameters["on_outcome"].default is None
        assert {
            name: p.default for name, p in parameters.items() if name not in not_settings
        } == expected
    assert params.Settings.create() == params.Settings.create(**expected)


def test_settings_units() -> None:
    """Settings keep durations as integers in the protocol's units (µs, ms, ns)."""
    made = settings(delay=0.0123456, liveness=0.5, retention=2, late_tolerance=0.002, spin=0.001)
    assert made.delay_us == 12346
    assert made.liveness_ms == 500
    assert made.retention_ms == 2000
    assert made.late_tolerance_ns == 2_000_000
    assert made.spin_ns == 1_000_000
    assert made.heartbeat_s == pytest.approx(0.1)


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [None, b"event", 1, ["event"]], ids=repr)
def test_event_name_must_be_str(unreachable: redis.Redis, event: object) -> None:
    """Event names are ``str``; bytes and other types raise ArgumentTypeError."""
    with ProcSync(unreachable, "run") as sync, pytest.raises(ArgumentTypeError):
        sync.sync(event, 2)  # type: ignore[arg-type]


def test_event_name_empty_rejected(unreachable: redis.Redis) -> None:
    """An empty event name raises InvalidArgumentError."""
    with ProcSync(unreachable, "run") as sync, pytest.raises(InvalidArgumentError):
        sync.sync("", 2)


@pytest.mark.parametrize("run", [None, b"run", 7], ids=repr)
def test_run_id_must_be_str(unreachable: redis.Redis, run: object) -> None:
    """A run id is a ``str`` (the empty one is allowed); others raise ArgumentTypeError."""
    with pytest.raises(ArgumentTypeError):
        ProcSync(unreachable, run)  # type: ignore[arg-type]
    assert ProcSync(unreachable, "").run_id == ""


@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb"], ids=repr)
def test_lone_surrogates_rejected(unreachable: redis.Redis, bad: str) -> None:
    """Strings that cannot be encoded as UTF-8 (lone surrogates) are refused up front."""
    with pytest.raises(InvalidArgumentError):
        ProcSync(unreachable, bad)
    with ProcSync(unreachable, "run") as sync, pytest.raises(InvalidArgumentError):
        sync.sync(bad, 2)
    with ProcSync(unreachable, "run") as sync, pytest.raises(InvalidArgumentError):
        sync.reset(bad)
    with pytest.raises(InvalidArgumentError):
        ProcSync(unreachable, "run", node_id=bad)


# -- "before anything touches Redis" --------------------------------------------------------


INVALID_SYNC_CALLS = [
    ("event", True, None),
    ("event", 0, None),
    ("event", 2.0, None),
    ("event", 2, 0),
    ("event", 2, -1),
    ("event", 2, math.nan),
    ("event", 2, "5"),
    ("", 2, None),
    (b"event", 2, None),
    ("\ud800", 2, None),
]


@pytest.mark.parametrize(("event", "nodes", "timeout"), INVALID_SYNC_CALLS, ids=repr)
def test_invalid_sync_sends_nothing(
    recording_client: mock.NonCallableMagicMock, event: object, nodes: object, timeout: object
) -> None:
    """An invalid ``sync`` raises before a single call reaches the client (defect 8: 0.1.0
    validated ``timeout=inf`` only after its INCR and leaked a counter)."""
    sync = ProcSync(recording_client, "run", 0.1)
    with pytest.raises(InvalidArgumentError):
        sync.sync(event, nodes, timeout)  # type: ignore[arg-type]
    assert sent_commands(recording_client) == []


def test_recording_client_does_see_a_valid_sync(
    recording_client: mock.NonCallableMagicMock,
) -> None:
    """Control for the test above: a valid call does reach the client (so "nothing was
    recorded" really means nothing was sent)."""
    # The mock is no working client (no socket, no pool): the call fails somehow, after
    # reaching it. Closed at the end, so that no listener thread is left polling a mock.
    with ProcSync(recording_client, "run", 0.1) as sync, pytest.raises(Exception):  # noqa: B017
        sync.sync("event", 2, 0.05)
    assert sent_commands(recording_client) != []


def test_invalid_reset_sends_nothing(recording_client: mock.NonCallableMagicMock) -> None:
    """``reset`` validates its name before any call reaches the client."""
    sync = ProcSync(recording_client, "run", 0.1)
    for bad in ("", b"x", None, "\udc00"):
        with pytest.raises(InvalidArgumentError):
            sync.reset(bad)  # type: ignore[arg-type]
    assert sent_commands(recording_client) == []


def test_constructor_sends_nothing(recording_client: mock.NonCallableMagicMock) -> None:
    """Constructing (and closing) a ProcSync does no I/O at all."""
    ProcSync(recording_client, "run", 0.1).close()
    assert sent_commands(recording_client) == []


def test_unreachable_server_is_reached_only_by_valid_calls(unreachable: redis.Redis) -> None:
    """With a client of a dead port, invalid calls raise InvalidArgumentError (validation
    came first) while a valid call raises the client's ConnectionError."""
    with ProcSync(unreachable, "run", 0.1) as sync:
        with pytest.raises(InvalidArgumentError):
            sync.sync("event", 0)
        with pytest.raises(redis.exceptions.ConnectionError):
            sync.sync("event", 2, 1.0)


def test_sync_flow_validates_on_creation() -> None:
    """The I/O-free flow validates when it is created, before its first operation."""
    with pytest.raises(InvalidArgumentError):
        sync_flow(settings(), quiet_clocks(), "event", 0, None, memory=EventMemory())
    flow = sync_flow(
        settings(), quiet_clocks(), "event", np.int64(2), np.float64(1.0), memory=EventMemory()
    )
    assert isinstance(next(flow), Prepare)
    flow.close()


def test_client_of_the_wrong_kind_is_refused() -> None:
    """The blocking classes want a blocking client, the asyncio ones an asyncio client;
    anything else (None, the other kind) raises ArgumentTypeError naming the right one,
    before any I/O."""
    blocking, asyncio_client = redis.Redis(port=1), aioredis.Redis(port=1)
    for wrong in (None, "redis://localhost", asyncio_client):
        with pytest.raises(ArgumentTypeError, match=r"pyprocsync\.asyncio"):
            ProcSync(wrong, "run")  # type: ignore[arg-type]
    for wrong in (None, blocking):
        with pytest.raises(ArgumentTypeError, match=r"pyprocsync\.ProcSync"):
            AsyncProcSync(wrong, "run")  # type: ignore[arg-type]


@pytest.mark.parametrize("option", ["delay", "liveness", "retention", "spin", "late_tolerance"])
def test_durations_beyond_ten_years_are_refused(unreachable: redis.Redis, option: str) -> None:
    """Durations cross Redis as integer µs or ms; beyond ten years they are refused (a
    delay of 1e13 s once produced an instant Lua could not represent)."""
    with pytest.raises(InvalidArgumentError, match="ten years"):
        ProcSync(unreachable, "run", **{option: params.MAX_SECONDS * 2})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        ProcSync(unreachable, "run", **{option: 10**400})  # type: ignore[arg-type]
