"""What a run's record says of its rounds, as ``pyprocsync report`` shows it.

:func:`read_record` reads a run's record (the stream of :mod:`pyprocsync.core.record`)
and :func:`summarize` turns its outcomes into a :class:`Report`, without Redis: per
event, one :class:`Round` per generation (who was recorded, who is missing, who came
last, how far apart the participants may have continued) and an :class:`EventReport`
over them. :func:`format_report` gives the text table, :func:`report_json` the JSON
document and :func:`render_html` the self-contained HTML page.

Times in the record, and so in the report, are on each round's reference clock (see
:mod:`pyprocsync.core.record`); durations are seconds in the data (JSON), milliseconds
(``ms``) and microseconds (``us``) in the text and the page.
"""

from __future__ import annotations

import html
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime, timezone
from typing import Any, Literal, cast

import redis

from pyprocsync.core.keys import record_key
from pyprocsync.core.record import Kind, Outcome, decode
from pyprocsync.exceptions import ProtocolError
from pyprocsync.tools.stats import percentile

__all__ = [
    "PAGE_EVENTS",
    "Cause",
    "EventReport",
    "Figure",
    "LastArriver",
    "Participation",
    "Record",
    "Report",
    "Round",
    "format_last_release",
    "format_report",
    "read_last_release",
    "read_record",
    "render_html",
    "report_json",
    "skipped_warning",
    "summarize",
]

#: Entries :func:`read_record` asks for per ``XRANGE``.
CHUNK = 1000

#: How many nodes :attr:`EventReport.last_arrivers` names.
TOP_LAST = 3


# -- reading --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """A run's record as :func:`read_record` read it.

    .. versionadded:: 1.0
    """

    #: The outcomes of the entries pyprocsync wrote (of the events asked for), in
    #: stream order.
    outcomes: tuple[Outcome, ...]
    #: Entries read, all events, the skipped ones included (0: no record).
    entries: int
    #: Entries skipped because pyprocsync did not write them (:func:`decode` refused
    #: them, or they name another run).
    skipped: int
    #: The first skipped entry: ``"<entry id>: <why>"`` (``None``: none skipped).
    first_skipped: str | None
    #: The events of every entry pyprocsync wrote, the filter notwithstanding, by name.
    events: tuple[str, ...]
    #: Entries the stream lost before it was read, as the server counts them (trimmed to
    #: the participants' ``record_limit``, or deleted): the oldest round shown may then
    #: lack some of its entries. ``None`` when the server does not say.
    gone: int | None


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _entry(entry: dict[bytes, bytes], run_id: str) -> tuple[Outcome | None, str]:
    """The outcome of a record entry of ``run_id``, or ``None`` and why it is skipped."""
    try:
        outcome = decode(entry)
    # ValueError: decode lets int() refuse a digit that is not ASCII ("²").
    except (ProtocolError, ValueError) as exc:
        return None, str(exc)
    if outcome.run_id != run_id:
        return None, f"record entry of run {outcome.run_id!r}"
    return outcome, ""


def _stream_key(client: redis.Redis, run_id: str, prefix: str) -> str | None:
    """The key of ``run_id``'s record (``None``: no record).

    :raises ProtocolError: the key holds something other than a stream.
    """
    key = record_key(prefix, run_id)
    kind = _text(client.type(key))
    if kind == "none":
        return None
    if kind != "stream":
        raise ProtocolError(
            f"the record of run {run_id!r} ({key}) is a {kind}, not a stream: data "
            "pyprocsync did not write (WRONGTYPE)"
        )
    return key


def read_record(
    client: redis.Redis,
    run_id: str,
    *,
    prefix: str = "pyprocsync",
    events: Collection[str] | None = None,
) -> Record:
    """Read the whole record of ``run_id`` (``XRANGE`` in chunks of :data:`CHUNK`
    entries), keeping the outcomes of ``events`` (``None``: all).

    An entry that :func:`~pyprocsync.core.record.decode` refuses, or that names another
    run, is skipped and counted, not raised. No record (no key, or an empty stream)
    gives a :class:`Record` of no entries.

    :raises ProtocolError: the record's key holds something other than a stream.
    """
    key = _stream_key(client, run_id, prefix)
    if key is None:
        return Record((), 0, 0, None, (), None)
    info: dict[str, Any] = client.xinfo_stream(key)
    added = info.get("entries-added")
    outcomes: list[Outcome] = []
    seen: set[str] = set()
    entries = skipped = 0
    first_skipped = None
    start = "-"
    while True:
        chunk = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]", client.xrange(key, start, "+", count=CHUNK)
        )
        for entry_id, entry in chunk:
            outcome, problem = _entry(entry, run_id)
            if outcome is None:
                skipped += 1
                if first_skipped is None:
                    first_skipped = f"{_text(entry_id)}: {problem}"
                continue
            seen.add(outcome.event)
            if events is None or outcome.event in events:
                outcomes.append(outcome)
        entries += len(chunk)
        if len(chunk) < CHUNK:
            break
        start = f"({_text(chunk[-1][0])}"
    gone = max(0, int(added) - int(info["length"])) if isinstance(added, int) else None
    return Record(tuple(outcomes), entries, skipped, first_skipped, tuple(sorted(seen)), gone)


def read_last_release(
    client: redis.Redis, run_id: str, *, prefix: str = "pyprocsync", scan: int = CHUNK
) -> Round | None:
    """The most recent round of ``run_id`` that every participant recorded as
    released, among the newest ``scan`` entries of its record (one ``XREVRANGE``), as
    :func:`summarize` tells it; ``None`` when there is none (no record, or no such
    round among them). Entries pyprocsync did not write are skipped.

    A round is recorded only once its participants have written their entries, some
    50 ms after its instant or with their next command, so the round shown may be a
    little older than the latest release.

    :raises ProtocolError: the record's key holds something other than a stream.
    """
    key = _stream_key(client, run_id, prefix)
    if key is None:
        return None
    chunk = cast(
        "list[tuple[bytes, dict[bytes, bytes]]]", client.xrevrange(key, "+", "-", count=scan)
    )
    outcomes = [o for o in (_entry(entry, run_id)[0] for _, entry in chunk) if o is not None]
    complete = [
        r for ev in summarize(outcomes).events for r in ev.rounds if not r.failed and not r.missing
    ]
    return max(complete, key=lambda r: r.first_called, default=None)


def format_last_release(last: Round) -> str:
    """The line ``pyprocsync status`` prints of :func:`read_last_release`'s round."""
    bound = (
        f"cell bound {_us(last.cell_bound)} us"
        if last.cell_bound is not None
        else f"cell bound unknown ({last.bound_unknown})"
    )
    return (
        f"last released round: {last.event!r} round {last.generation} (first arrival "
        f"{_when(last.first_called)} UTC), {last.recorded} participants, {bound}"
    )


