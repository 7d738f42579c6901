"""The scale figures' measurement: simulated request rates follow from the timings, a healed
partition converges, and the supported size follows from the rule. Small clusters over a few
virtual seconds: fast."""

import pytest

from dcounter.config import Config
from dcounter.simscale import (MessageCount, heal_time, main, message_rates, render_sim,
                               sim_table, supported_size)


@pytest.mark.parametrize("config", [Config(), Config(heartbeat_interval=1.0, peer_timeout=3.0)])
def test_idle_nodes_send_one_heartbeat_per_peer_per_interval(config):
    nodes = 3
    rates = message_rates(nodes, rate=0.0, window=4 * config.heartbeat_interval, config=config)
    # Each node heartbeats each of its peers once an interval, and nothing else is sent: with
    # the defaults 0.5 per peer per second each way.
    assert rates["membership"] == pytest.approx((nodes - 1) / config.heartbeat_interval)
    assert rates["replication"] == 0
    assert rates["anti_entropy"] == 0
    assert rates["membership_bytes"] > 0


def test_the_window_counts_whole_heartbeat_rounds():
    config = Config()
    rates = message_rates(3, window=1.5 * config.heartbeat_interval, config=config)
    assert rates["membership"] == pytest.approx(2 / config.heartbeat_interval)


def test_a_light_load_sends_each_increment_once_to_every_peer():
    nodes, rate = 3, 10.0
    rates = message_rates(nodes, rate=rate, window=6.0)
    # An idle link sends an event at once: a node takes rate / nodes increments a second and
    # sends each to its nodes - 1 peers.
    assert rates["replication"] == pytest.approx(rate / nodes * (nodes - 1), rel=0.05)
    assert rates["membership"] == pytest.approx((nodes - 1) / Config().heartbeat_interval)


def test_a_healed_partition_converges():
    took, pulls = heal_time(4, seed=1, rate=20.0)
    assert took is not None and took > 0
    assert pulls >= 0


def test_the_table_has_a_row_per_size():
    rows = sim_table(sizes=(2, 3), rate=10.0, window=2.0, seeds=1)
    table = render_sim(rows)
    assert [r["nodes"] for r in rows] == [2, 3]
    assert table.count("\n") == 3  # header, rule, two rows


class _Net:
    def __init__(self):
        self.sent = []

    def send(self, src, dst, message):
        self.sent.append((src, dst, message))


def test_the_counter_sorts_requests_and_counts_membership_replies_only_when_counting():
    net = _Net()
    count = MessageCount(net)
    net.send("a", "b", ("heartbeat", 1, {"peers": []}))  # not counting yet
    count.counting = True
    net.send("a", "b", ("heartbeat", 2, {"peers": ["c"]}))
    net.send("b", "a", ("reply", 2, {"ok": 1}))
    net.send("a", "b", ("replicate", 3, {"events": []}))
    net.send("b", "a", ("reply", 3, {"applied": 0}))
    net.send("a", "c", ("state", 4, {"origins": []}))
    net.send("a", "c", ("leave", None, {"node_id": "a"}))
    assert len(net.sent) == 7  # every message still goes out
    rates = count.per_node_second(nodes=2, seconds=1.0)
    assert rates["membership"] == 1.0  # a heartbeat and a leave over two nodes
    assert rates["replication"] == 0.5
    assert rates["anti_entropy"] == 0.5
    membership = len('{"peers":["c"]}') + len('{"ok":1}') + len('{"node_id":"a"}')
    assert rates["membership_bytes"] == membership / 2


def test_a_message_of_an_unknown_kind_stops_the_count():
    net = _Net()
    count = MessageCount(net)
    count.counting = True
    with pytest.raises(ValueError, match="gossip"):
        net.send("a", "b", ("gossip", 1, {}))


def test_the_supported_size_follows_the_rule():
    assert supported_size(0.001) == 51  # 50 peers at 0.1 % of a core each: 5 %
    assert supported_size(0.01, budget=0.1) == 11
    with pytest.raises(ValueError):
        supported_size(0.0)


@pytest.mark.parametrize("argv", [["--sizes", "1"], ["--sizes", "x"], ["--real", "1"],
                                  ["--window", "0"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_incoming_connections_are_counted_per_listening_port():
    import socket

    from dcounter.scaleprocs import _incoming
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert _incoming(port) == 0
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = server.accept()
            with accepted:
                assert _incoming(port) == 1
