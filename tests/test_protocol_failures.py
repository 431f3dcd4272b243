"""The I/O-free participant flow (:mod:`pyprocsync.core.rounds`) when things go wrong,
driven step by step on a fake clock with no Redis: the state lost, evicted or corrupt,
refused arrivals and mismatches, timeouts (and their races with a release), and
interruptions (withdrawal, a replaced pub/sub connection, failed script calls).
"""

from __future__ import annotations

from typing import Any

import pytest
from protocol_support import (
    CHANNEL,
    EVENT,
    T0_US,
    FakeClock,
    Stepper,
    broken,
    heartbeat_expires,
    make_settings,
    message,
    quiet_clocks,
    released,
    start,
    subscribed,
    waiting,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pyprocsync import (
    BrokenBarrierError,
    ConnectionLostError,
    ParameterMismatchError,
    ProtocolError,
    TimeOutError,
)
from pyprocsync.core import limits
from pyprocsync.core.flags import wait_flow
from pyprocsync.core.memory import EventMemory
from pyprocsync.core.ops import (
    CALL_TIMEOUT_FLOOR,
    Listen,
    Receive,
    SleepUntil,
)
from pyprocsync.core.rounds import sync_flow
from pyprocsync.core.scripts import CORRUPT_MARKER, Script

# -- state lost / evicted / corrupt -------------------------------------------------------------


def test_state_lost_raises_broken(fake_clock: FakeClock) -> None:
    """A CHECK that finds the state gone (restart, flush) raises BrokenBarrierError
    with reason "state-lost" once the messages already received hold no outcome of the
    round (another round's announcement and garbage do not count)."""
    stepper = waiting(fake_clock, generation=3)
    heartbeat_expires(stepper, fake_clock)
    stepper.send(b"L")
    for buffered in (message(released(2, T0_US)), message(b"junk"), message(released(4, 1))):
        assert stepper.expect_receive().timeout == 0
        stepper.send(buffered)
    assert stepper.expect_receive().timeout == 0
    with pytest.raises(BrokenBarrierError) as info:
        stepper.send(None)
    assert info.value.reason == "state-lost"


def test_state_lost_with_the_subscription_lost_too_raises_broken(fake_clock: FakeClock) -> None:
    """The server restarted unnoticed: the CHECK finds the state gone, and what the
    mailbox holds is the listener's error for the connection the restart closed. That
    error ends the look at what was received (nothing more was); the caller gets
    BrokenBarrierError("state-lost"), not redis-py's ConnectionError."""
    stepper = waiting(fake_clock, generation=3)
    heartbeat_expires(stepper, fake_clock)
    stepper.send(b"L")
    assert stepper.expect_receive().timeout == 0
    with pytest.raises(BrokenBarrierError) as info:
        stepper.throw(RedisConnectionError("Redis at 127.0.0.1:1: Connection closed by server."))
    assert info.value.reason == "state-lost"


@pytest.mark.parametrize("script", [Script.CHECK, Script.ABANDON])
def test_announcement_received_before_the_state_vanished_wins(
    fake_clock: FakeClock, script: Script
) -> None:
    """The round was released and announced, then its state vanished (flushed, expired)
    before this participant's CHECK or ABANDON read it: the announcement already
    received decides, not the missing state."""
    stepper = waiting(fake_clock, generation=3, timeout=0.5 if script is Script.ABANDON else None)
    heartbeat_expires(stepper, fake_clock)
    stepper.expect_call(script)
    stepper.send(b"L")
    stepper.expect_receive()
    stepper.send(message(released(3, T0_US)))
    assert stepper.done
    assert (stepper.result.generation, stepper.result.release_at) == (3, T0_US / 1e6)


def test_evicted_outcome_raises_protocol_error(fake_clock: FakeClock) -> None:
    stepper = waiting(fake_clock)
    heartbeat_expires(stepper, fake_clock)
    with pytest.raises(ProtocolError):
        stepper.send(b"E")


def test_garbage_check_reply_raises_protocol_error(fake_clock: FakeClock) -> None:
    stepper = waiting(fake_clock)
    heartbeat_expires(stepper, fake_clock)
    with pytest.raises(ProtocolError):
        stepper.send(b"what?")


@pytest.mark.parametrize(
    "reply",
    [None, [], [0, 0, 0], [0, 0, 0, b"", 9], [b"x", 0, 0, b""], "OK", 5, [1, 0, -1, b""]],
    ids=repr,
)
def test_unexpected_arrive_reply_raises_protocol_error(fake_clock: FakeClock, reply: Any) -> None:
    """ARRIVE replies that are not what the script returns raise ProtocolError (a refusal
    without a broken outcome included)."""
    stepper = start()
    with pytest.raises(ProtocolError):
        stepper.send(reply)


def test_refused_arrival_with_released_outcome_is_a_protocol_error(fake_clock: FakeClock) -> None:
    stepper = start()
    with pytest.raises(ProtocolError):
        stepper.send([1, 0, -1, released(0, 1).encode()])


@pytest.mark.parametrize(
    "text",
    [
        f"{CORRUPT_MARKER} field g of pyprocsync:{{run:step}}",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    ],
)
def test_corrupt_data_becomes_protocol_error(fake_clock: FakeClock, text: str) -> None:
    """The scripts' corruption errors and WRONGTYPE become ProtocolError."""
    stepper = start()
    with pytest.raises(ProtocolError) as info:
        stepper.throw(ResponseError(text))
    assert isinstance(info.value.__cause__, ResponseError)


def test_other_script_errors_pass_through(fake_clock: FakeClock) -> None:
    """A ResponseError that is not about corrupt data (e.g. OOM) is not disguised."""
    stepper = start()
    with pytest.raises(ResponseError, match="OOM"):
        stepper.throw(ResponseError("OOM command not allowed"))


# -- refusals -----------------------------------------------------------------------------


def test_refused_arrival_raises_broken(fake_clock: FakeClock) -> None:
    """Arriving at a broken round raises BrokenBarrierError at once, without waiting."""
    stepper = start()
    with pytest.raises(BrokenBarrierError) as info:
        stepper.send([1, 6, -1, broken(6).encode()])
    assert (info.value.reason, info.value.generation) == ("timeout", 6)


def test_mismatch_raises_parameter_mismatch(fake_clock: FakeClock) -> None:
    stepper = start(nodes=2)
    with pytest.raises(ParameterMismatchError) as info:
        stepper.send([2, 0, 3, broken(0, "mismatch", 1, 3).encode()])
    assert (info.value.expected, info.value.given, info.value.generation) == (3, 2, 0)


# -- timeouts ---------------------------------------------------------------------------


def test_timeout_abandons_the_round(fake_clock: FakeClock) -> None:
    """When the timeout expires, ABANDON breaks the round for everyone and this
    participant raises TimeOutError with the counts of the broken outcome."""
    stepper = waiting(fake_clock, generation=2, timeout=0.3)
    assert stepper.expect_receive().timeout == pytest.approx(0.3)
    heartbeat_expires(stepper, fake_clock)
    generation, reason, retention, channel = stepper.expect_call(Script.ABANDON)
    assert (generation, reason, retention, channel) == (2, "timeout", 60000, CHANNEL)
    with pytest.raises(TimeOutError) as info:
        stepper.send(broken(2, "timeout", 1, 2).encode())
    err = info.value
    assert (err.timeout, err.arrived, err.expected, err.generation) == (0.3, 1, 2, 2)


def test_timeout_loses_to_a_release_decided_meanwhile(fake_clock: FakeClock) -> None:
    """If the round was released just before ABANDON ran, the participant returns it."""
    stepper = waiting(fake_clock, timeout=0.3)
    heartbeat_expires(stepper, fake_clock)
    stepper.expect_call(Script.ABANDON)
    stepper.send(released(0, T0_US).encode())
    assert stepper.result.generation == 0


def test_abandon_undecided_reply_is_a_protocol_error(fake_clock: FakeClock) -> None:
    stepper = waiting(fake_clock, timeout=0.3)
    heartbeat_expires(stepper, fake_clock)
    with pytest.raises(ProtocolError):
        stepper.send(b"")


def test_timeout_before_subscription_confirmed(fake_clock: FakeClock) -> None:
    """A timeout that expires while the subscription is unconfirmed raises TimeOutError
    without arriving (nothing to withdraw)."""
    stepper = Stepper(
        sync_flow(make_settings(), quiet_clocks(), EVENT, 2, 0.2, memory=EventMemory())
    )
    stepper.send(True)
    assert stepper.expect_receive().timeout == pytest.approx(0.2)
    fake_clock.advance(0.2)
    with pytest.raises(TimeOutError) as info:
        stepper.send(None)
    assert info.value.arrived is None


@pytest.mark.parametrize("wait", ["sync", "event"])
def test_a_confirmation_that_never_comes_ends_without_a_timeout(
    fake_clock: FakeClock, wait: str
) -> None:
    """No timeout, and the server never confirms the subscription (it stopped after
    registering it, before its reply left): the wait for the confirmation is bounded by
    the link's limits, the subscription is renewed once and, still unconfirmed after the
    limits again, the link is lost: ConnectionLostError, never an endless wait (issue
    21: a waiter hung in ``mailbox.get(timeout=None)``)."""
    limit = limits.CONNECT_TIMEOUT + limits.REPLY_TIMEOUT
    settings = make_settings()
    memory = EventMemory()
    flow = (
        sync_flow(settings, quiet_clocks(), EVENT, 2, None, memory=memory)
        if wait == "sync"
        else wait_flow(settings, quiet_clocks(), EVENT, None, memory=memory)
    )
    stepper = Stepper(flow)
    for renew in (False, True):
        assert isinstance(stepper.op, Listen)
        assert stepper.op.renew is renew
        stepper.send(True)  # a SUBSCRIBE went out; its confirmation is awaited
        assert stepper.expect_receive().timeout == pytest.approx(limit)
        fake_clock.advance(limit / 2)
        stepper.send(None)  # nothing came in the first half
        assert stepper.expect_receive().timeout == pytest.approx(limit / 2)
        fake_clock.advance(limit / 2)
        if renew:
            with pytest.raises(ConnectionLostError) as info:
                stepper.send(None)
        else:
            stepper.send(None)
    assert "not confirmed" in str(info.value)
    assert info.value.event == EVENT


def test_heartbeat_and_deadline_interleave(fake_clock: FakeClock) -> None:
    """With a 2.5 s timeout and a 1 s heartbeat: CHECK at 1 s and 2 s, ABANDON at 2.5 s."""
    stepper = waiting(fake_clock, timeout=2.5)
    seen = []
    while True:
        if isinstance(stepper.op, Receive):
            heartbeat_expires(stepper, fake_clock)
            continue
        seen.append((stepper.op.script, round(fake_clock.mono - 1000.0, 3)))
        if stepper.op.script is Script.ABANDON:
            break
        stepper.send(b"")
    assert seen == [(Script.CHECK, 1.0), (Script.CHECK, 2.0), (Script.ABANDON, 2.5)]


# -- interruptions --------------------------------------------------------------------------


@pytest.mark.parametrize("interruption", [KeyboardInterrupt(), RuntimeError("bug in a callback")])
def test_interruption_withdraws_the_arrival(
    fake_clock: FakeClock, interruption: BaseException
) -> None:
    """An interruption while waiting (Ctrl-C, an unexpected error) withdraws the arrival,
    so the round still needs ``nodes`` live participants; then the interruption propagates."""
    stepper = waiting(fake_clock, generation=5, index=1)
    stepper.throw(interruption)
    generation, member, retention = stepper.expect_call(Script.WITHDRAW)
    assert (generation, retention) == (5, 60000)
    assert member.endswith(":node-a")
    with pytest.raises(type(interruption)):
        stepper.send(b"")


def test_dropped_pubsub_connection_is_replaced_and_state_read(fake_clock: FakeClock) -> None:
    """Defect 13: when the pub/sub connection fails while waiting, the participant
    subscribes on a new connection, waits for the confirmation, and reads the stored
    outcome at once (the announcement may have been lost with the old connection)."""
    stepper = waiting(fake_clock, generation=4)
    stepper.throw(RedisConnectionError("Connection closed by server."))
    stepper.expect_listen(renew=True)
    stepper.send(True)
    stepper.expect_receive()
    stepper.send(subscribed())
    generation, *_ = stepper.expect_call(Script.CHECK)
    assert generation == 4
    stepper.send(released(4, T0_US + 5_000, 5_000))
    assert isinstance(stepper.op, SleepUntil)
    stepper.send(T0_US * 1000 + 5_000_000)
    assert stepper.done
    assert stepper.result.generation == 4


def test_failed_reconnection_raises_connection_lost_without_withdrawing(
    fake_clock: FakeClock,
) -> None:
    """If the replacement connection fails too, the participant raises
    ConnectionLostError (a ConnectionError) naming the event; it sends no WITHDRAW (the
    server is unreachable; its lease lapses and the others see reason "lost")."""
    stepper = waiting(fake_clock)
    stepper.throw(RedisConnectionError("Connection closed by server."))
    stepper.expect_listen(renew=True)
    with pytest.raises(ConnectionLostError) as info:
        stepper.throw(RedisConnectionError("Connection refused."))
    assert isinstance(info.value, ConnectionError)
    assert info.value.event == EVENT


def test_failed_script_call_raises_connection_lost(fake_clock: FakeClock) -> None:
    """A script call that cannot reach the server raises ConnectionLostError."""
    stepper = start()
    with pytest.raises(ConnectionLostError):
        stepper.throw(RedisConnectionError("Connection refused."))


def test_script_calls_wait_for_their_reply_until_the_deadline(fake_clock: FakeClock) -> None:
    """A waiter's script call may take until its deadline (at least CALL_TIMEOUT_FLOOR);
    an unanswered call past the deadline is the caller's timeout (TimeOutError), one
    that fails before it a lost connection."""
    stepper = start(timeout=10.0)
    assert stepper.op.timeout == pytest.approx(10.0)
    stepper.send([0, 0, 0, b""])
    heartbeat_expires(stepper, fake_clock)
    assert stepper.op.script is Script.CHECK
    assert stepper.op.timeout == pytest.approx(9.0)
    fake_clock.advance(9.5)  # the server did not answer: the deadline passed meanwhile
    with pytest.raises(TimeOutError) as caught:
        stepper.throw(RedisTimeoutError("Timeout reading from socket"))
    assert caught.value.timeout == 10.0
    assert caught.value.event == EVENT

    early = start(timeout=10.0)
    with pytest.raises(ConnectionLostError):
        early.throw(RedisTimeoutError("Timeout reading from socket"))

    late = start(timeout=0.01)
    assert late.op.timeout == CALL_TIMEOUT_FLOOR


def test_failed_withdrawal_does_not_hide_the_interruption(fake_clock: FakeClock) -> None:
    """If WITHDRAW itself fails, the caller still sees the original interruption."""
    stepper = waiting(fake_clock)
    stepper.throw(KeyboardInterrupt())
    stepper.expect_call(Script.WITHDRAW)
    with pytest.raises(KeyboardInterrupt):
        stepper.throw(RedisConnectionError("still gone"))


def test_procsync_errors_do_not_withdraw(fake_clock: FakeClock) -> None:
    """A decided round is not withdrawn from: pyprocsync's own errors propagate as they are."""
    stepper = waiting(fake_clock)
    with pytest.raises(ProtocolError):
        stepper.throw(ProtocolError("x"))
