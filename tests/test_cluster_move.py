"""A move and a drain on real cluster servers under load: ``kvtwist-admin cluster move``
and ``cluster drain`` while a client writes unique values to keys of the moving
shards and another reads them; no acknowledged write is lost, no read goes back
past a write acknowledged before it began, and the drained server leaves every
chain it was in (by the map and by the chains' own ZooKeeper membership)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kvtwist.client.blocking import BlockingClient
from kvtwist.cluster.shardmap import ClusterPaths, Server, ShardMap
from kvtwist.membership import MEMBER_PREFIX, parse_address
from kvtwist.procs import NodeProcess
from tests.nodes import TWISTD, env, wait_for
from tests.test_blocking import private_reactor
from tests.zkserver import ZooKeeperCase

ADMIN = str(Path(TWISTD).parent / "kvtwist-admin")
SERVERS = ("s1", "s2", "s3", "s4")
#: c0 serves keys below "m", c1 the rest
PLACEMENT = [("s1", "s2", "s3"), ("s2", "s3", "s4")]
KEYS = [b"a%02d" % i for i in range(10)] + [b"z%02d" % i for i in range(10)]
#: keys written before the load, so a joiner's state transfer carries about 1 MB
PRELOAD = 1000


@dataclass
class History:
    """What the writer and the reader saw, with monotonic times."""

    #: key -> (counter, time acknowledged), in order
    acked: dict[bytes, list[tuple[int, float]]] = field(default_factory=dict)
    #: key -> every counter attempted (acknowledged or not)
    tried: dict[bytes, list[int]] = field(default_factory=dict)
    #: (key, time the read began, counter read or -1 for none)
    reads: list[tuple[bytes, float, int]] = field(default_factory=list)
    #: (start, end, ok) of every write
    writes: list[tuple[float, float, bool]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def writer(kv: BlockingClient, history: History, stop: threading.Event) -> None:
    """Unique, growing values to every key in turn; one write at a time."""
    n = 0
    while not stop.is_set():
        key = KEYS[n % len(KEYS)]
        n += 1
        history.tried.setdefault(key, []).append(n)
        began = time.monotonic()
        try:
            kv.put(key, b"%d" % n)
        except Exception as e:  # retryable errors past the client's deadline
            history.writes.append((began, time.monotonic(), False))
            history.errors.append(f"put {key!r}: {e}")
            continue
        end = time.monotonic()
        history.writes.append((began, end, True))
        history.acked.setdefault(key, []).append((n, end))


def reader(kv: BlockingClient, history: History, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        key = KEYS[n % len(KEYS)]
        n += 1
        began = time.monotonic()
        try:
            value = kv.get(key)
        except Exception as e:
            history.errors.append(f"get {key!r}: {e}")
            continue
        history.reads.append((key, began, -1 if value is None else int(value)))


def pauses(writes: list[tuple[float, float, bool]], start: float, end: float) -> dict[str, float]:
    """The longest write and the longest gap between acknowledgements in [start, end]."""
    inside = [w for w in writes if w[1] >= start and w[0] <= end]
    acks = sorted(w[1] for w in inside if w[2])
    gaps = [b - a for a, b in zip(acks, acks[1:], strict=False)]
    return {
        "writes": len(inside),
        "failed": sum(1 for w in inside if not w[2]),
        "longest_write_s": max((w[1] - w[0] for w in inside), default=0.0),
        "longest_gap_s": max(gaps, default=0.0),
        "median_write_ms": 1000 * sorted(w[1] - w[0] for w in inside)[len(inside) // 2]
        if inside else 0.0,
    }


class ClusterCase(ZooKeeperCase):
    """Real cluster servers ``SERVERS`` of a new cluster placed as ``PLACEMENT`` (cut at
    ``CUTS``), and what the tests read of the map and the chains' membership."""

    timeout = 300
    SERVERS: tuple[str, ...] = SERVERS
    PLACEMENT: list[tuple[str, ...]] = PLACEMENT
    CUTS: list[bytes] = [b"m"]

    def setUp(self) -> None:
        super().setUp()
        self.name = f"t{uuid.uuid4().hex[:8]}"
        self.paths = ClusterPaths(self.name)
        self.kazoo.ensure_path(self.paths.root)
        first = ShardMap.initial(3, self.CUTS, self.PLACEMENT)
        self.kazoo.create(self.paths.map, first.encode())
        self.servers: dict[str, NodeProcess] = {}
        for sid in self.SERVERS:
            node = NodeProcess.cluster_server(self.zk.hosts, self.name, sid,
                                              extra_args=self.server_args(sid))
            self.addCleanup(node.cleanup)
            self.servers[sid] = node.start()

    def server_args(self, sid: str) -> list[str]:
        """Options of server ``sid`` beyond the cluster's (in memory unless given)."""
        return []

    def plans(self) -> dict[str, tuple[str, ...]]:
        return {c: p.members for c, p in
                ShardMap.decode(self.kazoo.get(self.paths.map)[0]).chains.items()}

    def listed(self, chain: str) -> list[str]:
        """The servers the chain's ZooKeeper membership lists, head first."""
        root = self.paths.chain(chain)
        by_port = {n.port: sid for sid, n in self.servers.items()}
        out: list[str] = []
        if self.kazoo.exists(root) is None:  # a new chain's root, not made yet
            return out
        for name in sorted(c for c in self.kazoo.get_children(root)
                           if c.startswith(MEMBER_PREFIX)):
            try:
                address = parse_address(self.kazoo.get(f"{root}/{name}")[0])
            except Exception:
                continue
            if address is not None:
                out.append(by_port.get(address[1], "?"))
        return out

    def settled(self) -> bool:
        """Every chain's membership lists exactly its planned members."""
        return all(sorted(self.listed(c)) == sorted(p) for c, p in self.plans().items())

    def watch_removals(self) -> list[str]:
        """At every map change, each server that left a chain since the last map
        while a server that joined it since the start is not listed by the chain's
        membership: the removals that came before the join (none, if the rule holds)."""
        start = self.plans()
        last = [start]
        early: list[str] = []

        def changed(data: bytes | None, _stat: object) -> None:
            if data is None:
                return
            now = {c: p.members for c, p in ShardMap.decode(data).chains.items()}
            for cid, members in now.items():
                gone = set(last[0][cid]) - set(members)
                joiners = set(members) - set(start[cid])
                if gone and not joiners <= set(self.listed(cid)):
                    early.append(f"{cid}: {sorted(gone)} out before {sorted(joiners)} joined")
            last[0] = now

        self.kazoo.DataWatch(self.paths.map, changed)
        return early

    def admin(self, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        began = time.monotonic()
        done = subprocess.run(
            [ADMIN, "cluster", *args[:1], self.name, *args[1:], "--zk", self.zk.hosts],
            capture_output=True, text=True, timeout=200, env=env(),
        )
        return began, done

    def start_load(
        self,
        wkv: BlockingClient,
        rkv: BlockingClient,
        history: History,
        stop: threading.Event,
        preload: int,
        size: int,
    ) -> list[threading.Thread]:
        """``preload`` keys of ``size`` bytes on both sides of "m", then a writer and a
        reader on KEYS, returned once every key has an acknowledged write."""
        for i in range(preload):
            wkv.put(b"%s-bulk%04d" % (b"bz"[i % 2 : i % 2 + 1], i), b"x" * size)
        threads = [threading.Thread(target=writer, args=(wkv, history, stop), daemon=True),
                   threading.Thread(target=reader, args=(rkv, history, stop), daemon=True)]
        for t in threads:
            t.start()
        wait_for(lambda: len(history.acked) == len(KEYS), 30, "writes flowing")
        return threads

    def check_history(self, history: History, kv: BlockingClient) -> None:
        self.assertGreater(len(history.reads), 0)
        for key in KEYS:
            last, _ = history.acked[key][-1]
            value = kv.get(key)
            assert value is not None, key
            got = int(value)
            # the latest acknowledged value, or a later attempt whose answer was lost
            self.assertGreaterEqual(got, last, key)
            self.assertIn(got, history.tried[key], key)
        for key, began, got in history.reads:
            before = [n for n, at in history.acked.get(key, []) if at < began]
            if before:
                self.assertGreaterEqual(got, before[-1], (key, began, history.errors[-5:]))


class ClusterMoveTests(ClusterCase):
    def test_move_and_drain_under_load(self) -> None:
        """Move c0's head s1 to s4, then drain s2 (in both chains; the drain may place
        chains on s1 again), while writing and reading both shards: both commands
        finish (--wait), no map drops a member before the chain lists its joiner,
        s1 is out of c0 once the move is done and s2 in no chain once the drain is,
        every acknowledged write reads back as its key's latest value, and no read
        returned a value older than one acknowledged before the read began."""
        wait_for(self.settled, 60, "both chains formed")
        history = History()
        stop = threading.Event()
        reactor = private_reactor()
        with BlockingClient.cluster(self.zk.hosts, self.name, 30.0, reactor=reactor) as wkv, \
                BlockingClient.cluster(self.zk.hosts, self.name, 30.0, reactor=reactor) as rkv:
            threads = self.start_load(wkv, rkv, history, stop, PRELOAD, 1024)
            early = self.watch_removals()
            moved_at, moved = self.admin("move", "c0", "--to", "s4", "--from", "s1", "--wait",
                                         "--wait-timeout", "120")
            moved_done = time.monotonic()
            self.assertEqual(moved.returncode, 0, moved.stdout + moved.stderr)
            after_move = self.plans()["c0"]
            self.assertEqual(sorted(after_move), ["s2", "s3", "s4"])
            self.assertNotIn("s1", self.listed("c0"))
            drained_at, drained = self.admin("drain", "s2", "--wait", "--wait-timeout", "150")
            drained_done = time.monotonic()
            self.assertEqual(drained.returncode, 0, drained.stdout + drained.stderr)
            acked_before = sum(len(v) for v in history.acked.values())
            wait_for(lambda: sum(len(v) for v in history.acked.values()) > acked_before + 20,
                     30, "writes after the drain")
            stop.set()
            for t in threads:
                t.join(60)
            plans = self.plans()
            for cid, members in plans.items():
                self.assertNotIn("s2", members, cid)
                self.assertNotIn("s2", self.listed(cid), cid)
                self.assertEqual(len(members), 3, cid)
            self.check_history(history, wkv)
            self.assertEqual(early, [])
        report: dict[str, object] = {
            "move": pauses(history.writes, moved_at, moved_done),
            "drain": pauses(history.writes, drained_at, drained_done),
            "move_s": moved_done - moved_at,
            "drain_s": drained_done - drained_at,
        }
        print(f"\ncluster move under load: {report}", file=sys.stderr)
        live = {sid: Server.decode(sid, self.kazoo.get(self.paths.server(sid))[0])
                for sid in SERVERS}
        self.assertEqual(len(live), 4)
