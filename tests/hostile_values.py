"""The values of the hostile-input tests and the documented domains that judge them.

:func:`hostile` draws unicode, NUL, glob characters, braces, 64 KiB names, numpy scalars
and arrays, bools, NaN and infinities, negative and huge numbers, None, bytes, lists and
objects; the ``*_ok`` functions say whether the documentation calls a value valid.
"""

from __future__ import annotations

import math
import numbers
import sys
from decimal import Decimal
from fractions import Fraction
from urllib.parse import quote

import numpy as np
from hypothesis import strategies as st

from pyprocsync.core import params

# -- values -------------------------------------------------------------------------------

#: 64 KiB names: plain, multi-byte (9 bytes each once encoded), glob, NUL, braces.
BIG_NAMES = ["x" * 65536, "€" * 65536, "*?[]" * 16384, "\x00" * 65536, "{}" * 32768]


ODD_OBJECTS: list[object] = [
    object(),
    [1],
    ["event"],
    ("a",),
    {"k": 1},
    {1},
    b"bytes",
    bytearray(b"x"),
    1j,
    Decimal("1.5"),
    Decimal("NaN"),
    Fraction(1, 3),
    Fraction(10**400, 7),
    np.array([1.0, 2.0]),
    np.array(1.0),
    np.bytes_(b"np"),
    np.str_("n\x00p"),
    np.datetime64("2020-01-01"),
    len,
]


NUMBERS: list[object] = [
    0,
    -1,
    1,
    2,
    -0.0,
    5e-324,
    1e-300,
    0.5,
    1e10,
    1e13,
    1e300,
    -1e300,
    math.nan,
    math.inf,
    -math.inf,
    2**53 + 1,
    2**63,
    10**16,
    10**400,
    -(10**400),
    np.int64(2),
    np.int8(-1),
    np.uint64(2**64 - 1),
    np.int32(0),
    np.float32(0.5),
    np.float64(math.nan),
    np.float16(math.inf),
    np.float64(1e300),
    np.True_,
    np.False_,
    True,
    False,
]


def names() -> st.SearchStrategy[str]:
    """Strings as names: any unicode, NUL, glob characters, braces, lone surrogates, 64 KiB."""
    return st.one_of(
        st.text(max_size=16),
        st.text(alphabet="*?[]{}\\:%\x00 \t\n^-!", max_size=12),
        st.sampled_from(BIG_NAMES),
        st.sampled_from(["\ud800", "a\udfffb", "", " ", ":", "%41", "{a}", "a:b{c}*"]),
    )


def hostile() -> st.SearchStrategy[object]:
    """Values of every kind a parameter might be handed by mistake or by malice."""
    return st.one_of(
        st.none(),
        st.sampled_from(NUMBERS),
        st.sampled_from(ODD_OBJECTS),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.binary(max_size=8),
        st.lists(st.integers(), max_size=2),
        names(),
    )


# -- the documented domains ---------------------------------------------------------------


def is_bool(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def real(value: object) -> float | None:
    """``value`` as a float if the documentation calls it a number (any real type but
    bool, numpy's included), None otherwise. A finite number beyond floats is the
    largest finite float here (of its sign): huge, but not infinite."""
    if is_bool(value) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:
        return sys.float_info.max if value > 0 else -sys.float_info.max


def text_ok(value: object) -> bool:
    """A ``str`` Redis can store (UTF-8 encodable)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def name_ok(value: object) -> bool:
    return text_ok(value) and value != ""


def index(value: object) -> int | None:
    """``operator.index(value)``, or None where it does not apply (and for bools)."""
    if is_bool(value):
        return None
    try:
        return int(value.__index__())  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None


def count_ok(value: object, most: int = params.MAX_COUNT) -> bool:
    """A count: an integer from 1 to ``most`` (``nodes``, ``parties``: a million)."""
    number = index(value)
    return number is not None and 1 <= number <= most


#: "Every duration, here and in calls, may be at most ten years" (ProcSync's docstring).
TEN_YEARS = 10 * 365 * 86400.0


def positive_ok(value: object) -> bool:
    """A duration: above 0, up to ten years."""
    number = real(value)
    return number is not None and 0 < number <= TEN_YEARS


def state_key(prefix: str, run_id: str, name: str, kind: str) -> str:
    """The documented key of a round's (or a flag's) state: run id and name are
    percent-encoded, everything but ASCII letters, digits and ``_.-~``."""
    base = f"{prefix}:{{{quote(run_id, safe='')}:{quote(name, safe='')}}}"
    return f"{base}:flag" if kind == "Event" else base
