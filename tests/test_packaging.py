"""Packaging facts users and the other tests rely on (defect 14 of PRIOR_ART.md)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

import pyprocsync


def test_depends_on_any_modern_redis_py() -> None:
    """Defect 14: 0.1.0 pinned redis-py 3.5. The requirement is redis >= 8.0 (the first
    release whose asyncio client subscribes to sharded channels and whose connections
    read a reply within a timeout; see HISTORY.rst), with no upper pin, and the
    installed redis-py satisfies it. ``.ci/run`` runs the suite with 8.0.0 too."""
    requirements = [
        Requirement(r)
        for r in importlib.metadata.requires("pyprocsync") or []
        if "extra ==" not in r
    ]
    (redis_requirement,) = [r for r in requirements if r.name == "redis"]
    assert redis_requirement.specifier.contains("8.0.0")
    assert redis_requirement.specifier.contains("99.0")
    assert not redis_requirement.specifier.contains("7.4.1")
    assert redis_requirement.specifier.contains(importlib.metadata.version("redis"))


def test_ships_type_information() -> None:
    """``py.typed`` is part of the package, so type checkers use the annotations."""
    assert (Path(pyprocsync.__file__).parent / "py.typed").is_file()


def test_version_is_pep440() -> None:
    assert Version(pyprocsync.__version__) >= Version("1.0.0.dev0")
    assert importlib.metadata.version("pyprocsync") == pyprocsync.__version__