def skipped_warning(record: Record) -> str | None:
    """The one warning of the entries ``record`` skipped (``None``: none skipped)."""
    if not record.skipped:
        return None
    return (
        f"skipped {record.skipped} record entries pyprocsync did not write "
        f"(first: {record.first_skipped})"
    )


# -- summarizing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Participation:
    """One participant's entry in a round.

    .. versionadded:: 1.0
    """

    #: The participant's node id.
    node: str
    #: Its host and process id.
    host: str
    pid: int
    #: What became of it (``"released"``, or how it failed).
    kind: Kind
    #: Why it failed (``None`` for a release).
    reason: str | None
    #: Its arrival order as the server counted it (``None``: not known).
    index: int | None
    #: When it called, epoch seconds.
    called_at: float
    #: Seconds after the round's first recorded call.
    arrival: float
    #: How late it returned, seconds (``None``: not known).
    late_by: float | None
    #: Its clock bound, seconds (``None``: none).
    clock_uncertainty: float | None
    #: Its reference clock.
    clock: Literal["system", "server"]


@dataclass(frozen=True, slots=True)
class Cause:
    """A participant that was not released: part of why its round failed.

    .. versionadded:: 1.0
    """

    node: str
    #: How it failed (never ``"released"``).
    kind: Kind
    #: The break's reason or the error's message (``None``: not given).
    reason: str | None
    #: When it called, epoch seconds.
    called_at: float


@dataclass(frozen=True, slots=True)
class Round:
    """One round (event and generation) as its record entries tell it.

    .. versionadded:: 1.0
    """

    event: str
    generation: int
    #: Participants the round needed: the largest ``nodes`` any of its entries gives.
    expected: int
    #: Its entries.
    recorded: int
    #: ``expected`` minus the distinct nodes recorded (0 or more): participants that
    #: wrote nothing, e.g. killed before they could, or recording nothing.
    missing: int
    #: Who they presumably are: the event's nodes (of its other rounds) not recorded in
    #: this one, when exactly ``missing`` of them are; else empty (not named).
    missing_nodes: tuple[str, ...]
    #: Its entries, by call time (then node id).
    participants: tuple[Participation, ...]
    #: The first recorded call, epoch seconds.
    first_called: float
    #: The arrival window: last recorded call minus first, seconds.
    window: float
    #: The node that called last.
    last: str
    #: How long after the call before it the last call came, seconds (``None``: one
    #: entry).
    lag: float | None
    #: The round's lead time, seconds: the largest ``delay`` recorded (``None``: none).
    lead: float | None
    #: ``max(late_by) - min(late_by)`` over the released participants, seconds
    #: (``None``: none released, or one without ``late_by``).
    spread: float | None
    #: How far apart the participants may have continued at most, seconds, from their
    #: own bounds: ``max(late_by + clock_uncertainty) - min(late_by - clock_uncertainty)``
    #: over the released participants. ``None`` when the round failed, a participant
    #: is missing, or a released participant gave no ``late_by`` or no bound; see
    #: :attr:`bound_unknown`.
    cell_bound: float | None
    #: Why :attr:`cell_bound` is ``None`` (``None`` when it is known).
    bound_unknown: str | None
    #: The participants not released, by call time: the round failed if there is any.
    causes: tuple[Cause, ...]

    @property
    def failed(self) -> bool:
        """Whether a participant of the round was not released."""
        return bool(self.causes)


@dataclass(frozen=True, slots=True)
class Figure:
    """The median (nearest rank: the lower middle of an even count) and the worst of a
    figure over an event's rounds, seconds (``None``: no round gave it).

    .. versionadded:: 1.0
    """

    median: float | None
    worst: float | None
    #: The event and generation of the (first) worst round.
    worst_event: str | None
    worst_round: int | None


@dataclass(frozen=True, slots=True)
class LastArriver:
    """A node that called last in some of an event's rounds (of two entries or more).

    .. versionadded:: 1.0
    """

    node: str
    #: Rounds it was last in.
    count: int
    #: The median (nearest rank) of its :attr:`Round.lag` in them, seconds.
    median_lag: float


