"""The pytest plugin shipped in the package (``pyprocsync.tools.pytest_plugin``), as a user
meets it: pytest runs, in a subprocess of its own (``pytester``), test files a user
would write, with the plugin loaded through its ``pytest11`` entry point.

The example of docs/testing.rst (docs/examples/) runs here as it is, so the page shows
a test file that works.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"

#: A user's test file: one test uses the fake fixture, one uses no fixture of ours.
FAKE_AND_PLAIN = """
def test_uses_the_fake(pyprocsync_fake):
    assert pyprocsync_fake.procsync("run", 0.05).sync("e", 1, 10).index == 0

def test_plain():
    assert True
"""


def test_docs_example_passes(pytester: pytest.Pytester) -> None:
    """docs/examples/test_robot_cell.py passes: threads on the fake fixture, and three
    processes of docs/examples/robot_cell.py on the session server. Warnings are
    errors, so the plugin raises none."""
    for name in ("robot_cell.py", "test_robot_cell.py"):
        shutil.copy(EXAMPLES / name, pytester.path / name)
    result = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_fixtures_come_from_the_entry_point(pytester: pytest.Pytester) -> None:
    """The fixtures are there without any conftest; ``-p no:pyprocsync`` removes them."""
    listed = pytester.runpytest_subprocess("--fixtures")
    for name in ("pyprocsync_server", "pyprocsync_url", "pyprocsync_run_id", "pyprocsync_fake"):
        assert name in listed.stdout.str()
    pytester.makepyfile(FAKE_AND_PLAIN)
    without = pytester.runpytest_subprocess("-p", "no:pyprocsync")
    without.assert_outcomes(passed=1, errors=1)
    without.stdout.fnmatch_lines(["*fixture 'pyprocsync_fake' not found*"])


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("fakeredis", "pyprocsync_fake needs fakeredis (import of fakeredis halted"),
        ("lupa", "pyprocsync_fake needs fakeredis with Lua support, and lupa is not installed"),
    ],
)
def test_missing_fakeredis_fails_only_its_tests(
    pytester: pytest.Pytester, missing: str, message: str
) -> None:
    """Without fakeredis (or its Lua engine) the tests that use ``pyprocsync_fake`` fail
    with a message naming the extra to install; the other tests pass."""
    pytester.makeconftest(f"import sys\nsys.modules[{missing!r}] = None\n")
    pytester.makepyfile(FAKE_AND_PLAIN)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, errors=1)
    assert message in result.stdout.str()
    assert "pip install -e '.[testing]'" in result.stdout.str()


def test_missing_server_fails_only_its_tests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a server binary the tests that use ``pyprocsync_server`` (or its URL)
    fail, saying how to get one; the other tests pass."""
    monkeypatch.setenv("PYPROCSYNC_SERVER_BIN", str(pytester.path / "no-such-server"))
    pytester.makepyfile(
        """
        def test_url(pyprocsync_url):
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*pyprocsync_server: PYPROCSYNC_SERVER_BIN=*not an executable*"])


def test_session_server_and_run_ids(pytester: pytest.Pytester) -> None:
    """One server serves the session (the same URL in every test), and every test gets
    a run id of its own."""
    pytester.makepyfile(
        """
        import redis

        seen = []

        def test_one(pyprocsync_url, pyprocsync_run_id):
            seen.append((pyprocsync_url, pyprocsync_run_id))
            with redis.Redis.from_url(pyprocsync_url) as client:
                assert client.ping()

        def test_two(pyprocsync_server, pyprocsync_url, pyprocsync_run_id):
            seen.append((pyprocsync_url, pyprocsync_run_id))
            assert pyprocsync_server.url == pyprocsync_url
            assert seen[0][0] == seen[1][0]
            assert seen[0][1] != seen[1][1]
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2)
