"""Reading the user documentation (README.rst and docs/*.rst) as the docs tests check it.

A *block* is a ``.. code-block:: LANGUAGE`` of a page with its ``:class:`` words. The
classes the tests know:

* ``run-N``: the example is one participant of a cell of ``N``; the test runs ``N``
  copies at once (the machines of a cell, with the server on this one).
* ``no-run``: a shell block that cannot run in a test (it needs root, systemd or a
  second machine, or it starts a server in the foreground); the tests list them.

Every other ``python`` block runs as a script and every other ``sh`` block with ``bash
-e``, each against an embedded server of its own whose URL is in
``$PYPROCSYNC_REDIS_URL``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The pages a user reads: the README and every page of docs/.
PAGES = (ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst")))

#: Pages about the project's own development, not counted as user pages.
DEVELOPER_PAGES = {"architecture.rst", "history.rst"}

#: Languages of the blocks the tests run.
RUN_LANGUAGES = {"python", "sh"}

_DIRECTIVE = re.compile(r"^(\s*)\.\. code-block::\s*(\S+)\s*$")
_OPTION = re.compile(r"^\s+:(\w[\w-]*):\s*(.*)$")


@dataclass(frozen=True)
class Block:
    """One code block of a page."""

    page: str
    line: int
    language: str
    classes: frozenset[str]
    code: str

    @property
    def copies(self) -> int:
        """How many participants run it at once (``run-N``; default 1)."""
        for word in self.classes:
            if word.startswith("run-"):
                return int(word[4:])
        return 1

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The code blocks of ``path``, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    n = 0
    while n < len(lines):
        match = _DIRECTIVE.match(lines[n])
        n += 1
        if not match:
            continue
        start, indent = n, len(match.group(1))
        classes: set[str] = set()
        while n < len(lines) and (option := _OPTION.match(lines[n])):
            if option.group(1) == "class":
                classes.update(option.group(2).split())
            n += 1
        body = []
        while n < len(lines) and (not lines[n].strip() or _indent(lines[n]) > indent):
            body.append(lines[n])
            n += 1
        code = _dedent(body)
        found.append(Block(path.name, start, match.group(2), frozenset(classes), code))
    return found


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _dedent(body: list[str]) -> str:
    text = list(body)
    while text and not text[-1].strip():
        text.pop()
    while text and not text[0].strip():
        text.pop(0)
    margin = min((_indent(line) for line in text if line.strip()), default=0)
    return "\n".join(line[margin:] for line in text) + "\n"


def prose(path: Path) -> str:
    """The text of ``path`` without its code blocks (what a reader reads as prose)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    skipping, indent = False, 0
    for line in lines:
        match = _DIRECTIVE.match(line)
        if match:
            skipping, indent = True, len(match.group(1))
            continue
        if skipping and (not line.strip() or _indent(line) > indent or _OPTION.match(line)):
            continue
        skipping = False
        kept.append(line)
    return "\n".join(kept)


def words(path: Path) -> int:
    """Words of ``path``, its code blocks included (as ``wc -w`` counts them)."""
    return len(path.read_text(encoding="utf-8").split())
