"""The I/O-free participant flow (:mod:`pyprocsync.core.rounds`), driven step by step.

No Redis here: each test plays the server's part by hand, sending the flow the replies a
server would give (or throw it the errors a client would raise), on a fake clock. This
pins down the state machine: what a participant does when an announcement is lost,
garbled, stale or from the future (defects 4 and 13 of PRIOR_ART.md), when its
subscription is re-established, when its timeout expires, and when it is interrupted.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from support import make_settings as support_settings

from pyprocsync import (
    BrokenBarrierError,
    ConnectionLostError,
    ParameterMismatchError,
    ProcSyncError,
    ProtocolError,
    SyncResult,
    TimeOutError,
    TooLateError,
    clock,
)
from pyprocsync.core import params
from pyprocsync.core.keys import EventKeys
from pyprocsync.core.memory import EventMemory
from pyprocsync.core.ops import (
    CALL_TIMEOUT_FLOOR,
    AtInstant,
    Call,
    Listen,
    Prepare,
    Receive,
    SleepUntil,
    Stamp,
)
from pyprocsync.core.rounds import Broken, Released, parse_outcome, reset_flow, sync_flow
from pyprocsync.core.scripts import CORRUPT_MARKER, Script
from pyprocsync.core.servertime import ClockState
from pyprocsync.core.waiter import now_us_for_scripts

RUN, EVENT = "run", "step"
KEYS = EventKeys.of("pyprocsync", RUN, EVENT)
CHANNEL = KEYS.channel
T0_NS = 1_700_000_000_000_000_000  # fake wall clock at the start of each test
T0_US = T0_NS // 1000


def quiet_clocks() -> ClockState:
    """A clock state that skips the once-per-instance system-clock check (no TIME calls)."""
    return ClockState(check_system_clock=False)


class FakeClock:
    """Replaces :func:`pyprocsync.clock.monotonic` and :func:`~pyprocsync.clock.time_ns`.

    Time moves only when a test calls :meth:`advance`.
    """

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall_ns = T0_NS

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_ns += round(seconds * 1e9)


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(clock, "monotonic", lambda: fake.mono)
    monkeypatch.setattr(clock, "time_ns", lambda: fake.wall_ns)
    return fake


def make_settings(**overrides: Any) -> params.Settings:
    return support_settings(**{"run_id": RUN, "delay": 0.0, "node_id": "node-a", **overrides})


def message(data: str | bytes, channel: str = CHANNEL, kind: str = "message") -> dict[str, Any]:
    """A pub/sub message as redis-py (bytes mode) returns it."""
    raw = data.encode() if isinstance(data, str) else data
    return {"type": kind, "pattern": None, "channel": channel.encode(), "data": raw}


def subscribed(channel: str = CHANNEL) -> dict[str, Any]:
    return {"type": "subscribe", "pattern": None, "channel": channel.encode(), "data": 1}


def released(gen: int, at_us: int, lead_us: int = 0) -> str:
    return f"R {gen} {at_us} {lead_us}"


def broken(gen: int, reason: str = "timeout", arrived: int = 1, expected: int = 2,
           missing: tuple[str, ...] = ()) -> str:  # fmt: skip
    return f"B {gen} {reason} {arrived} {expected} {json.dumps(list(missing))}"


class Stepper:
    """Drives a flow one operation at a time, the way a shell would. The flow's first
    operation, :class:`Prepare` (the scripts are loaded), is answered at once."""

    def __init__(self, flow: Generator[Any, Any, Any]) -> None:
        self.flow = flow
        self.op: Any = next(flow)
        assert isinstance(self.op, Prepare), self.op
        self.op = flow.send(None)
        self.result: Any = None
        self.done = False
        self._due: AtInstant[Any] | None = None

    def _advance(self, step: Any) -> Any:
        try:
            self.op = step()
        except StopIteration as stop:
            if isinstance(stop.value, AtInstant):  # the shell's last step: the wait
                self._due, self.op = stop.value, stop.value.wait
            else:
                self.done, self.result, self.op = True, stop.value, None
        return self.op

    def send(self, reply: Any) -> Any:
        if self._due is not None:
            self.done, self.result, self.op = True, self._due.finish(), None
            return None
        return self._advance(lambda: self.flow.send(reply))

    def throw(self, error: BaseException) -> Any:
        return self._advance(lambda: self.flow.throw(error))

    def expect_call(self, script: Script) -> tuple[Any, ...]:
        """Assert the pending operation runs ``script``; return its ARGV as the shell
        sends it (stamps filled in)."""
        assert isinstance(self.op, Call), self.op
        assert self.op.script is script, self.op.script
        assert self.op.keys == KEYS.all
        return self.op.command("sha")[3 + len(KEYS.all) :]

    def expect_listen(self, *, renew: bool = False) -> Listen:
        """Assert the pending operation subscribes to the event's channel, connecting
        within the flow's time left (at least the call floor; None without a timeout)."""
        assert isinstance(self.op, Listen), self.op
        assert (self.op.channel, self.op.renew) == (CHANNEL, renew)
        assert self.op.timeout is None or self.op.timeout >= CALL_TIMEOUT_FLOOR
        return self.op

    def expect_receive(self) -> Receive:
        assert isinstance(self.op, Receive), self.op
        return self.op


