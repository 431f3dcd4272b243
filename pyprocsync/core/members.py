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
from pyprocsync.core.wire import LEAVE, Member

__all__ = ["decode_lapsed", "leave_flow", "member_request", "renew_flow"]


def member_request(settings: Settings, member_id: str, lease_ms: int) -> Member:
    """The MEMBER call for ``member_id`` and ``lease_ms`` in ``settings``' run."""
    return Member(
        members_key(settings.prefix, settings.run_id), member_id, lease_ms, settings.retention_ms
    )


def decode_lapsed(reply: object) -> tuple[str, ...]:
    """The node ids in a MEMBER reply."""
    return tuple(text(node) for node in (reply if isinstance(reply, list) else [reply]))


def _member(settings: Settings, member_id: str, lease_ms: int) -> Flow[tuple[str, ...]]:
    where: dict[str, Any] = {"event": None, "run_id": settings.run_id, "generation": None}
    return decode_lapsed((yield from call(member_request(settings, member_id, lease_ms), where)))


def renew_flow(settings: Settings, member_id: str) -> Flow[tuple[str, ...]]:
    """Register (or renew) ``member_id`` for ``liveness``; return the lapsed members."""
    return _member(settings, member_id, settings.liveness_ms)


def leave_flow(settings: Settings, member_id: str) -> Flow[tuple[str, ...]]:
    """Remove ``member_id``'s registration; return the lapsed members."""
    return _member(settings, member_id, LEAVE)
