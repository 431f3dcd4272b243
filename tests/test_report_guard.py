"""The suite's own pytest plugin (``report_guard.py``): a failure whose formatting
raises is reported as a plain failure, and the run goes on (issue 21: one such failure
ended the whole run on CPython 3.11 and hid ~800 tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

#: A test whose failure pytest cannot format (the parse of its source fails as it did
#: on CPython 3.11), and one after it.
UNFORMATTABLE = """
import ast

def test_failure_that_cannot_be_formatted(monkeypatch):
    def parse(*args, **kwargs):
        raise SystemError("AST constructor recursion depth mismatch (before=147, after=196)")

    monkeypatch.setattr(ast, "parse", parse)
    assert 1 == 2

def test_after_it():
    pass
"""


@pytest.fixture
def suite_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's folder on the inner run's path, where ``report_guard`` lives."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))


@pytest.mark.usefixtures("suite_plugins")
def test_a_failure_that_cannot_be_formatted_is_reported_and_the_run_goes_on(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(UNFORMATTABLE)
    result = pytester.runpytest_subprocess("-p", "report_guard", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    # The guard's own report (without it, pytest 8 on CPython 3.11 ended the run with an
    # INTERNALERROR; other versions report the failure their own way).
    result.stdout.fnmatch_lines(["*pytest could not format this failure: SystemError*"])
    assert "INTERNALERROR" not in result.stdout.str()
