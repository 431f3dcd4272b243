"""The 0.1.0 import path of :class:`~pyprocsync.ProcSync` (``pyprocsync.pyprocsync.ProcSync``).

Kept so that code written for 0.1.0 imports unchanged; new code imports from
:mod:`pyprocsync`.
"""

from __future__ import annotations

from pyprocsync.shells.blocking import ProcSync

__all__ = ["ProcSync"]
