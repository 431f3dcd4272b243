"""Summary statistics for benchmark figures (no third-party dependency)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["percentile", "summary"]


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
