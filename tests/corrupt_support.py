"""The corruptions of the corrupt-data tests (``from corrupt_support import ...``).

:class:`Corruption` is one value pyprocsync never writes (non-numbers, negative,
fractional, empty, binary, huge, keys of the wrong type) for one key or hash field of the
protocol's data (see :mod:`pyprocsync.core.scripts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

#: The timeout of every operation driven against corrupt data.
OP_TIMEOUT = 0.5


#: Leases of 0.25 s: a waiter reads the stored state every 50 ms.
LIVENESS = 0.25


# -- what is written ---------------------------------------------------------------------------

#: Values for the integer fields: not a number, negative, fractional, empty, binary,
#: beyond what a script accepts (1e15), and the largest it accepts.
NUMBERS: dict[str, bytes] = {
    "word": b"abc",
    "negative": b"-1",
    "fraction": b"1.5",
    "empty": b"",
    "binary": b"\xff\x00\xfe",
    "huge": b"99999999999999999999",
    "largest": b"999999999999999",
}


#: Values for the outcome slots; ``{gen}`` is the generation the slot belongs to.
OUTCOMES: dict[str, str] = {
    "junk": "junk",
    "almost": "R {gen} x y",
    "negative-instant": "R {gen} -5 0",
    "bad-json": "B {gen} timeout 1 2 {{",
    "json-bomb": "B {gen} timeout 1 2 " + "[" * 50_000,
    "huge-instant": "R {gen} " + "9" * 5000 + " 0",
}


@dataclass(frozen=True)
class Corruption:
    """One foreign write: ``field`` of ``key`` ("state", "leases" or "flag") set to
    ``value``, or with ``kind`` the key replaced by a key of that type."""

    key: str
    field: str = ""
    value: bytes = b""
    kind: str = ""

    @property
    def id(self) -> str:
        if self.kind:
            return f"{self.key}-is-a-{self.kind}"
        value = self.value
        shown = repr(value) if len(value) <= 24 else f"{value[:12]!r}+{len(value) - 12}B"
        return f"{self.key}.{self.field}={shown}"

    def apply(self, client: redis.Redis, key: str, member: str = "") -> None:
        if self.kind:
            client.delete(key)
            {
                "string": lambda: client.set(key, "foreign"),
                "list": lambda: client.rpush(key, "a", "b"),
                "set": lambda: client.sadd(key, "a"),
                "zset": lambda: client.zadd(key, {"a": 1}),
                "hash": lambda: client.hset(key, "a", "b"),
            }[self.kind]()
        else:
            client.hset(key, self.field.replace("<member>", member), self.value)


def number_fields(key: str, fields: str, *, largest: bool = True) -> list[Corruption]:
    """Every value of :data:`NUMBERS` in each of ``fields`` (a flag's without "largest":
    999999999999999 sets is no corruption, and a ``v`` other than 1 reads as clear)."""
    values = [v for name, v in NUMBERS.items() if largest or name != "largest"]
    return [Corruption(key, f, v) for f in fields.split() for v in values]


FLAG_CORRUPTIONS = [
    *number_fields("flag", "v s", largest=False),
    *[
        Corruption("flag", "o", text.encode())
        for text in ("junk", "S 1 x y", "", "S -1 2 3", "S 1 " + "9" * 5000 + " 0")
    ],
    *[Corruption("flag", kind=kind) for kind in ("string", "list", "set", "zset")],
]
