"""Key and channel names (defect 12 of PRIOR_ART.md) and their Redis Cluster hash slots."""

from __future__ import annotations

import itertools
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from pyprocsync.core.keys import EventKeys, encode

#: Names with characters that mean something to Redis or to the key layout.
AWKWARD = [
    "",
    "plain",
    "a:b",
    "b:c",
    ":",
    "::",
    "{",
    "}",
    "{tag}",
    "a}b{c",
    "*",
    "?",
    "[a-z]",
    "\\",
    "%",
    "%3A",
    " ",
    "\x00",
    "nul\x00inside",
    "\n",
    "é",
    "名前",
    "🙂",
    "pyprocsync:{x:y}",
]


def slot(name: str) -> int:
    return key_slot(name.encode())


def test_colliding_names_of_0_1_0_are_kept_apart() -> None:
    """Defect 12: run "a" + event "b:c" and run "a:b" + event "c" were one key in 0.1.0."""
    first = EventKeys.of("pyprocsync", "a", "b:c")
    second = EventKeys.of("pyprocsync", "a:b", "c")
    assert first.state != second.state
    assert first.leases != second.leases
    assert first.channel != second.channel


def test_all_awkward_pairs_are_distinct() -> None:
    """No two (run id, event) pairs of the awkward names share a key or a channel."""
    pairs = list(itertools.product(AWKWARD, [e for e in AWKWARD if e]))
    keys = [EventKeys.of("pyprocsync", run, event) for run, event in pairs]
    names = [k.state for k in keys] + [k.leases for k in keys]
    assert len(set(names)) == len(names)
    assert len({k.channel for k in keys}) == len(keys)


@given(st.text(), st.text(min_size=1), st.text(), st.text(min_size=1))
def test_distinct_pairs_never_collide(run1: str, event1: str, run2: str, event2: str) -> None:
    """Property: different (run, event) pairs get different names; equal pairs equal ones."""
    a = EventKeys.of("p", run1, event1)
    b = EventKeys.of("p", run2, event2)
    assert (a == b) == ((run1, event1) == (run2, event2))
    assert a.state != b.leases


@pytest.mark.parametrize("name", AWKWARD, ids=repr)
def test_encoded_names_hold_no_special_characters(name: str) -> None:
    """Encoded parts hold no ':', braces, glob characters, NUL or non-ASCII."""
    encoded = encode(name)
    assert encoded.isascii()
    assert not set(encoded) & set(":{}*?[]\\\x00 \n")


@given(st.text())
def test_encoding_is_reversible(name: str) -> None:
    """The encoding is injective: it can be decoded back to the name."""
    assert unquote(encode(name), errors="strict") == name


@pytest.mark.parametrize(("run", "event"), [(r, e) for r in AWKWARD[:8] for e in AWKWARD[1:]])
def test_keys_of_one_event_share_a_hash_slot(run: str, event: str) -> None:
    """The state hash, the lease set and the channel of one event are in one cluster slot."""
    keys = EventKeys.of("pyprocsync", run, event)
    assert slot(keys.state) == slot(keys.leases) == slot(keys.channel)
    assert keys.all == (keys.state, keys.leases)


def test_keys_carry_one_nonempty_hash_tag() -> None:
    """The hash tag is the encoded ``run:event`` (never empty, even for run id "")."""
    keys = EventKeys.of("pyprocsync", "", "e")
    assert keys.state == "pyprocsync:{:e}"
    assert keys.leases == "pyprocsync:{:e}:leases"
    braces = EventKeys.of("pyprocsync", "{", "}")
    assert braces.state.count("{") == 1
    assert braces.state.count("}") == 1


def test_different_events_spread_over_slots() -> None:
    """Different events of one run land in different slots (all in one slot would pin a
    whole run to one cluster node)."""
    slots = {slot(EventKeys.of("pyprocsync", "run", f"step-{i}").state) for i in range(200)}
    assert len(slots) > 150


def test_prefix_is_the_first_part() -> None:
    """The prefix keeps applications apart; it is outside the hash tag."""
    a = EventKeys.of("app1", "run", "e")
    b = EventKeys.of("app2", "run", "e")
    assert a.state.startswith("app1:{")
    assert b.state.startswith("app2:{")
    assert slot(a.state) == slot(b.state)
