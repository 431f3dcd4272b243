"""Summary statistics for benchmark figures, and what they were measured on (no
third-party dependency)."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyprocsync

__all__ = ["machine", "nan_to_none", "percentile", "source", "summary"]


def percentile(ordered: Sequence[float], p: float) -> float:
    """Return the ``p``-th percentile (0-100) of the sorted ``ordered``, by nearest rank.

    :raises ValueError: ``ordered`` is empty.
    """
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Iterable[float]) -> dict[str, float]:
    """Return ``{"p50", "p90", "p99", "max"}`` of ``values`` (NaN for each if empty)."""
    ordered = sorted(values)
    if not ordered:
        return dict.fromkeys(("p50", "p90", "p99", "max"), math.nan)
    return {
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
    }


def nan_to_none(value: Any) -> Any:
    """``value`` with every NaN (a summary of no values) replaced by ``None``, in nested
    dicts and lists: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(item) for item in value]
    return value


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def source() -> str:
    """The pyprocsync measured: its version, and its git commit when run from a checkout.

    ``"1.0.0.dev0 (git b472452)"``, with ``+ local changes`` when the package's files
    differ from that commit.
    """
    package = Path(pyprocsync.__file__).resolve().parent
    text = pyprocsync.__version__

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=package, capture_output=True, text=True, check=True, timeout=10
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changes = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return text
    return f"{text} (git {head}{' + local changes' if changes else ''})"


def machine() -> dict[str, Any]:
    """Describe this machine: usable cores, CPU model, kernel, Python, the date (UTC), and
    the pyprocsync measured (see :func:`source`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    return {
        "cores": cores,
        "cpu": _cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pyprocsync": source(),
    }
