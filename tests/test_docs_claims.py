"""What the user documentation says is true: its examples run, the options and files it
names exist, its figures come from results files, and it stays short.

The pages are README.rst and docs/*.rst (see ``docs_support``). Python blocks run as
scripts and ``sh`` blocks with ``bash -e``, each against an embedded server of its own
(``$PYPROCSYNC_REDIS_URL``); a block of class ``run-N`` runs as ``N`` participants at
once, the machines of a cell on one host.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from docs_support import DEVELOPER_PAGES, PAGES, ROOT, RUN_LANGUAGES, Block, blocks, prose, words

from pyprocsync.tools.server import EmbeddedServer

ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
RUNNABLE = [b for b in ALL_BLOCKS if b.language in RUN_LANGUAGES and "no-run" not in b.classes]

#: Longest a block may run, seconds (a cell of participants included).
BLOCK_TIMEOUT = 120


def _run_copies(block: Block, tmp_path: Path, env: dict[str, str]) -> list[Any]:
    """Run ``block.copies`` copies of ``block`` at once; their completed processes."""
    if block.language == "python":
        script = tmp_path / "example.py"
        script.write_text(block.code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    else:
        script = tmp_path / "example.sh"
        script.write_text(block.code, encoding="utf-8")
        argv = ["bash", "-e", "-o", "pipefail", str(script)]
    done: list[Any] = [None] * block.copies

    def one(number: int) -> None:
        done[number] = subprocess.run(
            argv,
            cwd=tmp_path,
            env={**env, "PARTICIPANT": str(number)},
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            check=False,
        )

    threads = [threading.Thread(target=one, args=(n,)) for n in range(block.copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done


@pytest.mark.timeout(BLOCK_TIMEOUT + 60)
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_the_example_runs(block: Block, tmp_path: Path) -> None:
    """Each Python and shell example of the pages runs to exit 0 (all copies of a
    ``run-N`` one) against a server of its own."""
    with EmbeddedServer() as server:
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "PYPROCSYNC_REDIS_URL": server.url,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        }
        for copy in _run_copies(block, tmp_path, env):
            assert copy is not None, "a participant did not finish"
            assert copy.returncode == 0, (
                f"{block.id} exited {copy.returncode}\n--- code\n{block.code}"
                f"--- stdout\n{copy.stdout}--- stderr\n{copy.stderr}"
            )


def test_blocks_that_do_not_run_are_shell_commands_of_another_machine() -> None:
    """Only shell blocks may be ``no-run`` (root, systemd, a second machine, a server in
    the foreground); every Python example runs. Their number is printed."""
    skipped = [b for b in ALL_BLOCKS if "no-run" in b.classes]
    assert all(b.language == "sh" for b in skipped), [b.id for b in skipped if b.language != "sh"]
    ran = len(RUNNABLE)
    print(f"\n{ran} examples run, {len(skipped)} shell blocks do not: {[b.id for b in skipped]}")
    assert ran >= 2 * len(skipped)


# -- options and files named -----------------------------------------------------------------

_COMMANDS = ("bench", "sync", "server", "status", "reset", "clock", "report", "lab")


def _help(command: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "pyprocsync", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    return {command: _help(command) for command in _COMMANDS}


#: ``--options`` the pages name that belong to other programs.
FOREIGN_OPTIONS = {
    "--help",
    "--version",
    "--save",
    "--appendonly",
    "--port",
    "--bind",
    "--protected-mode",
    "--requirepass",
    "--maxmemory-policy",
    "--network",
    "--net",
    "--cap-add",
    "--now",
    "--dry-run",
}

_PYPROCSYNC_LINE = re.compile(r"pyprocsync\s+(" + "|".join(_COMMANDS) + r")\b([^\n`]*)")
_OPTION_WORD = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]+)")


def test_every_option_a_page_names_exists(helps: dict[str, str]) -> None:
    """An option on a ``pyprocsync COMMAND ...`` line is in that command's ``--help``;
    any other ``--option`` a page names is in some command's ``--help`` or belongs to
    another program (FOREIGN_OPTIONS)."""
    wrong = []
    every = "\n".join(helps.values())
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in _PYPROCSYNC_LINE.finditer(text):
            command, rest = match.group(1), match.group(2).split(" -- ")[0]
            for option in _OPTION_WORD.findall(rest):
                if option not in helps[command] and option not in FOREIGN_OPTIONS:
                    wrong.append(f"{page.name}: pyprocsync {command} {option}")
        for option in set(_OPTION_WORD.findall(text)):
            if option not in every and option not in FOREIGN_OPTIONS:
                wrong.append(f"{page.name}: {option}")
    assert not wrong, "\n".join(sorted(set(wrong)))


_FILE = re.compile(r"(?<![\w/.-])((?:tests|perf_tests|docs|pyprocsync|\.ci)/[\w./-]*\w)")


def test_every_file_a_page_names_exists() -> None:
    """Every repository path a page names (``tests/...``, ``docs/...`` and so on)
    exists."""
    missing = [
        f"{page.name}: {name}"
        for page in PAGES
        for name in set(_FILE.findall(page.read_text(encoding="utf-8")))
        if not (ROOT / name).exists() and not (ROOT / "docs" / name).exists()
    ]
    assert not missing, "\n".join(sorted(missing))


# -- figures ------------------------------------------------------------------------------------

#: A figure in prose: a number with a unit of short times or a rate.
_FIGURE = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)\s?(µs|us|ms|rounds/s)(?!\w)")


def test_every_figure_in_prose_comes_from_a_results_file() -> None:
    """A page's prose quotes a figure in µs, ms or rounds/s only through a ``:result:`` role
    (or a table directive), which the build fills from a results file of docs/results
    and fails on when the value is missing. A bare figure fails here; a parameter value
    a user sets is written as a ``literal`` (``max_uncertainty=200e-6``)."""
    stray = []
    for page in PAGES:
        text = re.sub(r":result:`[^`]*`", "", prose(page))
        text = re.sub(r"``[^`]*``", "", text)
        stray += [f"{page.name}: {match.group(0)}" for match in _FIGURE.finditer(text)]
    assert not stray, "figures not from a results file:\n" + "\n".join(stray)


# -- length ---------------------------------------------------------------------------------------

#: Words of the user pages (README and docs/ but the developer pages) on 2026-12-07,
#: before they were rewritten for the reader who acts; the target is half.
WORDS_BEFORE = 41_474 - 2_317 - 3


def test_word_counts() -> None:
    """Print each user page's words; together they hold at most half the words of
    before (new pages included), and the README at most 150 lines."""
    counts = {p.name: words(p) for p in PAGES if p.name not in DEVELOPER_PAGES}
    total = sum(counts.values())
    print()
    for name, count in sorted(counts.items(), key=lambda item: -item[1]):
        print(f"{count:>7}  {name}")
    print(f"{total:>7}  user pages ({total / WORDS_BEFORE:.0%} of {WORDS_BEFORE} before)")
    assert total <= WORDS_BEFORE // 2
    assert len((ROOT / "README.rst").read_text(encoding="utf-8").splitlines()) <= 150
