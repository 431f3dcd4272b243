"""The wire contract between the flows and the Lua scripts, written once.

Everything both sides must agree on lives here, and nowhere else:

* the numbers and strings that cross the script boundary: ARRIVE's reply statuses
  (:class:`Arrival`), the other scripts' verdict strings (:class:`Verdict`), the
  sentinel arguments (:data:`SERVER_CLOCK`, :data:`AUTO_LEAD` ...), the shape of lease
  members (:data:`MEMBER_TAG_HEX`), the size of the outcome ring
  (:data:`OUTCOME_SLOTS`) and the error markers (:data:`CORRUPT_MARKER`,
  :data:`REFUSED_MARKER`). :mod:`pyprocsync.core.scripts` substitutes them into the Lua
  text by name (:data:`LUA_NAMES`), so no literal in a script has to match a Python
  literal by hand;
* one request class per script (:class:`Request` and its subclasses), which gives the
  script's ``KEYS`` and ``ARGV`` in the order the Lua reads them; the flows build every
  script call through them;
* one decoder per kind of stored state: round outcomes (:func:`parse_outcome`), flag
  sets (:func:`parse_set`), the READ reply (:func:`decode_read`) and an event's state
  hash as ``pyprocsync status`` reads it (:func:`decode_state`).

Numbers cross the boundary as decimal integers (see :mod:`pyprocsync.core.scripts`).
"""

from __future__ import annotations

import enum
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pyprocsync.core.keys import EventKeys, FlagKeys
from pyprocsync.exceptions import ProtocolError

__all__ = [
    "AUTO_LEAD",
    "CORRUPT_MARKER",
    "CURRENT_ROUND",
    "LEAVE",
    "LUA_NAMES",
    "MEMBER_TAG_HEX",
    "NEVER_RELEASED",
    "NO_BOUND",
    "OUTCOME_SLOTS",
    "READ_ONLY",
    "REFUSED_MARKER",
    "SERVER_CLOCK",
    "UNBOUNDED_US",
    "UNCERTAIN",
    "Abandon",
    "Abort",
    "Arrival",
    "Arrive",
    "Broken",
    "Check",
    "FlagCheck",
    "FlagClear",
    "FlagSet",
    "FlagSetCall",
    "Lost",
    "Member",
    "Outcome",
    "Read",
    "Release",
    "Released",
    "Request",
    "Reset",
    "RoundState",
    "Stamp",
    "StoredRound",
    "Verdict",
    "Withdraw",
    "absent_member",
    "decode_read",
    "decode_state",
    "member_node",
    "outcome_field",
    "parse_outcome",
    "parse_set",
    "text",
]

#: Prefix of the error a script raises when it finds a value it did not write.
CORRUPT_MARKER = "PYPROCSYNC-CORRUPT"
#: Prefix of the error a script raises when the server's ACL would refuse one of the
#: commands it is about to run; raised before its first write, so nothing changed.
REFUSED_MARKER = "PYPROCSYNC-REFUSED"

#: Hex digits of the random part of a lease member, ``<12 hex>:<node id>``.
MEMBER_TAG_HEX = 12
#: The outcomes of this many recent rounds are kept, round ``g`` in field ``o<g % 8>``.
OUTCOME_SLOTS = 8

#: "Now" argument meaning: read the server's clock (server-clock mode).
SERVER_CLOCK = -1
#: Lead argument meaning: the automatic lead (``delay="auto"``).
AUTO_LEAD = -1
#: ARRIVE's "latest generation seen released" when none was.
NEVER_RELEASED = -1
#: WITHDRAW's generation when the caller does not know it: the current round.
CURRENT_ROUND = -1
#: MEMBER's lease argument that only reads the lapsed members.
READ_ONLY = -1
#: MEMBER's lease argument that ends the registration.
LEAVE = 0
#: ARRIVE's bound and tolerance argument meaning: none (no bound known; no tolerance).
NO_BOUND = -1
#: How the scripts store a bound that is not known: larger than any bound, µs.
UNBOUNDED_US = 10**15 - 1
#: The reason of a round broken because a clock bound exceeded a tolerance.
UNCERTAIN = "uncertain"


class Arrival(enum.IntEnum):
    """ARRIVE's reply status (see the script's header in :mod:`pyprocsync.core.scripts`)."""

    #: Joined (and, with an outcome, released the round as its last arrival).
    JOINED = 0
    #: Refused: the round is broken.
    REFUSED = 1
    #: Refused: ``nodes`` differs from the round's; the round is now broken.
    MISMATCH = 2
    #: Joined as the last arrival with an action: run it, then RELEASE.
    ACT = 3
    #: Refused for now: the round is full and its action runs.
    CLOSING = 4
    #: Refused: the state went back in time (lost writes); nothing was counted.
    STALE = 5


class Verdict(str, enum.Enum):
    """The replies of CHECK, ABANDON, WITHDRAW, RELEASE and LOST that are not outcomes."""

    #: The round is undecided.
    UNDECIDED = ""
    #: The state of the round is gone (server restarted or flushed, keys expired), or
    #: (WITHDRAW, CHECK) this member is not waiting in it.
    STATE_LOST = "L"
    #: The round's outcome was already evicted from the outcome slots.
    EVICTED = "E"
    #: (WITHDRAW) The round is complete and another participant runs its action.
    ACTING = "A"


class Stamp(enum.Enum):
    """An argument of a script call that is filled in as the command is sent."""

    #: This host's wall clock, µs since the epoch, read once the connection is at hand,
    #: right before the command is written to it: a connection opened for the call (the
    #: first one of a process, or one replacing a broken one) does not eat into the lead
    #: time of an instant based on that reading.
    NOW_US = enum.auto()


def _lua_names() -> dict[str, str]:
    names = {
        "corrupt_marker": CORRUPT_MARKER,
        "refused_marker": REFUSED_MARKER,
        "member_tag_hex": str(MEMBER_TAG_HEX),
        "outcome_slots": str(OUTCOME_SLOTS),
        "server_clock": str(SERVER_CLOCK),
        "auto_lead": str(AUTO_LEAD),
        "current_round": str(CURRENT_ROUND),
        "leave": str(LEAVE),
        "no_bound": str(NO_BOUND),
        "unbounded_us": str(UNBOUNDED_US),
        "uncertain": f"'{UNCERTAIN}'",
    }
    names.update({f"arrival_{status.name.lower()}": str(int(status)) for status in Arrival})
    names.update({f"verdict_{v.name.lower()}": f"'{v.value}'" for v in Verdict})
    return names


#: What :mod:`pyprocsync.core.scripts` substitutes for ``${name}`` in the Lua text:
#: the markers, the constants above, ``arrival_<status>`` for each :class:`Arrival`
#: and ``verdict_<name>`` (a quoted Lua string) for each :class:`Verdict`.
LUA_NAMES: dict[str, str] = _lua_names()


# -- requests ------------------------------------------------------------------------------

Arg = str | int | Stamp


class Request(ABC):
    """One call of one script: its ``KEYS`` and ``ARGV`` in the order the Lua reads them."""

    __slots__ = ()

    #: The name of the :class:`~pyprocsync.core.scripts.Script` it runs.
    script: ClassVar[str]

    @abstractmethod
    def keys(self) -> tuple[str, ...]:
        """The script's ``KEYS``."""

    @abstractmethod
    def argv(self) -> tuple[Arg, ...]:
        """The script's ``ARGV``; a :class:`Stamp` is filled in as the command is sent."""


class _EventRequest(Request):
    """A script on one event: ``KEYS`` = its state hash and lease set."""

    __slots__ = ()
    on: EventKeys

    def keys(self) -> tuple[str, ...]:
        return self.on.all


class _FlagRequest(Request):
    """A script on one flag: ``KEYS`` = its hash."""

    __slots__ = ()
    on: FlagKeys

    def keys(self) -> tuple[str, ...]:
        return self.on.all


@dataclass(frozen=True, slots=True)
class Arrive(_EventRequest):
    """ARRIVE: join the current round of the event ``on``."""

    script: ClassVar[str] = "ARRIVE"
    on: EventKeys
    nodes: int
    member: str
    liveness_ms: int
    retention_ms: int
    #: The caller's wall clock at arrival, epoch µs, or :data:`SERVER_CLOCK`.
    now_us: int | Stamp
    #: The lead, µs, or :data:`AUTO_LEAD`.
    lead_us: int
    #: Whether the caller, if last, runs an action before the release.
    hold: bool
    #: How long the caller took to learn of this event's last release, µs (0: none).
    reported_us: int
    #: The automatic lead's floor, µs.
    floor_us: int
    #: The latest generation the caller saw released, or :data:`NEVER_RELEASED`.
    seen: int
    #: How far the caller's reading of an instant may be from the reference clock, µs,
    #: or :data:`NO_BOUND` (none known).
    bound_us: int = NO_BOUND
    #: The widest bound the caller accepts for any participant of the round, µs, or
    #: :data:`NO_BOUND` (no tolerance).
    tolerance_us: int = NO_BOUND

    def argv(self) -> tuple[Arg, ...]:
        return (
            self.nodes,
            self.member,
            self.liveness_ms,
            self.retention_ms,
            self.now_us,
            self.lead_us,
            self.on.channel,
            int(self.hold),
            self.reported_us,
            self.floor_us,
            self.seen,
            self.bound_us,
            self.tolerance_us,
        )


@dataclass(frozen=True, slots=True)
class Check(_EventRequest):
    """CHECK: renew ``member``'s lease in round ``generation``; read the decision."""

    script: ClassVar[str] = "CHECK"
    on: EventKeys
    generation: int
    member: str
    liveness_ms: int
    retention_ms: int

    def argv(self) -> tuple[Arg, ...]:
        return (self.generation, self.member, self.liveness_ms, self.retention_ms, self.on.channel)


@dataclass(frozen=True, slots=True)
class Abandon(_EventRequest):
    """ABANDON: break round ``generation`` for ``reason`` unless it is decided."""

    script: ClassVar[str] = "ABANDON"
    on: EventKeys
    generation: int
    reason: str
    retention_ms: int

    def argv(self) -> tuple[Arg, ...]:
        return (self.generation, self.reason, self.retention_ms, self.on.channel)


@dataclass(frozen=True, slots=True)
class Withdraw(_EventRequest):
    """WITHDRAW: take back ``member``'s arrival in round ``generation`` (or
    :data:`CURRENT_ROUND`)."""

    script: ClassVar[str] = "WITHDRAW"
    on: EventKeys
    generation: int
    member: str
    retention_ms: int

    def argv(self) -> tuple[Arg, ...]:
        return (self.generation, self.member, self.retention_ms)


@dataclass(frozen=True, slots=True)
class Reset(_EventRequest):
    """RESET: break the current round if anyone waits in it, open the next."""

    script: ClassVar[str] = "RESET"
    on: EventKeys
    retention_ms: int

    def argv(self) -> tuple[Arg, ...]:
        return (self.retention_ms, self.on.channel)


@dataclass(frozen=True, slots=True)
class Release(_EventRequest):
    """RELEASE: the actor ``member`` ran round ``generation``'s action; release it."""

    script: ClassVar[str] = "RELEASE"
    on: EventKeys
    generation: int
    member: str
    #: As :attr:`Arrive.now_us`.
    now_us: int | Stamp
    #: As :attr:`Arrive.lead_us`.
    lead_us: int
    retention_ms: int
    floor_us: int

    def argv(self) -> tuple[Arg, ...]:
        return (
            self.generation,
            self.member,
            self.now_us,
            self.lead_us,
            self.retention_ms,
            self.on.channel,
            self.floor_us,
        )


@dataclass(frozen=True, slots=True)
class Abort(_EventRequest):
    """ABORT: break the current round, whoever waits in it."""

    script: ClassVar[str] = "ABORT"
    on: EventKeys
    retention_ms: int

    def argv(self) -> tuple[Arg, ...]:
        return (self.retention_ms, self.on.channel)