def start(settings: params.Settings | None = None, nodes: int = 2,
          timeout: float | None = None) -> Stepper:  # fmt: skip
    """A participant that subscribed (confirmation received) and is about to ARRIVE."""
    stepper = Stepper(
        sync_flow(
            settings or make_settings(), quiet_clocks(), EVENT, nodes, timeout, memory=EventMemory()
        )
    )
    stepper.expect_listen()
    stepper.send(True)
    stepper.expect_receive()
    stepper.send(subscribed())
    stepper.expect_call(Script.ARRIVE)
    return stepper


def waiting(fake: FakeClock, generation: int = 0, index: int = 0, **kwargs: Any) -> Stepper:
    """A participant that arrived (not last) and now waits for the announcement."""
    stepper = start(**kwargs)
    stepper.send([0, generation, index, b""])
    stepper.expect_receive()
    return stepper


def heartbeat_expires(stepper: Stepper, fake: FakeClock) -> None:
    """Let the pending Receive time out on the fake clock."""
    fake.advance(stepper.expect_receive().timeout or 0.0)
    stepper.send(None)


# -- the regular path -------------------------------------------------------------------


def test_the_callers_clock_is_read_as_the_command_is_built(fake_clock: FakeClock) -> None:
    """ARRIVE carries :attr:`Stamp.NOW_US` until the shell builds the command, which reads
    the clock then (after the connection is at hand): time spent between the flow's
    step and the sending, opening a connection say, is not taken from the lead time.
    In server-clock mode the argument is -1 (the script reads the server's clock)."""
    stepper = start()
    assert isinstance(stepper.op, Call)
    assert stepper.op.args[4] is Stamp.NOW_US
    fake_clock.advance(0.25)  # a connection opened meanwhile
    command = stepper.op.command("sha1")
    assert command[:3] == ("EVALSHA", "sha1", len(KEYS.all))
    assert command[3 + len(KEYS.all) + 4] == T0_US + 250_000
    assert now_us_for_scripts(make_settings(clock="server")) == -1


def test_subscribes_before_arriving(fake_clock: FakeClock) -> None:
    """The channel is subscribed and confirmed before ARRIVE, so no announcement can slip
    between arriving and listening."""
    stepper = Stepper(
        sync_flow(make_settings(), quiet_clocks(), EVENT, 2, None, memory=EventMemory())
    )
    stepper.expect_listen()
    stepper.send(True)
    stepper.expect_receive()
    stepper.send(message(released(5, 1)))  # not the confirmation: keep waiting for it
    stepper.expect_receive()
    stepper.send(subscribed("pyprocsync:{other:x}"))  # another channel's confirmation
    stepper.expect_receive()
    stepper.send(subscribed())
    args = stepper.expect_call(Script.ARRIVE)
    nodes, member, liveness, retention, arrival_us, lead_us, channel, hold, *rest = args
    assert (nodes, liveness, retention, lead_us, channel, hold) == (2, 5000, 60000, 0, CHANNEL, 0)
    # nothing learned yet; the default automatic floor; no round seen released yet
    assert rest == [0, 1000, -1]
    assert arrival_us == T0_US
    tag, _, node_id = member.partition(":")
    assert len(tag) == 12
    assert node_id == "node-a"


