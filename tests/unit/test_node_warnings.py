"""A node's warnings about failed contacts, with a fake clock and a scripted transport: the
peer and the cause in words, at once and then with backoff, afresh once a contact succeeds;
a join is one line."""

import logging

import pytest

from dcounter.errors import PeerRefused
from tests.fakes import FakeClock
from tests.unit.test_node_links import ScriptedTransport, make_node  # noqa: F401 (fixture)

SEED = "s1:7101"


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "dcounter.node" and r.levelno == logging.WARNING]


@pytest.fixture
def seeded(make_node, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="dcounter.node")
    clock, transport = FakeClock(), ScriptedTransport()
    node = make_node(transport=transport, clock=clock, peers=(SEED,))
    return node, clock, transport


def test_an_unreachable_seed_is_warned_at_once_then_with_backoff(seeded, caplog):
    node, clock, transport = seeded
    transport.unreachable.add(SEED)
    for _ in range(6):  # 0 .. 50 s
        node.gossip.join_candidate(SEED)
        clock.advance(10.0)
    assert warnings(caplog) == [f"seed {SEED} unreachable: unreachable"]
    node.gossip.join_candidate(SEED)  # 60 s: due again, saying how many were passed over
    assert warnings(caplog)[1].endswith("(5 more failure(s) like it since the last warning)")


def test_a_success_starts_the_backoff_afresh_and_a_join_is_one_line(seeded, caplog):
    node, clock, transport = seeded
    transport.raise_on["/nodes/join"] = PeerRefused(401, "wrong request signature")
    node.gossip.join_candidate(SEED)
    node.gossip.join_candidate(SEED)
    assert warnings(caplog) == [f"peer {SEED} refused our signature: do the nodes share "
                                "--cluster-secret and a clock within --max-clock-skew?"]
    del transport.raise_on["/nodes/join"]
    node.gossip.join_candidate(SEED)
    assert [r.getMessage() for r in caplog.records if "joined" in r.getMessage()] == \
        [f"joined {SEED}"]
    node.peers.leave(SEED)  # a seed that leaves stays a candidate
    transport.raise_on["/nodes/join"] = PeerRefused(401, "wrong request signature")
    node.gossip.join_candidate(SEED)
    assert len(warnings(caplog)) == 2  # at once: the earlier backoff ended with the success
