"""The cluster of chains under test in ``kvtwist-torture --cluster``: a private ZooKeeper,
``--servers`` cluster servers on their own data directories, and what ZooKeeper says of
them: the shard map, the live servers, each chain's members, the pending requests.

Every ZooKeeper read has a short deadline: ZooKeeper may be paused or down, and
the nemesis keeps its own clock meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvtwist import wire
from kvtwist.cluster.requests import BadRequests, Requests
from kvtwist.cluster.shardmap import BadMap, ClusterPaths, Shard, ShardMap
from kvtwist.membership import MEMBER_PREFIX, parse_address
from kvtwist.procs import TWISTD, NodeProcess, RawClient, ZooKeeperProcess, free_port, node_env
from kvtwist.verify.campaign.cluster import Wait, storage_and_key_args, write_key
from kvtwist.verify.faults.base import Node

NAME = "torture"
ADMIN = str(Path(TWISTD).parent / "kvtwist-admin")
#: Each ZooKeeper read waits this long at most.
ZK_WAIT = 1.0

#: A copy of one chain's shard at one server: its (key, value) pairs in key order.
Copy = list[tuple[bytes, bytes]]


def workload_keys(keys: int) -> list[bytes]:
    """The keys the workload writes (kvtwist.verify.workload), in bytewise order."""
    return sorted(f"k{i}".encode() for i in range(keys))


def cut_keys(keys: int, shards: int) -> list[bytes]:
    """Where to cut the key space so the workload's keys spread over ``shards`` shards:
    at workload keys, evenly by rank (the first shard starts at the empty key)."""
    ordered = workload_keys(keys)
    shards = max(1, min(shards, len(ordered)))
    return [ordered[i * len(ordered) // shards] for i in range(1, shards)]


def keys_in(shard: Shard, keys: int) -> list[bytes]:
    return [k for k in workload_keys(keys) if shard.holds(k)]


@dataclass
class Snapshot:
    """What ZooKeeper said at one moment (None or empty where it could not be read)."""

    map: ShardMap | None = None
    map_error: str | None = None  # why the map could not be trusted (decode refused it)
    live: set[str] = field(default_factory=set)  # registered servers
    listed: dict[str, list[str]] = field(default_factory=dict)  # chain -> servers, head first
    requests: Requests | None = None

    @property
    def complete(self) -> bool:
        return self.map is not None and self.requests is not None and all(
            c in self.listed for c in self.map.chains
        )

    def chains_of(self, server: str) -> list[str]:
        """The chains whose ZooKeeper membership lists ``server``."""
        return [c for c, members in self.listed.items() if server in members]


class ShardCluster:
    """ZooKeeper, the servers, our ZooKeeper session and the admin commands."""

    def __init__(self, args: argparse.Namespace, options: frozenset[str], report_dir: Path):
        self.args = args
        self.options = options
        self.report_dir = report_dir
        self.paths = ClusterPaths(NAME)
        self.session_timeout = float(args.session_timeout)
        self.zk: ZooKeeperProcess | None = None
        self.kazoo: Any = None
        self.nodes: list[Node] = []
        self.key_file: Path | None = None

    def start(self) -> None:
        from kazoo.client import KazooClient

        self.zk = ZooKeeperProcess(port=free_port())
        self.zk.start()
        if "cluster-key-file" in self.options:
            self.key_file = write_key(self.report_dir / "cluster.key")
        self.kazoo = KazooClient(self.zk.hosts, timeout=10)
        self.kazoo.start(15)

    def create(self) -> None:
        """``kvtwist-admin cluster create`` cut at workload keys, before any server runs."""
        cuts = cut_keys(self.args.keys, self.args.shards)
        command = ["create", "--replicas", str(self.args.replicas)]
        if cuts:
            command += ["--split-at", ",".join(k.decode() for k in cuts)]
        done = self.admin(*command, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"cluster create failed: {done.stdout}{done.stderr}")

    def admin_command(self, verb: str, *args: str) -> list[str]:
        """``kvtwist-admin cluster VERB NAME ARGS... --zk HOSTS``."""
        assert self.zk is not None
        return [ADMIN, "cluster", verb, NAME, *args, "--zk", self.zk.hosts]

    def admin(self, verb: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.admin_command(verb, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=node_env(),
            stdin=subprocess.DEVNULL,
        )

    def spawn_admin(self, verb: str, *args: str) -> subprocess.Popen[str]:
        """An admin command running while the campaign goes on (``--wait`` ones)."""
        return subprocess.Popen(
            self.admin_command(verb, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=node_env(),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    # -- servers -----------------------------------------------------------------------------

    def start_servers(self, wait: Wait) -> None:
        """``--servers`` servers; returns once each chain lists its R members."""
        for i in range(self.args.servers):
            self.start_node(f"s{i + 1}")
        for n in self.nodes:
            n.proc.wait_listening()
        wait(lambda: self.settled(self.snapshot()), 120, "every chain to form")

    def start_node(self, sid: str) -> Node:
        assert self.zk is not None
        directory = self.report_dir / "nodes" / sid
        extra = storage_and_key_args(directory, self.options, self.key_file)
        extra += ["--replace-after", f"{self.args.replace_after:g}"]
        proc = NodeProcess.cluster_server(
            self.zk.hosts, NAME, sid, self.session_timeout, extra, directory=directory
        )
        proc.start(wait=False)
        node = Node(sid, proc)
        self.nodes.append(node)
        return node

    def restart_node(self, node: Node) -> None:
        """A crashed server again: same port, same data directory, same server id."""
        node.proc.start(wait=False)

    def node_of(self, port: int) -> Node | None:
        return next((n for n in self.nodes if n.port == port), None)

    def server(self, sid: str) -> Node | None:
        return next((n for n in self.nodes if n.label == sid), None)

    # -- what ZooKeeper says -----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The map, the live servers, every chain's members and the requests, read at once."""
        s = Snapshot()
        if self.kazoo is None:
            return s
        k = self.kazoo
        try:
            map_reply = k.get_async(self.paths.map)
            servers_reply = k.get_children_async(self.paths.servers)
            requests_reply = k.exists_async(self.paths.requests)
            data, _ = map_reply.get(timeout=ZK_WAIT)
            s.live = set(servers_reply.get(timeout=ZK_WAIT))
            if requests_reply.get(timeout=ZK_WAIT) is None:
                s.requests = Requests()
            else:
                s.requests = Requests.decode(
                    k.get_async(self.paths.requests).get(timeout=ZK_WAIT)[0]
                )
        except BadRequests:
            return s
        except Exception:  # no connection, a timeout: nothing known now
            return s
        try:
            s.map = ShardMap.decode(data)
        except BadMap as e:
            s.map_error = str(e)
            return s
        for cid in s.map.chains:
            members = self.chain_members(cid)
            if members is not None:
                s.listed[cid] = members
        return s

    def chain_members(self, chain: str) -> list[str] | None:
        """The servers chain ``chain``'s own membership lists, head first; None if unknown."""
        root = self.paths.chain(chain)
        try:
            children = self.kazoo.get_children_async(root).get(timeout=ZK_WAIT)
        except Exception as e:
            return [] if type(e).__name__ == "NoNodeError" else None
        names = sorted(c for c in children if c.startswith(MEMBER_PREFIX))
        replies = [self.kazoo.get_async(f"{root}/{n}") for n in names]
        out = []
        for reply in replies:
            try:
                address = parse_address(reply.get(timeout=ZK_WAIT)[0])
            except Exception:  # vanished meanwhile
                continue
            node = self.node_of(address[1]) if address is not None else None
            out.append(node.label if node is not None else f"?{address}")
        return out

    def settled(self, s: Snapshot) -> bool:
        """Every chain lists exactly its R planned members, all running; nothing pending."""
        if not s.complete or s.map is None or s.requests is None:
            return False
        if s.requests.moves or s.requests.splits:
            return False
        running = {n.label for n in self.nodes if n.state == "running"}
        for cid, plan in s.map.chains.items():
            listed = s.listed.get(cid, [])
            if len(plan.members) != s.map.replicas or sorted(listed) != sorted(plan.members):
                return False
            if not set(listed) <= running:
                return False
        return s.live >= running

    def chain_text(self) -> str:
        """Shards and their chains' members, for the progress line."""
        s = self.snapshot()
        if s.map is None:
            return ""
        return " ".join(
            f"{sh.chain}[{'>'.join(s.listed.get(sh.chain, []))}]" for sh in s.map.shards
        )

    # -- each member's own copy ------------------------------------------------------------

    def copy(self, node: Node, chain: str, shard: Shard) -> Copy | None:
        """``node``'s own copy of ``chain`` (local reads naming the chain), its shard's keys."""
        keys, values = wire.req_getkeys(), wire.req_getvalues()
        for m in (keys, values):
            m.local = True
            m.chain = chain
        try:
            with RawClient(node.port, timeout=5.0) as c:
                k, v = c.call(keys, values)
        except (OSError, RuntimeError, ValueError):
            return None
        if wire.OP_ERROR in (k.opcode, v.opcode):
            return None
        pairs = zip([bytes(x) for x in k.keys], [bytes(x) for x in v.values], strict=False)
        return [(key, value) for key, value in pairs if shard.holds(key)]

    def stop(self) -> None:
        for n in self.nodes:
            n.proc.stop()
        if self.kazoo is not None:
            with contextlib.suppress(Exception):
                self.kazoo.stop()
                self.kazoo.close()
        if self.zk is not None:
            with contextlib.suppress(Exception):
                (self.report_dir / "zookeeper.log").write_text(self.zk.log_tail(100_000))
            self.zk.stop()
