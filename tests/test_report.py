"""``pyprocsync report`` and what it is built on (``read_record``, ``summarize``, the text,
JSON and HTML forms).

The run's record is written here with ``XADD`` of :func:`pyprocsync.core.record.encode`
entries, as the participants write it, so that each test controls every figure; the
command runs for real against the session server.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from cli_support import UNREACHABLE, run
from support import assert_one_line_error

from pyprocsync.core.keys import record_key
from pyprocsync.core.record import Outcome, encode
from pyprocsync.tools.cli import URL_ENV, ExitCode
from pyprocsync.tools.report import (
    Record,
    format_report,
    read_record,
    render_html,
    report_json,
    summarize,
)
from pyprocsync.tools.server import EmbeddedServer

#: The epoch second the rounds of these tests start at (2023-11-14 22:13:20 UTC).
T0 = 1_700_000_000.0

#: The colours of the page: the round's last arriver, and a failed or missing one.
LAST_COLOUR, FAILED_COLOUR = "#ee7733", "#cc3311"


def outcome(run_id: str = "r", **fields: Any) -> Outcome:
    """A released participant of round 0 of ``step`` (3 nodes), ``fields`` replaced."""
    base = Outcome(
        run_id=run_id,
        event="step",
        generation=0,
        nodes=3,
        index=0,
        node="a",
        host="host-a",
        pid=100,
        kind="released",
        reason=None,
        called_at=T0,
        release_at=T0 + 0.05,
        late_by=1e-4,
        clock_uncertainty=2e-4,
        delay=0.05,
        clock="server",
    )
    return dataclasses.replace(base, **fields)


def rounds_of(
    run_id: str,
    count: int,
    nodes: Sequence[str] = ("a", "b", "c", "d"),
    *,
    event: str = "step",
) -> list[Outcome]:
    """``count`` released rounds of ``nodes``: round g starts at ``T0 + g``; node i
    calls i ms after the first (the last node last, 1 ms after the one before) and
    returns ``10 * (i + 1)`` us late, within ``(i + 1) * 100`` us."""
    return [
        outcome(
            run_id,
            event=event,
            generation=g,
            nodes=len(nodes),
            index=i,
            node=node,
            pid=100 + i,
            called_at=T0 + g + i * 1e-3,
            release_at=T0 + g + 0.05,
            late_by=(i + 1) * 1e-5,
            clock_uncertainty=(i + 1) * 1e-4,
        )
        for g in range(count)
        for i, node in enumerate(nodes)
    ]


def write(client: redis.Redis, run_id: str, outcomes: Sequence[Outcome]) -> None:
    """Add ``outcomes`` to the record of ``run_id``, in order, as the writer does."""
    pipe = client.pipeline(transaction=False)
    for item in outcomes:
        pipe.xadd(record_key("pyprocsync", run_id), encode(item))  # type: ignore[arg-type]
    pipe.execute()


def report(server: EmbeddedServer, run_id: str, *options: str) -> Any:
    """Run ``pyprocsync report --run RUN`` against the session server."""
    return run("report", "--run", run_id, "--redis", server.url, *options)


def table(stdout: str, event: str = "step") -> dict[int, list[str]]:
    """The round table of ``event`` in the text output as {generation: [recorded, window
    ms, lag ms, lead ms, spread us, bound us, last, note words...]}."""
    block = stdout.split(f"event {event!r}: ", 1)[1].split("\n\nevent ", 1)[0]
    lines = block.splitlines()
    head = next(n for n, line in enumerate(lines) if line.split()[:2] == ["round", "recorded"])
    assert lines[head].split() == [
        "round",
        "recorded",
        "window",
        "ms",
        "lag",
        "ms",
        "lead",
        "ms",
        "spread",
        "us",
        "bound",
        "us",
        "last",
        "note",
    ]
    return {
        int(line.split()[0]): line.split()[1:]
        for line in lines[head + 1 :]
        if line.split()[0].isdigit()
    }


def run_table(stdout: str) -> dict[tuple[str, int], list[str]]:
    """The round table of the ``all events`` section as {(event, generation): [recorded,
    window ms, ..., last, note words...]} (event names in these tests hold no spaces)."""
    block = stdout.split("\nall events: ", 1)[1].split("\n\n", 1)[0]
    lines = block.splitlines()
    head = next(
        n for n, line in enumerate(lines) if line.split()[:3] == ["event", "round", "recorded"]
    )
    return {
        (line.split()[0], int(line.split()[1])): line.split()[2:]
        for line in lines[head + 1 :]
        if not line.strip().startswith("...")
    }


def events_table(stdout: str) -> dict[str, list[str]]:
    """The table of events after the ``all events`` section as {event: [rounds, failed,
    missing, bound p50, worst, spread p50]}."""
    block = stdout.split("\nall events: ", 1)[1].split("\n\n", 1)[1]
    lines = block.splitlines()
    assert lines[0].split()[:4] == ["event", "rounds", "failed", "missing"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:] if "..." not in line}


def strict_json(text: str) -> Any:
    """``text`` parsed as strict JSON: NaN and infinities are refused."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the JSON")

    return json.loads(text, parse_constant=refuse)


