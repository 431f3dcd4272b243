"""The shared listener's table of channels (:class:`pyprocsync.shells.listeners.Subscriptions`):
who receives a confirmation, a message, a failure."""

from __future__ import annotations

import queue

from pyprocsync.shells.listeners import Subscriptions

CHANNEL = "pyprocsync:{run:e}"
OLD, NEW = "127.0.0.1:7001", "127.0.0.1:7002"


def confirmation(channel: str = CHANNEL) -> dict[str, object]:
    return {"type": "ssubscribe", "channel": channel.encode(), "data": 1, "pattern": None}


def names(pairs: list[tuple[object, object]], mailboxes: dict[str, object]) -> list[str]:
    return sorted(name for name, box in mailboxes.items() for m, _ in pairs if m is box)


def test_second_waiter_joins_and_both_receive_the_one_confirmation() -> None:
    table = Subscriptions()
    a, b = queue.SimpleQueue[object](), queue.SimpleQueue[object]()
    assert table.join(CHANNEL, a, OLD) == (True, True)
    assert table.join(CHANNEL, b, OLD) == (False, True)
    assert names(table.deliver(OLD, confirmation()), {"a": a, "b": b}) == ["a", "b"]
    assert table.join(CHANNEL, queue.SimpleQueue[object](), OLD) == (False, False)


def test_renewal_moves_a_channel_off_a_node_of_an_older_slot_map() -> None:
    """Two waiters of one instance met a stale slot map: A's SUBSCRIBE failed (-MOVED);
    B, still on the old map, subscribed at the old owner again; A, with the reloaded
    map, renews on the new owner. The channel moves there with B: the old owner's
    second -MOVED reaches nobody, and the new owner's confirmation reaches both (it used
    to attach A to B's doomed subscription, so A failed twice and gave up)."""
    table = Subscriptions()
    a, b = queue.SimpleQueue[object](), queue.SimpleQueue[object]()
    boxes = {"a": a, "b": b}
    assert table.join(CHANNEL, a, OLD) == (True, True)
    assert names(table.fail(OLD, ConnectionError("MOVED")), boxes) == ["a"]
    assert table.join(CHANNEL, b, OLD) == (True, True)
    assert table.join(CHANNEL, a, NEW, renew=True) == (True, True)
    assert table.fail(OLD, ConnectionError("MOVED")) == []
    assert table.deliver(OLD, confirmation()) == []
    assert names(table.deliver(NEW, confirmation()), boxes) == ["a", "b"]


def test_without_renewal_a_waiter_joins_the_channel_where_it_is_served() -> None:
    """A waiter whose map is not fresh does not move a channel: it joins it where it is
    (the subscription there came from the same or a newer map)."""
    table = Subscriptions()
    a, b = queue.SimpleQueue[object](), queue.SimpleQueue[object]()
    assert table.join(CHANNEL, a, NEW, renew=True) == (True, True)
    assert table.join(CHANNEL, b, OLD) == (False, True)
    assert names(table.deliver(NEW, confirmation()), {"a": a, "b": b}) == ["a", "b"]


def test_a_subscribe_left_unconfirmed_for_the_limit_is_overdue() -> None:
    """The listener learns when a SUBSCRIBE went out; once its confirmation is ``limit``
    seconds late, the node serving it is overdue (and is then failed), not before; a
    confirmed channel, or one not yet sent, is never overdue."""
    table = Subscriptions()
    a, b = queue.SimpleQueue[object](), queue.SimpleQueue[object]()
    table.join(CHANNEL, a, OLD)
    table.join("other", b, NEW)
    assert table.next_due(10.0) is None
    assert table.overdue(1e9, 10.0) == []  # nothing was sent yet
    table.asked(OLD, CHANNEL, 100.0)
    table.asked(NEW, "other", 103.0)
    assert table.next_due(10.0) == 110.0
    assert table.overdue(109.999, 10.0) == []
    assert table.overdue(110.0, 10.0) == [OLD]
    table.deliver(NEW, confirmation("other"))
    assert table.overdue(200.0, 10.0) == [OLD]
    assert names(table.fail(OLD, TimeoutError("unconfirmed")), {"a": a, "b": b}) == ["a"]
    assert table.overdue(200.0, 10.0) == []
    assert table.next_due(10.0) is None


def test_a_subscribe_sent_on_a_node_the_channel_left_is_not_tracked() -> None:
    """A SUBSCRIBE that went out on a node the channel has moved from (a renewal with a
    fresh slot map) says nothing about the node serving it now."""
    table = Subscriptions()
    a = queue.SimpleQueue[object]()
    table.join(CHANNEL, a, NEW, renew=True)
    table.asked(OLD, CHANNEL, 100.0)
    assert table.next_due(10.0) is None
    table.asked(NEW, CHANNEL, 100.0)
    assert table.overdue(110.0, 10.0) == [NEW]