@dataclass(frozen=True, slots=True)
class EventReport:
    """One event of a run: its rounds and what they add up to.

    .. versionadded:: 1.0
    """

    event: str
    #: Every round recorded, by generation (in :attr:`Report.run`: by first call).
    rounds: tuple[Round, ...]
    #: Participants that failed before they learned their round (``generation`` not
    #: recorded): the "unknown round", by call time. Not counted in :attr:`rounds`.
    unknown_round: tuple[Cause, ...]
    #: The nodes of :attr:`rounds`, by name.
    nodes: tuple[str, ...]
    #: Rounds in which every recorded participant was released.
    released: int
    #: Rounds in which a participant was not released.
    failed: int
    #: Rounds with participants missing (released or failed).
    incomplete: int
    #: :attr:`Round.cell_bound` over the rounds that have one.
    cell_bound: Figure
    #: Rounds whose cell bound is unknown.
    bound_unknown: int
    #: :attr:`Round.spread` over the released rounds with nobody missing.
    spread: Figure
    #: The nodes most often last (at most :data:`TOP_LAST`, most often first, then by
    #: name), over the rounds of two entries or more.
    last_arrivers: tuple[LastArriver, ...]

    @property
    def failures(self) -> tuple[Round, ...]:
        """The failed rounds, in the order of :attr:`rounds`."""
        return tuple(r for r in self.rounds if r.failed)


@dataclass(frozen=True, slots=True)
class Report:
    """A run's record summarized: one :class:`EventReport` per event, by name.

    .. versionadded:: 1.0
    """

    events: tuple[EventReport, ...]
    #: Every round of every event, by first call (its :attr:`~EventReport.event` is
    #: ``""``).
    run: EventReport


def _cause(outcome: Outcome) -> Cause:
    return Cause(outcome.node, outcome.kind, outcome.reason, outcome.called_at)


def _bound(
    released: Sequence[Outcome], failed: bool, missing: int
) -> tuple[float | None, str | None]:
    """The cell bound of a round's released participants, or ``None`` and why."""
    if failed:
        return None, "the round failed"
    if missing:
        return None, f"{missing} missing"
    no_late = [o.node for o in released if o.late_by is None]
    no_bound = [o.node for o in released if o.late_by is not None and o.clock_uncertainty is None]
    lacking = [
        f"{what} from {', '.join(nodes) if len(nodes) < len(released) else 'all'}"
        for what, nodes in (("no late_by", no_late), ("no clock bound", no_bound))
        if nodes
    ]
    if lacking:
        return None, "; ".join(lacking)
    highest = max(cast(float, o.late_by) + cast(float, o.clock_uncertainty) for o in released)
    lowest = min(cast(float, o.late_by) - cast(float, o.clock_uncertainty) for o in released)
    return highest - lowest, None


def _absent(present: set[str], missing: int, *candidates: Sequence[str]) -> tuple[str, ...]:
    """The ``missing`` nodes not ``present``: the first of the ``candidates`` (node sets)
    of which exactly ``missing`` are absent; else none named."""
    for nodes in candidates:
        absent = tuple(node for node in nodes if node not in present)
        if len(absent) == missing:
            return absent
    return ()


def _round(event: str, generation: int, group: list[Outcome], *candidates: Sequence[str]) -> Round:
    """One round of ``group``'s outcomes; its missing nodes are named from the first of
    the ``candidates`` that tells who they are (see :func:`_absent`)."""
    ordered = sorted(group, key=lambda o: (o.called_at, o.node))
    first = ordered[0].called_at
    present = {o.node for o in ordered}
    expected = max(o.nodes for o in ordered)
    missing = max(0, expected - len(present))
    released = [o for o in ordered if o.kind == "released"]
    causes = tuple(_cause(o) for o in ordered if o.kind != "released")
    lates = [o.late_by for o in released]
    spread = None
    if released and None not in lates:
        known = cast("list[float]", lates)
        spread = max(known) - min(known)
    leads = [o.delay for o in ordered if o.delay is not None]
    cell_bound, why = _bound(released, bool(causes), missing)
    return Round(
        event=event,
        generation=generation,
        expected=expected,
        recorded=len(ordered),
        missing=missing,
        missing_nodes=_absent(present, missing, *candidates) if missing else (),
        participants=tuple(
            Participation(
                o.node,
                o.host,
                o.pid,
                o.kind,
                o.reason,
                o.index,
                o.called_at,
                o.called_at - first,
                o.late_by,
                o.clock_uncertainty,
                o.clock,
            )
            for o in ordered
        ),
        first_called=first,
        window=ordered[-1].called_at - first,
        last=ordered[-1].node,
        lag=ordered[-1].called_at - ordered[-2].called_at if len(ordered) > 1 else None,
        lead=max(leads) if leads else None,
        spread=spread,
        cell_bound=cell_bound,
        bound_unknown=why,
        causes=causes,
    )


def _figure(values: Sequence[tuple[float, Round]]) -> Figure:
    """Median and worst of ``(value, round)`` pairs in order."""
    if not values:
        return Figure(None, None, None, None)
    worst, at = max(values, key=lambda pair: pair[0])
    return Figure(percentile(sorted(v for v, _ in values), 50), worst, at.event, at.generation)


def _event_rounds(
    event: str, groups: dict[int | None, list[Outcome]], run_nodes: Sequence[str]
) -> tuple[Round, ...]:
    """The rounds of one event, by generation; the missing are named from the event's
    other rounds, else from the whole run's nodes."""
    known = sorted((g, group) for g, group in groups.items() if g is not None)
    own = tuple(sorted({o.node for _, group in known for o in group}))
    return tuple(_round(event, g, group, own, run_nodes) for g, group in known)


