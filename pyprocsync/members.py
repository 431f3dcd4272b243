"""Membership of a run: who is expected to take part (``member=True``), free of I/O.

A member keeps a registration in the run's member set (:func:`~pyprocsync.keys.members_key`)
alive while its ProcSync is open: the shells renew it every ``liveness / 5`` seconds,
like a waiting participant's lease, and remove it on close. A member whose registration
lapses (process killed, host or network gone) is *lapsed*: the members waiting in any
round of the run break it with ``BrokenBarrierError(reason="lost")`` naming it, unless
it is waiting in that round too. A lapsed registration is reported until it registers
again or ``retention`` seconds pass.
"""

from __future__ import annotations

from typing import Any

from .keys import members_key
from .params import Settings
from .protocol import Flow, call, text
from .scripts import Script

__all__ = ["lapsed_flow", "leave_flow", "renew_flow"]

_READ_ONLY, _LEAVE = -1, 0


def _member(settings: Settings, member_id: str, lease_ms: int) -> Flow[tuple[str, ...]]:
    where: dict[str, Any] = {"event": None, "run_id": settings.run_id, "generation": None}
    reply = yield from call(
        Script.MEMBER,
        (members_key(settings.prefix, settings.run_id),),
        (member_id, lease_ms, settings.retention_ms),
        where,
    )
    if not isinstance(reply, list):
        reply = [reply]
    return tuple(text(node) for node in reply)


def renew_flow(settings: Settings, member_id: str) -> Flow[tuple[str, ...]]:
    """Register (or renew) ``member_id`` for ``liveness``; return the lapsed members."""
    return _member(settings, member_id, settings.liveness_ms)


def leave_flow(settings: Settings, member_id: str) -> Flow[tuple[str, ...]]:
    """Remove ``member_id``'s registration; return the lapsed members."""
    return _member(settings, member_id, _LEAVE)


def lapsed_flow(settings: Settings) -> Flow[tuple[str, ...]]:
    """Return the run's lapsed members, changing nothing."""
    return _member(settings, "", _READ_ONLY)
