"""``python -m pyprocsync``: the same as the ``pyprocsync`` command."""

import sys

from pyprocsync.tools.cli import main

sys.exit(main())
