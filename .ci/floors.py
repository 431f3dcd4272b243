"""Print a pip constraints file pinning every requirement of the package and of the
given extras to the lowest version ``setup.cfg`` admits (its ``>=`` bound).

Run as ``python .ci/floors.py test > constraints.txt``; a requirement without a lower
bound is an error (its oldest version would be untested).
"""

from __future__ import annotations

import configparser
import pathlib
import re
import sys

SETUP_CFG = pathlib.Path(__file__).resolve().parent.parent / "setup.cfg"
REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*(?P<floor>[0-9][^,;\s]*)"
)


def requirements(extras: list[str]) -> list[str]:
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    lines = config["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += config["options.extras_require"][extra].splitlines()
    return [line.strip() for line in lines if line.strip()]


def main(extras: list[str]) -> int:
    pins: dict[str, str] = {}
    for line in requirements(extras):
        found = REQUIREMENT.match(line)
        if found is None:
            print(f"no lower bound to test in {line!r}", file=sys.stderr)
            return 1
        pins[found["name"].lower()] = found["floor"]
    for name, floor in sorted(pins.items()):
        print(f"{name}=={floor}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