# -- summarize: the arithmetic, without Redis ---------------------------------------------------


def test_summarize_a_round_cell_bound_spread_window_and_last_arriver() -> None:
    """A released round of three: the cell bound is max(late + bound) - min(late -
    bound) over them, the spread max(late) - min(late), the window last call minus
    first, the last arriver the latest call and its lag the gap to the call before."""
    outcomes = [
        outcome(node="a", called_at=T0, late_by=100e-6, clock_uncertainty=50e-6),  # 50..150
        outcome(node="b", called_at=T0 + 0.002, late_by=300e-6, clock_uncertainty=20e-6),
        outcome(node="c", called_at=T0 + 0.005, late_by=-50e-6, clock_uncertainty=100e-6),
    ]
    [event] = summarize(reversed(outcomes)).events
    [r] = event.rounds
    assert (r.event, r.generation, r.expected, r.recorded, r.missing) == ("step", 0, 3, 3, 0)
    assert r.cell_bound == pytest.approx(320e-6 - -150e-6)
    assert r.bound_unknown is None
    assert r.spread == pytest.approx(350e-6)
    assert r.window == pytest.approx(0.005, abs=1e-6)
    assert (r.last, r.lag) == ("c", pytest.approx(0.003, abs=1e-6))
    assert r.lead == 0.05
    assert [p.node for p in r.participants] == ["a", "b", "c"]
    assert [p.arrival for p in r.participants] == pytest.approx([0.0, 0.002, 0.005], abs=1e-6)
    assert not r.failed
    assert (event.released, event.failed, event.incomplete, event.bound_unknown) == (1, 0, 0, 0)
    assert event.cell_bound.worst == pytest.approx(470e-6)
    assert event.cell_bound.worst_round == 0


def test_summarize_an_unknown_bound_says_why() -> None:
    """The cell bound is unknown, with the reason, when the round failed, when a
    participant is missing, when a released participant gave no clock bound or no
    ``late_by``; the spread is unknown without every released ``late_by``."""
    outcomes = [
        # round 0: failed (b too late)
        outcome(generation=0, node="a"),
        outcome(generation=0, node="b", kind="too_late", reason="late by 2 ms", late_by=0.002),
        outcome(generation=0, node="c"),
        # round 1: c missing
        outcome(generation=1, node="a"),
        outcome(generation=1, node="b"),
        # round 2: b gave no bound, c no late_by
        outcome(generation=2, node="a"),
        outcome(generation=2, node="b", clock_uncertainty=None),
        outcome(generation=2, node="c", late_by=None),
        # round 3: b gave no bound
        outcome(generation=3, node="a"),
        outcome(generation=3, node="b", clock_uncertainty=None),
        outcome(generation=3, node="c"),
    ]
    failed, missing, neither, unbounded = summarize(outcomes).events[0].rounds
    assert (failed.cell_bound, failed.bound_unknown) == (None, "the round failed")
    assert failed.failed
    assert [(c.node, c.kind, c.reason) for c in failed.causes] == [
        ("b", "too_late", "late by 2 ms")
    ]
    assert failed.spread == 0.0  # over the released ones (a, c)
    assert (missing.cell_bound, missing.bound_unknown) == (None, "1 missing")
    assert (missing.missing, missing.missing_nodes) == (1, ("c",))
    assert not missing.failed
    assert neither.cell_bound is None
    assert neither.bound_unknown == "no late_by from c; no clock bound from b"
    assert neither.spread is None
    assert unbounded.bound_unknown == "no clock bound from b"
    assert unbounded.spread == 0.0
    nobody = summarize(
        [outcome(generation=0, node=n, nodes=2, clock_uncertainty=None) for n in "ab"]
    ).events[0]
    assert nobody.rounds[0].bound_unknown == "no clock bound from all"


