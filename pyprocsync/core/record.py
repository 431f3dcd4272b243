"""The run's record: one entry per participant and round, what it passed or failed.

Every instance with ``record=True`` (the default) adds an entry to its run's record
stream (``<prefix>:{<run id>}:record``, see :func:`pyprocsync.core.keys.record_key`)
for each round it took part in, after the round's instant, never on the way to it.
``pyprocsync report`` reads them. An entry is a flat map of text fields
(:func:`encode`); :func:`decode` turns one back into an :class:`Outcome` and raises
:class:`~pyprocsync.ProtocolError` for anything it did not write.

Times are on the round's *reference clock*: the server's clock for rounds released in
server-clock mode (this host's wall clock plus the estimated offset), else this host's
wall clock (the protocol assumes the hosts' wall clocks agree).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pyprocsync.exceptions import (
    BrokenBarrierError,
    ConnectionLostError,
    ParameterMismatchError,
    ProcSyncError,
    ProtocolError,
    TimeOutError,
    TooLateError,
)
from pyprocsync.results import SyncResult

__all__ = ["FORMAT", "Kind", "Outcome", "decode", "encode", "failed", "released"]

#: The entry format written; :func:`decode` refuses others.
FORMAT = "1"

#: What became of a participant: released at the instant; too late for it; its own
#: timeout expired; the round broke (see :attr:`Outcome.reason`); it disagreed on
#: ``nodes``; it lost the server; any other error.
Kind = Literal["released", "too_late", "timed_out", "broken", "mismatch", "lost", "error"]

_KINDS: frozenset[str] = frozenset(get_args(Kind))

#: Longest text field accepted by :func:`decode`, characters.
_MAX_TEXT = 4096


@dataclass(frozen=True, slots=True)
class Outcome:
    """One participant's outcome of one round: what the run's record holds per entry,
    and what an ``on_outcome`` callback receives.

    .. versionadded:: 1.0
    """

    #: The run.
    run_id: str
    #: The synchronization point.
    event: str
    #: The round (``None`` when the participant failed before it learned it).
    generation: int | None
    #: How many participants the round needed, as this participant said.
    nodes: int
    #: Arrival order in the round, 0 .. nodes-1 (``None`` when not known).
    index: int | None
    #: The participant: its instance's ``node_id``, by default ``host:pid:thread``.
    node: str
    #: The host it ran on.
    host: str
    #: Its process id.
    pid: int
    #: What became of it.
    kind: Kind
    #: Why the round broke (``kind == "broken"``: the
    #: :attr:`~pyprocsync.BrokenBarrierError.reason`), or the error's message for the
    #: other failures; ``None`` for a release.
    reason: str | None
    #: When it called, epoch seconds on the reference clock.
    called_at: float
    #: The agreed instant, epoch seconds on the reference clock (``None``: not released,
    #: or not learned).
    release_at: float | None
    #: How late it returned, seconds (its :attr:`~pyprocsync.SyncResult.late_by`;
    #: :attr:`~pyprocsync.TooLateError.late_by` when too late).
    late_by: float | None
    #: Its clock bound, seconds (:attr:`~pyprocsync.SyncResult.clock_uncertainty`);
    #: ``None``: no bound.
    clock_uncertainty: float | None
    #: The round's lead time, seconds (``None`` when not learned).
    delay: float | None
    #: The reference clock: ``"server"`` or ``"system"``.
    clock: Literal["system", "server"]


def released(
    result: SyncResult, *, run_id: str, node: str, host: str, pid: int, called_ns: int
) -> Outcome:
    """The outcome of a release, from its result (read after the caller's return, so
    that :attr:`~pyprocsync.SyncResult.late_by` is final) and the wall clock at the
    call, ns."""
    offset = result.clock_offset or 0.0
    return Outcome(
        run_id=run_id,
        event=result.event,
        generation=result.generation,
        nodes=result.nodes,
        index=result.index,
        node=node,
        host=host,
        pid=pid,
        kind="released",
        reason=None,
        called_at=called_ns / 1e9 + offset,
        release_at=result.release_at + offset,
        late_by=result.late_by,
        clock_uncertainty=result.clock_uncertainty,
        delay=result.delay,
        clock="system" if result.clock_offset is None else "server",
    )


def failed(
    error: ProcSyncError,
    *,
    run_id: str,
    event: str,
    nodes: int,
    node: str,
    host: str,
    pid: int,
    called_ns: int,
    clock: Literal["system", "server"],
) -> Outcome:
    """The outcome of a call that raised ``error``; times on this host's wall clock."""
    kind: Kind
    reason: str | None = str(error)[:_MAX_TEXT] or type(error).__name__
    late_by = release_at = uncertainty = None
    if isinstance(error, TooLateError):
        kind = "too_late"
        late_by, release_at = error.late_by, error.release_at
        uncertainty = error.clock_uncertainty
    elif isinstance(error, BrokenBarrierError):
        kind = "broken"
        reason = error.reason
    elif isinstance(error, TimeOutError):
        kind = "timed_out"
    elif isinstance(error, ParameterMismatchError):
        kind = "mismatch"
    elif isinstance(error, ConnectionLostError):
        kind = "lost"
    else:
        kind = "error"
    return Outcome(
        run_id=run_id,
        event=event,
        generation=error.generation,
        nodes=nodes,
        index=None,
        node=node,
        host=host,
        pid=pid,
        kind=kind,
        reason=reason,
        called_at=called_ns / 1e9,
        release_at=release_at,
        late_by=late_by,
        clock_uncertainty=uncertainty,
        delay=None,
        clock=clock,
    )


