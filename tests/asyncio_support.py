"""Helpers of the ``pyprocsync.asyncio`` tests (``from asyncio_support import ...``).

Closing instances, holding the release waits of the tasks (:func:`release_waits`), and
the check of one released round.
"""

from __future__ import annotations

from typing import Any

from support import (
    cancel_spawned,
)

from pyprocsync import (
    SyncResult,
)


def check_round(results: list[SyncResult], nodes: int, generation: int) -> None:
    """One round's results: same generation and instant; indices 0..nodes-1."""
    assert len(results) == nodes
    assert {r.generation for r in results} == {generation}
    assert len({r.release_at for r in results}) == 1
    assert sorted(r.index for r in results) == list(range(nodes))


async def _equals(awaitable: Any, expected: object) -> bool:
    """Whether ``awaitable`` gives ``expected`` (for :func:`support.await_until`)."""
    return await awaitable == expected


async def closing(*instances: Any) -> None:
    """Cancel the spawned tasks still running, then close ``instances``."""
    await cancel_spawned()
    for instance in instances:
        await instance.aclose()