def test_summarize_event_figures_last_arrivers_and_unknown_round() -> None:
    """Per event: released/failed/incomplete counts, the cell bound's median (nearest
    rank) and worst with its round over the rounds that have one, the spread over the
    sound rounds, the three nodes most often last with their median lag, and the
    participants without a generation in the unknown round."""
    outcomes = []
    bounds = [3e-4, 1e-4, 5e-4, 2e-4, 4e-4]  # the cell bound of round g: 2 * bounds[g]
    lasts = ["c", "c", "b", "d", "c"]
    for g, bound in enumerate(bounds):
        order = [n for n in "abcd" if n != lasts[g]] + [lasts[g]]
        for i, node in enumerate(order):
            outcome_i = outcome(
                generation=g,
                nodes=4,
                node=node,
                called_at=T0 + g + i * 1e-3 + (g + 1) * 1e-3 * (i == 3),
                late_by=0.0,
                clock_uncertainty=bound,
            )
            outcomes.append(outcome_i)
    outcomes.append(outcome(generation=5, nodes=4, node="a", kind="broken", reason="timeout"))
    outcomes.append(outcome(generation=6, nodes=4, node="a"))
    outcomes.append(outcome(generation=None, node="e", kind="lost", reason="gone", late_by=None))
    [event] = summarize(outcomes).events
    assert [r.generation for r in event.rounds] == [0, 1, 2, 3, 4, 5, 6]
    assert (event.released, event.failed, event.incomplete) == (6, 1, 2)
    assert event.nodes == ("a", "b", "c", "d")
    assert (event.cell_bound.median, event.cell_bound.worst) == pytest.approx((6e-4, 10e-4))
    assert event.cell_bound.worst_round == 2
    assert event.bound_unknown == 2
    assert event.spread.median == 0.0
    assert [(a.node, a.count) for a in event.last_arrivers] == [("c", 3), ("b", 1), ("d", 1)]
    # the last one's lag in round g is (g + 2) ms: c in rounds 0, 1, 4 -> 2, 3, 6 ms
    assert event.last_arrivers[0].median_lag == pytest.approx(3e-3, abs=1e-6)
    assert [r.generation for r in event.failures] == [5]
    assert [(c.node, c.kind, c.reason) for c in event.unknown_round] == [("e", "lost", "gone")]


def test_summarize_names_missing_nodes_only_when_it_can_tell() -> None:
    """The missing are named (from the event's other rounds) only when exactly as many
    of its nodes are absent as are missing."""
    outcomes = [
        *(outcome(generation=0, node=n) for n in "abc"),
        *(outcome(generation=1, node=n) for n in "ab"),
        outcome(generation=2, node="a"),
        *(outcome(generation=3, node=n, nodes=4) for n in "abcd"),
        *(outcome(generation=4, node=n) for n in "ab"),
    ]
    rounds = summarize(outcomes).events[0].rounds
    assert [(r.missing, r.missing_nodes) for r in rounds] == [
        (0, ()),
        (1, ()),  # c and d absent, one missing: not named
        (2, ()),  # b, c, d absent, two missing
        (0, ()),
        (1, ()),
    ]
    named = summarize([*(outcome(generation=0, node=n) for n in "abc"), outcome(generation=1)])
    assert named.events[0].rounds[1].missing_nodes == ("b", "c")


def test_text_json_and_html_stand_odd_values_and_names() -> None:
    """Times beyond datetime's range, names with markup and quotes, and an event with
    only an unknown round give text, strict JSON and a page without markup from the
    data (escaped)."""
    hostile = '<script>alert("x")</script>'
    outcomes = [
        outcome(node=hostile, called_at=1e12, event=hostile),
        outcome(generation=None, event="early", kind="mismatch", reason=hostile),
    ]
    result = summarize(outcomes)
    record = Record(tuple(outcomes), 2, 0, None, ("early", hostile), None)
    text = "\n".join(format_report("r", record, result))
    assert "epoch 1000000000000.000" in text
    assert "unknown round (failed before learning it): a mismatch" in text
    strict_json(json.dumps(report_json("r", record, result), allow_nan=False))
    page = render_html("r", record, result)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert page.count("<svg") == 2  # the event with a round; "early" has none


