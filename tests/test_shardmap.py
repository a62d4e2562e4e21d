"""The shard map: ranges that cover every key once, lookups, and a record that
refuses junk rather than routing by it."""

from __future__ import annotations

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.cluster.shardmap import BadMap, ChainPlan, ClusterPaths, Server, Shard, ShardMap
from kvtwist.options import NodeOptions


def three() -> ShardMap:
    return ShardMap.initial(
        2, [b"h", b"p"], [("s1", "s2"), ("s2", "s3"), ("s3", "s1")]
    )


class ShardMapTests(SynchronousTestCase):
    def test_every_key_has_one_shard(self) -> None:
        """Keys below, at and above each cut land in the shard whose range holds them."""
        m = three()
        for key, chain in [(b"", "c0"), (b"a", "c0"), (b"h", "c1"), (b"o\xff", "c1"),
                           (b"p", "c2"), (b"\xff" * 9, "c2")]:
            shard = m.shard_for(key)
            self.assertEqual(shard.chain, chain, key)
            self.assertTrue(shard.holds(key))

    def test_round_trip(self) -> None:
        m = three()
        self.assertEqual(ShardMap.decode(m.encode()), m)

    def test_chains_of_a_server(self) -> None:
        self.assertEqual([p.id for p in three().chains_of("s1")], ["c0", "c2"])

    def test_scan_visits_shards_in_order(self) -> None:
        m = three()
        self.assertEqual([s.chain for s in m.shards_between(b"b", b"q")], ["c0", "c1", "c2"])
        self.assertEqual([s.chain for s in m.shards_between(b"h", b"p")], ["c1"])
        self.assertEqual([s.chain for s in m.shards_between(None, b"h")], ["c0"])

    def test_gaps_and_overlaps_refused(self) -> None:
        plans = {"a": ChainPlan("a", ("s1",)), "b": ChainPlan("b", ("s2",))}
        with self.assertRaises(BadMap):
            ShardMap(1, 1, (Shard(b"", b"m", "a"), Shard(b"n", None, "b")), plans)
        with self.assertRaises(BadMap):
            ShardMap(1, 1, (Shard(b"a", None, "a"),), plans)
        with self.assertRaises(BadMap):
            ShardMap(1, 1, (Shard(b"", b"m", "a"), Shard(b"m", b"z", "b")), plans)
        with self.assertRaises(BadMap):
            ShardMap(1, 1, (Shard(b"", None, "zz"),), plans)

    def test_junk_records(self) -> None:
        for junk in [b"", b"{", b"[]", b'{"format": 1}', b'{"format": 9, "version": 1}',
                     three().encode().replace(b'"c1"', b'"../x"')]:
            with self.assertRaises(BadMap, msg=junk):
                ShardMap.decode(junk)

    def test_names_are_one_path_component(self) -> None:
        self.assertEqual(ClusterPaths("prod").chain("c1"), "/kvtwist/prod/chains/c1")
        for bad in ["", "a/b", "..", "x" * 65]:
            with self.assertRaises(BadMap):
                ClusterPaths(bad)

    def test_server_record(self) -> None:
        s = Server("s1", "127.0.0.1:7000", "z1")
        self.assertEqual(Server.decode("s1", s.encode()), s)
        with self.assertRaises(BadMap):
            Server.decode("s1", b"127.0.0.1:7000")


class ClusterOptionTests(SynchronousTestCase):
    """``--cluster`` and its companions are checked before anything starts."""

    def parse(self, *args: str) -> NodeOptions:
        o = NodeOptions()
        o.parseOptions(list(args))
        return o

    def test_refused_combinations(self) -> None:
        for args, why in [
            (["--cluster", "c", "--in-memory"], "--cluster needs --zk"),
            (["--zk", "127.0.0.1:1", "--cluster", "a/b", "--in-memory"], "bad cluster name"),
            (["--server-id", "s1", "--in-memory"], "--server-id is for a cluster server"),
            (["--zk", "127.0.0.1:1", "--cluster", "c", "--in-memory", "--resp-port", "7"],
             "--resp-port is for a lone chain"),
            (["--zk", "127.0.0.1:1", "--cluster", "c", "--in-memory", "--replace-after", "0"],
             "--replace-after must be positive"),
            (["--zk", "127.0.0.1:1", "--cluster", "c", "--in-memory", "--balance-after", "-1"],
             "--balance-after must not be negative"),
        ]:
            with self.assertRaises(UsageError, msg=args) as caught:
                self.parse(*args)
            self.assertIn(why, str(caught.exception))

    def test_a_cluster_server(self) -> None:
        o = self.parse("--zk", "127.0.0.1:1", "--cluster", "prod", "--server-id", "s1",
                       "--zone", "z1", "--in-memory")
        self.assertEqual((o["cluster"], o["server-id"], o["zone"]), ("prod", "s1", "z1"))
        self.assertEqual(o["replace-after"], 60.0)
        self.assertEqual(o["balance-after"], 300.0)
