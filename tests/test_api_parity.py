"""The blocking and the asyncio classes offer the same API, and the packages export
exactly their public names.

Documented differences (``pyprocsync.asyncio`` module docstring): the asyncio classes
also have ``aclose``; ``Barrier.n_waiting`` and ``Barrier.broken`` are properties of the
blocking class and coroutine methods of the asyncio one; every other public method of
an asyncio class (``from_url`` and properties aside) is a coroutine function.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

import pyprocsync
import pyprocsync.asyncio as aio

PAIRS = [
    (pyprocsync.ProcSync, aio.ProcSync),
    (pyprocsync.Event, aio.Event),
    (pyprocsync.Barrier, aio.Barrier),
]
IDS = [blocking.__name__ for blocking, _ in PAIRS]

#: Properties of a blocking class that are coroutine methods of its asyncio twin.
AWAITED_PROPERTIES = {pyprocsync.Barrier: {"n_waiting", "broken"}}
#: Public names only the asyncio classes have.
ASYNC_ONLY = {"aclose"}


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def shape(function: Any) -> list[tuple[str, Any, Any]]:
    """Names, kinds and defaults of the parameters (annotations aside)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def is_property(cls: type, name: str) -> bool:
    return isinstance(inspect.getattr_static(cls, name), property)


def is_classmethod(cls: type, name: str) -> bool:
    return isinstance(inspect.getattr_static(cls, name), classmethod)


@pytest.mark.parametrize(("blocking", "asynchronous"), PAIRS, ids=IDS)
def test_same_public_names(blocking: type, asynchronous: type) -> None:
    """The asyncio class has every public name of the blocking one, plus ``aclose``."""
    assert public(asynchronous) == public(blocking) | ASYNC_ONLY


@pytest.mark.parametrize(("blocking", "asynchronous"), PAIRS, ids=IDS)
def test_same_signatures(blocking: type, asynchronous: type) -> None:
    """Constructors and every method of a pair take the same parameters: names, kinds
    and defaults."""
    assert shape(blocking.__init__) == shape(asynchronous.__init__)
    awaited = AWAITED_PROPERTIES.get(blocking, set())
    for name in sorted(public(blocking)):
        if is_property(blocking, name):
            if name in awaited:
                assert shape(getattr(asynchronous, name)) == [
                    ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty)
                ], name
            else:
                assert is_property(asynchronous, name), name
            continue
        assert not is_property(asynchronous, name), name
        assert is_classmethod(blocking, name) == is_classmethod(asynchronous, name), name
        assert shape(getattr(blocking, name)) == shape(getattr(asynchronous, name)), name


@pytest.mark.parametrize(("blocking", "asynchronous"), PAIRS, ids=IDS)
def test_asyncio_methods_are_coroutines(blocking: type, asynchronous: type) -> None:
    """Every public method of an asyncio class, ``from_url`` and properties aside, is a
    coroutine function (``close`` and ``aclose`` included, the documented properties
    turned methods too); none of the blocking class is, and ``from_url`` is a plain
    classmethod in both."""
    for name in sorted(public(asynchronous)):
        if is_property(asynchronous, name):
            continue
        member = getattr(asynchronous, name)
        if name == "from_url":
            assert is_classmethod(asynchronous, name)
            assert not inspect.iscoroutinefunction(member)
        else:
            assert inspect.iscoroutinefunction(member), name
    for name in sorted(public(blocking)):
        if not is_property(blocking, name):
            assert not inspect.iscoroutinefunction(getattr(blocking, name)), name


@pytest.mark.parametrize(("blocking", "asynchronous"), PAIRS, ids=IDS)
def test_context_managers(blocking: type, asynchronous: type) -> None:
    """Blocking classes are context managers, asyncio classes async context managers."""
    for method in ("__enter__", "__exit__"):
        assert callable(getattr(blocking, method))
    for method in ("__aenter__", "__aexit__"):
        assert inspect.iscoroutinefunction(getattr(asynchronous, method))


def test_pyprocsync_all() -> None:
    """``pyprocsync.__all__`` lists exactly the public names, each importable."""
    assert set(pyprocsync.__all__) == {
        "ArgumentTypeError",
        "Barrier",
        "BrokenBarrierError",
        "BrokenByTimeoutError",
        "ClockUncertaintyError",
        "ConnectionLostError",
        "Event",
        "InvalidArgumentError",
        "Outcome",
        "ParameterMismatchError",
        "PermissionRefusedError",
        "ProcSync",
        "ProcSyncError",
        "ProtocolError",
        "ServerRefusedError",
        "SyncResult",
        "TimeOutError",
        "TooLateError",
        "__version__",
    }
    assert len(pyprocsync.__all__) == len(set(pyprocsync.__all__))
    namespace: dict[str, Any] = {}
    exec("from pyprocsync import *", namespace)
    assert set(pyprocsync.__all__) - {"__version__"} <= set(namespace)


def test_pyprocsync_asyncio_all() -> None:
    """``pyprocsync.asyncio.__all__`` lists exactly the three classes the issue names
    (``ProcSync``, ``Event``, ``Barrier``), each importable; they are not the blocking
    classes."""
    assert sorted(aio.__all__) == ["Barrier", "Event", "ProcSync"]
    module = importlib.import_module("pyprocsync.asyncio")
    for name in aio.__all__:
        assert getattr(module, name) is not getattr(pyprocsync, name)
    namespace: dict[str, Any] = {}
    exec("from pyprocsync.asyncio import *", namespace)
    assert set(aio.__all__) <= set(namespace)