# -- the command -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_report_of_a_complete_run_text_json_and_html(
    server: EmbeddedServer, client: redis.Redis, run_id: str, tmp_path: Path
) -> None:
    """Five released rounds of four nodes: the summary line, one table row per round
    with its figures, every round in the JSON, and one self-contained page with the
    charts, the stragglers' colour and a legend."""
    write(client, run_id, rounds_of(run_id, 5))
    done = report(
        server, run_id, "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == f"run {run_id!r}: 20 record entries, 1 event"
    assert lines[2].startswith("event 'step': 5 rounds, 5 released, 0 failed (2023-11-14 22:13:20")
    # node d: late 40 us +- 400 us, from -360 to 440 us, the widest: 800 us
    assert "  cell bound: median 800.0 us, worst 800.0 us (round 0)" in lines
    assert "  spread: median 30.0 us, worst 30.0 us (round 0)" in lines
    assert "  last to arrive: d 5 times (median lag 1.000 ms)" in lines
    rows = table(done.stdout)
    assert sorted(rows) == [0, 1, 2, 3, 4]
    assert rows[3] == ["4/4", "3.000", "1.000", "50.000", "30.0", "800.0", "d"]

    document = strict_json((tmp_path / "r.json").read_text())
    assert (document["run"], document["entries"], document["skipped"]) == (run_id, 20, 0)
    [event] = document["events"]
    assert (event["event"], event["released"], event["failed"], event["failures"]) == (
        "step",
        5,
        0,
        [],
    )
    assert len(event["rounds"]) == 5
    first = event["rounds"][0]
    assert first["cell_bound"] == pytest.approx(800e-6)
    assert (first["missing"], first["failed"], first["last"]) == (0, False, "d")
    assert [p["node"] for p in first["participants"]] == ["a", "b", "c", "d"]
    assert first["participants"][3]["late_by"] == pytest.approx(40e-6)

    page = (tmp_path / "r.html").read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r.html", "r.json"]
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 2
    assert "http://" not in page
    assert "https://" not in page
    assert not re.search(r"<script|<link|<img|<iframe|\ssrc=|\shref=|@import|url\(", page)
    assert f'stroke="{LAST_COLOUR}"' in page  # the last arrivers' marks
    assert f'fill="{FAILED_COLOUR}"' not in page  # no failed round in the strip
    assert "the round's last arriver" in page


@pytest.mark.timeout(60)
def test_report_shows_the_most_recent_rounds_and_json_on_stdout(
    server: EmbeddedServer, client: redis.Redis, run_id: str
) -> None:
    """``--rounds N`` shows the N most recent rounds and says how many were left out;
    ``--json -`` writes the JSON, every round, on stdout instead of the table."""
    write(client, run_id, rounds_of(run_id, 7, ("a", "b")))
    done = report(server, run_id, "--rounds", "3")
    assert done.returncode == 0, done.stderr
    assert sorted(table(done.stdout)) == [4, 5, 6]
    assert "  ... 4 earlier rounds not shown (--rounds)" in done.stdout.splitlines()
    as_json = report(server, run_id, "--json", "-")
    assert as_json.returncode == 0, as_json.stderr
    assert len(strict_json(as_json.stdout)["events"][0]["rounds"]) == 7


@pytest.mark.timeout(60)
def test_report_a_missing_participant_shows_as_missing(
    server: EmbeddedServer, client: redis.Redis, run_id: str, tmp_path: Path
) -> None:
    """A participant that wrote nothing for a round (killed in it) leaves it "2 of 3
    recorded, 1 missing", named from the other rounds, with an unknown cell bound:
    never complete."""
    outcomes = [
        o for o in rounds_of(run_id, 3, ("a", "b", "c")) if (o.generation, o.node) != (1, "c")
    ]
    write(client, run_id, outcomes)
    done = report(
        server, run_id, "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")
    )
    assert done.returncode == 0, done.stderr
    assert (
        "event 'step': 3 rounds, 3 released, 0 failed, 1 with participants missing" in done.stdout
    )
    rows = table(done.stdout)
    assert rows[1][:7] == ["2/3", "1.000", "1.000", "50.000", "10.0", "unknown", "b"]
    assert " ".join(rows[1][7:]) == "2 of 3 recorded, 1 missing (c)"
    assert rows[0][:6] == ["3/3", "2.000", "1.000", "50.000", "20.0", "600.0"]
    assert "  cell bound: median 600.0 us, worst 600.0 us (round 0); unknown in 1 rounds" in (
        done.stdout.splitlines()
    )
    missing = strict_json((tmp_path / "r.json").read_text())["events"][0]["rounds"][1]
    assert (missing["expected"], missing["recorded"], missing["missing"]) == (3, 2, 1)
    assert (missing["missing_nodes"], missing["cell_bound"]) == (["c"], None)
    assert missing["bound_unknown"] == "1 missing"
    assert "2 of 3 recorded, 1 missing (c)" in (tmp_path / "r.html").read_text()