def _number(value: float | int | None) -> str:
    return "" if value is None else repr(value)


def encode(outcome: Outcome) -> dict[str, str]:
    """The stream entry's fields for ``outcome`` (empty text for ``None``)."""
    return {
        "v": FORMAT,
        "run": outcome.run_id,
        "event": outcome.event,
        "gen": _number(outcome.generation),
        "nodes": str(outcome.nodes),
        "index": _number(outcome.index),
        "node": outcome.node,
        "host": outcome.host,
        "pid": str(outcome.pid),
        "kind": outcome.kind,
        "reason": outcome.reason or "",
        "called": _number(outcome.called_at),
        "release": _number(outcome.release_at),
        "late": _number(outcome.late_by),
        "bound": _number(outcome.clock_uncertainty),
        "delay": _number(outcome.delay),
        "clock": outcome.clock,
    }


def decode(fields: Mapping[Any, Any]) -> Outcome:
    """The :class:`Outcome` of a stream entry's fields (``bytes`` or ``str`` keys and
    values, as the client returns them).

    :raises ProtocolError: a field is missing, not text, too long, or not what
        :func:`encode` writes (another format, a number out of range, an unknown kind).
    """
    text: dict[str, str] = {}
    for key, value in fields.items():
        if not isinstance(key, (bytes, str)) or not isinstance(value, (bytes, str)):
            raise ProtocolError(f"record entry field {key!r} is not text")
        try:
            name = key.decode() if isinstance(key, bytes) else key
            text[name] = value.decode() if isinstance(value, bytes) else value
        except UnicodeDecodeError:
            raise ProtocolError(f"record entry field {key!r} is not UTF-8 text") from None
    if text.get("v") != FORMAT:
        raise ProtocolError(f"record entry of format {text.get('v')!r}, expected {FORMAT!r}")

    def field(name: str) -> str:
        value = text.get(name)
        if value is None:
            raise ProtocolError(f"record entry has no field {name!r}")
        if len(value) > _MAX_TEXT:
            raise ProtocolError(f"record entry field {name!r} is {len(value)} characters long")
        return value

    def count(name: str, low: int = 0) -> int:
        value = field(name)
        if not value.isdigit() or len(value) > 19 or int(value) < low:
            raise ProtocolError(f"record entry field {name!r} is not a count: {value!r}")
        return int(value)

    def number(name: str) -> float:
        value = field(name)
        try:
            result = float(value)
        except ValueError:
            result = math.nan
        if not math.isfinite(result) or abs(result) > 1e13:
            raise ProtocolError(f"record entry field {name!r} is not a number: {value!r}")
        return result

    def optional_count(name: str) -> int | None:
        return None if field(name) == "" else count(name)

    def optional_number(name: str) -> float | None:
        return None if field(name) == "" else number(name)

    kind, clock = field("kind"), field("clock")
    if kind not in _KINDS:
        raise ProtocolError(f"record entry of unknown kind {kind!r}")
    if clock not in ("system", "server"):
        raise ProtocolError(f"record entry of unknown clock {clock!r}")
    return Outcome(
        run_id=field("run"),
        event=field("event"),
        generation=optional_count("gen"),
        nodes=count("nodes", low=1),
        index=optional_count("index"),
        node=field("node"),
        host=field("host"),
        pid=count("pid"),
        kind=kind,  # type: ignore[arg-type]  # checked against Kind above
        reason=field("reason") or None,
        called_at=number("called"),
        release_at=optional_number("release"),
        late_by=optional_number("late"),
        clock_uncertainty=optional_number("bound"),
        delay=optional_number("delay"),
        clock=clock,  # type: ignore[arg-type]  # checked above
    )