def _summary(event: str, rounds: tuple[Round, ...], unknown: Sequence[Outcome]) -> EventReport:
    """What ``rounds`` (in order) and the outcomes of no known round add up to."""
    nodes = tuple(sorted({p.node for r in rounds for p in r.participants}))
    lags: dict[str, list[float]] = {}
    for r in rounds:
        if r.lag is not None:
            lags.setdefault(r.last, []).append(r.lag)
    ranked = sorted(lags.items(), key=lambda item: (-len(item[1]), item[0]))[:TOP_LAST]
    sound = [r for r in rounds if not r.failed and not r.missing]
    return EventReport(
        event=event,
        rounds=rounds,
        unknown_round=tuple(
            _cause(o) for o in sorted(unknown, key=lambda o: (o.called_at, o.node))
        ),
        nodes=nodes,
        released=sum(not r.failed for r in rounds),
        failed=sum(r.failed for r in rounds),
        incomplete=sum(r.missing > 0 for r in rounds),
        cell_bound=_figure([(r.cell_bound, r) for r in rounds if r.cell_bound is not None]),
        bound_unknown=sum(r.cell_bound is None for r in rounds),
        spread=_figure([(r.spread, r) for r in sound if r.spread is not None]),
        last_arrivers=tuple(
            LastArriver(node, len(values), percentile(sorted(values), 50))
            for node, values in ranked
        ),
    )


def summarize(outcomes: Iterable[Outcome]) -> Report:
    """Group ``outcomes`` by event and generation and summarize each event, and the
    whole run.

    A round is every outcome of one ``(event, generation)``; outcomes without a
    generation go to their event's :attr:`~EventReport.unknown_round`. What a round
    shows is what its entries say: a participant that wrote none is *missing*, counted
    against the largest ``nodes`` recorded, never assumed released, and the round's
    cell bound is then unknown. :attr:`Report.run` holds every round of every event
    by first call: the view of a run that uses a new name per synchronization point.
    """
    outcomes = list(outcomes)
    by_event: dict[str, dict[int | None, list[Outcome]]] = {}
    for outcome in outcomes:
        by_event.setdefault(outcome.event, {}).setdefault(outcome.generation, []).append(outcome)
    run_nodes = tuple(sorted({o.node for o in outcomes if o.generation is not None}))
    events = []
    for name in sorted(by_event):
        groups = by_event[name]
        rounds = _event_rounds(name, groups, run_nodes)
        events.append(_summary(name, rounds, groups.get(None, [])))
    every = tuple(
        sorted((r for ev in events for r in ev.rounds), key=lambda r: (r.first_called, r.event))
    )
    unknown = [o for o in outcomes if o.generation is None]
    return Report(tuple(events), _summary("", every, unknown))


# -- text -----------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.3f}"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e6:.1f}"


def _when(epoch: float) -> str:
    """``epoch`` as a UTC time to the millisecond (or as it is, out of datetime's range)."""
    try:
        moment = datetime.fromtimestamp(epoch, timezone.utc)
    except (ValueError, OverflowError, OSError):
        return f"epoch {epoch:.3f}"
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _failure(cause: Cause) -> str:
    return f"{cause.node} {cause.kind}" + (f" ({cause.reason})" if cause.reason else "")


def _missing_text(r: Round) -> str:
    names = ", ".join(r.missing_nodes) if r.missing_nodes else "not named"
    return f"{r.recorded} of {r.expected} recorded, {r.missing} missing ({names})"


def _note(r: Round) -> str:
    """The note of a round's row: who is missing, who failed, who gave no bound."""
    parts = []
    if r.missing:
        parts.append(_missing_text(r))
    if r.causes:
        parts.append("failed: " + ", ".join(f"{c.node} {c.kind}" for c in r.causes))
    elif r.bound_unknown is not None and not r.missing:
        parts.append(r.bound_unknown)
    return "; ".join(parts)


def _which(event: str, generation: int | None, whole: bool) -> str:
    """A round as the text names it: ``round 5``, or in the run view ``'move' round 5``."""
    return f"{event!r} round {generation}" if whole else f"round {generation}"


def _figure_text(name: str, figure: Figure, whole: bool) -> str:
    if figure.median is None:
        return f"{name}: -"
    worst = _which(cast(str, figure.worst_event), figure.worst_round, whole)
    return f"{name}: median {_us(figure.median)} us, worst {_us(figure.worst)} us ({worst})"