@pytest.mark.timeout(60)
def test_report_failed_rounds_and_their_causes(
    server: EmbeddedServer, client: redis.Redis, run_id: str, tmp_path: Path
) -> None:
    """A round with a participant too late and one broken is failed: counted, listed
    with each cause (kind and reason), noted in its row, red in the page; a failure
    before the round was learned is listed as the unknown round."""
    outcomes = rounds_of(run_id, 3, ("a", "b", "c"))
    outcomes[4] = dataclasses.replace(
        outcomes[4], kind="too_late", reason="learned 3 ms late", delay=None
    )
    outcomes[5] = dataclasses.replace(
        outcomes[5], kind="broken", reason="timeout", late_by=None, clock_uncertainty=None
    )
    outcomes.append(
        outcome(run_id, generation=None, node="d", kind="lost", reason="connection lost")
    )
    write(client, run_id, outcomes)
    done = report(server, run_id, "--html", str(tmp_path / "r.html"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[2].startswith("event 'step': 3 rounds, 2 released, 1 failed (")
    failed = lines.index("  failed rounds: 1")
    assert lines[failed + 1 : failed + 3] == [
        "    round 1: b too_late (learned 3 ms late); c broken (timeout)",
        "    unknown round (failed before learning it): d lost (connection lost)",
    ]
    row = table(done.stdout)[1]
    assert row[4:7] == ["0.0", "unknown", "c"]  # the spread of a alone
    assert " ".join(row[7:]) == "failed: b too_late, c broken"
    page = (tmp_path / "r.html").read_text()
    assert f'fill="{FAILED_COLOUR}"' in page  # the failed round in the strip
    assert "round 1: b too_late (learned 3 ms late); c broken (timeout)" in page


@pytest.mark.timeout(60)
def test_report_skips_entries_pyprocsync_did_not_write(
    server: EmbeddedServer, client: redis.Redis, run_id: str
) -> None:
    """Entries of another format version, with a field missing, with bytes that are not
    UTF-8, with NaN, a huge number, an unknown kind, a digit that is not ASCII, or of
    another run are skipped with one warning naming the first; the rest is reported."""
    key = record_key("pyprocsync", run_id)
    good = encode(outcome(run_id, node="z"))
    write(client, run_id, rounds_of(run_id, 2, ("a", "b"))[:2])
    corrupt: list[dict[Any, Any]] = [
        {**good, "v": "2"},
        {k: v for k, v in good.items() if k != "node"},
        {**good, "node": b"\xff\xfe"},
        {**good, "late": "nan"},
        {**good, "called": "1e300"},
        {**good, "kind": "exploded"},
        {**good, "pid": "\u00b2"},
        encode(outcome("another-run")),
    ]
    ids = [client.xadd(key, fields) for fields in corrupt]
    write(client, run_id, rounds_of(run_id, 2, ("a", "b"))[2:])
    done = report(server, run_id)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "pyprocsync: warning: skipped 8 record entries pyprocsync did not write "
        f"(first: {ids[0].decode()}: record entry of format '2', expected '1')"
    ]
    assert done.stdout.splitlines()[0] == f"run {run_id!r}: 12 record entries, 1 event"
    rows = table(done.stdout)
    assert sorted(rows) == [0, 1]
    assert all(row[0] == "2/2" for row in rows.values())
    record = read_record(client, run_id)
    assert (record.entries, record.skipped, len(record.outcomes)) == (12, 8, 4)


@pytest.mark.timeout(60)
def test_report_of_a_key_that_is_no_stream_exits_1(
    server: EmbeddedServer, client: redis.Redis, run_id: str
) -> None:
    """A record key holding another type (WRONGTYPE) exits 1 with one line naming it."""
    client.set(record_key("pyprocsync", run_id), "not a stream")
    done = report(server, run_id)
    assert done.returncode == ExitCode.FAILED, done.stderr
    assert_one_line_error(done.stderr, repr(run_id), "is a string, not a stream", "WRONGTYPE")
    assert done.stdout == ""


@pytest.mark.timeout(60)
def test_report_of_a_run_without_record_exits_2(server: EmbeddedServer, run_id: str) -> None:
    """A run with no record exits 2 with one line saying why there may be none."""
    done = report(server, run_id)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert_one_line_error(
        done.stderr,
        f"no record of run {run_id!r} on {server.url}",
        "unknown",
        "recording switched off (record=False)",
        "expired after the run's retention",
    )
    assert done.stdout == ""


@pytest.mark.timeout(60)
def test_report_of_only_foreign_entries_exits_1(
    server: EmbeddedServer, client: redis.Redis, run_id: str
) -> None:
    """A record of nothing pyprocsync wrote: the warning, then one error line, exit 1."""
    client.xadd(record_key("pyprocsync", run_id), {"v": "0"})
    done = report(server, run_id)
    assert done.returncode == ExitCode.FAILED, done.stderr
    assert done.stderr.startswith("pyprocsync: warning: skipped 1 record entries")
    assert_one_line_error(done.stderr, "holds no entry pyprocsync wrote (1 skipped)")


@pytest.mark.timeout(60)
def test_report_unreachable_server_exits_6() -> None:
    """An unreachable server exits 6 (as ``status``) with one line naming the URL."""
    done = run("report", "--run", "r", "--redis", UNREACHABLE)
    assert done.returncode == ExitCode.CONNECTION, done.stderr
    assert_one_line_error(done.stderr, UNREACHABLE, "--redis")


@pytest.mark.timeout(60)
def test_report_event_filter(server: EmbeddedServer, client: redis.Redis, run_id: str) -> None:
    """``--event NAME`` (repeatable) reports only those events; one the record does not
    hold exits 2 naming the events it does."""
    write(client, run_id, rounds_of(run_id, 2, event="load") + rounds_of(run_id, 3, event="go"))
    both = report(server, run_id)
    assert both.returncode == 0, both.stderr
    assert sorted(run_table(both.stdout)) == [
        ("go", 0),
        ("go", 1),
        ("go", 2),
        ("load", 0),
        ("load", 1),
    ]
    assert [row[:3] for row in events_table(both.stdout).values()] == [
        ["2", "0", "0"],
        ["3", "0", "0"],
    ]
    only = report(server, run_id, "--event", "load")
    assert only.returncode == 0, only.stderr
    assert "event 'go'" not in only.stdout
    assert only.stdout.splitlines()[0] == f"run {run_id!r}: 20 record entries, 1 event"
    assert sorted(table(only.stdout, "load")) == [0, 1]
    two = report(server, run_id, "--event", "load", "--event", "go")
    assert two.stdout == both.stdout
    none = report(server, run_id, "--event", "nope")
    assert none.returncode == ExitCode.USAGE, none.stderr
    assert_one_line_error(none.stderr, "no entry of --event 'nope' (it holds 'go', 'load')")


@pytest.mark.timeout(60)
def test_report_notes_entries_gone_from_the_record(
    server: EmbeddedServer, client: redis.Redis, run_id: str
) -> None:
    """Entries trimmed off the record (``record_limit``) are counted and noted: the
    oldest round left may lack some."""
    key = record_key("pyprocsync", run_id)
    for item in rounds_of(run_id, 3, ("a", "b")):
        client.xadd(key, encode(item), maxlen=5, approximate=False)  # type: ignore[arg-type]
    assert read_record(client, run_id).gone == 1
    done = report(server, run_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == (
        "note: 1 older entries are gone from the record (record_limit): its oldest round "
        "may lack some"
    )
    assert table(done.stdout)[0][0] == "1/2"


@pytest.mark.timeout(120)
def test_report_of_4_nodes_by_1000_rounds_is_quick(
    server: EmbeddedServer, client: redis.Redis, run_id: str, tmp_path: Path
) -> None:
    """4 nodes x 1,000 rounds: text, JSON and page in well under a few seconds (the
    command takes about 0.8 s on the project's 2-core VM, start-up included)."""
    write(client, run_id, rounds_of(run_id, 1000))
    started = time.monotonic()
    done = report(
        server, run_id, "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "event 'step': 1000 rounds, 1000 released, 0 failed" in done.stdout
    assert len(table(done.stdout)) == 20
    assert took < 30.0, f"{took:.2f} s"  # a hang guard, not a speed figure
    assert (tmp_path / "r.html").stat().st_size < 2_000_000


# -- usage -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_report_help_and_documentation() -> None:
    """``report --help`` shows its options, the password sources and the URL variable;
    docs/cli.rst has a section on it naming every option; ``--rounds 0`` is a usage
    error."""
    done = run("report", "--help")
    assert done.returncode == 0, done.stderr
    options = ["--run", "--event", "--rounds", "--json", "--html", "--redis", "--password-file"]
    for option in options:
        assert option in done.stdout
    assert "PYPROCSYNC_PASSWORD" in done.stdout
    assert URL_ENV in done.stdout
    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.rst").read_text()
    section = page.split("``pyprocsync report``\n---------------------\n", 1)[1].split("\n---")[0]
    for option in options:
        assert f"``{option}" in section, option
    bad = run("report", "--rounds", "0", "--redis", UNREACHABLE)
    assert bad.returncode == ExitCode.USAGE
    assert "--rounds" in bad.stderr.splitlines()[-1]


def test_a_run_of_a_new_name_per_point_is_summarized_as_one_timeline() -> None:
    """With a new name per synchronization point (one round per event), ``Report.run``
    holds every round in call order, names the missing from the run's nodes, and its
    worst figures name their event; the text shows that view and a table of events, the
    page one section for it (none per single-round event), the JSON an ``all`` key."""
    points = [
        dataclasses.replace(o, event=f"p{g}", generation=0, called_at=o.called_at + g)
        for g in range(4)
        for o in rounds_of("r", 1, ("a", "b", "c"))
    ]
    points = [o for o in points if not (o.event == "p2" and o.node == "b")]  # b killed
    points.append(outcome(event="p3", node="c", kind="too_late", reason="late", called_at=T0 + 9))
    points = [o for o in points if not (o.event == "p3" and o.node == "c" and o.kind == "released")]
    result = summarize(points)
    whole = result.run
    assert [(r.event, r.generation) for r in whole.rounds] == [
        ("p0", 0),
        ("p1", 0),
        ("p2", 0),
        ("p3", 0),
    ]
    assert whole.nodes == ("a", "b", "c")
    assert whole.rounds[2].missing_nodes == ("b",)  # from the run's nodes
    assert (whole.released, whole.failed, whole.incomplete) == (3, 1, 1)
    assert [(r.event, r.generation) for r in whole.failures] == [("p3", 0)]
    assert whole.cell_bound.worst_event == "p0"
    lines = format_report("r", Record(tuple(points), len(points), 0, None, (), 0), result)
    text = "\n".join(lines)
    assert lines[2] == (
        "all events: 4 rounds, 3 released, 1 failed, 1 with participants missing "
        "(2023-11-14 22:13:20.000 to 2023-11-14 22:13:23.000 UTC)"
    )
    assert (
        "  cell bound: median 600.0 us, worst 600.0 us ('p0' round 0); unknown in 2 rounds" in lines
    )
    assert "    'p3' round 0: c too_late (late)" in lines
    rows = run_table(text)
    assert rows[("p2", 0)][0] == "2/3"
    assert "(b)" in rows[("p2", 0)]
    assert events_table(text)["p3"][:3] == ["1", "1", "0"]
    page = render_html("r", Record(tuple(points), len(points), 0, None, (), 0), result)
    assert page.count("<section>") == 2  # all events, the table of events
    assert "&#x27;p3&#x27; round 0: c too_late (late)" in page
    data = report_json("r", Record(tuple(points), len(points), 0, None, (), 0), result)
    assert data["all"]["failures"] == [["p3", 0]]
    assert [r["event"] for r in data["all"]["rounds"]] == ["p0", "p1", "p2", "p3"]
