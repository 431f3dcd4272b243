"""Validation of every public argument, and the settings of one ProcSync.

Each check runs before anything is sent to Redis. A value of the wrong type raises
:class:`~pyprocsync.exceptions.ArgumentTypeError` (a :class:`TypeError` and a
:class:`ValueError`); a value out of range raises
:class:`~pyprocsync.exceptions.InvalidArgumentError` (a :class:`ValueError`).
Numbers of any type that implements the numeric protocols are accepted (``numpy.int64``,
``numpy.float32``, ``fractions.Fraction``); ``bool`` is refused wherever a number is due.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
import socket
import threading
from dataclasses import dataclass
from typing import Literal, cast

from pyprocsync.exceptions import ArgumentTypeError, InvalidArgumentError

__all__ = ["DEFAULTS", "ClockMode", "OnLate", "OptionDefaults", "Settings", "default_node_id"]

OnLate = Literal["raise", "proceed"]
ClockMode = Literal["system", "server"]


@dataclass(frozen=True, slots=True)
class OptionDefaults:
    """The default of each option of :class:`~pyprocsync.ProcSync`, as a caller gives it
    (seconds, not the protocol's units). :data:`DEFAULTS` is the one instance: the
    constructors' signatures, :meth:`Settings.create` and the documentation take their
    defaults from it. (The ``delay`` of Event and Barrier has a default of its own.)
    """

    run_id: str = ""
    delay: float = 1.0
    liveness: float = 5.0
    retention: float = 60.0
    late_tolerance: float = 0.001
    on_late: OnLate = "raise"
    spin: float = 0.0005
    node_id: str | None = None
    prefix: str = "pyprocsync"
    clock: ClockMode = "system"
    clock_samples: int = 5
    clock_refresh: float = 1.0
    auto_floor: float = 0.001
    member: bool = False
    max_uncertainty: float | None = None
    record: bool = True
    record_limit: int = 10_000


#: The defaults of the options of :class:`~pyprocsync.ProcSync`.
DEFAULTS = OptionDefaults()


def text(name: str, value: object, *, empty: bool = True) -> str:
    """Check that ``value`` is a ``str`` Redis can store (UTF-8 encodable)."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a str, not {type(value).__name__}")
    if not empty and not value:
        raise InvalidArgumentError(f"{name} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"{name} is not valid Unicode text: {exc.reason}") from None
    return value


def choice(name: str, value: object, options: tuple[str, ...]) -> str:
    """``value``, one of the strings ``options``.

    :raises ArgumentTypeError: ``value`` is not a ``str``.
    :raises InvalidArgumentError: it is a string but none of ``options``.
    """
    allowed = " or ".join(repr(option) for option in options)
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be {allowed}, not {type(value).__name__}")
    if value not in options:
        raise InvalidArgumentError(f"{name} must be {allowed}, got {value!r}")
    return value


def _is_bool(value: object) -> bool:
    """True for ``bool`` and NumPy's boolean scalars (``numpy.bool_`` / ``numpy.bool``)."""
    return isinstance(value, bool) or type(value).__name__ in ("bool_", "bool")


def flag(name: str, value: object) -> bool:
    """Check that ``value`` is True or False (NumPy's boolean scalars included)."""
    if not _is_bool(value):
        raise ArgumentTypeError(f"{name} must be True or False, not {type(value).__name__}")
    return bool(value)


#: The largest ``nodes`` or ``parties`` accepted.
MAX_COUNT = 1_000_000

#: The largest ``record_limit`` accepted (entries of a run's record).
MAX_RECORD_LIMIT = 10_000_000

#: The largest ``clock_samples`` accepted (each sample is one round trip).
MAX_CLOCK_SAMPLES = 1000


def count(name: str, value: object, *, most: int = MAX_COUNT) -> int:
    """Check that ``value`` is a whole number from 1 to ``most`` (``operator.index``
    must accept it)."""
    if _is_bool(value):
        raise ArgumentTypeError(f"{name} must be an int, not bool")
    try:
        result = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ArgumentTypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if result < 1:
        raise InvalidArgumentError(f"{name} must be at least 1, got {result}")
    if result > most:
        raise InvalidArgumentError(f"{name} must be at most {most}, got {result}")
    return result


#: The longest finite duration any argument may give, seconds (ten years): instants and
#: lifetimes cross Redis as integer µs and ms, which must stay exact.
MAX_SECONDS = 10 * 365 * 86400.0


def seconds(name: str, value: object) -> float:
    """Check that ``value`` is a real number (not bool), not NaN, and if finite, within
    ±:data:`MAX_SECONDS`; return it as float."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    try:
        result = float(value)
    except (OverflowError, ValueError):  # an int beyond any float
        raise InvalidArgumentError(f"{name} is out of range: {value!r}") from None
    if math.isnan(result):
        raise InvalidArgumentError(f"{name} must be a number, got NaN")
    if not math.isinf(result) and abs(result) > MAX_SECONDS:
        raise InvalidArgumentError(
            f"{name} must be at most {MAX_SECONDS:.0f} s (ten years), got {result!r}"
        )
    return result


def lead(name: str, value: object) -> float:
    """Check a lead time or duration: finite and >= 0."""
    result = seconds(name, value)
    if not 0.0 <= result < math.inf:
        raise InvalidArgumentError(f"{name} must be finite and >= 0, got {result!r}")
    return result


def _is_auto(value: object) -> bool:
    return isinstance(value, str) and value == "auto"


def _delay(value: object) -> float:
    if isinstance(value, str):  # "auto" is handled by the caller
        raise ArgumentTypeError(f"delay must be a number of seconds or 'auto', got {value!r}")
    return lead("delay", value)


def positive(name: str, value: object) -> float:
    """Check a duration that must be finite and > 0."""
    result = seconds(name, value)
    if not 0.0 < result < math.inf:
        raise InvalidArgumentError(f"{name} must be finite and > 0, got {result!r}")
    return result


def timeout(value: object) -> float | None:
    """Check a timeout: ``None`` or ``inf`` (wait forever), else a number > 0."""
    if value is None:
        return None
    result = seconds("timeout", value)
    if result <= 0.0:
        raise InvalidArgumentError(f"timeout must be > 0 (or None to wait forever), got {result!r}")
    return None if math.isinf(result) else result


def wait_timeout(value: object) -> float | None:
    """Check the timeout of ``Event.wait`` or ``Barrier.wait``, as threading takes it:
    ``None`` or ``inf`` (wait forever), else a number; one <= 0 means a poll (``0.0``)."""
    if value is None:
        return None
    result = seconds("timeout", value)
    return None if result == math.inf else max(result, 0.0)


def default_node_id() -> str:
    """Return ``host:pid:thread``, the node id used when none is configured."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one :class:`~pyprocsync.ProcSync` was configured with, validated.

    Durations are kept in the units the protocol uses: microseconds for what crosses
    Redis, nanoseconds for local waiting, milliseconds for key lifetimes.
    """

    run_id: str
    delay_us: int
    liveness_ms: int
    retention_ms: int
    late_tolerance_ns: int
    on_late: OnLate
    spin_ns: int
    node_id: str | None
    prefix: str
    clock: ClockMode
    clock_samples: int
    clock_refresh_ns: int
    auto_floor_us: int
    member: bool
    #: The widest clock bound accepted for any participant of a round, µs; -1: any.
    max_uncertainty_us: int = -1
    #: Whether this instance adds its outcomes to the run's record.
    record: bool = True
    #: The most entries the run's record keeps (the oldest go first).
    record_limit: int = DEFAULTS.record_limit

    @property
    def auto_delay(self) -> bool:
        """Whether the lead time is chosen from measured latency (``delay="auto"``)."""
        return self.delay_us < 0

    @classmethod
    def create(
        cls,
        *,
        run_id: object = DEFAULTS.run_id,
        delay: object = DEFAULTS.delay,
        liveness: object = DEFAULTS.liveness,
        retention: object = DEFAULTS.retention,
        late_tolerance: object = DEFAULTS.late_tolerance,
        on_late: object = DEFAULTS.on_late,
        spin: object = DEFAULTS.spin,
        node_id: object = DEFAULTS.node_id,
        prefix: object = DEFAULTS.prefix,
        clock: object = DEFAULTS.clock,
        clock_samples: object = DEFAULTS.clock_samples,
        clock_refresh: object = DEFAULTS.clock_refresh,
        auto_floor: object = DEFAULTS.auto_floor,
        member: object = DEFAULTS.member,
        max_uncertainty: object = DEFAULTS.max_uncertainty,
        record: object = DEFAULTS.record,
        record_limit: object = DEFAULTS.record_limit,
    ) -> Settings:
        """Validate the constructor arguments of a ProcSync and build its settings; an
        argument left out takes its default from :data:`DEFAULTS`."""
        choice("clock", clock, ("system", "server"))
        choice("on_late", on_late, ("raise", "proceed"))
        prefix = text("prefix", prefix, empty=False)
        if "{" in prefix or "}" in prefix:
            raise InvalidArgumentError("prefix must not contain '{' or '}' (hash tag braces)")
        liveness_s = positive("liveness", liveness)
        retention_s = positive("retention", retention)
        if retention_s < 2 * liveness_s:
            raise InvalidArgumentError(
                f"retention ({retention_s} s) must be at least twice liveness ({liveness_s} s)"
            )
        return cls(
            run_id=text("run_id", run_id),
            delay_us=-1
            if isinstance(delay, str) and delay == "auto"
            else round(_delay(delay) * 1e6),
            liveness_ms=max(1, round(liveness_s * 1e3)),
            retention_ms=round(retention_s * 1e3),
            late_tolerance_ns=round(lead("late_tolerance", late_tolerance) * 1e9),
            on_late=cast(OnLate, on_late),  # checked above
            spin_ns=round(lead("spin", spin) * 1e9),
            node_id=None if node_id is None else text("node_id", node_id, empty=False),
            prefix=prefix,
            clock=cast(ClockMode, clock),  # checked above
            clock_samples=count("clock_samples", clock_samples, most=MAX_CLOCK_SAMPLES),
            clock_refresh_ns=round(positive("clock_refresh", clock_refresh) * 1e9),
            auto_floor_us=round(lead("auto_floor", auto_floor) * 1e6),
            member=flag("member", member),
            max_uncertainty_us=-1
            if max_uncertainty is None
            else max(1, round(positive("max_uncertainty", max_uncertainty) * 1e6)),
            record=flag("record", record),
            record_limit=count("record_limit", record_limit, most=MAX_RECORD_LIMIT),
        )

    @property
    def member_id(self) -> str:
        """This instance's node id in the run's member set (the configured ``node_id``,
        else ``host:pid:thread`` of the calling thread)."""
        return self.node_id or default_node_id()

    @property
    def heartbeat_s(self) -> float:
        """How often a waiting participant renews its lease: a fifth of the lease."""
        return self.liveness_ms / 5e3