def _event_lines(ev: EventReport, limit: int, whole: bool = False) -> list[str]:
    """The section of one event, or with ``whole`` of :attr:`Report.run` (rounds named
    by event, and an ``event`` column)."""
    counts = f"{len(ev.rounds)} rounds, {ev.released} released, {ev.failed} failed"
    if ev.incomplete:
        counts += f", {ev.incomplete} with participants missing"
    if ev.rounds:
        counts += (
            f" ({_when(ev.rounds[0].first_called)} to {_when(ev.rounds[-1].first_called)} UTC)"
        )
    lines = [f"{'all events' if whole else f'event {ev.event!r}'}: {counts}"]
    bound = _figure_text("cell bound", ev.cell_bound, whole)
    if ev.bound_unknown:
        bound += f"; unknown in {ev.bound_unknown} rounds"
    lines += [f"  {bound}", f"  {_figure_text('spread', ev.spread, whole)}"]
    if ev.last_arrivers:
        lines.append(
            "  last to arrive: "
            + "; ".join(
                f"{a.node} {a.count} times (median lag {_ms(a.median_lag)} ms)"
                for a in ev.last_arrivers
            )
        )
    failures = ev.failures
    if failures or ev.unknown_round:
        lines.append(f"  failed rounds: {len(failures)}")
        if len(failures) > limit:
            lines.append(f"    ... {len(failures) - limit} earlier failed rounds not shown")
        lines += [
            f"    {_which(r.event, r.generation, whole)}: "
            + "; ".join(_failure(c) for c in r.causes)
            for r in failures[-limit:]
        ]
        if ev.unknown_round:
            lines.append(
                "    unknown round (failed before learning it): "
                + "; ".join(_failure(c) for c in ev.unknown_round)
            )
    if not ev.rounds:
        return lines
    shown = ev.rounds[-limit:]
    width = max(4, *(len(r.last) for r in shown))
    named = max(5, *(len(r.event) for r in shown)) if whole else 0
    event_head = f"  {'event':<{named}}" if whole else ""
    lines.append(
        f"{event_head}  {'round':>7}{'recorded':>10}{'window ms':>11}{'lag ms':>10}"
        f"{'lead ms':>9}{'spread us':>11}{'bound us':>11}  {'last':<{width}}  note"
    )
    if len(ev.rounds) > limit:
        lines.append(f"  ... {len(ev.rounds) - limit} earlier rounds not shown (--rounds)")
    for r in shown:
        bound_text = "unknown" if r.cell_bound is None else _us(r.cell_bound)
        event_cell = f"  {r.event:<{named}}" if whole else ""
        lines.append(
            f"{event_cell}  {r.generation:>7}{f'{r.recorded}/{r.expected}':>10}{_ms(r.window):>11}"
            f"{_ms(r.lag):>10}{_ms(r.lead):>9}{_us(r.spread):>11}{bound_text:>11}  "
            f"{r.last:<{width}}  {_note(r)}".rstrip()
        )
    return lines


def format_report(run_id: str, record: Record, report: Report, *, rounds: int = 20) -> list[str]:
    """The lines ``pyprocsync report`` prints.

    A header (entries read, events, entries gone from the record); then, for a run of
    one event, that event's section; for several, the section of :attr:`Report.run`
    (every round of every event, by first call, each named by its event) and a table
    of the ``rounds`` most recently used events (rounds, failed, with participants
    missing, cell bound median and worst, spread median). A section gives its
    counts and time span, the cell bound's and the spread's median and worst, the
    nodes most often last, every failed round with each cause (the ``rounds`` most
    recent ones) and the unknown round; and a table of its ``rounds`` most recent
    rounds (generation, recorded/expected, arrival window, last arriver's lag, lead,
    spread, cell bound or ``unknown``, the last arriver, and a note: ``k of n
    recorded, m missing (names)``, ``failed: node kind, ...``, or why the bound is
    unknown), saying how many were left out.
    """
    events = len(report.events)
    header = f"run {run_id!r}: {record.entries} record entries, {events} event"
    lines = [header + ("" if events == 1 else "s")]
    if record.gone:
        lines.append(
            f"note: {record.gone} older entries are gone from the record (record_limit): "
            "its oldest round may lack some"
        )
    if events == 1:
        lines += ["", *_event_lines(report.events[0], rounds)]
        return lines
    lines += ["", *_event_lines(report.run, rounds, whole=True), "", *_events_table(report, rounds)]
    return lines


def _events_table(report: Report, limit: int) -> list[str]:
    """One line per event, the ``limit`` most recently used: its rounds, how many
    failed, its cell bound's median and worst, its spread's median."""
    recent = sorted(report.events, key=lambda ev: ev.rounds[-1].first_called if ev.rounds else 0.0)
    shown = recent[-limit:]
    width = max(5, *(len(ev.event) for ev in shown))
    lines = [
        f"  {'event':<{width}}{'rounds':>8}{'failed':>8}{'missing':>9}"
        f"{'bound p50 us':>14}{'worst us':>10}{'spread p50 us':>15}"
    ]
    if len(recent) > limit:
        lines.append(f"  ... {len(recent) - limit} events used earlier not shown (--rounds)")
    lines += [
        f"  {ev.event:<{width}}{len(ev.rounds):>8}{ev.failed:>8}{ev.incomplete:>9}"
        f"{_us(ev.cell_bound.median):>14}{_us(ev.cell_bound.worst):>10}"
        f"{_us(ev.spread.median):>15}"
        for ev in shown
    ]
    return lines


# -- JSON -----------------------------------------------------------------------------------


def _plain(value: object) -> Any:
    """``value`` with every dataclass a dict of its fields and every tuple a list."""
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def report_json(run_id: str, record: Record, report: Report) -> dict[str, Any]:
    """Everything of ``report`` (every round, every participant) as a JSON-ready dict:
    ``run``, ``entries``, ``skipped``, ``first_skipped``, ``gone``, ``events`` and
    ``all`` (:attr:`Report.run`), each event the fields of :class:`EventReport`
    (``failures``: ``[event, generation]`` of the failed rounds), each round the fields
    of :class:`Round` and ``failed``. Durations
    in seconds, times in epoch seconds; no NaN (an unknown value is ``null``)."""

    def section(ev: EventReport) -> dict[str, Any]:
        data: dict[str, Any] = _plain(ev)
        data["failures"] = [[r.event, r.generation] for r in ev.failures]
        for item, r in zip(data["rounds"], ev.rounds, strict=True):
            item["failed"] = r.failed
        return data

    return {
        "run": run_id,
        "entries": record.entries,
        "skipped": record.skipped,
        "first_skipped": record.first_skipped,
        "gone": record.gone,
        "events": [section(ev) for ev in report.events],
        "all": section(report.run),
    }


