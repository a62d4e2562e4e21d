"""A split on real cluster servers under load: ``kvtwist-admin cluster split`` while a
client writes unique values to keys on both sides of the cut and another reads them;
the new chain starts from the old one's state, no acknowledged write is lost, no read
goes back past a write acknowledged before it began, and the shards' sizes add up to
the keys written (the old chain no longer counts the keys it gave away, and once
the split settles deletes them)."""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from kvtwist import wire
from kvtwist.client.blocking import BlockingClient
from kvtwist.cluster.shardmap import ShardMap
from kvtwist.procs import RawClient
from tests.nodes import wait_for
from tests.test_blocking import private_reactor
from tests.test_cluster_move import KEYS, ClusterCase, History, pauses

SERVERS = ("s1", "s2", "s3")
PRELOAD = 600


class ClusterSplitTests(ClusterCase):
    SERVERS = SERVERS
    PLACEMENT = [SERVERS]
    CUTS = []

    def test_split_under_load(self) -> None:
        """Split the one shard at "m" while writing and reading keys on both sides: the
        command finishes (--wait), the map has c1 from "m" on, split off c0 and placed
        on c0's servers, c1's membership lists all three, every acknowledged write
        reads back as its key's latest value, no read returned a value older than one
        acknowledged before it began, and SIZE over the cluster is the number of keys
        written (each counted once); a second split of c1 works on the new chain too."""
        wait_for(self.settled, 60, "the chain formed")
        history = History()
        stop = threading.Event()
        reactor = private_reactor()
        with BlockingClient.cluster(self.zk.hosts, self.name, 30.0, reactor=reactor) as wkv, \
                BlockingClient.cluster(self.zk.hosts, self.name, 30.0, reactor=reactor) as rkv:
            threads = self.start_load(wkv, rkv, history, stop, PRELOAD, 512)
            split_at, split = self.admin("split", "c0", "m", "--wait", "--wait-timeout", "120")
            split_done = time.monotonic()
            self.assertEqual(split.returncode, 0, split.stdout + split.stderr)
            m = ShardMap.decode(self.kazoo.get(self.paths.map)[0])
            self.assertEqual([(s.start, s.end, s.chain) for s in m.shards],
                             [(b"", b"m", "c0"), (b"m", None, "c1")])
            self.assertIn(m.chains["c1"].parent, ("c0", None))  # None: settled already
            self.assertEqual(m.chains["c1"].members, SERVERS)
            self.assertEqual(sorted(self.listed("c1")), list(SERVERS))
            wait_for(lambda: self.current_map().chains["c1"].parent is None, 30,
                     "the controller to settle the split")
            wait_for(lambda: self.swept("c0") is not None, 30, "c0 to sweep what it gave away")
            self.assertEqual(self.swept("c0"), PRELOAD // 2 + len(KEYS) // 2)
            acked = sum(len(v) for v in history.acked.values())
            wait_for(lambda: sum(len(v) for v in history.acked.values()) > acked + 20,
                          30, "writes after the split")
            again_at, again = self.admin("split", "c1", "t", "--wait", "--wait-timeout", "120")
            again_done = time.monotonic()
            self.assertEqual(again.returncode, 0, again.stdout + again.stderr)
            acked = sum(len(v) for v in history.acked.values())
            wait_for(lambda: sum(len(v) for v in history.acked.values()) > acked + 20,
                          30, "writes after the second split")
            stop.set()
            for t in threads:
                t.join(60)
            self.check_history(history, wkv)
            self.assertEqual(wkv.size(), PRELOAD + len(KEYS))
            self.assertEqual(len(wkv.keys()), PRELOAD + len(KEYS))
        report = {
            "split": pauses(history.writes, split_at, split_done),
            "split_s": split_done - split_at,
            "second": pauses(history.writes, again_at, again_done),
        }
        print(f"\ncluster split under load: {report}", file=sys.stderr)


    def current_map(self) -> ShardMap:
        return ShardMap.decode(self.kazoo.get(self.paths.map)[0])

    def swept(self, chain: str) -> int | None:
        """The keys the servers' logs say ``chain``'s sweeps deleted (None: not done)."""
        text = "\n".join(node.log() for node in self.servers.values())
        found = re.findall(rf"chain {chain}: swept the (\d+) keys", text)
        return sum(map(int, found)) if found else None


class DurableSplitTests(ClusterCase):
    """A split on servers with data directories, then every server killed at once and
    started again: each recovers both chains, the new one from the state it took at
    the split (kept on its own disk), and every write reads back."""

    SERVERS = SERVERS
    PLACEMENT = [SERVERS]
    CUTS = []

    def setUp(self) -> None:
        self.dirs = {}
        for sid in SERVERS:
            data = Path(tempfile.mkdtemp(prefix="kvsplit-"))
            self.addCleanup(shutil.rmtree, data, True)
            self.dirs[sid] = data
        super().setUp()

    def server_args(self, sid: str) -> list[str]:
        return ["--data-dir", str(self.dirs[sid])]

    def test_split_then_power_cut(self) -> None:
        """Writes below and above the cut before and after a split, all servers
        SIGKILLed, all started again: c0 and c1 re-form, every key holds its last
        value, and the sizes add up to the keys written."""
        wait_for(self.settled, 60, "the chain formed")
        reactor = private_reactor()
        with BlockingClient.cluster(self.zk.hosts, self.name, 60.0, reactor=reactor) as kv:
            for i in range(40):
                kv.put(b"a%02d" % i, b"1")
                kv.put(b"z%02d" % i, b"1")
            _, split = self.admin("split", "c0", "m", "--wait", "--wait-timeout", "120")
            self.assertEqual(split.returncode, 0, split.stdout + split.stderr)
            for i in range(20, 60):
                kv.put(b"a%02d" % i, b"2")
                kv.put(b"z%02d" % i, b"2")
            for node in self.servers.values():
                node.kill()
            for node in self.servers.values():
                node.start()
            wait_for(self.settled, 90, "both chains formed again")
            for i in range(60):
                want = b"1" if i < 20 else b"2"
                self.assertEqual(kv.get(b"a%02d" % i), want)
                self.assertEqual(kv.get(b"z%02d" % i), want)
            self.assertEqual(kv.size(), 120)


class AutoSplitTests(ClusterCase):
    """Servers started with --split-keys: a shard that grows past it is split on its
    own, at its middle key, and the halves hold every key."""

    SERVERS = SERVERS
    PLACEMENT = [SERVERS]
    CUTS = []

    def server_args(self, sid: str) -> list[str]:
        return ["--split-keys", "100"]

    def test_a_growing_shard_splits_itself(self) -> None:
        """300 keys into one shard with --split-keys 100: the controller splits it (more
        than once, as the halves still pass 100) into chains on the same servers, and
        every key reads back, counted once."""
        wait_for(self.settled, 60, "the chain formed")
        with BlockingClient.cluster(self.zk.hosts, self.name, 60.0,
                                    reactor=private_reactor()) as kv:
            for i in range(300):
                kv.put(b"key%03d" % i, b"%d" % i)

            def shards() -> int:
                return len(ShardMap.decode(self.kazoo.get(self.paths.map)[0]).shards)

            wait_for(lambda: shards() >= 3, 90, "the shard split on its own")
            wait_for(self.settled, 60, "every chain formed")
            m = ShardMap.decode(self.kazoo.get(self.paths.map)[0])
            for shard in m.shards[1:]:
                self.assertTrue(b"key000" < shard.start < b"key299", shard)
                self.assertEqual(m.chains[shard.chain].members, SERVERS)
            for i in range(300):
                self.assertEqual(kv.get(b"key%03d" % i), b"%d" % i)
            self.assertEqual(kv.size(), 300)


class LateJoinerSplitTests(ClusterCase):
    """A server that joined a chain after its split marker was logged (by state
    transfer, so its copy has no marker) and is then placed on the chain split off
    it: it joins the running new chain rather than wait for ever for a marker its
    copy of the parent will never see (found by ``kvtwist-torture --cluster``)."""

    SERVERS = ("s1", "s2", "s3", "s4")
    PLACEMENT = [("s1", "s2", "s3")]
    CUTS = []

    def setUp(self) -> None:
        self.dirs = {}
        for sid in self.SERVERS:
            data = Path(tempfile.mkdtemp(prefix="kvsplit-"))
            self.addCleanup(shutil.rmtree, data, True)
            self.dirs[sid] = data
        super().setUp()

    def server_args(self, sid: str) -> list[str]:
        return ["--data-dir", str(self.dirs[sid])]

    def test_a_late_member_of_the_parent_joins_the_split_off_chain(self) -> None:
        """Split c0 at "m", restart every server (their logs in memory start afresh, so
        a joiner gets a full copy, without the marker), move c0 from s1 to s4, then move
        c1 from s1 to s4: the move completes, c1 lists s4, and s4's own copy of c1
        holds every key written above "m"."""
        wait_for(self.settled, 60, "the chain formed")
        reactor = private_reactor()
        with BlockingClient.cluster(self.zk.hosts, self.name, 60.0, reactor=reactor) as kv:
            for i in range(20):
                kv.put(b"a%02d" % i, b"1")
                kv.put(b"z%02d" % i, b"1")
            _, split = self.admin("split", "c0", "m", "--wait", "--wait-timeout", "60")
            self.assertEqual(split.returncode, 0, split.stdout + split.stderr)
            for node in self.servers.values():
                node.kill()
            for node in self.servers.values():
                node.start()
            wait_for(self.settled, 90, "both chains formed again")
            kv.put(b"a99", b"2")
            _, moved = self.admin("move", "c0", "--to", "s4", "--from", "s1",
                                  "--wait", "--wait-timeout", "60")
            self.assertEqual(moved.returncode, 0, moved.stdout + moved.stderr)
            _, moved = self.admin("move", "c1", "--to", "s4", "--from", "s1",
                                  "--wait", "--wait-timeout", "60")
            self.assertEqual(moved.returncode, 0, moved.stdout + moved.stderr)
            self.assertEqual(sorted(self.listed("c1")), ["s2", "s3", "s4"])
            ask = wire.req_getkeys()
            ask.chain, ask.local = "c1", True
            reply = RawClient(self.servers["s4"].port).one(ask)
            self.assertEqual(sorted(bytes(k) for k in reply.keys),
                             [b"z%02d" % i for i in range(20)], str(reply))
            self.assertEqual(kv.size(), 41)
