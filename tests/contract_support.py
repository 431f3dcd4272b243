"""Helpers of the timeout-contract tests (``from contract_support import ...``).

The connection limits the ``short_limits`` fixture (``conftest.py``) sets while they
run, and building, warming up and calling every primitive in either shell.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("short_limits")]


#: Room for a loaded machine on top of the contract's bound.
SLACK = 1.5


#: The connection limits while these tests run (calls without a timeout), seconds.
CONNECT_LIMIT = 1.0


REPLY_LIMIT = 1.2


SHELLS = ["blocking", "asyncio"]


async def settled(value: Any) -> Any:
    """``value``, awaited if it is awaitable (an asyncio call; a blocking one has
    returned already)."""
    return await value if inspect.isawaitable(value) else value


def client_of(shell: str, host: str, port: int) -> Any:
    """A new client of ``host:port`` for ``shell``."""
    return (redis.Redis if shell == "blocking" else aioredis.Redis)(host=host, port=port)