def test_existing_subscription_arrives_at_once(fake_clock: FakeClock) -> None:
    """When the listener was already subscribed (``Listen`` returns False), the flow does
    not wait for a confirmation that will never come."""
    stepper = Stepper(
        sync_flow(make_settings(), quiet_clocks(), EVENT, 2, None, memory=EventMemory())
    )
    stepper.send(False)
    stepper.expect_call(Script.ARRIVE)


def test_released_by_announcement(fake_clock: FakeClock) -> None:
    """A waiter returns the announced round's result (delay 0: at once)."""
    stepper = waiting(fake_clock, generation=4, index=0)
    fake_clock.advance(0.01)
    stepper.send(message(released(4, T0_US + 5000)))
    assert stepper.done
    result = stepper.result
    assert isinstance(result, SyncResult)
    assert (result.event, result.generation, result.index, result.nodes) == (EVENT, 4, 0, 2)
    assert result.release_at == (T0_US + 5000) / 1e6
    assert result.delay == 0.0
    assert result.late_by == pytest.approx(0.005)


def test_last_arrival_sleeps_until_the_instant(fake_clock: FakeClock) -> None:
    """The last arrival gets the outcome from ARRIVE itself and sleeps until the instant;
    ``late_by`` is read from the clock after the wait, not assumed."""
    stepper = start(make_settings(delay=0.1))
    at_us = T0_US + 100_000
    stepper.send([0, 0, 1, released(0, at_us, 100_000).encode()])
    assert stepper.op == SleepUntil(at_us * 1000, 500_000)
    fake_clock.wall_ns = at_us * 1000 + 123_000  # the wait returns 123 µs late
    stepper.send(fake_clock.wall_ns)
    assert stepper.result.late_by == pytest.approx(123e-6)
    assert stepper.result.delay == pytest.approx(0.1)
    assert stepper.result.index == 1


def test_decoded_replies_work_too(fake_clock: FakeClock) -> None:
    """Defect 7: replies and messages as ``str`` (``decode_responses=True``) work."""
    stepper = start()
    stepper.send([0, 0, 0, ""])
    decoded = {"type": "message", "pattern": None, "channel": CHANNEL, "data": released(0, 7)}
    stepper.send(decoded)
    assert stepper.result.release_at == 7e-6


# -- lost, garbled, stale and future announcements ---------------------------------------------


def test_lost_announcement_recovered_by_heartbeat(fake_clock: FakeClock) -> None:
    """Defect 13: no announcement arrives; the heartbeat CHECK (every liveness/5 s) reads
    the stored outcome and the participant returns it."""
    stepper = waiting(fake_clock, generation=2, index=1)
    assert stepper.expect_receive().timeout == pytest.approx(1.0)
    heartbeat_expires(stepper, fake_clock)
    generation, member, liveness, retention, channel = stepper.expect_call(Script.CHECK)
    assert (generation, liveness, retention, channel) == (2, 5000, 60000, CHANNEL)
    assert member.endswith(":node-a")
    stepper.send(released(2, T0_US).encode())
    assert stepper.result.generation == 2
    assert stepper.result.index == 1


def test_undecided_check_keeps_waiting(fake_clock: FakeClock) -> None:
    """A CHECK that finds the round undecided renews the lease and goes back to waiting,
    heartbeat after heartbeat."""
    stepper = waiting(fake_clock)
    for _ in range(3):
        heartbeat_expires(stepper, fake_clock)
        stepper.expect_call(Script.CHECK)
        stepper.send(b"")
        stepper.expect_receive()
    stepper.send(message(released(0, T0_US)))
    assert stepper.done


def test_messages_do_not_postpone_the_heartbeat(fake_clock: FakeClock) -> None:
    """A stream of irrelevant messages cannot starve the heartbeat: the CHECK is due
    liveness/5 s after arrival however many messages came in between."""
    stepper = waiting(fake_clock)
    for _ in range(10):
        fake_clock.advance(0.11)
        stepper.send(message(released(0, 1), channel="pyprocsync:{else:where}"))
    stepper.expect_call(Script.CHECK)


