"""Cluster servers as real processes: ``twistd -n kvnode --cluster NAME`` serves the
chains the shard map places on it, all on one port and one ZooKeeper session."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

from kvtwist import wire
from kvtwist.client.blocking import BlockingClient
from kvtwist.cluster.shardmap import ClusterPaths, Server, ShardMap
from kvtwist.membership import MEMBER_PREFIX
from kvtwist.procs import NodeProcess, RawClient
from kvtwist.wire import Message
from tests.nodes import TWISTD, env, wait_for
from tests.test_blocking import private_reactor
from tests.zkserver import ZooKeeperCase

ADMIN = str(Path(TWISTD).parent / "kvtwist-admin")
SERVERS = ("s1", "s2", "s3")
PLACEMENT = [("s1", "s2", "s3"), ("s2", "s3", "s1"), ("s3", "s1", "s2")]
#: a key in each chain's shard (the map cuts at "h" and "p")
KEYS = {"c0": b"apple", "c1": b"kiwi", "c2": b"quince"}


def request(port: int, msg: Message, timeout: float = 10.0) -> Message:
    """One request on a new connection to 127.0.0.1:``port``; its reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(wire.frame(msg))
        data = b""
        while len(data) < wire.HEADER.size or len(data) < wire.HEADER.size + wire.HEADER.unpack(
            data[: wire.HEADER.size]
        )[0]:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a reply")
            data += chunk
    reply = Message()
    reply.ParseFromString(data[wire.HEADER.size :])
    return reply


def put(chain: str, key: bytes, value: bytes) -> Message:
    return Message(
        opcode=wire.OP_PUT, c_type=wire.CT_ENTRY, entry={"key": key, "data": value}, chain=chain
    )


def get(chain: str, key: bytes) -> Message:
    return Message(opcode=wire.OP_GET, c_type=wire.CT_KEY, keys=[key], chain=chain)


class ClusterServerTests(ZooKeeperCase):
    timeout = 120

    def setUp(self) -> None:
        super().setUp()
        self.name = f"t{uuid.uuid4().hex[:8]}"
        self.paths = ClusterPaths(self.name)
        shard_map = ShardMap.initial(3, [b"h", b"p"], PLACEMENT)
        self.kazoo.ensure_path(self.paths.root)
        self.kazoo.create(self.paths.map, shard_map.encode())
        self.servers: dict[str, NodeProcess] = {}
        for sid in SERVERS:
            node = NodeProcess(
                args=[
                    "--zk", self.zk.hosts, "--cluster", self.name, "--server-id", sid,
                    "--zk-session-timeout", "4", "--in-memory",
                ]
            )
            self.addCleanup(node.cleanup)
            self.servers[sid] = node.start()

    def members(self, chain: str) -> list[str]:
        """The chain's members' addresses, head first."""
        root = self.paths.chain(chain)
        if self.kazoo.exists(root) is None:
            return []
        names = sorted(n for n in self.kazoo.get_children(root) if n.startswith(MEMBER_PREFIX))
        out = []
        for n in names:
            try:
                out.append(self.kazoo.get(f"{root}/{n}")[0].rstrip(b"\0").decode())
            except Exception:
                pass
        return out

    def port_of(self, address: str) -> int:
        return int(address.rsplit(":", 1)[1])

    def wait_formed(self, chain: str, n: int) -> list[str]:
        wait_for(lambda: len(self.members(chain)) == n, 60, f"chain {chain} of {n}")
        return self.members(chain)

    def write(self, chain: str, key: bytes, value: bytes) -> Message:
        """PUT at the chain's head, retried while the chain settles."""
        box: list[Message] = []

        def done() -> bool:
            head = self.members(chain)[0]
            try:
                reply = request(self.port_of(head), put(chain, key, value))
            except OSError:
                return False
            box[:] = [reply]
            return reply.opcode == wire.OP_PUT + 1

        wait_for(done, 60, f"a PUT on chain {chain}")
        return box[0]

    def test_each_server_serves_its_chains_on_one_port(self) -> None:
        """Every chain forms over the three servers; a value written to one chain is
        read from its tail, never from another chain at the same port.  Each chain's
        order is its placement's, so every server heads one chain and tails one."""
        for i, chain in enumerate(("c0", "c1", "c2")):
            order = self.wait_formed(chain, 3)
            self.assertEqual(order, [self.servers[s].address for s in PLACEMENT[i]], chain)
        self.write("c1", b"k", b"in-c1")
        tail = self.port_of(self.members("c1")[-1])
        wait_for(
            lambda: list(request(tail, get("c1", b"k")).values) == [b"in-c1"], 30, "the read"
        )
        self.assertEqual(list(request(tail, get("c0", b"a")).values), [])
        misplaced = request(tail, get("c0", b"k"))
        self.assertEqual((misplaced.opcode, misplaced.retry), (wire.OP_ERROR, True))
        refused = request(tail, get("nope", b"k"))
        self.assertEqual((refused.opcode, refused.retry), (wire.OP_ERROR, True))
        self.assertGreaterEqual(refused.map_version, 1)
        # one process serves all three chains: one port, one registration
        self.assertEqual(sorted(self.kazoo.get_children(self.paths.servers)), list(SERVERS))

    def test_a_server_crash_leaves_every_chain_serving(self) -> None:
        """SIGKILL one server: each of its chains drops it and takes writes again."""
        for chain in ("c0", "c1", "c2"):
            self.wait_formed(chain, 3)
            self.write(chain, KEYS[chain] + b"-before", chain.encode())
        self.servers["s1"].kill()
        for chain in ("c0", "c1", "c2"):
            left = self.wait_formed(chain, 2)
            self.assertNotIn(self.servers["s1"].address, left)
            self.write(chain, KEYS[chain] + b"-after", chain.encode())
            tail = self.port_of(self.members(chain)[-1])
            reply = request(tail, get(chain, KEYS[chain] + b"-before"))
            self.assertEqual(list(reply.values), [chain.encode()])