@dataclass(frozen=True, slots=True)
class Read(_EventRequest):
    """READ: the current round, without changing anything (see :func:`decode_read`)."""

    script: ClassVar[str] = "READ"
    on: EventKeys

    def argv(self) -> tuple[Arg, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class Lost(_EventRequest):
    """LOST: break round ``generation`` if any of the ``lapsed`` members is absent."""

    script: ClassVar[str] = "LOST"
    on: EventKeys
    generation: int
    retention_ms: int
    lapsed: tuple[str, ...]

    def argv(self) -> tuple[Arg, ...]:
        return (self.generation, self.retention_ms, self.on.channel, *self.lapsed)


@dataclass(frozen=True, slots=True)
class Member(Request):
    """MEMBER: renew (``lease_ms`` > 0), end (:data:`LEAVE`) or just read
    (:data:`READ_ONLY`) ``node_id``'s registration in the member set ``key``."""

    script: ClassVar[str] = "MEMBER"
    key: str
    node_id: str
    lease_ms: int
    retention_ms: int

    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    def argv(self) -> tuple[Arg, ...]:
        return (self.node_id, self.lease_ms, self.retention_ms)


@dataclass(frozen=True, slots=True)
class FlagSetCall(_FlagRequest):
    """FLAG_SET: set the flag ``on``, releasing its waiters at now + ``lead_us``."""

    script: ClassVar[str] = "FLAG_SET"
    on: FlagKeys
    #: As :attr:`Arrive.now_us`.
    now_us: int | Stamp
    lead_us: int
    retention_ms: int

    def argv(self) -> tuple[Arg, ...]:
        return (self.now_us, self.lead_us, self.retention_ms, self.on.channel)


@dataclass(frozen=True, slots=True)
class FlagClear(_FlagRequest):
    """FLAG_CLEAR: clear the flag ``on``."""

    script: ClassVar[str] = "FLAG_CLEAR"
    on: FlagKeys
    retention_ms: int

    def argv(self) -> tuple[Arg, ...]:
        return (self.retention_ms,)


@dataclass(frozen=True, slots=True)
class FlagCheck(_FlagRequest):
    """FLAG_CHECK: read the flag ``on`` for a waiter that saw ``seen`` sets (-1: none)."""

    script: ClassVar[str] = "FLAG_CHECK"
    on: FlagKeys
    seen: int
    retention_ms: int

    def argv(self) -> tuple[Arg, ...]:
        return (self.seen, self.retention_ms)


# -- decoders ------------------------------------------------------------------------------


def text(value: object) -> str:
    """Decode a string from Redis (``bytes`` or, with ``decode_responses``, ``str``).

    :raises ProtocolError: ``value`` is not a string.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise ProtocolError(f"expected a string from Redis, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Released:
    """A round released at ``at_us`` (epoch µs) with lead time ``lead_us``.

    ``server_clock``: the instant is on the Redis server's clock (server-clock mode),
    else on the last arriver's.
    """

    generation: int
    at_us: int
    lead_us: int
    server_clock: bool = False


@dataclass(frozen=True, slots=True)
class Broken:
    """A round that broke for ``reason``.

    For :data:`UNCERTAIN`, ``missing`` names the participant with the widest clock
    bound, ``bound_us`` is that bound (``None``: not known) and ``tolerance_us`` the
    smallest tolerance of the round's participants.
    """

    generation: int
    reason: str
    arrived: int
    expected: int
    missing: tuple[str, ...]
    bound_us: int | None = None
    tolerance_us: int | None = None


Outcome = Released | Broken


@dataclass(frozen=True, slots=True)
class FlagSet:
    """The ``sets``-th set of a flag, releasing its waiters at ``at_us`` (epoch µs).

    ``server_clock``: the instant is on the Redis server's clock, else on the setter's.
    """

    sets: int
    at_us: int
    lead_us: int
    server_clock: bool = False


@dataclass(frozen=True, slots=True)
class RoundState:
    """The current round of an event, as READ sees it."""

    generation: int
    arrived: int
    expected: int | None
    broken: Broken | None
    #: Node ids of the participants waiting in it (at most 64).
    waiting: tuple[str, ...] = ()


#: Longest number a stored value carries (an epoch µs has 16 digits); longer is foreign.
_MAX_DIGITS = 19
#: The basis mark of an instant on the server's clock.
_SERVER_BASIS = "s"


def _nonneg(digits: str) -> int:
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(digits)
    return int(digits)


def member_node(member: str) -> str:
    """Return the node id of a lease member ``<12 hex>:<node id>``."""
    return member[MEMBER_TAG_HEX + 1 :]


def absent_member(node_id: str) -> str:
    """The member LOST names for a registered member that holds no lease: its node id
    behind a tag of zeros (what the scripts write, see :func:`member_node`)."""
    return "0" * MEMBER_TAG_HEX + ":" + node_id


def outcome_field(generation: int) -> str:
    """The field of the state hash that holds round ``generation``'s outcome."""
    return f"o{generation % OUTCOME_SLOTS}"


def parse_outcome(announcement: str) -> Outcome:
    """Decode a round outcome as the scripts store and publish it:
    ``R <gen> <release µs> <lead µs>`` (and `` s`` for a server-clock instant) or
    ``B <gen> <reason> <arrived> <expected> <missing JSON>``.

    :raises ProtocolError: ``announcement`` is not an outcome pyprocsync writes.
    """
    try:
        kind, _, rest = announcement.partition(" ")
        if kind == "R":
            gen, at_us, lead_us, *basis = rest.split(" ")
            if basis not in ([], [_SERVER_BASIS]):
                raise ValueError(announcement)
            return Released(_nonneg(gen), _nonneg(at_us), _nonneg(lead_us), bool(basis))
        if kind == "B":
            gen, reason, arrived, expected, missing = rest.split(" ", 4)
            members = json.loads(missing)
            if not reason.isidentifier() or not isinstance(members, list):
                raise ValueError(announcement)
            counts = (_nonneg(gen), reason, _nonneg(arrived), _nonneg(expected))
            if reason == UNCERTAIN:
                return _uncertain(counts, members)
            return Broken(*counts, tuple(member_node(text(m)) for m in members))
    except (ValueError, RecursionError, ProtocolError):  # RecursionError: absurdly nested JSON
        pass
    raise ProtocolError(f"not a pyprocsync outcome: {announcement[:80]!r}")


def _uncertain(counts: tuple[int, str, int, int], members: list[Any]) -> Broken:
    """The :data:`UNCERTAIN` outcome, whose list is ``[[member, "<bound µs>",
    "<tolerance µs>"]]`` (decimal strings: Lua's JSON would round large numbers)."""
    ((member, bound, tolerance),) = members
    bound_us, tolerance_us = _nonneg(text(bound)), _nonneg(text(tolerance))
    if max(bound_us, tolerance_us) > UNBOUNDED_US:
        raise ValueError(members)
    known = None if bound_us == UNBOUNDED_US else bound_us
    return Broken(*counts, (member_node(text(member)),), known, tolerance_us)


def parse_set(announcement: str) -> FlagSet:
    """Decode ``S <sets> <release µs> <lead µs>`` (and `` s`` for a server-clock instant).

    :raises ProtocolError: ``announcement`` is not a set pyprocsync writes.
    """
    kind, *fields = announcement.split(" ")
    server_clock = fields[3:] == [_SERVER_BASIS]
    numbers = fields[:3] if server_clock else fields
    if (
        kind == "S"
        and len(numbers) == 3
        and all(n.isascii() and n.isdigit() and len(n) <= _MAX_DIGITS for n in numbers)
    ):
        sets, at_us, lead_us = (int(n) for n in numbers)
        return FlagSet(sets, at_us, lead_us, server_clock)
    raise ProtocolError(f"not a pyprocsync flag set: {announcement[:80]!r}")


def decode_read(reply: Any) -> RoundState:
    """Decode READ's reply ``{generation, arrived, expected, outcome or '', members}``.

    :raises ProtocolError: the reply is not one READ gives.
    """
    try:
        generation, arrived, expected, announcement, members = reply
        generation, arrived, expected = int(generation), int(arrived), int(expected)
        announcement = text(announcement)
        waiting = tuple(member_node(text(member)) for member in members)
    except (TypeError, ValueError, ProtocolError):
        raise ProtocolError(f"unexpected READ reply: {reply!r}") from None
    outcome = parse_outcome(announcement) if announcement else None
    return RoundState(
        generation,
        arrived,
        expected or None,
        outcome if isinstance(outcome, Broken) else None,
        waiting,
    )


@dataclass(frozen=True, slots=True)
class StoredRound:
    """An event's state hash, decoded (what ``pyprocsync status`` shows)."""

    #: The current round.
    generation: int
    #: Arrivals counted in it.
    arrived: int
    #: How many it needs, ``None`` while nobody waits.
    expected: int | None
    #: When its first counted arrival came, server ms, if recorded.
    first_ms: int | None
    #: The outcome slots as stored (see :func:`outcome_field`), decoded on demand.
    ring: dict[str, str]

    def outcome(self, generation: int) -> Outcome | None:
        """Round ``generation``'s outcome if its slot still holds it, else ``None``.

        :raises ProtocolError: the slot holds something pyprocsync does not write.
        """
        stored = self.ring.get(outcome_field(generation)) if generation >= 0 else None
        decoded = None if stored is None else parse_outcome(stored)
        return decoded if decoded is not None and decoded.generation == generation else None


def decode_state(fields: dict[str, str], about: str) -> StoredRound:
    """Decode the state hash of the event ``about`` (its fields as text, see
    :mod:`pyprocsync.core.scripts`).

    :raises ProtocolError: a counter field holds a value pyprocsync does not write.
    """
    try:
        generation = int(fields.get("g", "0"))
        arrived = int(fields.get("n", "0"))
        expected = int(fields["k"]) if "k" in fields else None
        first_ms = int(fields["t"]) if "t" in fields else None
        if min(generation, arrived, expected or 0, first_ms or 0) < 0:
            raise ValueError("negative")
    except ValueError:
        raise ProtocolError(f"corrupt state for event {about!r}: {str(fields)[:200]}") from None
    ring = {f: fields[f] for f in map(outcome_field, range(OUTCOME_SLOTS)) if f in fields}
    return StoredRound(generation, arrived, expected, first_ms, ring)