@pytest.mark.parametrize(
    "junk",
    [
        b"garbage",
        b"",
        b"R",
        b"R 0",
        b"R 0 x 1",
        b"B 0 timeout 1 2 not-json",
        b"\xff\xfe",
        b"R -1 5 0",
    ],
    ids=repr,
)
def test_garbage_announcement_triggers_check(fake_clock: FakeClock, junk: bytes) -> None:
    """Defect 4: an announcement that does not parse is not trusted: the stored state is
    read (CHECK) instead, and decides."""
    stepper = waiting(fake_clock)
    stepper.send(message(junk))
    stepper.expect_call(Script.CHECK)
    stepper.send(b"")
    stepper.expect_receive()


def test_earlier_generation_ignored(fake_clock: FakeClock) -> None:
    """Defect 4: announcements of earlier rounds (stale messages) are ignored without even
    a CHECK; the participant keeps waiting for its own round."""
    stepper = waiting(fake_clock, generation=3)
    for stale in (released(2, 1, 5), broken(2), released(0, 1)):
        stepper.send(message(stale))
        stepper.expect_receive()
    stepper.send(message(released(3, T0_US)))
    assert stepper.result.generation == 3


def test_later_generation_triggers_check(fake_clock: FakeClock) -> None:
    """An announcement of a later round means this one was decided unseen: CHECK."""
    stepper = waiting(fake_clock, generation=3)
    stepper.send(message(released(4, 1)))
    assert stepper.expect_call(Script.CHECK)[0] == 3
    stepper.send(released(3, T0_US).encode())
    assert stepper.result.generation == 3


def test_resubscription_triggers_check(fake_clock: FakeClock) -> None:
    """Defect 13: a subscription confirmation while waiting means the connection was
    re-established (and announcements may have been missed): CHECK at once."""
    stepper = waiting(fake_clock)
    stepper.send(subscribed())
    stepper.expect_call(Script.CHECK)
    stepper.send(released(0, T0_US).encode())
    assert stepper.done


def test_other_channels_and_kinds_ignored(fake_clock: FakeClock) -> None:
    """Messages of other channels, unsubscribe notices and non-dicts are ignored."""
    stepper = waiting(fake_clock)
    for noise in (
        message(released(0, 1), channel="pyprocsync:{run:other}"),
        message(released(0, 1), kind="pmessage"),
        {"type": "unsubscribe", "channel": CHANNEL.encode(), "data": 0},
        "not a dict",
        None,
    ):
        stepper.send(noise)
        stepper.expect_receive()
    assert not stepper.done


def test_broken_announcement_raises(fake_clock: FakeClock) -> None:
    """A broken outcome raises BrokenBarrierError with the reason and the missing node
    ids (lease members without their random tag)."""
    stepper = waiting(fake_clock, generation=1)
    with pytest.raises(BrokenBarrierError) as info:
        stepper.send(message(broken(1, "lost", 2, 3, ("0123456789ab:host:1:Main",))))
    err = info.value
    assert (err.reason, err.missing, err.arrived, err.expected) == ("lost", ("host:1:Main",), 2, 3)
    assert (err.event, err.run_id, err.generation) == (EVENT, RUN, 1)


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


# -- too late ---------------------------------------------------------------------------------


def test_too_late_raises(fake_clock: FakeClock) -> None:
    """Learning of the instant more than ``late_tolerance`` after it raises TooLateError,
    without sleeping."""
    stepper = waiting(fake_clock, settings=make_settings(delay=0.01))
    at_us = T0_US + 10_000
    fake_clock.advance(0.0125)  # learned 2.5 ms after the instant; tolerance 1 ms
    with pytest.raises(TooLateError) as info:
        stepper.send(message(released(0, at_us, 10_000)))
    assert info.value.late_by == pytest.approx(0.0025)
    assert info.value.release_at == at_us / 1e6
    assert info.value.generation == 0


def test_late_within_tolerance_proceeds(fake_clock: FakeClock) -> None:
    stepper = waiting(fake_clock, settings=make_settings(delay=0.01))
    at_us = T0_US + 10_000
    fake_clock.advance(0.0105)  # 0.5 ms late: tolerated
    stepper.send(message(released(0, at_us, 10_000)))
    assert isinstance(stepper.op, SleepUntil)
    stepper.send(fake_clock.wall_ns)
    assert stepper.result.late_by == pytest.approx(0.0005)


