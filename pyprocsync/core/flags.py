"""Flags: the flows behind :class:`pyprocsync.Event`, free of I/O.

A flag is a hash in Redis (see :mod:`pyprocsync.core.scripts`): whether it is set, how many
times it was ever set, and the last set with its release instant. Numbering the sets is
what gives ``threading.Event`` semantics across machines: a waiter notes the number of
sets when it begins, and any later set wakes it, even if ``clear()`` follows at once.

A waiter subscribes first, then reads the flag (FLAG_CHECK): set now, or set since it
began, means it is woken. Otherwise it blocks on the subscription; an announcement
``S <sets> <release µs> <lead µs>`` (`` s`` added when the instant is on the server's
clock) with more sets than it saw wakes it; anything else
makes it read the flag again (as do reconnections and every heartbeat). At the
deadline it reads the flag one last time, so ``wait`` returns False only when no set
happened in time.

With a lead time (``delay`` > 0) the waiters woken by one set return together at the
set's instant; a waiter that arrives while the flag is set and that instant is still
ahead waits for it too, and one that arrives after it returns at once.
"""

from __future__ import annotations

from typing import Any

from pyprocsync.core import params
from pyprocsync.core.keys import FlagKeys
from pyprocsync.core.memory import EventMemory
from pyprocsync.core.ops import Due, Flow, call, prepare, text
from pyprocsync.core.params import Settings
from pyprocsync.core.servertime import ClockState
from pyprocsync.core.waiter import RECHECK, Signal, Waiter, now_us_for_scripts
from pyprocsync.core.wire import FlagCheck, FlagClear, FlagSet, FlagSetCall, parse_set
from pyprocsync.exceptions import ProtocolError

__all__ = [
    "FlagSet",
    "clear_flow",
    "is_set_flow",
    "parse_set",
    "set_flow",
    "wait_flow",
]


def _check_reply(reply: Any) -> tuple[bool, int, FlagSet | None]:
    try:
        is_set, sets, announcement = reply
        decoded = text(announcement)
        flag_is_set = int(is_set) == 1
        result = flag_is_set, int(sets), parse_set(decoded) if decoded else None
    except (TypeError, ValueError):
        raise ProtocolError(f"unexpected FLAG_CHECK reply: {str(reply)[:200]}") from None
    if flag_is_set and result[2] is None:
        raise ProtocolError("the flag is set but holds no set: foreign or corrupt data")
    return result


class _FlagWaiter(Waiter[FlagSet | None]):
    """One ``Event.wait`` call; its outcome is the set that woke it (None: timed out)."""

    def __init__(
        self,
        settings: Settings,
        clocks: ClockState,
        name: str,
        timeout: float | None,
        *,
        memory: EventMemory,
    ) -> None:
        self.keys = FlagKeys.of(settings.prefix, settings.run_id, name)
        super().__init__(settings, clocks, name, self.keys.channel, timeout, memory=memory)
        self.seen = -1  # sets when waiting began; -1 until the first check

    def where(self) -> dict[str, Any]:
        return {"event": self.name, "run_id": self.settings.run_id}

    def check(self) -> Flow[FlagSet | None]:
        retention = self.settings.retention_ms
        reply = yield from self.call(FlagCheck(self.keys, self.seen, retention))
        _is_set, sets, woken_by = _check_reply(reply)
        if self.seen < 0:
            self.seen = sets
        return woken_by

    def accept(self, announcement: str) -> FlagSet | Signal | None:
        try:
            flag_set = parse_set(announcement)
        except ProtocolError:  # not ours to trust: the flag itself decides
            return RECHECK
        return flag_set if flag_set.sets > self.seen else None

    def on_deadline(self) -> Flow[FlagSet | None]:
        return (yield from self.check())  # a set that raced the deadline still counts

    def run(self) -> Flow[Due[bool]]:
        yield from self.prepare()
        if self.settings.clock == "server":
            yield from self.prepare_clock()
        if self.timeout == 0 or not (yield from self.listen()):
            # A poll, or not subscribed by the deadline: a flag set already still counts.
            woken_by = yield from self.check()
            return False if woken_by is None else (yield from self._meet(woken_by, False))
        woken_by = yield from self.check()
        waited = woken_by is None
        if woken_by is None:
            woken_by = yield from self.wait()
        if woken_by is None:
            return False
        return (yield from self._meet(woken_by, waited))

    def _meet(self, woken_by: FlagSet, waited: bool) -> Flow[Due[bool]]:
        # A waiter that was waiting when the set happened is late if it learned of it
        # after the instant; one that came later returns at once if the instant passed.
        met = yield from self.meet_instant(
            woken_by.at_us, woken_by.lead_us, woken_by.server_clock, learned_late_is_error=waited
        )
        tolerance = self.settings.max_uncertainty_us * 1000
        if tolerance >= 0 and woken_by.lead_us > 0:
            bound = met.uncertainty_ns
            if bound is None or bound > tolerance:
                # Not released; a flag's other waiters are not told: each checks its own.
                raise self.uncertain(
                    f"{self.name!r} was set, but this waiter is not released",
                    self.settings.member_id,
                    bound,
                    tolerance,
                )
        return met.deliver(True)


def _keys_and_context(settings: Settings, name: object) -> tuple[FlagKeys, dict[str, Any]]:
    checked = params.text("name", name, empty=False)
    return FlagKeys.of(settings.prefix, settings.run_id, checked), {
        "event": checked,
        "run_id": settings.run_id,
    }


def set_flow(settings: Settings, name: object) -> Flow[None]:
    """The flow of ``Event.set``: set the flag, releasing waiters at now + delay.

    In server-clock mode, "now" is the server's clock.
    """
    keys, where = _keys_and_context(settings, name)
    return _set(settings, keys, where)


def _set(settings: Settings, keys: FlagKeys, where: dict[str, Any]) -> Flow[None]:
    yield from prepare(where)
    request = FlagSetCall(
        keys,
        now_us=now_us_for_scripts(settings),
        lead_us=settings.delay_us,
        retention_ms=settings.retention_ms,
    )
    parse_set(text((yield from call(request, where))))


def clear_flow(settings: Settings, name: object) -> Flow[None]:
    """The flow of ``Event.clear``."""
    keys, where = _keys_and_context(settings, name)
    return _clear(settings, keys, where)


def _clear(settings: Settings, keys: FlagKeys, where: dict[str, Any]) -> Flow[None]:
    yield from prepare(where)
    yield from call(FlagClear(keys, settings.retention_ms), where)


def is_set_flow(settings: Settings, name: object) -> Flow[bool]:
    """The flow of ``Event.is_set``: read the shared flag."""
    keys, where = _keys_and_context(settings, name)
    return _is_set(settings, keys, where)


def _is_set(settings: Settings, keys: FlagKeys, where: dict[str, Any]) -> Flow[bool]:
    yield from prepare(where)
    reply = yield from call(FlagCheck(keys, -1, settings.retention_ms), where)
    return _check_reply(reply)[0]


def wait_flow(
    settings: Settings, clocks: ClockState, name: object, timeout: object, *, memory: EventMemory
) -> Flow[Due[bool]]:
    """The flow of ``Event.wait``: True once the flag is (or was meanwhile) set.

    ``clocks`` and ``memory`` are the calling instance's, shared by all its calls.

    A timeout <= 0 is a poll, as in threading: the flag is read once (no subscription).

    :raises InvalidArgumentError: an argument is invalid (nothing was sent).
    """
    checked = params.text("name", name, empty=False)
    waiter = _FlagWaiter(settings, clocks, checked, params.wait_timeout(timeout), memory=memory)
    return waiter.run()
