"""The cluster under test: a private ZooKeeper, the proxy in front of every node (when a
fault needs it) and the nodes; and the chain as ZooKeeper lists it."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvtwist import wire
from kvtwist.procs import NodeProcess, RawClient, ZooKeeperProcess, free_port
from kvtwist.verify.faults.base import Node
from kvtwist.verify.nemesis import PROXY_KINDS
from kvtwist.verify.proxy import ProxyControl
from kvtwist.verify.wallclock import WallClock

ROOT = "/torture"
#: With join-fault, the store gets this much filler first, so a state transfer
#: through the slowed proxy lasts seconds (kvtwist.verify.faults.joins.JOIN_RATE).
FILL_KEYS, FILL_SIZE = 64, 64 * 1024

#: Waits for a condition: (condition, timeout, what is awaited); checks for exits meanwhile.
Wait = Callable[[Callable[[], bool], float, str], None]


class Cluster:
    """ZooKeeper, the proxy and every node started, and our own ZooKeeper session."""

    def __init__(
        self,
        args: argparse.Namespace,
        kinds: list[str],
        options: frozenset[str],
        report_dir: Path,
    ) -> None:
        self.args = args
        self.kinds = kinds
        self.options = options
        self.report_dir = report_dir
        self.session_timeout = float(args.session_timeout)
        self.zk: ZooKeeperProcess | None = None
        self.proxy: ProxyControl | None = None
        self.kazoo: Any = None
        self.nodes: list[Node] = []
        self.key_file: Path | None = None
        #: with --workload resp: the RESP port of each node started, in order
        self.resp_ports: list[int] = []

    def start(self) -> None:
        """ZooKeeper, the proxy if a fault needs it, the cluster key, our session."""
        from kazoo.client import KazooClient

        self.zk = ZooKeeperProcess(port=free_port())
        self.zk.start()
        if any(k in PROXY_KINDS for k in self.kinds):
            self.proxy = ProxyControl(self.report_dir / "proxy.log")
        if "cluster-key-file" in self.options:
            self.key_file = write_key(self.report_dir / "cluster.key")
        self.kazoo = KazooClient(self.zk.hosts, timeout=10)
        self.kazoo.start(15)

    # -- the chain as ZooKeeper lists it ----------------------------------------------------

    def members(self) -> list[tuple[str, int]]:
        """The chain in order, head first: (znode name, advertised port); [] if unknown now.

        Every ZooKeeper call has a short deadline: ZooKeeper may be paused or
        down, and the nemesis must keep its own clock meanwhile.
        """
        from kvtwist.membership import parse_address

        if self.kazoo is None:
            return []
        try:
            children = self.kazoo.get_children_async(ROOT).get(timeout=1.0)
            names = sorted(c for c in children if c.startswith("node"))
            replies = [(name, self.kazoo.get_async(f"{ROOT}/{name}")) for name in names]
            out = []
            for name, reply in replies:
                try:
                    data, _ = reply.get(timeout=1.0)
                except Exception:  # vanished meanwhile
                    continue
                address = parse_address(data)
                if address is not None:
                    out.append((name, address[1]))
            return out
        except Exception:  # no connection, no root yet, a timeout: nothing known now
            return []

    def config(self) -> int:
        """The chain's configuration number (the root's child version), 0 if unknown."""
        try:
            stat = self.kazoo.exists_async(ROOT).get(timeout=1.0)
            return int(stat.cversion) if stat is not None else 0
        except Exception:
            return 0

    def label_of(self, port: int) -> str:
        node = self.node_of(port)
        return node.label if node is not None else f":{port}"

    def node_of(self, port: int) -> Node | None:
        """The node advertised at ``port`` (its own port, or its proxy's)."""
        for n in self.nodes:
            if n.address_port == port:
                return n
        return None

    def chain_text(self) -> str:
        """The chain by label, head first, for the progress line."""
        return ">".join(self.label_of(port) for _, port in self.members())

    # -- nodes -------------------------------------------------------------------------------

    def start_node(self) -> Node:
        assert self.zk is not None and self.zk.port is not None
        label = f"n{len(self.nodes) + 1}"
        port = free_port()
        zk_hosts = self.zk.hosts
        extra: list[str] = []
        advertised = 0
        if self.proxy is not None:
            advertised = self.proxy.route(label, port)
            zk_hosts = f"127.0.0.1:{self.proxy.route(f'{label}-zk', self.zk.port)}"
            extra += ["--advertise", f"127.0.0.1:{advertised}"]
        directory = self.report_dir / "nodes" / label
        extra += storage_and_key_args(directory, self.options, self.key_file)
        if getattr(self.args, "workload", "kv") == "resp":
            resp_port = free_port()
            self.resp_ports.append(resp_port)
            with open(self.report_dir / "resp-ports", "a", encoding="ascii") as f:
                f.write(f"{resp_port}\n")  # the RESP clients read it to find new nodes
            extra += ["--resp-port", str(resp_port)]
        if self.args.link_timeout is not None and "link-timeout" in self.options:
            extra += ["--link-timeout", f"{self.args.link_timeout:g}"]
        env = None
        if "clock-step" in self.kinds:  # its wall clock follows this file, stepped by the nemesis
            directory.mkdir(parents=True, exist_ok=True)
            env = WallClock(directory / "clock").environ()
        proc = NodeProcess.member(
            zk_hosts, ROOT, self.session_timeout, directory, port=port, extra_args=extra, env=env
        )
        proc.start(wait=False)
        node = Node(label, proc, advertised=advertised)
        self.nodes.append(node)
        self.own(node)
        return node

    def own(self, node: Node) -> None:
        """Tell the proxy which connections this node makes."""
        if self.proxy is not None and node.proc.pid is not None:
            self.proxy.owner(node.proc.pid, node.label)

    def restart_node(self, node: Node) -> None:
        """Start a crashed node again: same port, same data directory, same proxy routes."""
        if self.proxy is not None and node.proc.pid is not None:
            self.proxy.owner(node.proc.pid, None)
        node.proc.start(wait=False)
        self.own(node)

    def start_chain(self, wait: Wait) -> None:
        """``--nodes`` nodes, one at a time, each listed before the next starts."""
        for _ in range(self.args.nodes):
            node = self.start_node()
            node.proc.wait_listening()
            wait(
                lambda n=node: n.address_port in [p for _, p in self.members()],  # type: ignore[misc]
                60,
                f"{node.label} to join",
            )

    def fill(self) -> None:
        """Give the store some bulk, so a state transfer lasts long enough to be faulted."""
        members = self.members()
        head = self.node_of(members[0][1]) if members else None
        if head is None:
            raise RuntimeError("no head to fill the store through")
        with RawClient(head.port, timeout=30) as c:
            replies = c.call(
                *(
                    wire.req_put(f"fill-{i:03d}".encode(), bytes([i]) * FILL_SIZE)
                    for i in range(FILL_KEYS)
                )
            )
        bad = [r.error for r in replies if r.opcode != wire.OP_PUT + 1]
        if bad:
            raise RuntimeError(f"filling the store failed: {bad[0]}")

    def stop(self) -> None:
        """Every node, the proxy, our session, ZooKeeper (its log kept in the report)."""
        for n in self.nodes:
            n.proc.stop()
        if self.proxy is not None:
            self.proxy.close()
        if self.kazoo is not None:
            with contextlib.suppress(Exception):
                self.kazoo.stop()
                self.kazoo.close()
        if self.zk is not None:
            with contextlib.suppress(Exception):
                (self.report_dir / "zookeeper.log").write_text(self.zk.log_tail(100_000))
            self.zk.stop()


def storage_and_key_args(
    directory: Path, options: frozenset[str], key_file: Path | None
) -> list[str]:
    """A node's own data directory (kept across its crash-restarts) and the cluster key.

    Only what this node build takes: an older one runs without either.
    """
    args: list[str] = []
    if "data-dir" in options:
        args += ["--data-dir", str(directory / "data")]
    if key_file is not None and "cluster-key-file" in options:
        args += ["--cluster-key-file", str(key_file)]
    return args


def write_key(path: Path) -> Path:
    """A fresh cluster key, readable by its owner only from the moment the file exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path
