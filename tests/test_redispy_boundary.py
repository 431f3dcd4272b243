"""One module, :mod:`pyprocsync.shells.redispy`, holds every use of redis-py (and
fakeredis) beyond their documented API; these checks read the package's code and fail
when another module reaches past that boundary (issue 21: each redis-py release could
break the package in several places, and did).

Outside ``redispy.py`` a module may not

* import an undocumented module of redis-py or fakeredis (``redis.connection``,
  ``redis.client``, ``redis._parsers``, ``fakeredis._*`` ...; fakeredis at all, but in
  the pytest plugin, whose fixture is built on fakeredis's documented classes);
* read a private attribute (``x._name``) of anything but the package's own objects: a
  name the package does not define itself is someone else's;
* use the connection-level names redis-py leaves undocumented (a pool's settings, a
  connection's reads and writes, a cluster's node manager ...).
"""

from __future__ import annotations

import ast
import pathlib

import pyprocsync

PACKAGE = pathlib.Path(pyprocsync.__file__).parent
BOUNDARY = PACKAGE / "shells" / "redispy.py"

#: redis-py's documented modules (its clients, exceptions, retries, cluster, Sentinel).
DOCUMENTED_MODULES = {
    "redis",
    "redis.asyncio",
    "redis.exceptions",
    "redis.cluster",
    "redis.asyncio.cluster",
    "redis.sentinel",
    "redis.asyncio.sentinel",
    "redis.retry",
    "redis.asyncio.retry",
    "redis.backoff",
}

#: Where fakeredis may be imported outside the boundary: the ``pyprocsync_fake`` fixture.
FAKEREDIS_USERS = {PACKAGE / "tools" / "pytest_plugin.py"}

#: Undocumented names of redis-py objects that the package needs (all used in
#: redispy.py, and only there).
UNDOCUMENTED = {
    "connection_kwargs",
    "connection_class",
    "get_connection",
    "acquire_connection",
    "send_command",
    "read_response",
    "can_read",
    "can_read_destructive",
    "handle_message",
    "parse_response",
    "nodes_manager",
    "get_redis_connection",
    "service_name",
    "socket_connect_timeout",
    "socket_timeout",
    "__code__",
    "co_varnames",
}

#: Standard-library names that begin with an underscore and are documented API.
STDLIB_UNDERSCORED = {"_exit", "_replace", "_asdict", "_fields", "_make"}


def modules() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def own_private_names() -> set[str]:
    """Every ``_name`` the package defines: functions, classes, methods, attributes
    assigned anywhere (``self._x = ...``, class and module level)."""
    names: set[str] = set()
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def accessed(node: ast.AST) -> tuple[str, str | None] | None:
    """The attribute name ``node`` reads or writes, and the name of its object when that
    is a plain name: ``x.name``, and ``getattr(x, "name")`` (``hasattr``, ``setattr``)."""
    if isinstance(node, ast.Attribute):
        return node.attr, node.value.id if isinstance(node.value, ast.Name) else None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr", "setattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    ):
        target = node.args[0]
        return node.args[1].value, target.id if isinstance(target, ast.Name) else None
    return None


def problems(source: str, *, own: set[str], fakeredis_allowed: bool = False) -> list[str]:
    """What ``source`` (one module's code) does past the boundary, one line each."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
            )
            for name in names:
                top = name.split(".")[0]
                if top == "redis" and name not in DOCUMENTED_MODULES:
                    found.append(f"{line}: imports the undocumented module {name}")
                if top == "fakeredis" and not fakeredis_allowed:
                    found.append(f"{line}: imports {name}")
        elif (access := accessed(node)) is not None:
            attr, owner = access
            if attr in UNDOCUMENTED:
                found.append(f"{line}: uses redis-py's undocumented {attr!r}")
            elif (
                attr.startswith("_")
                and not attr.startswith("__")
                and owner not in ("self", "cls")
                and attr not in own
                and attr not in STDLIB_UNDERSCORED
            ):
                found.append(f"{line}: reads the private attribute {attr!r} of another object")
    return sorted(found, key=lambda problem: int(problem.split(":")[0]))


def test_no_module_but_redispy_reaches_past_redis_py_documented_api() -> None:
    own = own_private_names()
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{problem}"
        for path in modules()
        if path != BOUNDARY
        for problem in problems(
            path.read_text(), own=own, fakeredis_allowed=path in FAKEREDIS_USERS
        )
    ]
    assert not wrong, "\n".join(wrong)


def test_the_boundary_module_is_where_the_internals_are() -> None:
    """The names the check forbids elsewhere are used in redispy.py (the list is not a
    list of names nobody uses), and it is the only module that may."""
    used = {
        access[0]
        for node in ast.walk(ast.parse(BOUNDARY.read_text()))
        if (access := accessed(node)) is not None
    }
    unused = UNDOCUMENTED - used - {"can_read_destructive", "__code__", "co_varnames"}
    assert not unused, f"forbidden but not used in redispy.py: {sorted(unused)}"
    assert problems(BOUNDARY.read_text(), own=own_private_names())  # it does reach past


def test_the_check_sees_each_kind_of_reach() -> None:
    own = {"_settings"}
    source = "\n".join(
        [
            "from redis.connection import parse_url",
            "import redis.client",
            "import fakeredis",
            "from redis.exceptions import ResponseError",  # documented: fine
            "sock = connection._sock",
            "owner._settings",  # the package's own attribute: fine
            "self._anything",  # its own object: fine
            "os._exit(0)",  # documented stdlib: fine
            "pool.connection_kwargs",
            "client.nodes_manager.initialize()",
            'getattr(pool, "connection_kwargs", None)',
            'getattr(connection, "_sock")',
        ]
    )
    assert [problem.split(":")[0] for problem in problems(source, own=own)] == [
        "1",
        "2",
        "3",
        "5",
        "9",
        "10",
        "11",
        "12",
    ]
    assert problems("import fakeredis", own=own, fakeredis_allowed=True) == []
