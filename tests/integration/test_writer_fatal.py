"""A node whose committed group cannot be installed in memory stops with exit status 3 and one
line saying why; restarted, it serves what was committed.

The failure is injected into the node process by a `sitecustomize` module (imported by Python at
start-up) that makes the counter's install raise for a group touching the counter `explode`.
"""

from tests.integration.harness import ROOT, NodeProcess

_SITECUSTOMIZE = '''
from dcounter import counter

_install = counter.Counter.install


def _failing_install(self, txn):
    if "explode" in txn.totals:
        raise MemoryError("injected: no memory")
    return _install(self, txn)


counter.Counter.install = _failing_install
'''


def test_a_group_committed_but_not_installed_stops_the_node_with_status_3(tmp_path):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    node = NodeProcess(tmp_path, "n1", env={"PYTHONPATH": f"{inject}:{ROOT}"})
    try:
        node.start()
        assert node.incr("ok", 2).status_code == 200
        try:
            response = node.incr("explode", 5)
        except Exception:  # the process exits before it answers
            response = None
        assert response is None or response.status_code == 503
        assert node.proc.wait(15) == 3
        critical = [line for line in node.stderr().splitlines() if "CRITICAL" in line]
        assert len(critical) == 1 and "memory and disk cannot disagree" in critical[0]

        node.env = None
        node.start()
        assert node.count("ok") == 2
        assert node.count("explode") == 5  # committed before the stop, served after it
        assert node.incr("explode", 1).json()["count"] == 6
    finally:
        node.kill()
        node.session.close()
