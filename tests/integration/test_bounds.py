"""Bounds on what nodes keep, over real processes: origins left by in-memory restarts are
retired, every node counts them, and a durable node keeps its retired set across a restart."""

from tests.integration.harness import poll

RETIRE = ["--origin-retire-after", "2"]


def digest(node) -> dict:
    return node.get("/status").json()["digest"]


def test_origins_of_in_memory_restarts_are_retired_and_still_counted(cluster):
    durable = cluster.node("durable", extra=RETIRE).start()
    restarting = cluster.node("mem", peers=[durable.node_id], in_memory=True,
                              extra=RETIRE).start()
    cluster.wait_membership([durable, restarting])
    for i in range(3):  # three origins that will never emit again
        assert restarting.incr(delta=10).status_code == 200
        cluster.wait_converged([durable, restarting], expected=10 * (i + 1))
        restarting.kill()
        restarting.restart()
    assert durable.incr().status_code == 200
    cluster.wait_membership([durable, restarting])
    for node in (durable, restarting):
        poll(lambda node=node: digest(node).get("_retired") == 3, timeout=30,
             message=f"{node.name} to retire the three idle origins")
    cluster.wait_converged([durable, restarting], expected=31)
    assert len(digest(durable)) == 2  # its own origin and the retired entry
    assert "dcounter_origins_retired 3" in durable.get("/metrics").text

    durable.terminate()
    durable.restart()
    cluster.wait_membership([durable, restarting])
    assert digest(durable).get("_retired") == 3
    cluster.wait_converged([durable, restarting], expected=31)
    late = cluster.node("late", peers=[durable.node_id], in_memory=True, extra=RETIRE).start()
    cluster.wait_converged([durable, restarting, late], expected=31)
