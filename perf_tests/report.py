"""Cross-machine figures of a run measured with ``node.py``.

Reads every node's record of ``--run`` from Redis and prints:

* each node's clock offset from the server (``server - node``) with its uncertainty
  (half the round-trip time of the best ``TIME`` sample), before and after the run;
* the spread of return instants per round across all nodes (p50/p90/p99/max), *raw*
  (each node's own wall clock, which is what pyprocsync relies on) and *corrected* by
  the measured offsets (every instant moved onto the server's clock);
* each node's lateness (return instant minus the agreed instant), raw (its own clock:
  what the node itself saw) and corrected: its return instant on the server's clock
  minus the agreed instant on the server's clock, the agreed instant having been read
  on the clock of the round's last arriver, which fixed it;
* beside them, the limit reference of the same run: the spread across nodes (raw and
  corrected) and the lateness of the nodes waking at instants known in advance,
  without Redis (see ``node.py``).

Every return instant is the node's ``time.time_ns()`` read on the line after ``sync``
(or the limit's wait) returned. Rounds are matched by their number (each node's i-th
round). The raw figures hide clock disagreement between machines, the corrected ones show it
(within the offsets' uncertainty). Example::

    python perf_tests/report.py --redis redis://:PW@server:6379/0 --run lab-1
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import redis
from _common import PERCENTILES, ExitCode, Failure, check_reachable, fmt, nan_to_none, redact, run
from node import records_key

from pyprocsync.tools.bench import LATE_OVER_US
from pyprocsync.tools.stats import summary

PROG = "report"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="report.py",
        description="Print the cross-machine spread, each node's lateness (raw and "
        "corrected by the measured clock offsets) and the offsets of a node.py run.",
    )
    parser.add_argument("--redis", metavar="URL", required=True, help="the shared Redis server")
    parser.add_argument("--run", required=True, help="run id given to node.py")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    return parser


def load(url: str, run_id: str) -> list[dict[str, Any]]:
    """Every node's record of ``run_id``, ordered by node id."""
    check_reachable(url)
    with redis.Redis.from_url(url) as client:
        fields = client.hgetall(records_key(run_id))
    if not fields:
        raise Failure(
            f"no records of run {run_id!r} on {redact(url)} (node.py keeps them for one day)"
        )
    try:
        records = [json.loads(value) for value in fields.values()]
    except ValueError as exc:
        raise Failure(f"the records of run {run_id!r} are not node.py's: {exc}") from None
    return sorted(records, key=lambda r: r["node_id"])


def _offset_ns(record: dict[str, Any]) -> float:
    return float(record["offset_before"]["offset_us"]) * 1e3


def _matched_rounds(records: list[dict[str, Any]]) -> tuple[list[int], int]:
    """Rounds (by number) every node completed with the same generation and agreed
    instant; and how many disagreed."""
    by_round = [{i: (gen, release) for i, gen, _, release, _ in r["rounds"]} for r in records]
    common = set(by_round[0]).intersection(*by_round[1:])
    agreed = sorted(i for i in common if len({b[i] for b in by_round}) == 1)
    return agreed, len(common) - len(agreed)


def _limit(records: list[dict[str, Any]], offsets: list[float]) -> dict[str, Any]:
    """The limit reference: spread per instant across nodes (raw and corrected) and
    every node's lateness (its reading minus the instant, on its own clock)."""
    limits = [{i: (target, ret) for i, target, ret in r.get("limit", [])} for r in records]
    common = sorted(set(limits[0]).intersection(*limits[1:]))
    raw_spread, corrected_spread = [], []
    late: list[list[float]] = [[] for _ in records]
    for i in common:
        returns = [limit[i][1] for limit in limits]
        moved = [ret + off for ret, off in zip(returns, offsets, strict=True)]
        raw_spread.append((max(returns) - min(returns)) / 1e3)
        corrected_spread.append((max(moved) - min(moved)) / 1e3)
        for node, limit in zip(late, limits, strict=True):
            node.append((limit[i][1] - limit[i][0]) / 1e3)
    return {
        "instants": len(common),
        "spread_us": {"raw": summary(raw_spread), "corrected": summary(corrected_spread)},
        "late_us": summary(value for node in late for value in node),
        "late_per_node_us": [summary(node) for node in late],
    }


