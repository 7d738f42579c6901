"""The home of an idempotency key (rendezvous hashing) and the forwarding decision: pure."""

import hashlib
from collections import Counter as Tally

import pytest

from dcounter.keyhome import AfterRefusal, after_refusal, forward_to, home, weight

MEMBERS = ["vm1:8080", "vm2:8080", "vm3:8080"]


def test_weight_is_sha256_of_key_and_member_not_pythons_salted_hash():
    expected = int.from_bytes(hashlib.sha256(b"order-17\nvm1:8080").digest()[:8], "big")
    assert weight("order-17", "vm1:8080") == expected
    # The separator keeps ("ab", "c:1") and ("a", "bc:1") apart.
    assert weight("ab", "c:1") != weight("a", "bc:1")


def test_the_home_is_the_heaviest_member_whatever_the_order_of_the_view():
    for key in ("order-17", "k", "x" * 255):
        expected = max(MEMBERS, key=lambda member: weight(key, member))
        assert home(key, MEMBERS) == expected
        assert home(key, reversed(MEMBERS)) == expected


def test_every_node_of_one_view_names_the_same_home():
    for n in range(200):
        key = f"key-{n}"
        homes = set()
        for me in MEMBERS:
            peers = [member for member in MEMBERS if member != me]
            target = forward_to(key, me, peers)
            homes.add(me if target is None else target)
        assert len(homes) == 1


def test_keys_spread_over_the_members():
    tally = Tally(home(f"key-{n}", MEMBERS) for n in range(3000))
    assert set(tally) == set(MEMBERS)
    assert min(tally.values()) > 800  # about 1000 each


def test_a_member_going_away_moves_only_the_keys_it_was_home_for():
    keys = [f"key-{n}" for n in range(1000)]
    before = {key: home(key, MEMBERS) for key in keys}
    after = {key: home(key, MEMBERS[:2]) for key in keys}
    moved = {key for key in keys if before[key] != after[key]}
    assert moved == {key for key in keys if before[key] == "vm3:8080"}


def test_no_key_or_a_forwarded_request_is_applied_here():
    key = next(f"key-{n}" for n in range(100) if home(f"key-{n}", MEMBERS) == "vm2:8080")
    assert forward_to(key, "vm1:8080", ["vm2:8080", "vm3:8080"]) == "vm2:8080"
    assert forward_to(None, "vm1:8080", ["vm2:8080", "vm3:8080"]) is None
    # The home's own view may name another home: a forwarded request is applied anyway.
    assert forward_to(key, "vm1:8080", ["vm2:8080"], forwarded=True) is None
    assert forward_to(key, "vm2:8080", ["vm1:8080", "vm3:8080"]) is None  # at home
    assert forward_to(key, "vm1:8080", []) is None  # alone: every key is at home


def test_a_member_left_out_is_never_the_home_and_the_rest_agree_on_the_next():
    key = next(f"key-{n}" for n in range(100) if home(f"key-{n}", MEMBERS) == "vm3:8080")
    second = home(key, MEMBERS[:2])
    for me in MEMBERS[:2]:
        peers = [member for member in MEMBERS if member != me]
        target = forward_to(key, me, peers, excluded={"vm3:8080"})
        assert (me if target is None else target) == second
    # A node never excludes itself.
    assert forward_to(key, "vm3:8080", MEMBERS[:2], excluded={"vm3:8080"}) is None


def test_a_view_needs_a_member():
    with pytest.raises(ValueError):
        home("k", [])


@pytest.mark.parametrize("status, action", [
    (404, AfterRefusal.NOT_A_HOME), (405, AfterRefusal.NOT_A_HOME),
    (400, AfterRefusal.RELAY), (422, AfterRefusal.RELAY), (503, AfterRefusal.RELAY),
    (401, AfterRefusal.UNAVAILABLE), (409, AfterRefusal.UNAVAILABLE),
    (413, AfterRefusal.UNAVAILABLE), (500, AfterRefusal.UNAVAILABLE)])
def test_what_a_node_does_with_the_homes_error_answer(status, action):
    assert after_refusal(status) is action
