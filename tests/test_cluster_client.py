"""The cluster client in memory: routing by the shard map, fan-out merged in key
order, RANGE across shards with its limit, and re-routing after a map change
signalled by a wrong-shard ERROR; and the chain client's ``chain`` option."""

from __future__ import annotations

import bisect
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.client.chain import ChainClient
from kvtwist.client.cluster import ClusterClient
from kvtwist.client.protocol import ConnectionFailed, KVError
from kvtwist.cluster.shardmap import ChainPlan, Shard, ShardMap
from kvtwist.membership import Member, Membership
from kvtwist.wire import Message
from tests.fakes.cluster import MemoryCluster, MemoryClusterStore


class FakeChain:
    """A chain's tail and head in one: a sorted dict, answering like a node.

    ``serving`` False answers every request as a server that does not serve
    this chain under map version ``knows`` (wrong shard).
    """

    def __init__(self, cid: str) -> None:
        self.cid = cid
        self.data: dict[bytes, bytes] = {}
        self.sent: list[Message] = []
        self.serving = True
        self.knows = 1  # maps start at version 1: 0 would mean "no map version"

    def raw(self, msg: Message) -> Deferred[Message]:
        self.sent.append(msg)
        if not self.serving:
            m = wire.error_reply(f"chain {self.cid} is not served here", retry=True)
            m.map_version = self.knows
            return defer.succeed(m)
        op = msg.opcode
        if op == wire.OP_PUT:
            self.data[bytes(msg.entry.key)] = bytes(msg.entry.data)
            return defer.succeed(wire.result_reply(op, len(self.sent)))
        if op == wire.OP_GET:
            v = self.data.get(bytes(msg.keys[0]))
            return defer.succeed(wire.reply(op, values=[] if v is None else [v]))
        if op == wire.OP_SIZE:
            return defer.succeed(wire.result_reply(op, len(self.data)))
        if op == wire.OP_HEIGHT:
            return defer.succeed(wire.result_reply(op, 1 + len(self.data) // 4))
        keys = sorted(self.data)
        if op == wire.OP_GETKEYS:
            return defer.succeed(wire.reply(op, keys=keys))
        if op == wire.OP_GETVALUES:
            return defer.succeed(wire.reply(op, values=[self.data[k] for k in keys]))
        if op == wire.OP_RANGE:
            r = msg.range
            lo = bisect.bisect_left(keys, r.start) if r.HasField("start") else 0
            hi = bisect.bisect_left(keys, r.stop) if r.HasField("stop") else len(keys)
            picked = keys[lo:hi][: r.limit or None]
            return defer.succeed(wire.reply(op, keys=picked, values=[self.data[k] for k in picked]))
        return defer.succeed(wire.error_reply(f"opcode {op} not in the fake"))


def three_shards(version: int = 1) -> ShardMap:
    return ShardMap(
        version, 1,
        (Shard(b"", b"h", "c0"), Shard(b"h", b"p", "c1"), Shard(b"p", None, "c2")),
        {c: ChainPlan(c, (f"s{i}",)) for i, c in enumerate(("c0", "c1", "c2"))},
    )


class Harness:
    def __init__(self, deadline: float | None = 5.0) -> None:
        self.clock = Clock()
        self.cluster = MemoryCluster()
        self.cluster.set_map(three_shards().encode())
        self.chains: dict[str, FakeChain] = {}
        store = MemoryClusterStore(self.cluster)
        self.client = ClusterClient(self.clock, store, self.chain, deadline, "test")
        box: list[Any] = []
        self.client.start().addBoth(box.append)
        assert box == [self.client], box

    def chain(self, cid: str) -> FakeChain:
        return self.chains.setdefault(cid, FakeChain(cid))

    def result(self, d: Deferred[Any], advance: float = 0.0) -> Any:
        box: list[Any] = []
        d.addBoth(box.append)
        if advance:
            self.clock.pump([0.05] * int(advance / 0.05))
        assert box, "no answer"
        if hasattr(box[0], "raiseException"):
            box[0].raiseException()
        return box[0]


KEYS = [b"", b"apple", b"h", b"kiwi", b"orange", b"p", b"pear", b"\xff\x00"]


class RoutingTests(SynchronousTestCase):
    def test_single_key_operations_go_to_the_keys_shard(self) -> None:
        """Each key is written to and read from the chain whose range holds it."""
        h = Harness()
        for k in KEYS:
            h.result(h.client.put(k, b"v:" + k))
        self.assertEqual(sorted(h.chains["c0"].data), [b"", b"apple"])
        self.assertEqual(sorted(h.chains["c1"].data), [b"h", b"kiwi", b"orange"])
        self.assertEqual(sorted(h.chains["c2"].data), [b"p", b"pear", b"\xff\x00"])
        for k in KEYS:
            self.assertEqual(h.result(h.client.get(k)), b"v:" + k)

    def test_fan_out_merges_in_key_order(self) -> None:
        """SIZE sums, GETKEYS and GETVALUES concatenate shard after shard: key order."""
        h = Harness()
        for k in reversed(KEYS):
            h.result(h.client.put(k, b"v:" + k))
        self.assertEqual(h.result(h.client.size()), len(KEYS))
        self.assertEqual(h.result(h.client.keys()), sorted(KEYS))
        self.assertEqual(h.result(h.client.values()), [b"v:" + k for k in sorted(KEYS)])
        self.assertEqual(h.result(h.client.height()), 1)

    def test_range_across_shards_with_start_stop_and_limit(self) -> None:
        """RANGE returns the keys of [start, stop) in order across shard boundaries, at
        most limit of them, asking each shard only for what is still wanted."""
        h = Harness()
        for k in KEYS:
            h.result(h.client.put(k, k.upper()))
        cases = [
            (None, None, 0), (b"b", b"q", 0), (b"h", b"p", 0), (b"a", None, 3),
            (b"kiwi", None, 4), (None, b"h", 0), (b"pa", None, 0), (b"z", b"a", 0),
        ]
        for start, stop, limit in cases:
            want = [k for k in sorted(KEYS)
                    if (start is None or k >= start) and (stop is None or k < stop)]
            want = want[: limit or None]
            got = h.result(h.client.range(start, stop, limit))
            self.assertEqual(got, [(k, k.upper()) for k in want], (start, stop, limit))
        before = len(h.chains["c2"].sent)
        h.result(h.client.range(b"a", None, 2))  # c0 alone has enough
        self.assertEqual(len(h.chains["c2"].sent), before)

    def test_verify_and_stats_refused(self) -> None:
        """Per-chain numbers are not offered as if they were the cluster's."""
        h = Harness()
        self.assertRaises(KVError, h.result, h.client.verify(1))
        self.assertRaises(KVError, h.result, h.client.stats())


class MapChangeTests(SynchronousTestCase):
    def test_wrong_shard_rereads_the_map_and_retries(self) -> None:
        """A server that no longer serves the key's chain answers with its map version;
        the client re-reads the map, finds the new chain, and the retried write there
        is marked as a resend."""
        h = Harness()
        old = h.chain("c1")
        old.serving, old.knows = False, 2
        moved = three_shards(2)
        shards = (moved.shards[0], Shard(b"h", b"p", "c3"), moved.shards[2])
        chains = {**{c: p for c, p in moved.chains.items() if c != "c1"},
                  "c3": ChainPlan("c3", ("s3",))}
        # the map moves on in ZooKeeper without the watch telling this client
        h.cluster.map = (ShardMap(2, 1, shards, chains).encode(), h.cluster.map[1] + 1)
        h.result(h.client.put(b"kiwi", b"1"), advance=0.5)
        self.assertEqual(h.chains["c3"].data, {b"kiwi": b"1"})
        self.assertTrue(h.chains["c3"].sent[0].resend)
        self.assertEqual(h.client.map.version if h.client.map else None, 2)

    def test_wrong_shard_until_the_deadline(self) -> None:
        """A map that never catches up ends in a retryable error at the deadline that
        says what the server said."""
        h = Harness(deadline=2.0)
        h.chain("c0").serving = False
        box: list[Any] = []
        h.client.get(b"a").addBoth(box.append)
        h.clock.pump([0.1] * 19)
        self.assertEqual(box, [])
        h.clock.pump([0.1] * 2)
        self.assertEqual(len(box), 1)
        box[0].trap(KVError)
        self.assertIn("gave up after 2s: chain c0 is not served here", str(box[0].value))
        self.assertIn("(this client has map version 1)", str(box[0].value))
        self.assertTrue(box[0].value.retry)

    def test_fan_out_redone_after_a_map_change(self) -> None:
        """A wrong-shard answer in one part of a SIZE re-reads the map and asks again."""
        h = Harness()
        h.result(h.client.put(b"a", b"1"))
        h.result(h.client.put(b"q", b"1"))
        h.chain("c2").serving = False
        box: list[Any] = []
        h.client.size().addBoth(box.append)
        self.assertEqual(box, [])
        h.chain("c2").serving = True
        h.clock.pump([0.05] * 4)
        self.assertEqual(box, [2])

    def test_no_map_is_a_connection_failure(self) -> None:
        """A cluster that was never created fails start() with ConnectionFailed."""
        store = MemoryClusterStore(MemoryCluster())
        client = ClusterClient(Clock(), store, FakeChain, 1.0, "nothing")
        box: list[Any] = []
        client.start().addBoth(box.append)
        box[0].trap(ConnectionFailed)
        self.assertIn("no shard map for cluster nothing", str(box[0].value))


class Members:
    root = "/kvtwist/test/chains/c1"
    hosts = "memory"

    def members(self) -> Deferred[Membership]:
        return defer.succeed(Membership(1, (Member("node0000000001", 1, ("127.0.0.1", 1)),)))

    def watch_members(self, callback: Any) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return defer.succeed(None)


class Pool:
    def __init__(self, answer: Message) -> None:
        self.answer = answer
        self.sent: list[Message] = []

    def request(self, target: tuple[str, int], msg: Message) -> Deferred[Message]:
        self.sent.append(msg)
        return defer.succeed(self.answer)

    def close(self) -> None:
        pass


class ChainOptionTests(SynchronousTestCase):
    def test_every_request_names_its_chain(self) -> None:
        """A ChainClient made with chain= sets Message.chain on each request it sends."""
        pool = Pool(wire.reply(wire.OP_GET, values=[b"v"]))
        c = ChainClient(Clock(), Members(), chain="c1")
        c.pool = pool  # type: ignore[assignment]
        c.view = Members().members().result
        self.assertEqual(self.successResultOf(c.get("k")), b"v")
        self.successResultOf(c.size())
        self.assertEqual([m.chain for m in pool.sent], ["c1", "c1"])

    def test_wrong_shard_is_handed_back_not_retried(self) -> None:
        """An ERROR carrying a map version is returned at once, for the cluster to handle."""
        wrong = wire.error_reply("not served here", retry=True)
        wrong.map_version = 7
        pool = Pool(wrong)
        clock = Clock()
        c = ChainClient(clock, Members(), chain="c1")
        c.pool = pool  # type: ignore[assignment]
        c.view = Members().members().result
        reply = self.successResultOf(c.raw(wire.req_get(b"k")))
        self.assertEqual(reply.map_version, 7)
        self.assertEqual(len(pool.sent), 1)


class ShellTargetTests(SynchronousTestCase):
    def test_cluster_option(self) -> None:
        """--cluster NAME with --zk names a cluster; without --zk, or with a name that
        is no path component, it is a usage error."""
        from kvtwist.client.shell import UsageError, build_parser, target

        def parse(*argv: str) -> Any:
            return target(build_parser().parse_args(list(argv)))

        t = parse("--zk", "127.0.0.1:2181", "--cluster", "prod")
        self.assertEqual((t.zk, t.cluster), ("127.0.0.1:2181", "prod"))
        self.assertEqual(t.where, "127.0.0.1:2181 cluster prod")
        self.assertIsNone(parse("--zk", "127.0.0.1:2181").cluster)
        self.assertRaises(UsageError, parse, "--cluster", "prod")
        self.assertRaises(UsageError, parse, "--zk", "127.0.0.1:2181", "--cluster", "a/b")