def analyse(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Compute the offsets, the spread per round and each node's lateness, raw and corrected."""
    nodes = records[0]["nodes"]
    numbers, disagreed = _matched_rounds(records)
    rounds = [{i: (idx, rel, ret) for i, _, idx, rel, ret in r["rounds"]} for r in records]
    offsets = [_offset_ns(r) for r in records]
    raw_spread, corrected_spread = [], []
    raw_late: list[list[float]] = [[] for _ in records]
    corrected_late: list[list[float]] = [[] for _ in records]
    last_arrivals = [0] * len(records)
    for number in numbers:
        rows = [node_rounds[number] for node_rounds in rounds]
        returns = [ret for _, _, ret in rows]
        moved = [ret + off for ret, off in zip(returns, offsets, strict=True)]
        raw_spread.append((max(returns) - min(returns)) / 1e3)
        corrected_spread.append((max(moved) - min(moved)) / 1e3)
        release_ns = rows[0][1] * 1000
        fixer = next((i for i, (idx, _, _) in enumerate(rows) if idx == nodes - 1), None)
        if fixer is not None:
            last_arrivals[fixer] += 1
        for i, ret in enumerate(returns):
            raw_late[i].append((ret - release_ns) / 1e3)
            if fixer is not None:
                corrected_late[i].append((moved[i] - (release_ns + offsets[fixer])) / 1e3)
    uncertainties = sorted((r["offset_before"]["uncertainty_us"] for r in records), reverse=True)
    limit = _limit(records, offsets)
    return {
        "nodes_expected": nodes,
        "nodes_reported": len(records),
        "rounds_planned": max(r["rounds_planned"] for r in records),
        "rounds_matched": len(numbers),
        "rounds_disagreeing": disagreed,
        "delay": records[0]["delay"],
        "think": records[0]["think"],
        "spread_us": {"raw": summary(raw_spread), "corrected": summary(corrected_spread)},
        "spread_uncertainty_us": sum(uncertainties[:2]),
        "names": records[0].get("names", "same"),
        "limit": limit,
        "nodes": [
            {
                "node_id": r["node_id"],
                "host": r["host"],
                "offset_before": r["offset_before"],
                "offset_after": r.get("offset_after"),
                "rounds": len(r["rounds"]),
                "last_arrivals": last_arrivals[i],
                "late_us": {
                    "raw": summary(raw_late[i]),
                    "corrected": summary(corrected_late[i]),
                },
                "late_over_1ms": sum(1 for late in raw_late[i] if late > LATE_OVER_US),
                "limit_late_us": limit["late_per_node_us"][i],
                "errors": r["errors"],
            }
            for i, r in enumerate(records)
        ],
    }


def _signed(value: float, width: int) -> str:
    return f"{value:>+{width}.1f}" if math.isfinite(value) else f"{'-':>{width}}"


def _offset_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        "clock offsets (server - node, us), from the lowest-RTT TIME round trip",
        f"  {'node':<28}{'offset':>10}{'+-':>8}{'RTT':>9}{'after':>10}{'drift':>9}{'last in':>9}",
    ]
    for node in result["nodes"]:
        before, after = node["offset_before"], node["offset_after"] or {}
        after_us = after.get("offset_us", math.nan)
        lines.append(
            f"  {node['node_id'][:27]:<28}{before['offset_us']:>+10.1f}"
            f"{before['uncertainty_us']:>8.1f}{before['rtt_us']:>9.1f}"
            f"{_signed(after_us, 10)}{_signed(after_us - before['offset_us'], 9)}"
            f"{node['last_arrivals']:>9}"
        )
    return lines


def format_report(result: dict[str, Any], run_id: str) -> str:
    """The report as printed."""
    header = f"  {'':<28}" + "".join(f"{p:>10}" for p in PERCENTILES)

    def row(label: str, values: dict[str, float]) -> str:
        return f"  {label[:27]:<28}" + "".join(fmt(values[p], 10) for p in PERCENTILES)

    limit = result["limit"]
    names = "a new name per round" if result["names"] == "distinct" else "one name"
    lines = [
        f"run {run_id!r}: {result['nodes_reported']}/{result['nodes_expected']} nodes reported, "
        f"{result['rounds_matched']}/{result['rounds_planned']} rounds completed by all, "
        f"delay {result['delay']:g} s, think {result['think']:g} s, {names}",
        "every figure read by each node on its line after sync (or the limit's wait) "
        f"returns; limit: {limit['instants']} instants known in advance, no Redis",
        "",
        *_offset_lines(result),
        "",
        "spread of return instants per round, across nodes (us)",
        header,
        row("raw (own clocks)", result["spread_us"]["raw"]),
        row("limit, raw", limit["spread_us"]["raw"]),
        row("corrected (server clock)", result["spread_us"]["corrected"]),
        row("limit, corrected", limit["spread_us"]["corrected"]),
        f"  corrected spread is uncertain by up to +-{result['spread_uncertainty_us']:.1f} us",
    ]
    for kind, title in (
        ("raw", "lateness by each node's own clock: return - agreed instant (us)"),
        ("corrected", "lateness on the server's clock, corrected by the offsets (us)"),
    ):
        lines += ["", title, header + f"{'> 1 ms':>10}" * (kind == "raw")]
        for node in result["nodes"]:
            text = row(node["node_id"], node["late_us"][kind])
            if kind == "raw":
                text += f"{node['late_over_1ms']:>10}"
            lines.append(text)
        if kind == "raw":
            lines.append(row("limit, all nodes", limit["late_us"]))
    if result["rounds_disagreeing"]:
        lines.append(f"\n{result['rounds_disagreeing']} rounds had different agreed instants")
    lines += [
        f"error: {node['node_id']}: {error}" for node in result["nodes"] for error in node["errors"]
    ]
    return "\n".join(lines)


def main() -> int:
    """Load, analyse and print; the status is non-zero when a node is missing or failed."""
    args = _parser().parse_args()
    records = load(args.redis, args.run)
    try:
        result = analyse(records)
    except (KeyError, TypeError, ValueError) as exc:
        raise Failure(f"the records of run {args.run!r} are incomplete: {exc!r}") from None
    print(format_report(result, args.run))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(nan_to_none(result), file, indent=2)
            file.write("\n")
    if result["nodes_reported"] < result["nodes_expected"]:
        raise Failure(
            f"only {result['nodes_reported']} of {result['nodes_expected']} nodes reported "
            "(still running, or failed before storing)"
        )
    if any(node["errors"] for node in result["nodes"]):
        raise Failure("some nodes failed (see the errors above)", ExitCode.FAILED)
    return 0


if __name__ == "__main__":
    run(PROG, main)
