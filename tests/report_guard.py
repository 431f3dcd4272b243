"""A pytest plugin of the suite: the report of a failing test is always written, and
the formatting of one failure never ends the run (``conftest.py`` loads it).

Issue 21: a fresh run on CPython 3.11.7 ended in an INTERNALERROR that hid ~800 tests.
CPython 3.11 keeps the depth counter of ``ast`` construction in per-interpreter state
that a nested ``ast.parse`` overwrites (fixed in 3.12). pytest parses the test's source
to format a failure; a garbage collection during that parse can run the finalizer of
an object the failed test left open (a redis-py client, a connection), whose
``ResourceWarning`` pytest formats at once, and on 3.11 ``traceback`` parses source
too (to place its ``^^^`` marks). The outer parse then fails with "SystemError: AST
constructor recursion depth mismatch", the xdist worker reports an internal error and
the controller stops the whole run. So:

* each report is built with the collector paused: no finalizer runs inside pytest's
  parse (objects freed by reference counting never run one there either: the parse
  frees none of the test's objects);
* a report whose formatting raises anyway becomes a plain-text failure report (the
  exception and what went wrong while formatting it), so the worker goes on.
"""

from __future__ import annotations

import gc
import traceback
from collections.abc import Generator

import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    collecting = gc.isenabled()
    gc.disable()
    try:
        return (yield)
    except Exception as exc:  # reported as the test's failure instead
        return plain_report(item, call, exc)
    finally:
        if collecting:
            gc.enable()


def plain_report(
    item: pytest.Item, call: pytest.CallInfo[None], formatting_error: Exception
) -> pytest.TestReport:
    """A failure report of ``item`` for the phase ``call``, in plain text."""
    failure = "(no exception)"
    if call.excinfo is not None:
        try:
            failure = "".join(traceback.format_exception(call.excinfo.value))
        except Exception:  # the same trouble again: say what we know
            failure = repr(call.excinfo.value)
    longrepr = f"{failure}\npytest could not format this failure: {formatting_error!r}"
    return pytest.TestReport(
        item.nodeid,
        item.location,
        dict.fromkeys(item.keywords, 1),
        "failed",
        longrepr,
        call.when,
        duration=call.duration,
        start=call.start,
        stop=call.stop,
        user_properties=item.user_properties,
    )