def test_on_late_proceed_returns_instead(fake_clock: FakeClock) -> None:
    """With ``on_late="proceed"`` a late participant returns, reporting how late."""
    stepper = waiting(fake_clock, settings=make_settings(delay=0.01, on_late="proceed"))
    fake_clock.advance(1.0)
    stepper.send(message(released(0, T0_US + 10_000, 10_000)))
    if isinstance(stepper.op, SleepUntil):
        stepper.send(fake_clock.wall_ns)
    assert stepper.result.late_by == pytest.approx(0.99)


def test_zero_delay_is_never_too_late(fake_clock: FakeClock) -> None:
    """With lead time 0 there is no common instant, hence no TooLateError."""
    stepper = waiting(fake_clock)
    fake_clock.advance(2.0)
    stepper.send(message(released(0, T0_US, 0)))
    assert stepper.result.late_by == pytest.approx(2.0)


# -- parse_outcome --------------------------------------------------------------------------


def test_parse_outcome_round_trip() -> None:
    assert parse_outcome("R 3 1700000000123456 5000") == Released(3, 1700000000123456, 5000)
    assert parse_outcome('B 4 mismatch 1 3 ["0123456789ab:n1"]') == Broken(
        4, "mismatch", 1, 3, ("n1",)
    )
    assert parse_outcome("B 0 timeout 0 2 []") == Broken(0, "timeout", 0, 2, ())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "R",
        "R 1 2",
        "R 1 2 3 4",
        "R -1 2 3",
        "R 1.5 2 3",
        "R \u0661 2 3",  # ARABIC-INDIC DIGIT ONE: isdigit() but not ASCII
        "R ² 2 3",
        "X 1 2 3",
        "B 1 timeout 1 2",
        "B 1 time-out 1 2 []",
        "B 1 timeout 1 2 {}",
        "B 1 timeout 1 2 [1, 2]",
        "B 1 timeout 1 2 [",
        "R " + "9" * 5000 + " 1 1",
    ],
    ids=repr,
)
def test_parse_outcome_rejects_garbage(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_outcome(text)


def test_parse_outcome_rejects_deeply_nested_json() -> None:
    """Hostile data on the channel or in the hash must raise ProtocolError, not escape as
    RecursionError (a missing-participants list nested 100,000 deep)."""
    with pytest.raises(ProtocolError):
        parse_outcome("B 0 timeout 1 2 " + "[" * 100_000 + "]" * 100_000)


@given(st.text())
@example('B 0 timeout 1 2 ["\\ud800"]')
@example("B 0 timeout 1 2 NaN")
def test_parse_outcome_never_raises_anything_else(text: str) -> None:
    """Property: arbitrary text parses to an outcome or raises ProtocolError, nothing else."""
    try:
        outcome = parse_outcome(text)
    except ProtocolError:
        return
    assert isinstance(outcome, (Released, Broken))
    assert outcome.generation >= 0


@given(st.from_regex(r"\A[RB] [0-9]{1,4} .{0,40}\Z"))
def test_parse_outcome_near_misses(text: str) -> None:
    """Property, aimed closer to the format: still only outcomes or ProtocolError."""
    with contextlib.suppress(ProtocolError):
        parse_outcome(text)


# -- reset --------------------------------------------------------------------------------------


def test_reset_flow() -> None:
    """``reset`` runs RESET with the retention and the channel; its reply is the next
    generation; anything but an int is a ProtocolError."""
    stepper = Stepper(reset_flow(make_settings(), EVENT))
    assert stepper.expect_call(Script.RESET) == (60000, CHANNEL)
    stepper.send(7)
    assert stepper.result == 7
    stepper = Stepper(reset_flow(make_settings(), EVENT))
    with pytest.raises(ProtocolError):
        stepper.send(b"7")


def test_procsync_error_context(fake_clock: FakeClock) -> None:
    """Errors raised before the generation is known carry generation None."""
    stepper = Stepper(
        sync_flow(make_settings(), quiet_clocks(), EVENT, 2, 0.1, memory=EventMemory())
    )
    stepper.send(True)
    fake_clock.advance(1)
    with pytest.raises(ProcSyncError) as info:
        stepper.send(None)
    assert (info.value.event, info.value.run_id, info.value.generation) == (EVENT, RUN, None)
