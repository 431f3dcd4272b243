"""Sphinx configuration of the pyprocsync documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` from the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# Document the source tree next to this folder, also when it is not installed; the
# project's own Sphinx extensions are in _ext.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

import pyprocsync
from pyprocsync import exceptions

project = "pyprocsync"
author = "pyprocsync developers"
copyright = "pyprocsync developers"
release = pyprocsync.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "results"]

# No intersphinx: the build must not touch the network, so references to the standard
# library and to redis-py render as plain text.
nitpicky = False

autodoc_member_order = "bysource"
# Show the protocol's generator alias by name, not as the union it expands to.
autodoc_type_aliases = {"Flow": "pyprocsync.core.ops.Flow"}
autodoc_default_options = {"show-inheritance": True}

exclude_patterns = ["_build", "_ext"]
# The page ``pyprocsync lab --report`` wrote, shown by the record page as it is.
html_extra_path = ["results/lab-report/wifi-server.html"]
html_theme = "alabaster"
html_theme_options = {
    "description": "One agreed instant for processes on many machines.",
    "fixed_sidebar": True,
}


def _resolve_reexported(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve ``pyprocsync.TooLateError`` & co. to where the API page documents them.

    The package re-exports its exceptions, and docstrings refer to them by the short
    path, while the API page documents them in :mod:`pyprocsync.exceptions`.
    """
    module, _, name = str(node.get("reftarget", "")).rpartition(".")
    if node.get("refdomain") != "py" or module != "pyprocsync" or name not in exceptions.__all__:
        return None
    return env.get_domain("py").resolve_xref(
        env,
        node["refdoc"],
        app.builder,
        node["reftype"],
        f"pyprocsync.exceptions.{name}",
        node,
        contnode,
    )


def setup(app: Any) -> None:
    app.connect("missing-reference", _resolve_reexported)
