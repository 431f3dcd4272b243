"""The package's layers, read from its imports: each folder builds only on those below it."""

from __future__ import annotations

import ast
import pathlib

import pyprocsync

PACKAGE = pathlib.Path(pyprocsync.__file__).parent

#: Each layer and the layers it may import from. Top-level modules other than the
#: public re-exports (``__init__``, ``asyncio``, ``pyprocsync``, ``__main__``) are the
#: foundation every layer uses.
ALLOWED = {
    "foundation": {"foundation"},
    "core": {"foundation", "core"},
    "shells": {"foundation", "core", "shells"},
    "tools": {"foundation", "core", "shells", "tools", "public"},
    "public": {"foundation", "core", "shells", "tools", "public"},
}
PUBLIC = {"__init__", "asyncio", "pyprocsync", "__main__"}


def layer(module: str) -> str:
    """The layer of a dotted module name inside the package."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in PUBLIC:
        return "public"
    return parts[0] if parts[0] in ("core", "shells", "tools") else "foundation"


def module_name(path: pathlib.Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports(path: pathlib.Path) -> set[str]:
    """The package modules ``path`` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "pyprocsync":
                continue
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / submodule.replace(".", "/")).with_suffix(".py")
                found.add(submodule if is_module.exists() else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; the package uses absolute ones")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pyprocsync")
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_import_points_down() -> None:
    wrong = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in graph().items()
        for target in targets
        if layer(target) not in ALLOWED[layer(module)]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_circles() -> None:
    edges = {m: {t for t in ts if t not in (m, "pyprocsync")} for m, ts in graph().items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError(" -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in sorted(edges.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(edges):
        if layer(module) != "public":
            visit(module, [])


def test_the_checks_see_a_wrong_import() -> None:
    assert layer("pyprocsync.core.rounds") == "core"
    assert "shells" not in ALLOWED[layer("pyprocsync.core.ops")]
    assert "pyprocsync.core.ops" in imports(PACKAGE / "core" / "waiter.py")
