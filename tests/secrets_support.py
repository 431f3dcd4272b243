"""Helpers of the password tests (``from secrets_support import ...``).

The passwords (every one contains ``Pa55``), :func:`forbidden` pieces of them,
:func:`assert_no_secret` over every text a user or a log collector could see, and the
:class:`Observer` of the logs and the process's output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

from support import (
    assert_one_line_error,
)

from pyprocsync.tools.cli import URL_ENV, ExitCode
from pyprocsync.tools.credentials import PASSWORD_ENV

#: The password the URLs under test carry (and, but for one case, the server's).
SECRET = "s3cret-Pa55-XYZ"


#: The server's password when the URL carries a wrong one.
SERVER_SECRET = "srv0cret-Pa55-QRS"


#: The password a server switches to while a participant waits.
NEW_SECRET = "n3wcret-Pa55-ABC"


def forbidden(*passwords: str) -> set[str]:
    """The strings that must never show: each password and its pieces of 4+ letters."""
    found = set(passwords)
    for password in passwords:
        found.update(piece for piece in re.split(r"[^A-Za-z0-9]+", password) if len(piece) >= 4)
    return found


FORBIDDEN = forbidden(SECRET, SERVER_SECRET, NEW_SECRET)


def assert_no_secret(texts: dict[str, str], passwords: set[str] = FORBIDDEN) -> None:
    """No text holds a password or a piece of one; the failure names where it leaked."""
    leaks = [
        f"{where}: {piece!r} in {text[:2000]!r}"
        for where, text in texts.items()
        for piece in passwords
        if piece in text
    ]
    assert not leaks, "password leaked:\n" + "\n".join(leaks)


def exception_texts(exc: BaseException) -> dict[str, str]:
    """Everything an exception shows, down its ``__cause__``/``__context__`` chain."""
    texts = {"traceback": "".join(traceback.format_exception(exc))}
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    depth = 0
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        name = f"{depth}:{type(current).__name__}"
        depth += 1
        texts[f"{name} str"] = str(current)
        texts[f"{name} repr"] = repr(current)
        texts[f"{name} args"] = repr(current.args)
        texts[f"{name} attributes"] = repr(getattr(current, "__dict__", {}))
        texts[f"{name} notes"] = repr(getattr(current, "__notes__", []))
        pending += [current.__cause__, current.__context__]
    return texts


def url_of(port: int, password: str = SECRET) -> str:
    return f"redis://:{password}@127.0.0.1:{port}/0"


# -- the command line ------------------------------------------------------------------------


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyprocsync", *args]


def command_env(url: str | None = None, password: str | None = None) -> dict[str, str]:
    """This environment, with ``$PYPROCSYNC_REDIS_URL`` set to ``url`` and
    ``$PYPROCSYNC_PASSWORD`` to ``password``, or unset."""
    env = {k: v for k, v in os.environ.items() if k not in (URL_ENV, PASSWORD_ENV)}
    if url is not None:
        env[URL_ENV] = url
    if password is not None:
        env[PASSWORD_ENV] = password
    return env


def check_command_error(done: subprocess.CompletedProcess[str], code: ExitCode) -> str:
    """One ``pyprocsync: error:`` line, exit ``code``, no password in any output."""
    assert_no_secret({"stdout": done.stdout, "stderr": done.stderr})
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    return assert_one_line_error(done.stderr)


def password_file(directory: Path, password: str = SECRET) -> str:
    """A file holding ``password`` on its first line, for ``--password-file``."""
    path = directory / "password"
    path.write_text(password + "\n", encoding="utf-8")
    return str(path)


def plain_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"
