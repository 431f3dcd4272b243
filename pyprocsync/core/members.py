"""Membership of a run: who is expected to take part (``member=True``), free of I/O.

A member keeps a registration in the run's member set (:func:`~pyprocsync.core.keys.members_key`)
alive while its ProcSync is open: the shells renew it every ``liveness / 5`` seconds,
like a waiting participant's lease, and remove it on close. A member whose registration
lapses (process killed, host or network gone) is *lapsed*: the members waiting in any
round of the run break it with ``BrokenBarrierError(reason="lost")`` naming it, unless
it is waiting in that round too. A lapsed registration is reported until it registers
again or ``retention`` seconds pass.
"""

from __future__ import annotations

from typing import Any

from pyprocsync.core.keys import members_key
from pyprocsync.core.ops import Flow, call, text
from pyprocsync.core.params import Settings
from pyprocsync.core.scripts import Script

__all__ = ["READ_ONLY", "decode_lapsed", "leave_flow", "member_call", "renew_flow"]

#: The lease of a MEMBER call that only reads the lapsed members.
READ_ONLY = -1
_LEAVE = 0


def member_call(
    settings: Settings, member_id: str, lease_ms: int
) -> tuple[tuple[str], tuple[str | int, ...]]:
    """The keys and arguments of the MEMBER script for ``member_id`` and ``lease_ms``."""
    keys = (members_key(settings.prefix, settings.run_id),)
    return keys, (member_id, lease_ms, settings.retention_ms)


def decode_lapsed(reply: object) -> tuple[str, ...]:
    """The node ids in a MEMBER reply."""
    return tuple(text(node) for node in (reply if isinstance(reply, list) else [reply]))


def _member(settings: Settings, member_id: str, lease_ms: int) -> Flow[tuple[str, ...]]:
    where: dict[str, Any] = {"event": None, "run_id": settings.run_id, "generation": None}
    keys, args = member_call(settings, member_id, lease_ms)
    return decode_lapsed((yield from call(Script.MEMBER, keys, args, where)))


def renew_flow(settings: Settings, member_id: str) -> Flow[tuple[str, ...]]:
    """Register (or renew) ``member_id`` for ``liveness``; return the lapsed members."""
    return _member(settings, member_id, settings.liveness_ms)


def leave_flow(settings: Settings, member_id: str) -> Flow[tuple[str, ...]]:
    """Remove ``member_id``'s registration; return the lapsed members."""
    return _member(settings, member_id, _LEAVE)
