"""Nodes on their own addresses, with a real partition between them.

Linux network namespaces stand in for hosts: one namespace holds a bridge (the switch), and
each node's namespace is wired to it by a veth pair and has its own 10.x.y.z address. Every
node binds `--host 10.x.y.z` and advertises `10.x.y.z:PORT`. Cutting a node's cable (its veth
end on the switch goes down) is a partition: both sides stay up and keep taking increments.

Needs root and iproute2; skipped otherwise. Everything lives inside namespaces this test
creates (nothing is added to the host's own network) and they are deleted at the end. The test
talks to the nodes from a thread that has entered the node's namespace (setns), so its
connections are made inside that namespace too.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import os
import secrets
import shutil
import subprocess

import pytest
import requests

from tests.integration.harness import NodeProcess, poll

PORT = 8080  # every namespace has its own port space
CLONE_NEWNET = 0x40000000


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


class NetnsClient:
    """HTTP calls made from a thread that lives in a network namespace."""

    def __init__(self, netns: str):
        self.netns = netns
        self.session: requests.Session | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, initializer=self._enter)

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns into {self.netns}: {os.strerror(errno)}")
        finally:
            os.close(fd)
        self.session = requests.Session()
        self.session.trust_env = False

    def call(self, method: str, url: str, **kwargs) -> requests.Response:
        return self._pool.submit(lambda: self.session.request(method, url, **kwargs)).result()

    def close(self) -> None:
        if self.session is not None:
            self._pool.submit(self.session.close).result()
        self._pool.shutdown()


class NamespacedNode(NodeProcess):
    def __init__(self, workdir, name, netns: str, address: str, peers=()):
        super().__init__(workdir, name, port=PORT, peers=peers, in_memory=True,
                         extra=["--host", address, "--advertise", f"{address}:{PORT}"])
        self.netns = netns
        self.address = address
        self.client = NetnsClient(netns)

    def args(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] + super().args()

    @property
    def base(self) -> str:
        return f"http://{self.address}:{self.port}"

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        return self.client.call("GET", self.base + path, **kwargs)

    def post(self, path: str, payload=None, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        if payload is not None:
            kwargs["data"] = json.dumps(payload)
        return self.client.call("POST", self.base + path, **kwargs)


@pytest.fixture
def lab():
    """Three 'hosts' on one switch: yields (namespace, address, switch port) per host and the
    switch's namespace."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    tag = secrets.token_hex(3)
    subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
    switch = f"dc{tag}sw"
    hosts = [(f"dc{tag}h{i}", f"{subnet}.{i}", f"port{i}") for i in (1, 2, 3)]
    created = []
    try:
        try:
            ip("netns", "add", switch)
        except (subprocess.CalledProcessError, OSError) as exc:
            pytest.skip(f"cannot create network namespaces here: {exc}")
        created.append(switch)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for netns, address, port in hosts:
            ip("netns", "add", netns)
            created.append(netns)
            ip("-n", netns, "link", "set", "lo", "up")
            ip("-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
               "netns", switch)
            ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", netns, "link", "set", "eth0", "up")
            ip("-n", switch, "link", "set", port, "master", "br0")
            ip("-n", switch, "link", "set", port, "up")
        yield switch, hosts
    finally:
        for netns in reversed(created):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=20)


def test_nodes_on_their_own_addresses_converge_after_a_partition_heals(lab, cluster):
    switch, hosts = lab
    nodes = []
    try:
        seed = None
        for i, (netns, address, _port) in enumerate(hosts, 1):
            node = NamespacedNode(cluster.workdir, f"host{i}", netns, address,
                                  peers=[seed] if seed else [])
            cluster.nodes.append(node)  # killed at teardown like any other
            nodes.append(node.start())
            seed = seed or node.node_id
        a, b, c = nodes
        assert [n.node_id for n in nodes] == [f"{address}:{PORT}" for _, address, _ in hosts]
        cluster.wait_membership(nodes)

        for i in range(30):
            assert nodes[i % 3].incr().status_code == 200
        cluster.wait_converged(nodes, 30)

        # Cut the third host's cable: each side sees the other go silent.
        ip("-n", switch, "link", "set", hosts[2][2], "down")
        for node in (a, b):
            poll(lambda node=node: c.node_id not in node.nodes(), 20,
                 message=f"{node.name} to drop the partitioned host")
        poll(lambda: c.nodes() == [], 20, message="the partitioned host to drop the others")
        acknowledged = 30
        for i in range(40):  # both sides of the partition keep taking increments
            assert (a, b, c)[i % 3].incr().status_code == 200
            acknowledged += 1
        cluster.wait_converged([a, b], acknowledged - 13)
        assert c.count() == 30 + 13

        # Heal: membership and counts come back with no operator action.
        ip("-n", switch, "link", "set", hosts[2][2], "up")
        cluster.wait_membership(nodes, timeout=30)
        assert cluster.wait_converged(nodes, acknowledged) == acknowledged
        assert c.incr(delta=5).status_code == 200
        assert cluster.wait_converged(nodes, acknowledged + 5) == acknowledged + 5
        for node in nodes:
            assert "Traceback" not in node.stderr(), node.stderr()
    finally:
        for node in nodes:
            node.kill()
            node.client.close()
