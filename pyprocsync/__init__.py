"""pyprocsync: processes on different machines pass a synchronization point at one instant.

The public names are re-exported here; the modules that define them are listed in the
API reference. The asyncio twins live in :mod:`pyprocsync.asyncio`.
"""

from __future__ import annotations

from .barrier import Barrier
from .event import Event
from .exceptions import (
    ArgumentTypeError,
    BrokenBarrierError,
    BrokenByTimeoutError,
    ConnectionLostError,
    InvalidArgumentError,
    ParameterMismatchError,
    ProcSyncError,
    ProtocolError,
    TimeOutError,
    TooLateError,
)
from .procsync import ProcSync
from .results import SyncResult

__all__ = [
    "ArgumentTypeError",
    "Barrier",
    "BrokenBarrierError",
    "BrokenByTimeoutError",
    "ConnectionLostError",
    "Event",
    "InvalidArgumentError",
    "ParameterMismatchError",
    "ProcSync",
    "ProcSyncError",
    "ProtocolError",
    "SyncResult",
    "TimeOutError",
    "TooLateError",
    "__version__",
]

__version__ = "1.0.0.dev0"