class ControlledClusterTests(ZooKeeperCase):
    """A cluster made by ``kvtwist-admin cluster create`` before any server runs: the
    elected controller places the chains once enough servers register, and replaces
    a server gone longer than ``--replace-after``; a cluster client sees every
    acknowledged write throughout."""

    timeout = 180

    def test_controller_places_and_replaces(self) -> None:
        name = f"t{uuid.uuid4().hex[:8]}"
        paths = ClusterPaths(name)
        made = subprocess.run(
            [ADMIN, "cluster", "create", name, "--zk", self.zk.hosts, "--replicas", "2",
             "--split-at", "m"],
            capture_output=True, text=True, timeout=60, env=env(),
        )
        self.assertEqual(made.returncode, 0, made.stderr)
        servers = {}
        for sid in ("s1", "s2", "s3"):
            node = NodeProcess.cluster_server(
                self.zk.hosts, name, sid, extra_args=["--replace-after", "3"]
            )
            self.addCleanup(node.cleanup)
            servers[sid] = node.start()

        def plans() -> dict[str, tuple[str, ...]]:
            data, _ = self.kazoo.get(paths.map)
            return {c: p.members for c, p in ShardMap.decode(data).chains.items()}

        def formed() -> bool:
            return all(
                len(p) == 2 and len(self.kazoo.get_children(paths.chain(c))) == 2
                for c, p in plans().items()
            )

        wait_for(formed, 60, "both chains placed and formed")
        with BlockingClient.cluster(self.zk.hosts, name, 60.0, reactor=private_reactor()) as kv:
            written = {f"k{i:03d}".encode(): str(i).encode() for i in range(0, 400, 7)}
            written.update({b"z" + k: v for k, v in written.items()})
            for k, v in written.items():
                kv.put(k, v)
            # the server that is in both chains goes: each chain loses a member
            victim = next(s for s in servers if all(s in p for p in plans().values()))
            servers[victim].kill()
            wait_for(lambda: all(victim not in p for p in plans().values()), 60, "replacement")
            wait_for(formed, 60, "both chains whole again")
            for k, v in written.items():
                self.assertEqual(kv.get(k), v, k)
            kv.put(b"after", b"1")
            self.assertEqual(kv.size(), len(written) + 1)


class DurableClusterTests(ZooKeeperCase):
    """Cluster servers on data directories: a server killed and started again is the
    same server (its id kept on disk), recovers each of its chains' replicas from
    its own directories and rejoins them, while the chains kept taking writes."""

    timeout = 180

    def test_a_server_comes_back_with_its_chains(self) -> None:
        name = f"t{uuid.uuid4().hex[:8]}"
        paths = ClusterPaths(name)
        shard_map = ShardMap.initial(3, [b"m"], [("s1", "s2", "s3"), ("s2", "s3", "s1")])
        self.kazoo.ensure_path(paths.root)
        self.kazoo.create(paths.map, shard_map.encode())
        servers = {}
        for sid in ("s1", "s2", "s3"):
            # no --server-id: the id the data directory keeps (as a first start leaves it)
            data = Path(tempfile.mkdtemp(prefix="kvcluster-"))
            self.addCleanup(shutil.rmtree, data, True)
            (data / "server-id").write_text(sid + "\n")
            node = NodeProcess(args=[
                "--zk", self.zk.hosts, "--cluster", name, "--zk-session-timeout", "4",
                "--data-dir", str(data),
            ])
            self.addCleanup(node.cleanup)
            servers[sid] = node.start()

        def members(chain: str) -> list[str]:
            root = paths.chain(chain)
            if self.kazoo.exists(root) is None:
                return []
            return [c for c in self.kazoo.get_children(root) if c.startswith(MEMBER_PREFIX)]

        wait_for(lambda: all(len(members(c)) == 3 for c in ("c0", "c1")), 60, "chains formed")
        with BlockingClient.cluster(self.zk.hosts, name, 60.0, reactor=private_reactor()) as kv:
            for i in range(50):
                kv.put(b"a%02d" % i, b"1")
                kv.put(b"z%02d" % i, b"1")
            servers["s1"].kill()
            for i in range(50, 80):  # written while s1 is down
                kv.put(b"a%02d" % i, b"2")
                kv.put(b"z%02d" % i, b"2")
            servers["s1"].start()
            wait_for(lambda: all(len(members(c)) == 3 for c in ("c0", "c1")), 60, "s1 back")
            again = Server.decode("s1", self.kazoo.get(paths.server("s1"))[0])
            self.assertEqual(again.address, servers["s1"].address)
            for chain in ("c0", "c1"):
                # s1 caught up: its own copy of the chain holds every write
                ask = wire.req_size()
                ask.chain = chain
                ask.local = True
                wait_for(lambda ask=ask: RawClient(servers["s1"].port).one(ask).result == 80,
                         30, f"s1's copy of {chain}")
            self.assertEqual(kv.size(), 160)
