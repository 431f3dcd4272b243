"""What the blocking and the asyncio ``ProcSync`` share: configuration, scripts, listeners."""

from __future__ import annotations

from typing import Any

from .listeners import ListenerPool
from .params import OnLate, Settings
from .scripts import Script

__all__ = ["ProcSyncBase"]


class ProcSyncBase:
    """Validated settings, registered scripts and the listener pool of one instance.

    The constructor does no I/O. See :class:`pyprocsync.ProcSync` for the parameters.
    """

    def __init__(
        self,
        redis_client: Any,
        run_id: str = "",
        delay: float = 1.0,
        *,
        liveness: float = 5.0,
        retention: float = 60.0,
        late_tolerance: float = 0.001,
        on_late: OnLate = "raise",
        spin: float = 0.0005,
        node_id: str | None = None,
        prefix: str = "pyprocsync",
    ) -> None:
        self._settings = Settings.create(
            run_id=run_id,
            delay=delay,
            liveness=liveness,
            retention=retention,
            late_tolerance=late_tolerance,
            on_late=on_late,
            spin=spin,
            node_id=node_id,
            prefix=prefix,
        )
        self._client = redis_client
        self._owns_client = False
        self._scripts = {script: redis_client.register_script(script.value) for script in Script}
        self._scripts_loaded = False
        self._listeners: ListenerPool[Any] = ListenerPool()
        self._listener_client: Any = None  # made when the first listener is

    @property
    def run_id(self) -> str:
        """The run this instance synchronizes in."""
        return self._settings.run_id

    @property
    def delay(self) -> float:
        """The lead time, in seconds, this instance announces when it arrives last."""
        return self._settings.delay_us / 1e6

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} run_id={self.run_id!r} delay={self.delay}>"
