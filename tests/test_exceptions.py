"""The exception hierarchy (defect 6 of PRIOR_ART.md) and the 0.1.0 import paths."""

from __future__ import annotations

import importlib
import threading

import pytest
import redis.exceptions

import pyprocsync
from pyprocsync import exceptions
from pyprocsync.exceptions import (
    ArgumentTypeError,
    BrokenBarrierError,
    BrokenByTimeoutError,
    ConnectionLostError,
    InvalidArgumentError,
    ParameterMismatchError,
    ProcSyncError,
    ProtocolError,
    TimeOutError,
    TooLateError,
)


def test_root_is_an_exception() -> None:
    """Defect 6: 0.1.0's ProcSyncError derived from BaseException; ``except Exception``
    must catch every pyprocsync error."""
    assert issubclass(ProcSyncError, Exception)
    with pytest.raises(Exception) as info:  # the point of the test
        raise ProcSyncError("boom")
    assert isinstance(info.value, ProcSyncError)


@pytest.mark.parametrize(
    ("cls", "parents"),
    [
        (TimeOutError, (ProcSyncError, TimeoutError)),
        (TooLateError, (ProcSyncError,)),
        (BrokenBarrierError, (ProcSyncError, threading.BrokenBarrierError)),
        (BrokenByTimeoutError, (BrokenBarrierError, TimeOutError, TimeoutError)),
        (ParameterMismatchError, (ProcSyncError, ValueError)),
        (ProtocolError, (ProcSyncError,)),
        (InvalidArgumentError, (ProcSyncError, ValueError)),
        (ArgumentTypeError, (InvalidArgumentError, TypeError, ValueError)),
        (ConnectionLostError, (ProcSyncError, ConnectionError, redis.exceptions.ConnectionError)),
    ],
)
def test_hierarchy(cls: type[Exception], parents: tuple[type[BaseException], ...]) -> None:
    """Each class derives from the root and from the standard exception meaning the same."""
    for parent in parents:
        assert issubclass(cls, parent)
    assert issubclass(cls, ProcSyncError)


def test_no_unexpected_standard_parents() -> None:
    """TooLateError and ProtocolError are not ValueErrors/TimeoutErrors (handlers for those
    must not swallow them)."""
    for cls in (TooLateError, ProtocolError, BrokenBarrierError):
        assert not issubclass(cls, (ValueError, TimeoutError))


def test_common_attributes() -> None:
    """Every error carries event, run_id and generation (None when unknown)."""
    plain = ProcSyncError("x")
    assert (plain.event, plain.run_id, plain.generation) == (None, None, None)
    full = ProtocolError("x", event="e", run_id="r", generation=3)
    assert (full.event, full.run_id, full.generation) == ("e", "r", 3)
    assert str(full) == "x"


def test_broken_by_timeout_is_caught_by_both_patterns() -> None:
    """What the others of a round broken by a timeout raise: 0.1.0's ``except
    TimeOutError`` and threading's ``except BrokenBarrierError`` both catch it, and it
    carries the attributes of both (``reason`` is always ``"timeout"``)."""
    error = BrokenByTimeoutError(
        "m", missing=["n1"], arrived=1, expected=2, event="e", run_id="r", generation=4
    )
    for pattern in (TimeOutError, threading.BrokenBarrierError, BrokenBarrierError):
        with pytest.raises(pattern):
            raise error
    assert (error.reason, error.missing, error.arrived, error.expected) == (
        "timeout",
        ("n1",),
        1,
        2,
    )
    assert (error.timeout, error.event, error.run_id, error.generation) == (None, "e", "r", 4)
    assert BrokenByTimeoutError(timeout=1.5).timeout == 1.5


def test_timeout_error_attributes() -> None:
    err = TimeOutError("t", timeout=1.5, arrived=1, expected=3, event="e", generation=0)
    assert (err.timeout, err.arrived, err.expected, err.event, err.generation) == (
        1.5,
        1,
        3,
        "e",
        0,
    )
    assert TimeOutError("t", timeout=2.0).arrived is None


def test_too_late_error_attributes() -> None:
    err = TooLateError("late", late_by=0.25, release_at=1700000000.5, event="e")
    assert err.late_by == 0.25
    assert err.release_at == 1700000000.5


def test_broken_barrier_error_attributes() -> None:
    """``missing`` is always a tuple (built from any sequence), default empty."""
    err = BrokenBarrierError("b", reason="lost", missing=["n1", "n2"], arrived=2, expected=3)
    assert err.reason == "lost"
    assert err.missing == ("n1", "n2")
    assert (err.arrived, err.expected) == (2, 3)
    assert BrokenBarrierError("b", reason="timeout").missing == ()


def test_parameter_mismatch_error_attributes() -> None:
    err = ParameterMismatchError("m", expected=3, given=2, run_id="r")
    assert (err.expected, err.given, err.run_id) == (3, 2, "r")


def test_everything_is_reexported() -> None:
    """``pyprocsync`` re-exports every exception and lists it in ``__all__``."""
    for name in exceptions.__all__:
        assert getattr(pyprocsync, name) is getattr(exceptions, name)
        assert name in pyprocsync.__all__
    for name in pyprocsync.__all__:
        assert hasattr(pyprocsync, name)


def test_0_1_0_import_paths() -> None:
    """Code written for 0.1.0 imports unchanged."""
    from pyprocsync import ProcSync, TimeOutError, TooLateError  # noqa: PLC0415
    from pyprocsync.exceptions import ProcSyncError as Root  # noqa: PLC0415
    from pyprocsync.pyprocsync import ProcSync as OldPathProcSync  # noqa: PLC0415

    assert OldPathProcSync is ProcSync
    assert Root is ProcSyncError
    assert issubclass(TimeOutError, Root)
    assert issubclass(TooLateError, Root)
    module = importlib.import_module("pyprocsync.pyprocsync")
    assert module.__all__ == ["ProcSync"]


def test_sync_result_is_frozen() -> None:
    """SyncResult is a frozen record with the fields the issue names."""
    result = pyprocsync.SyncResult(
        event="e", generation=0, index=1, nodes=2, release_at=1.5, late_by=0.0, delay=0.1
    )
    with pytest.raises(AttributeError):
        result.index = 3  # type: ignore[misc]
    assert result.release_at == 1.5
