"""``python -m pyprocsync``: the same as the ``pyprocsync`` command."""

import sys

from .cli import main

sys.exit(main())
