"""The least-privilege Redis ACL rule pyprocsync needs.

Redis checks ACLs for every command, also for those a Lua script runs, so the rule
grants the commands pyprocsync sends itself and the ones its scripts run
(:mod:`pyprocsync.core.scripts`), on the keys and channels of one prefix only::

    ACL SETUSER cell on >secret <the rule>

gives user ``cell`` what ``ProcSync(..., prefix=...)``, ``Event``, ``Barrier``, their
asyncio twins and ``pyprocsync status`` need on a single server or behind Sentinel, and
nothing else: no other keys or channels, no administrative commands, no ``KEYS``,
``FLUSHALL`` or ``CONFIG``. Two applications with different prefixes and users with
their own rules cannot see or touch each other's state.

.. versionadded:: 1.0
"""

from __future__ import annotations

from pyprocsync.core.params import text
from pyprocsync.exceptions import InvalidArgumentError

__all__ = [
    "CLIENT_COMMANDS",
    "CLUSTER_COMMANDS",
    "RECORD_COMMANDS",
    "SCRIPT_COMMANDS",
    "STATUS_COMMANDS",
    "acl_rule",
]

#: Commands the library sends itself: scripts by digest (loaded once per instance, and
#: again after a server restart), the shared listener's subscriptions, the server's
#: clock (the clock check of a first call, and ``clock="server"``) and ``PING`` (the
#: command line's reachability check). ``AUTH`` and ``HELLO`` need no grant; redis-py
#: ignores a refused ``CLIENT SETINFO``.
CLIENT_COMMANDS = ("evalsha", "script|load", "subscribe", "unsubscribe", "time", "ping")

#: Commands that add outcomes to the run's record, after the instant (``record=True``;
#: ``PEXPIRE`` is among :data:`SCRIPT_COMMANDS`).
RECORD_COMMANDS = ("xadd",)

#: Commands the Lua scripts run (ACLs apply inside scripts too).
SCRIPT_COMMANDS = (
    "hget",
    "hset",
    "hdel",
    "exists",
    "del",
    "pexpire",
    "zadd",
    "zrem",
    "zcard",
    "zrange",
    "zrangebyscore",
    "zremrangebyscore",
    "zscore",
    "publish",
)

#: What ``pyprocsync status`` and ``pyprocsync report`` add: finding a run's events
#: and reading them and the run's record.
STATUS_COMMANDS = ("scan", "hgetall", "pttl", "type", "xrange", "xrevrange", "xinfo|stream")

#: What a cluster client adds: sharded pub/sub (servers >= 7), the server's version
#: (read once per process, to choose it), and what redis-py's cluster client reads at
#: start (``CLUSTER SLOTS``, ``COMMAND``).
CLUSTER_COMMANDS = (
    "ssubscribe",
    "sunsubscribe",
    "spublish",
    "info",
    "cluster|slots",
    "cluster|shards",
    "command",
)


def acl_rule(prefix: str = "pyprocsync", *, status: bool = True, cluster: bool = False) -> str:
    """Return the ACL rule (the arguments of ``ACL SETUSER`` after the user's name and
    password) that lets a user run pyprocsync under ``prefix`` and nothing else.

    The rule resets the user's commands, keys and channels, then grants
    :data:`CLIENT_COMMANDS`, :data:`RECORD_COMMANDS` and :data:`SCRIPT_COMMANDS`, with
    :data:`STATUS_COMMANDS` when ``status`` (for ``pyprocsync status`` and
    ``pyprocsync report``) and :data:`CLUSTER_COMMANDS` when
    ``cluster``, on the keys ``<prefix>:*`` and the channels ``<prefix>:*``. It does not
    switch the user on nor set a password: ``ACL SETUSER name on >password <rule>``.
    On a cluster, set it on every node (or in an ACL file they all load).

    :param prefix: the ``prefix`` option of the instances; must not contain glob
        characters (``*?[]\\``), which would widen the patterns.
    :raises InvalidArgumentError: ``prefix`` is empty, not text, or holds glob
        characters or braces.
    """
    checked = text("prefix", prefix, empty=False)
    if any(c in checked for c in "*?[]\\{} \t\r\n"):
        raise InvalidArgumentError(
            f"prefix {checked!r} holds glob characters, braces or white space: the rule's "
            "patterns would cover more than its keys"
        )
    commands = [*CLIENT_COMMANDS, *RECORD_COMMANDS, *SCRIPT_COMMANDS]
    if status:
        commands += STATUS_COMMANDS
    if cluster:
        commands += CLUSTER_COMMANDS
    grants = " ".join(f"+{command}" for command in commands)
    return f"resetkeys resetchannels -@all ~{checked}:* &{checked}:* {grants}"
