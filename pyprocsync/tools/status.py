"""Read-only view of the events of a run, as ``pyprocsync status`` shows them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote

import redis

from pyprocsync.core.keys import EventKeys, encode, members_key
from pyprocsync.core.wire import Broken, Released, decode_state, member_node
from pyprocsync.exceptions import ProtocolError
from pyprocsync.tools.report import Round, format_last_release

__all__ = [
    "EventStatus",
    "MemberStatus",
    "format_status",
    "missing_members",
    "read_members",
    "read_status",
]


@dataclass(frozen=True, slots=True)
class EventStatus:
    """The state of one event of a run.

    .. versionadded:: 1.0
    """

    #: The event's name.
    event: str
    #: The current round.
    generation: int
    #: ``"filling"`` (someone waits), ``"broken"`` (until reset), ``"released"`` (the
    #: last round was released and nobody waits yet), or ``"idle"``.
    state: str
    #: Participants waiting in the current round.
    arrived: int
    #: Participants the current round needs (``None`` while nobody waits).
    expected: int | None
    #: Seconds since the event last changed, if the retention is known.
    age: float | None
    #: Node ids holding a lease in the current round.
    waiting: tuple[str, ...]
    #: While ``filling``: seconds since the first arrival still counted in the current
    #: round (by the server's clock), if the state records it; else ``None``.
    waited: float | None = None


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """A registered member of a run (``member=True``).

    .. versionadded:: 1.0
    """

    #: The member's node id.
    node_id: str
    #: True while its registration is renewed; False once it lapsed (the member is
    #: reported missing to the others).
    live: bool
    #: Seconds until its registration lapses (negative: since it lapsed).
    expires_in: float


def _server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def read_members(
    client: redis.Redis, run_id: str, *, prefix: str = "pyprocsync"
) -> list[MemberStatus]:
    """Return the registered members of ``run_id``, by node id.

    :raises ProtocolError: the member set is not what pyprocsync writes.
    """
    now_ms = _server_ms(client)
    try:
        entries = cast(
            "list[tuple[bytes | str, float]]",
            client.zrange(members_key(prefix, run_id), 0, -1, withscores=True),
        )
    except redis.ResponseError as exc:
        raise ProtocolError(f"corrupt member set of run {run_id!r}: {exc}") from None
    members = [
        MemberStatus(_text(node), score > now_ms, (score - now_ms) / 1e3) for node, score in entries
    ]
    return sorted(members, key=lambda member: member.node_id)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _describe(
    event: str,
    fields: dict[str, str],
    pttl_ms: int,
    retention: float | None,
    waiting: tuple[str, ...],
    *,
    now_ms: int,
) -> EventStatus:
    stored = decode_state(fields, event)
    generation, arrived = stored.generation, stored.arrived
    current = stored.outcome(generation)
    if current is not None:
        state = "broken" if isinstance(current, Broken) else "released"
    elif arrived > 0:
        state = "filling"
    elif isinstance(stored.outcome(generation - 1), Released):
        state = "released"
    else:
        state = "idle"
    age = None if retention is None or pttl_ms < 0 else max(0.0, retention - pttl_ms / 1e3)
    waited = None
    if state == "filling" and stored.first_ms is not None:
        waited = max(0.0, (now_ms - stored.first_ms) / 1e3)
    return EventStatus(event, generation, state, arrived, stored.expected, age, waiting, waited)


def read_status(
    client: redis.Redis,
    run_id: str,
    *,
    prefix: str = "pyprocsync",
    retention: float | None = 60.0,
) -> list[EventStatus]:
    """Return the status of every event of ``run_id`` that Redis still holds, by name.

    :param retention: the retention the participants use, to compute ``age``.
    :raises ProtocolError: an event's state is not what pyprocsync writes.
    """
    now_ms = _server_ms(client)
    head = f"{prefix}:{{{encode(run_id)}:"
    statuses = []
    for raw_key in client.scan_iter(match=f"{head}*}}", count=1000):
        key = _text(raw_key)
        event = unquote(key[len(head) : -1])
        keys = EventKeys.of(prefix, run_id, event)
        if keys.state != key:
            continue  # another run whose encoded id starts like this one's
        try:
            fields = {_text(k): _text(v) for k, v in client.hgetall(key).items()}
            pttl = int(client.pttl(key))
            waiting = tuple(member_node(_text(m)) for m in client.zrange(keys.leases, 0, -1))
        except redis.ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            raise ProtocolError(f"foreign data in the keys of event {event!r}: {exc}") from None
        statuses.append(_describe(event, fields, pttl, retention, waiting, now_ms=now_ms))
    return sorted(statuses, key=lambda status: status.event)


def missing_members(
    status: EventStatus, members: Sequence[MemberStatus]
) -> tuple[MemberStatus, ...]:
    """The registered members of the run that are not waiting in ``status``'s round:
    who a ``filling`` round waits for, when the participants register (``member=True``).
    Empty for a round that is not filling."""
    if status.state != "filling":
        return ()
    waiting = set(status.waiting)
    return tuple(member for member in members if member.node_id not in waiting)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_status(
    run_id: str,
    statuses: Sequence[EventStatus],
    members: Sequence[MemberStatus],
    last_release: Round | None = None,
) -> list[str]:
    """The lines ``pyprocsync status`` prints for ``run_id``.

    A table of the events (generation, arrived/expected, state, ``age s`` since the
    last change, ``waited s`` since the first arrival of a filling round, the node ids
    waiting); under each filling round a ``missing:`` line: the registered members not
    waiting in it (lapsed ones marked), or, without registered members, how many are
    missing. Then, given ``last_release`` (see
    :func:`~pyprocsync.tools.report.read_last_release`), a line with that round and its
    cell bound. Then the registered members, live or lapsed, with the seconds left on
    their registration (negative: since it lapsed).
    """
    if not statuses:
        lines = [f"no events of run {run_id!r}"]
    else:
        lines = [
            f"{'event':<24}{'generation':>11}{'arrived':>9}  {'state':<9}{'age s':>8}"
            f"{'waited s':>10}  waiting"
        ]
    for st in statuses:
        expected = "?" if st.expected is None else str(st.expected)
        lines.append(
            f"{st.event:<24}{st.generation:>11}{f'{st.arrived}/{expected}':>9}  "
            f"{st.state:<9}{_seconds(st.age):>8}{_seconds(st.waited):>10}  "
            f"{', '.join(st.waiting)}".rstrip()
        )
        if st.state != "filling":
            continue
        absent = missing_members(st, members)
        if members:
            names = [f"{m.node_id} (lapsed)" if not m.live else m.node_id for m in absent]
            lines.append(f"  missing: {', '.join(names) or 'none of the registered members'}")
        elif st.expected is not None:
            lines.append(
                f"  missing: {st.expected - st.arrived} (not named: no member=True registrations)"
            )
    if last_release is not None:
        lines.append(format_last_release(last_release))
    if members:
        lines += ["", f"{'member':<40}{'state':<8}{'lease s':>8}"]
    for member in members:
        state = "live" if member.live else "lapsed"
        lines.append(f"{member.node_id:<40}{state:<8}{member.expires_in:>8.1f}")
    return lines
