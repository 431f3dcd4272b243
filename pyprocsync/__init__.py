"""pyprocsync: processes on different machines pass a synchronization point at one instant.

The public names are re-exported here; the modules that define them are listed in the
API reference. The asyncio twins live in :mod:`pyprocsync.asyncio`.
"""

from __future__ import annotations

from pyprocsync.core.record import Outcome
from pyprocsync.exceptions import (
    ArgumentTypeError,
    BrokenBarrierError,
    BrokenByTimeoutError,
    ClockUncertaintyError,
    ConnectionLostError,
    InvalidArgumentError,
    ParameterMismatchError,
    PermissionRefusedError,
    ProcSyncError,
    ProtocolError,
    ServerRefusedError,
    TimeOutError,
    TooLateError,
)
from pyprocsync.results import SyncResult
from pyprocsync.shells.barrier import Barrier
from pyprocsync.shells.blocking import ProcSync
from pyprocsync.shells.event import Event

__all__ = [
    "ArgumentTypeError",
    "Barrier",
    "BrokenBarrierError",
    "BrokenByTimeoutError",
    "ClockUncertaintyError",
    "ConnectionLostError",
    "Event",
    "InvalidArgumentError",
    "Outcome",
    "ParameterMismatchError",
    "PermissionRefusedError",
    "ProcSync",
    "ProcSyncError",
    "ProtocolError",
    "ServerRefusedError",
    "SyncResult",
    "TimeOutError",
    "TooLateError",
    "__version__",
]

__version__ = "1.0.0.dev0"
