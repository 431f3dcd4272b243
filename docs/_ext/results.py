"""Figures in the documentation come from results files, never from the page's text.

Each file in ``docs/results/`` is the ``--json`` output of a named command (the file
records the command and when and where it ran). Pages quote them through:

* ``.. lab-table:: results/lab.json``: the table of ``pyprocsync lab`` (one row per
  scenario and clock mode), with a caption naming the command, the date and machine;
* ``.. pattern-table:: results/patterns.json``: the table of
  ``perf_tests/patterns.py`` (one row per participant pattern, each a ``pyprocsync
  bench`` command, beside its limit reference);
* ``:result:`results/FILE.json:a.b.c``` (optionally ``|format``, a Python format spec,
  default ``.1f``): one value of a results file, looked up along the dotted path.

A page that needs a figure adds it to a results file by running the command; the
build fails (``-W``) when a file or a value is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective, SphinxRole


def load(env: Any, name: str) -> Any:
    """The JSON of ``docs/<name>``, noted as a dependency of the page being read."""
    path = Path(env.srcdir) / name
    env.note_dependency(str(path))
    return json.loads(path.read_text(encoding="utf-8"))


def lookup(data: Any, dotted: str) -> Any:
    """``data[a][b][c]`` for ``dotted`` ``a.b.c`` (integers index lists)."""
    for part in dotted.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def lab_rows(data: dict[str, Any]) -> list[list[str]]:
    """Rows of the lab table: medians across the repeats, counts summed."""
    rows = []
    for name, modes in data["results"].items():
        scenario = data["scenarios"][name]
        links = "; ".join(sorted({h["link"] for h in scenario["hosts"]}))
        clocks = "; ".join(h["clock"] for h in scenario["hosts"])
        for mode, blocks in modes.items():
            spread = [
                _median([b["spread_us"][p] for b in blocks]) for p in ("p50", "p90", "p99", "max")
            ]
            bounds = sum(b["bounds"] for b in blocks)
            covered = sum(b["covered"] for b in blocks)
            coverage = f"{covered}/{bounds}" if bounds else "no bound"
            rows.append(
                [
                    f"{name}: {scenario['description']}",
                    links,
                    clocks,
                    mode,
                    " / ".join(_cell(v) for v in spread),
                    str(sum(b["too_late"] for b in blocks)),
                    coverage,
                    _cell(_median([b["bound_us"]["p50"] for b in blocks])),
                ]
            )
    return rows


def pattern_rows(data: dict[str, Any]) -> list[list[str]]:
    """Rows of the pattern table: medians across the runs, counts summed."""
    rows = []
    for result in data["results"].values():
        runs = result["runs"]

        def med(phase: str, figure: str, percentile: str, runs: list[Any] = runs) -> float | None:
            return _median([r[phase][figure][percentile] for r in runs])

        spread, limit = med("sync", "spread_us", "p50"), med("limit", "spread_us", "p50")
        ratio = _cell(None) if spread is None or not limit else f"{spread / limit:.2g}"
        participations = sum(
            r["pattern"]["participants"] * r["sync"]["completed_rounds"] for r in runs
        )
        rate = _median([r["sync"]["barriers_per_s"] or None for r in runs])
        rows.append(
            [
                f"``{result['command']}``",
                f"{_cell(spread)} / {_cell(limit)}",
                ratio,
                f"{_cell(med('sync', 'late_us', 'p50'))} / {_cell(med('limit', 'late_us', 'p50'))}",
                f"{_cell(med('sync', 'late_us', 'p99'))} / {_cell(med('limit', 'late_us', 'p99'))}",
                f"{sum(r['sync']['too_late'] for r in runs)} / {participations}",
                _cell(rate),
            ]
        )
    return rows


def _median(values: list[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    middle = len(known) // 2
    return known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2


class LabTable(SphinxDirective):
    """``.. lab-table:: results/lab.json``"""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        data = load(self.env, self.arguments[0])
        header = [
            "cell",
            "links (one-way µs)",
            "clocks",
            "mode",
            "true spread p50 / p90 / p99 / max (µs)",
            "too late",
            "bound covered",
            "bound p50 (µs)",
        ]
        caption = (
            f"``{data['command']}``, {data['measured']} on {data['machine']}: "
            f"{data['rounds']} rounds per block, {data['repeat']} repeats"
        )
        return _table(self, caption, [header, *lab_rows(data)])


class PatternTable(SphinxDirective):
    """``.. pattern-table:: results/patterns.json``"""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        data = load(self.env, self.arguments[0])
        header = [
            "pattern (the bench command)",
            "spread p50 (µs): sync / limit",
            "ratio",
            "late p50 (µs): sync / limit",
            "late p99 (µs): sync / limit",
            "too late / participations",
            "rounds/s",
        ]
        caption = (
            f"``{data['command']}``, {data['measured']} on {data['machine']}: "
            f"medians of {data['repeat']} runs"
        )
        return _table(self, caption, [header, *pattern_rows(data)])


def _table(directive: SphinxDirective, caption: str, rows: list[list[str]]) -> list[nodes.Node]:
    """A list-table of ``rows`` (the first is the header) under ``caption``."""
    lines = [f".. list-table:: {caption}", "   :header-rows: 1", ""]
    for row in rows:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    container = nodes.container()
    directive.state.nested_parse(StringList(lines, source=directive.arguments[0]), 0, container)
    return list(container.children)


class ResultRole(SphinxRole):
    """``:result:`results/FILE.json:dotted.path|format```"""

    def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        reference, _, spec = self.text.partition("|")
        name, _, dotted = reference.partition(":")
        try:
            value = lookup(load(self.env, name), dotted)
            rendered = format(value, spec or ".1f")
        except (OSError, KeyError, IndexError, ValueError, TypeError) as exc:
            message = self.inliner.reporter.error(
                f"no figure {self.text!r}: {exc!r}", line=self.lineno
            )
            return [nodes.problematic(self.rawtext, self.rawtext)], [message]
        return [nodes.Text(rendered)], []


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("lab-table", LabTable)
    app.add_directive("pattern-table", PatternTable)
    app.add_role("result", ResultRole())
    return {"parallel_read_safe": True}
