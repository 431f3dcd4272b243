"""The I/O-free participant flow (:mod:`pyprocsync.core.rounds`), driven step by step.

No Redis here: each test plays the server's part by hand, sending the flow the replies a
server would give (or throw it the errors a client would raise), on a fake clock. This
pins down the state machine: what a participant does when an announcement is lost,
garbled, stale or from the future (defects 4 and 13 of PRIOR_ART.md), when its
subscription is re-established, when its timeout expires, and when it is interrupted.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from protocol_support import (
    CHANNEL,
    EVENT,
    KEYS,
    RUN,
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

from pyprocsync import (
    BrokenBarrierError,
    ProcSyncError,
    ProtocolError,
    SyncResult,
    TooLateError,
)
from pyprocsync.core.memory import EventMemory
from pyprocsync.core.ops import (
    Call,
    SleepUntil,
    Stamp,
)
from pyprocsync.core.rounds import Broken, Released, parse_outcome, reset_flow, sync_flow
from pyprocsync.core.scripts import Script
from pyprocsync.core.waiter import now_us_for_scripts
from pyprocsync.core.wire import NO_BOUND

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
    # nothing learned yet; the default automatic floor; no round seen released yet; no
    # clock bound (the fake kernel says nothing), no tolerance
    assert rest == [0, 1000, -1, NO_BOUND, NO_BOUND]
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
    assert stepper.op == SleepUntil(at_us * 1000, 500_000, shared=(at_us, False))
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
    """Property, aimed closer to the format: still only outcomes or ProtocolError, and
    an outcome is of the kind its first letter names, with the generation written."""
    try:
        outcome = parse_outcome(text)
    except ProtocolError:
        return
    assert isinstance(outcome, Released if text[0] == "R" else Broken)
    assert outcome.generation == int(text.split(" ")[1])


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
