"""`dcounter-node` processes that must not start: what they print, their exit code, and what
they leave behind."""

import os
import subprocess
import sys

import pytest

from tests.integration.harness import ROOT

# TEST-NET-1 (RFC 5737): never a local address, so binding it fails at once with
# EADDRNOTAVAIL and no packet is sent.
UNBINDABLE = "192.0.2.1"


def run_node(cwd, *argv):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for name in [n for n in env if n.startswith("DCOUNTER_")]:
        del env[name]
    return subprocess.run([sys.executable, "-m", "dcounter", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("data_dir", [None, "state"])
def test_a_port_that_cannot_be_bound_leaves_nothing_behind(tmp_path, data_dir):
    argv = ["--host", UNBINDABLE, "--port", "0"]
    if data_dir:
        argv += ["--data-dir", str(tmp_path / data_dir)]
    done = run_node(tmp_path, *argv)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"dcounter-node: error: cannot listen on {UNBINDABLE}:0"), done.stderr
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []
