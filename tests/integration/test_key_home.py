"""Keys that hold across nodes: a keyed increment is decided at its key's home, so a client's
retries at every node count once. Real node processes, signed peer calls."""

SECRET = "cluster-secret-" + "4" * 20


def metric(node, name: str) -> float:
    for line in node.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in {node.name}'s metrics")


def test_the_same_key_at_every_node_in_turn_counts_once(cluster):
    nodes = cluster.start(3, in_memory=True, extra=["--cluster-secret", SECRET])
    # One after another without waiting, before replication can carry the event around: every
    # answer comes from the key's home.
    answers = [node.incr("orders", 7, headers={"Idempotency-Key": f"order-{i}"})
               for i in range(5) for node in nodes]
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    for i in range(5):
        tries = answers[3 * i:3 * i + 3]
        fresh = [a for a in tries if a.headers.get("Idempotent-Replayed") != "true"]
        assert len(fresh) == 1, [a.headers for a in tries]
        assert len({a.json()["event_id"] for a in tries}) == 1
    cluster.wait_converged(nodes, 5 * 7, counter="orders")
    forwarded = sum(metric(node, "dcounter_increments_forwarded_total") for node in nodes)
    assert forwarded == 10  # each key: two of the three nodes asked its home
    assert all(metric(n, "dcounter_increments_forward_refused_total") == 0 for n in nodes)


def test_a_home_that_is_down_leaves_the_increment_to_the_node_asked(cluster):
    # A long --peer-timeout: a lists b for the whole test after b is gone.
    a, b, c = cluster.start(3, in_memory=True, extra=["--peer-timeout", "60"])
    b.kill()  # its port refuses connections
    keys = [f"k-{i}" for i in range(12)]
    for key in keys:
        answer = a.incr("down", 1, headers={"Idempotency-Key": key})
        assert answer.status_code == 200, answer.text
    assert b.node_id in a.nodes()
    cluster.wait_converged([a, c], len(keys), counter="down")
    # About a third of the keys live at b: a applied those itself.
    assert metric(a, "dcounter_increments_forward_refused_total") > 0
