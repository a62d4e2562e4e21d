"""Shards that split on their own (--split-keys, --split-bytes): a tail's measure of
its shard, the record the controller reads, the controller's decision, and its
driver reading the servers' records while elected; all in memory, on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.chain.outcomes import ReadView
from kvtwist.chain.replica import Replica
from kvtwist.cluster import load
from kvtwist.cluster.controller import ControllerCore, ControllerService
from kvtwist.cluster.load import ChainLoad, Thresholds
from kvtwist.cluster.reporting import LoadReporter
from kvtwist.cluster.shardmap import BadMap, Server, ShardMap
from kvtwist.store import InlineRunner, Store
from kvtwist.tree import BTree
from tests.fakes.cluster import MemoryCluster, MemoryClusterStore
from tests.test_controller import PATHS, current

SERVERS = {f"s{i}": Server(f"s{i}", f"127.0.0.1:{7000 + i}") for i in (1, 2, 3)}


def tree_of(n: int, size: int = 10) -> BTree:
    t = BTree()
    for i in range(n):
        t.put(b"k%04d" % i, b"v" * size)
    return t


class MeasureTests(SynchronousTestCase):
    def test_counts_within_the_view_and_finds_the_middle(self) -> None:
        """Keys are counted within the view's range; bytes only under a byte threshold;
        the middle key only once past half of a threshold."""
        view = ReadView(tree_of(100), 7, b"k0010", b"k0090")
        quiet = load.measure(view, Thresholds(keys=1000))
        self.assertEqual((quiet.keys, quiet.size, quiet.middle, quiet.op), (80, None, None, 7))
        self.assertEqual(quiet.stray, 20, "the keys outside the view: given away, not swept")
        near = load.measure(view, Thresholds(keys=100))
        self.assertEqual(near.middle, b"k0050")
        sized = load.measure(view, Thresholds(size=1000))
        self.assertEqual(sized.size, 80 * (5 + 10))
        self.assertEqual(sized.middle, b"k0050")

    def test_record_round_trips_and_junk_is_refused(self) -> None:
        """A server's record decodes to what was measured; junk is BadMap."""
        loads = {"c0": ChainLoad(5, 100, b"m", 9, 3), "c1": ChainLoad(0)}
        self.assertEqual(load.decode(load.encode(loads)), loads)
        self.assertRaises(BadMap, load.decode, b"junk")
        self.assertRaises(BadMap, load.decode, b'{"format": 9, "chains": {}}')

    def test_split_due_only_past_the_threshold_and_inside(self) -> None:
        """The latest report rules; a middle key outside the shard, or at its start,
        never splits it; no threshold, no split."""
        m = ShardMap.initial(3, [b"m"], [tuple(SERVERS)] * 2)
        shard = m.shards[0]
        limits = Thresholds(keys=10)
        old, new = ChainLoad(50, None, b"f", 1), ChainLoad(5, None, b"g", 2)
        self.assertIsNone(load.split_due(shard, [old, new], limits))
        self.assertEqual(load.split_due(shard, [old], limits), b"f")
        self.assertIsNone(load.split_due(shard, [ChainLoad(50, None, b"q", 1)], limits))
        self.assertIsNone(load.split_due(shard, [ChainLoad(50, None, b"", 1)], limits))
        self.assertIsNone(load.split_due(shard, [old], Thresholds()))


class ControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.m = ShardMap.initial(3, [b"m"], [tuple(SERVERS)] * 2)

    def test_core_splits_one_big_shard_then_waits(self) -> None:
        """A shard whose tail reports more keys than --split-keys is cut at its middle
        key into a new chain on the same servers; the next decision leaves it alone
        for a while, and a small shard is never cut."""
        core = ControllerCore(60.0, Thresholds(keys=100))
        core.servers_seen(dict(SERVERS), 0.0)
        core.map_seen(self.m, 0.0)
        core.loads_seen({"s3": {"c0": ChainLoad(500, None, b"f", 10), "c1": ChainLoad(3)}})
        new = core.decide(0.0)
        assert new is not None
        self.assertEqual([(s.start, s.chain) for s in new.shards],
                         [(b"", "c0"), (b"f", "c2"), (b"m", "c1")])
        self.assertEqual(new.chains["c2"].parent, "c0")
        core.map_seen(new, 1.0)
        core.loads_seen({"s3": {"c0": ChainLoad(500, None, b"c", 11)}})
        self.assertIsNone(core.decide(1.0))  # settling
        self.assertIsNotNone(core.decide(1.0 + 3 * load.LOAD_PERIOD))

    def test_service_reads_loads_while_elected(self) -> None:
        """The elected controller reads the servers' load records every LOAD_PERIOD and
        writes the split map; without a threshold it reads none."""
        clock = Clock()
        cluster = MemoryCluster()
        cluster.set_map(self.m.encode())
        servers = MemoryClusterStore(cluster)
        for s in SERVERS.values():
            servers.register_server(s)
        servers.write_load("s3", load.encode({"c1": ChainLoad(500, None, b"t", 4)}))
        store = MemoryClusterStore(cluster)
        c = ControllerService(clock, store, PATHS, 60.0, thresholds=Thresholds(keys=100))
        c.startService()
        self.addCleanup(c.stopService)
        self.assertEqual(len(current(cluster).shards), 2)
        clock.advance(load.LOAD_PERIOD)
        self.assertEqual(current(cluster).shard_for(b"u").chain, "c2")


class ReporterTests(SynchronousTestCase):
    def test_reports_what_it_tails(self) -> None:
        """A server writes one record with each chain it serves as tail, measured."""
        clock = Clock()
        replica = Replica(clock, Store(clock, InlineRunner()))  # standalone: its own tail
        replica.state.reset(3, tree_of(30))
        cluster = MemoryCluster()
        store = MemoryClusterStore(cluster)
        r = LoadReporter(clock, store, "s1", lambda: {"c0": replica}, Thresholds(keys=40))
        r.start()
        clock.advance(load.LOAD_PERIOD)
        r.stop()
        self.assertEqual(load.decode(cluster.loads["s1"]),
                         {"c0": ChainLoad(30, None, b"k0015", 3)})