# -- HTML -----------------------------------------------------------------------------------

#: Colours of the page: an arrival or release; the round's last arriver; a failed or
#: missing participant (and a failed round); a round with participants missing; the
#: release interval; a round of no note.
_BLUE, _ORANGE, _RED, _PURPLE, _PALE, _GREY = (
    "#4477aa",
    "#ee7733",
    "#cc3311",
    "#882255",
    "#9fbfdf",
    "#dddddd",
)

_LEFT, _RIGHT, _TOP, _STRIP, _LANE, _BOTTOM = 170, 16, 26, 8, 40, 30

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #eee; }
svg { display: block; max-width: 100%; height: auto; margin: 0.6em 0; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
.legend span.sw { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 14px;
  vertical-align: -1px; }
.failed { color: #cc3311; }
"""


def _x(value: float) -> str:
    return f"{value:.1f}"


class _Paths:
    """Path data by (colour, style): one ``<path>`` each, however many marks."""

    def __init__(self) -> None:
        self.parts: dict[tuple[str, str], list[str]] = {}

    def add(self, colour: str, style: str, data: str) -> None:
        self.parts.setdefault((colour, style), []).append(data)

    def svg(self) -> str:
        out = []
        for (colour, style), parts in self.parts.items():
            paint = (
                f'fill="{colour}"'
                if style == "fill"
                else f'fill="none" stroke="{colour}" stroke-width="{style}"'
            )
            out.append(f'<path {paint} d="{"".join(parts)}"/>')
        return "".join(out)


def _colour(r: Round, p: Participation) -> str:
    if p.kind != "released":
        return _RED
    return _ORANGE if r.lag is not None and p is r.participants[-1] else _BLUE


def _round_title(r: Round, which: Literal["arrival", "release"], whole: bool) -> str:
    """The tooltip of a round in the ``which`` chart: its figures, then a line per
    participant."""
    head = f"{_which(r.event, r.generation, whole)}: {r.recorded}/{r.expected} recorded"
    if which == "arrival":
        head += f", window {_ms(r.window)} ms, last {r.last} (lag {_ms(r.lag)} ms)"
        rows = [f"{p.node}: +{_ms(p.arrival)} ms, {p.kind}" for p in r.participants]
    else:
        bound = _us(r.cell_bound) + " us" if r.bound_unknown is None else "unknown"
        head += f", cell bound {bound}, spread {_us(r.spread)} us"
        rows = [
            f"{p.node}: late {_us(p.late_by)} +- {_us(p.clock_uncertainty)} us, {p.kind}"
            for p in r.participants
        ]
    note = _note(r)
    return "\n".join([head, *rows, *([note] if note else [])])


class _Chart:
    """One chart of an event: its rounds along x, one lane per node, each lane the same
    value scale from ``low`` (bottom) to ``high`` (top); values beyond it are drawn at
    the lane's edge as triangles. With ``whole`` (:attr:`Report.run`), rounds are
    numbered in order and named by their event."""

    def __init__(self, ev: EventReport, low: float, high: float, whole: bool) -> None:
        self.ev = ev
        self.whole = whole
        self.width = max(480.0, min(1200.0, 4.0 * len(ev.rounds)))
        self.step = self.width / len(ev.rounds)
        self.mark = max(1.0, min(self.step * 0.7, 14.0))
        self.lanes = {node: n for n, node in enumerate(ev.nodes)}
        self.height = _TOP + _STRIP + 4 + _LANE * len(self.lanes) + _BOTTOM
        self.low, self.high = low, high
        self.paths = _Paths()

    def x(self, index: int) -> float:
        """The middle of the round at ``index`` of the event's rounds."""
        return _LEFT + (index + 0.5) * self.step

    def top(self, node: str) -> float:
        """The top of ``node``'s lane."""
        return _TOP + _STRIP + 4 + _LANE * self.lanes[node]

    def y(self, node: str, value: float) -> tuple[float, int]:
        """The y of ``value`` in ``node``'s lane, and -1/0/1: below/in/above the scale."""
        clipped = min(max(value, self.low), self.high)
        side = (value > self.high) - (value < self.low)
        inner = _LANE - 12
        return self.top(node) + 6 + (self.high - clipped) / (self.high - self.low) * inner, side

    def point(self, colour: str, x: float, node: str, value: float) -> None:
        """A tick at ``value``, or a triangle at the edge it is beyond."""
        at, side = self.y(node, value)
        if side:
            tip = at - 5 * side
            data = f"M{_x(x - 3)} {_x(at)}L{_x(x)} {_x(tip)}L{_x(x + 3)} {_x(at)}Z"
            self.paths.add(colour, "fill", data)
        else:
            self.paths.add(colour, "2", f"M{_x(x - self.mark / 2)} {_x(at)}h{_x(self.mark)}")

    def bar(self, colour: str, x: float, node: str, low: float, high: float) -> None:
        """A vertical bar from ``low`` to ``high`` (clipped to the scale)."""
        upper, _ = self.y(node, high)
        lower, _ = self.y(node, low)
        self.paths.add(colour, _x(max(1.0, self.mark * 0.5)), f"M{_x(x)} {_x(upper)}V{_x(lower)}")

    def _lanes(self, *, zero: bool) -> list[str]:
        out = []
        for node, n in self.lanes.items():
            top = self.top(node)
            shown = node if len(node) <= 24 else node[:23] + "\u2026"
            out.append(
                f'<rect x="{_LEFT}" y="{top}" width="{_x(self.width)}" height="{_LANE - 2}" '
                f'fill="{"#f7f7f7" if n % 2 else "#fbfbfb"}"/>'
                f'<text x="{_LEFT - 8}" y="{top + _LANE / 2 + 4}" text-anchor="end">'
                f"<title>{html.escape(node)}</title>{html.escape(shown)}</text>"
            )
            if zero:
                at, _ = self.y(node, 0.0)
                out.append(
                    f'<path d="M{_LEFT} {_x(at)}h{_x(self.width)}" stroke="#999" '
                    'stroke-dasharray="3 3" fill="none"/>'
                )
        return out

    def _rounds(self, which: Literal["arrival", "release"]) -> list[str]:
        """The strip of round states, the missing nodes' crosses, and one hover area per
        round (its figures as a tooltip)."""
        hover = []
        for i, r in enumerate(self.ev.rounds):
            x, half = self.x(i), self.step / 2
            strip = _PURPLE if r.missing else _RED if r.failed else _GREY
            wide = max(self.step, 2.0)
            data = f"M{_x(x - wide / 2)} {_TOP}h{_x(wide)}v{_STRIP}h{_x(-wide)}Z"
            self.paths.add(strip, "fill", data)
            for node in r.missing_nodes:
                at = self.top(node) + _LANE / 2 - 1
                self.paths.add(_PURPLE, "1.5", f"M{_x(x - 3)} {_x(at - 3)}l6 6m0 -6l-6 6")
            hover.append(
                f'<rect x="{_x(x - half)}" y="{_TOP}" width="{_x(self.step)}" '
                f'height="{self.height - _TOP - _BOTTOM}" fill="#000" fill-opacity="0">'
                f"<title>{html.escape(_round_title(r, which, self.whole))}</title></rect>"
            )
        return hover

    def _axis(self) -> list[str]:
        count = len(self.ev.rounds)
        at = self.height - _BOTTOM + 4
        every = next(m * 10**k for k in range(20) for m in (1, 2, 5) if m * 10**k * 10 >= count)
        ticks = range(0, count, every)
        out = [
            f'<path d="M{_x(self.x(i))} {at}v4" stroke="#666"/>'
            f'<text x="{_x(self.x(i))}" y="{at + 16}" text-anchor="middle">'
            f"{i if self.whole else self.ev.rounds[i].generation}</text>"
            for i in ticks
        ]
        out.append(f'<text x="{_LEFT - 8}" y="{at + 16}" text-anchor="end">round</text>')
        return out

    def svg(self, title: str, which: Literal["arrival", "release"]) -> str:
        """The chart: ``title``, the lanes (for ``release``: with a dashed line at 0),
        the marks added, the round axis, the tooltips of ``which`` chart."""
        width = _LEFT + self.width + _RIGHT
        lanes = self._lanes(zero=which == "release")
        hover = self._rounds(which)
        return "".join(
            [
                f'<svg width="{_x(width)}" height="{self.height}" '
                f'viewBox="0 0 {_x(width)} {self.height}" role="img" '
                f'aria-label="{html.escape(title)}">',
                f'<text x="{_LEFT}" y="16">{html.escape(title)}</text>',
                *lanes,
                self.paths.svg(),
                *self._axis(),
                *hover,
                "</svg>",
            ]
        )


def _arrival_chart(ev: EventReport, whole: bool) -> str:
    """Each call's time after its round's first; the scale up to the 99th percentile."""
    values = sorted(p.arrival for r in ev.rounds for p in r.participants)
    chart = _Chart(ev, 0.0, percentile(values, 99) or values[-1] or 1e-3, whole)
    for i, r in enumerate(ev.rounds):
        for p in r.participants:
            chart.point(_colour(r, p), chart.x(i), p.node, p.arrival)
    title = f"arrival after the round's first, ms (lane: 0 to {_ms(chart.high)})"
    return chart.svg(title, "arrival")


def _release_chart(ev: EventReport, whole: bool) -> str:
    """Each released (or too late) participant's ``late_by`` with its interval
    ``+- clock_uncertainty``; the scale from the 1st to the 99th percentile of the
    intervals' ends, 0 (the instant) included."""
    marks = [
        (i, r, p, p.late_by, p.clock_uncertainty or 0.0)
        for i, r in enumerate(ev.rounds)
        for p in r.participants
        if p.late_by is not None
    ]
    low = min(0.0, percentile(sorted(late - b for *_, late, b in marks), 1)) if marks else 0.0
    high = max(0.0, percentile(sorted(late + b for *_, late, b in marks), 99)) if marks else 0.0
    if high - low < 1e-9:
        low, high = low - 1e-6, high + 1e-6
    chart = _Chart(ev, low, high, whole)
    for i, r, p, late, bound in marks:
        colour = _colour(r, p)
        pale = _RED if colour == _RED else _PALE
        chart.bar(pale, chart.x(i), p.node, late - bound, late + bound)
        chart.point(colour, chart.x(i), p.node, late)
    title = f"release: late_by \u00b1 clock_uncertainty, us (lane: {_us(low)} to {_us(high)})"
    return chart.svg(title, "release")


_LEGEND = (
    '<p class="legend">'
    f'<span class="sw" style="background:{_BLUE}"></span>arrival / release'
    f'<span class="sw" style="background:{_ORANGE}"></span>the round\'s last arriver'
    f'<span class="sw" style="background:{_RED}"></span>failed participant or round'
    f'<span class="sw" style="background:{_PURPLE}"></span>missing participant (\u00d7) or '
    "round with participants missing"
    f'<span class="sw" style="background:{_PALE}"></span>release interval '
    "(late_by +- clock_uncertainty)"
    "<br>Dashed: the instant. Triangles: beyond the lane's scale (its edge). The strip "
    "above the lanes: "
    "each round, grey when all went well. Hover over a round for its figures.</p>"
)


def _cell(value: object) -> str:
    return f"<td>{html.escape(str(value))}</td>"


#: How many events of a run of several get a section of their own in the page (those
#: of the most rounds, two at least).
PAGE_EVENTS = 10


def _event_html(ev: EventReport, whole: bool = False) -> str:
    """The section of one event, or with ``whole`` of :attr:`Report.run`."""

    def figure(fig: Figure) -> str:
        if fig.median is None:
            return "-"
        worst = _which(cast(str, fig.worst_event), fig.worst_round, whole)
        return f"median {_us(fig.median)} us, worst {_us(fig.worst)} us ({worst})"

    rows = [
        ("rounds", len(ev.rounds)),
        ("released", ev.released),
        ("failed", ev.failed),
        ("with participants missing", ev.incomplete),
        ("cell bound", figure(ev.cell_bound) + f"; unknown in {ev.bound_unknown} rounds"),
        ("spread", figure(ev.spread)),
        (
            "most often last",
            "; ".join(
                f"{a.node}: {a.count} times, median lag {_ms(a.median_lag)} ms"
                for a in ev.last_arrivers
            )
            or "-",
        ),
    ]
    if ev.rounds:
        rows.append(
            (
                "first / last round",
                f"{_when(ev.rounds[0].first_called)} / {_when(ev.rounds[-1].first_called)} UTC",
            )
        )
    out = [
        f"<section><h2>{'all events' if whole else html.escape(f'event {ev.event!r}')}</h2><table>",
        *(f"<tr><th>{html.escape(name)}</th>{_cell(value)}</tr>" for name, value in rows),
        "</table>",
    ]
    if ev.rounds:
        out += [_arrival_chart(ev, whole), _release_chart(ev, whole), _LEGEND]
    failures = [
        f"<li>{html.escape(_which(r.event, r.generation, whole))}: "
        + html.escape("; ".join(_failure(c) for c in r.causes))
        + (html.escape(f" ({_missing_text(r)})") if r.missing else "")
        + "</li>"
        for r in ev.failures
    ]
    if ev.unknown_round:
        failures.append(
            "<li>unknown round (failed before learning it): "
            + html.escape("; ".join(_failure(c) for c in ev.unknown_round))
            + "</li>"
        )
    if failures:
        out += ['<h3 class="failed">failed rounds</h3><ul>', *failures, "</ul>"]
    out.append("</section>")
    return "\n".join(out)


def _sections(report: Report) -> list[str]:
    """The page's sections (see :func:`render_html`)."""
    if len(report.events) == 1:
        return [_event_html(report.events[0])]
    table = [
        "<section><h2>events</h2><table><tr><th>event</th><th>rounds</th><th>failed</th>"
        "<th>missing</th><th>cell bound p50 / worst, us</th><th>spread p50, us</th></tr>",
        *(
            f"<tr>{_cell(ev.event)}{_cell(len(ev.rounds))}{_cell(ev.failed)}"
            f"{_cell(ev.incomplete)}"
            f"{_cell(f'{_us(ev.cell_bound.median)} / {_us(ev.cell_bound.worst)}')}"
            f"{_cell(_us(ev.spread.median))}</tr>"
            for ev in report.events
        ),
        "</table></section>",
    ]
    busy = sorted(report.events, key=lambda ev: -len(ev.rounds))[:PAGE_EVENTS]
    own = [_event_html(ev) for ev in report.events if ev in busy and len(ev.rounds) > 1]
    return [_event_html(report.run, whole=True), "\n".join(table), *own]


def render_html(run_id: str, record: Record, report: Report) -> str:
    """One self-contained HTML page of ``report``: inline CSS and SVG, no script, nothing
    loaded from elsewhere. Per event a summary table, two charts of every round (one
    lane per node: each call's arrival after the round's first; each release's
    ``late_by`` with its interval ``+- clock_uncertainty``), stragglers (the round's
    last arriver, failed and missing participants) in colours of their own, a legend,
    and every failed round with its causes. A run of several events gets that for
    :attr:`Report.run` (every round of every event, in order), a table of the events,
    and a section for each of the :data:`PAGE_EVENTS` events of the most rounds (two at
    least)."""
    notes = [f"{record.entries} record entries"]
    if record.skipped:
        notes.append(f"{record.skipped} skipped (first: {record.first_skipped})")
    if record.gone:
        notes.append(
            f"{record.gone} older entries gone (record_limit): the oldest round may lack some"
        )
    title = f"pyprocsync report: run {run_id!r}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f"<p>{html.escape('; '.join(notes))}. Times on each round's reference clock.</p>",
            *_sections(report),
            "</body></html>",
            "",
        ]
    )
