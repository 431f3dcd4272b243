"""Names of the Redis keys and channels of one synchronization point.

Every (prefix, run id, event name) triple maps to its own names, and no two triples share
one: the run id and the event name are percent-encoded (everything but ASCII letters,
digits and ``_.-~`` becomes ``%XX`` of its UTF-8 bytes) before they are joined with ``:``,
so ``run_id="a", event="b:c"`` and ``run_id="a:b", event="c"`` stay apart. The encoded
form holds no glob characters, so it can also stand in a ``SCAN MATCH`` pattern as it
is.

All names of one event carry the same Redis Cluster hash tag (the part between ``{`` and
``}``), so they live in one slot, while different events of one run spread over slots::

    <prefix>:{<run id>:<event>}           hash: round counter, arrivals, outcomes
    <prefix>:{<run id>:<event>}:leases    sorted set: waiting participants' leases
    <prefix>:{<run id>:<event>}           pub/sub channel: outcome announcements

The members of a run (``member=True``) are registered in one key of the run, in a slot
of its own::

    <prefix>:{<run id>}:members           sorted set: node id -> registration expiry
    <prefix>:{<run id>}:record            stream: every participant's outcome per round

An :class:`~pyprocsync.Event` (a *flag*) of the same name has names of its own::

    <prefix>:{<run id>:<name>}:flag       hash: set or not, sets so far, last set
    <prefix>:{<run id>:<name>}:flag       pub/sub channel: set announcements
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

__all__ = ["EventKeys", "FlagKeys", "encode", "members_key", "record_key"]


def _base(prefix: str, run_id: str, name: str) -> str:
    return f"{prefix}:{{{encode(run_id)}:{encode(name)}}}"


def encode(text: str) -> str:
    """Percent-encode ``text`` so that it holds no ``:``, ``{``, ``}`` nor glob characters."""
    return quote(text, safe="")


def members_key(prefix: str, run_id: str) -> str:
    """The name of the member set of ``run_id`` under ``prefix``."""
    return f"{prefix}:{{{encode(run_id)}}}:members"


def record_key(prefix: str, run_id: str) -> str:
    """The name of the record stream of ``run_id`` under ``prefix`` (see
    :mod:`pyprocsync.core.record`)."""
    return f"{prefix}:{{{encode(run_id)}}}:record"


@dataclass(frozen=True, slots=True)
class EventKeys:
    """The Redis names of one synchronization point."""

    state: str
    leases: str
    channel: str

    @classmethod
    def of(cls, prefix: str, run_id: str, event: str) -> EventKeys:
        """Build the names of ``event`` in ``run_id`` under ``prefix``."""
        base = _base(prefix, run_id, event)
        return cls(state=base, leases=f"{base}:leases", channel=base)

    @property
    def all(self) -> tuple[str, str]:
        """The keys, in the order every script takes them as ``KEYS``."""
        return (self.state, self.leases)


@dataclass(frozen=True, slots=True)
class FlagKeys:
    """The Redis names of one flag (:class:`~pyprocsync.Event`)."""

    state: str
    channel: str

    @classmethod
    def of(cls, prefix: str, run_id: str, name: str) -> FlagKeys:
        """Build the names of flag ``name`` in ``run_id`` under ``prefix``."""
        base = f"{_base(prefix, run_id, name)}:flag"
        return cls(state=base, channel=base)

    @property
    def all(self) -> tuple[str]:
        """The keys, in the order every flag script takes them as ``KEYS``."""
        return (self.state,)
