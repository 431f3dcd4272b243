"""How long pyprocsync waits for its link to the server when the caller set no timeout.

A call with a ``timeout`` is bounded by it (see :func:`pyprocsync.core.ops.bound`); a
call without one still never waits forever for a server that stopped answering: each
connection of pyprocsync's own is ready within :data:`CONNECT_TIMEOUT` and each reply,
the confirmation of a subscription included, comes within :data:`REPLY_TIMEOUT`, or
the link counts as lost. The client's own, shorter ``socket_connect_timeout`` and
``socket_timeout`` take precedence.

The shells and the flows read these names at the moment they need them, so a test may
shorten them for a while.
"""

from __future__ import annotations

__all__ = ["CONNECT_TIMEOUT", "REPLY_TIMEOUT"]

#: Longest a connection of pyprocsync's own (command and listener connections) may take
#: to connect and to complete its handshake (AUTH, HELLO, CLIENT SETINFO), seconds.
CONNECT_TIMEOUT = 5.0

#: Longest pyprocsync waits for the server's reply to a command it sent on a connection
#: of its own (a script call, ``TIME``, ``SUBSCRIBE``), seconds.
REPLY_TIMEOUT = 10.0
