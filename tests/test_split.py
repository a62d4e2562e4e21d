"""Splitting a shard, piece by piece, with no process and no sleep: the chain's key
bounds and split markers (kvtwist.chain.bounds), the head's refusals and the tail's
clipped reads on an in-memory chain, the map's cut, the request record, the
controller's decision, and the listings of a tree by range."""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.chain.bounds import KeyBounds, Moved, Split
from kvtwist.chain.group import Group, Op
from kvtwist.chain.outcomes import ReadView
from kvtwist.chain.rmw import Kind, Rmw
from kvtwist.chain.state import ChainState
from kvtwist.cluster.controller import ControllerCore
from kvtwist.cluster.requests import Refused, Requests, ShardSplit, check_split, middle_key
from kvtwist.cluster.shardmap import BadMap, ChainPlan, Server, ShardMap
from kvtwist.server import requests as reqs
from kvtwist.server.limits import Limits
from kvtwist.tree import BTree
from kvtwist.wire import Message
from tests.fakes.chain import Net, results

Request = tuple[bool, bytes, bytes, str, int, int, bool]


def put(key: bytes, client: str = "", req: int = 0) -> Request:
    return True, key, b"v", client, req, 0, False


class KeyBoundsTests(SynchronousTestCase):
    def test_lone_chain_holds_every_key(self) -> None:
        """Without a map, a chain holds every key and no marker is due."""
        b = KeyBounds()
        self.assertTrue(b.holds(b"\xff" * 10))
        self.assertIsNone(b.marker_due())

    def test_markers_narrow_by_op(self) -> None:
        """A marker narrows the range from its op on; the map and the markers together,
        narrowest wins; a marker already logged makes none due."""
        b = KeyBounds()
        b.set_map(b"b", None)
        self.assertFalse(b.holds(b"a"))
        self.assertTrue(b.holds(b"z"))
        b.set_map(b"b", b"m")
        self.assertIsNone(b.marker_due())  # a shard that ends there: nothing split off
        b.set_map(b"b", b"m", split=True)
        self.assertEqual(b.marker_due(), b"m")
        b.note(7, b"m")
        self.assertIsNone(b.marker_due())
        b.set_map(b"b", None)  # a map read late: the marker still rules
        self.assertFalse(b.holds(b"z"))
        self.assertTrue(b.holds(b"z", upto=6))
        self.assertFalse(b.holds(b"z", upto=7))
        self.assertEqual(b.marker_op(b"m"), 7)
        self.assertIsNone(b.marker_op(b"c"))
        b.truncate(6)
        self.assertTrue(b.holds(b"z"))


class HeadNumberingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.s = ChainState()
        self.s.bounds.set_map(b"", None)

    def test_writes_after_the_marker_refused_in_one_batch(self) -> None:
        """In one batch: a write above the cut before the marker is numbered, the marker
        is an op that writes nothing, and the same write after it is refused (Moved);
        a write below the cut goes on."""
        out = self.s.number(
            [put(b"z1"), (False, b"", b"", "", 0, 0, False, Split(b"m")), put(b"z2"), put(b"a")],
            1,
        )
        self.assertEqual(out.outcomes[:2], [1, 2])
        self.assertIsInstance(out.outcomes[2], Moved)
        self.assertEqual(out.outcomes[3], 3)
        marker = out.updates[1]
        self.assertEqual(marker.split_at, b"m")
        self.assertEqual([g.skip for g in marker.group], [True])
        self.assertEqual([u.key for u in out.updates], [b"z1", b"", b"a"])

    def test_a_retry_is_answered_before_the_bounds(self) -> None:
        """A write numbered before the split and retried after it gets its first answer,
        not a refusal (its client may have gone by the old map)."""
        self.s.number([put(b"z", "c", 1)], 1)
        self.s.number([(False, b"", b"", "", 0, 0, False, Split(b"m"))], 1)
        again = self.s.number([(True, b"z", b"v", "c", 1, 0, True)], 1)
        self.assertEqual(again.outcomes, [1])

    def test_a_group_with_one_key_above_the_cut_is_refused(self) -> None:
        """A group (or a RENAME) naming any key past the cut is refused whole."""
        self.s.number([(False, b"", b"", "", 0, 0, False, Split(b"m"))], 1)
        rename = Group((Op(b"a", Rmw(Kind.CAS), b"z"),))
        out = self.s.number([(False, b"", b"", "", 0, 0, False, rename)], 1)
        self.assertIsInstance(out.outcomes[0], Moved)
        # a WATCH of a key given away: its writes happen on the other chain now
        watched = Group((Op(b"a", Rmw(Kind.CAS)),), watch=((b"z", 2),))
        out = self.s.number([(False, b"", b"", "", 0, 0, False, watched)], 1)
        self.assertIsInstance(out.outcomes[0], Moved)

    def test_members_learn_the_marker_in_order(self) -> None:
        """A member taking the marker from its predecessor narrows its range at that op."""
        head = self.s
        out = head.number([put(b"z1"), (False, b"", b"", "", 0, 0, False, Split(b"m"))], 1)
        member = ChainState()
        member.bounds.set_map(b"", None)
        member.accept(out.updates)
        self.assertTrue(member.bounds.holds(b"z", upto=1))
        self.assertFalse(member.bounds.holds(b"z", upto=2))


class ChainSplitTests(SynchronousTestCase):
    """A chain of three in memory, told by its "map" that its shard now ends at "m"."""

    def setUp(self) -> None:
        self.net = Net()
        self.nodes = self.net.chain(3)
        for n in self.nodes:
            n.replica.keep_within(b"", None)
        self.head, _, self.tail = self.net.order()
        d = [self.head.write(b"z", b"1"), self.head.write(b"a", b"1")]
        self.net.settle()
        self.assertEqual([r.op_n for r in results(d)], [1, 2])

    def moved(self, d: object) -> Failure:
        """The failure ``d`` fired with (consumed)."""
        [f] = results([d])  # type: ignore[list-item]
        assert isinstance(f, Failure), f
        d.addErrback(lambda _: None)  # type: ignore[attr-defined]
        return f

    def narrow(self) -> None:
        for n in self.nodes:
            n.replica.keep_within(b"", b"m", split=True)
        self.net.settle()

    def test_head_marks_and_refuses_tail_clips(self) -> None:
        """The head writes one marker; afterwards it refuses writes above the cut, the
        tail's view holds no key above it (SIZE counts what is below), and a read of a
        key above it is refused; keys below are served as before."""
        view_before = self.tail.replica.committed_view()
        self.narrow()
        self.assertEqual(self.head.replica.committed_seq, 3)  # the marker, once
        self.assertEqual(self.tail.replica.state.bounds.marker_op(b"m"), 3)
        refused = self.moved(self.head.write(b"z", b"2"))
        self.assertTrue(refused.check(Moved))
        [ok] = results([self.head.write(b"b", b"2")])
        self.net.settle()
        view = self.tail.replica.committed_view()
        self.assertEqual((view.start, view.end), (b"", b"m"))
        self.assertTrue(view_before.whole)
        size = reqs.reader(Message(opcode=wire.OP_SIZE, c_type=wire.CT_NONE), Limits())(view)
        self.assertEqual(wire.decode(size[4:]).result, 2)  # a and b; z is no longer ours
        get = reqs.reader(Message(opcode=wire.OP_GET, c_type=wire.CT_KEY, keys=[b"z"]), Limits())
        self.assertRaises(Moved, get, view)
        self.assertEqual(self.tail.replica.committed_tree.get(b"z"), b"1")  # kept, not served

    def test_new_head_keeps_the_marker(self) -> None:
        """The head dies after the marker committed; the new head, whose server still
        holds the old map, refuses writes above the cut: the marker is in its log."""
        self.narrow()
        for n in self.nodes:
            n.replica.state.bounds.set_map(b"", None)  # as if the map were read late
        self.net.kill(self.head)
        self.net.settle()
        self.net.clock.advance(30)
        self.net.settle()
        new_head = self.net.order()[0]
        self.assertTrue(new_head.replica.is_head)
        d = new_head.write(b"z", b"3")
        self.net.settle()
        self.assertTrue(self.moved(d).check(Moved))

    def test_unseeded_replica_never_starts_its_chain(self) -> None:
        """A replica of a chain split off another, not given its state, does not start
        the (empty) chain from nothing: it waits for a member that holds the state."""
        net = Net()
        from tests.fakes.chain import Node

        node = Node(net, 9100)
        net.nodes[9100] = node
        node.replica.seeded = False
        node.replica.join()
        net.settle()
        self.assertIsNone(node.replica.name)
        self.assertEqual(node.replica.status, "waiting")


class ReadersTests(SynchronousTestCase):
    def setUp(self) -> None:
        tree = BTree()
        for k in (b"a", b"b", b"m", b"x"):
            tree.put(k, k * 2)
        self.view = ReadView(tree, 4, b"b", b"x")

    def run_reader(self, msg: Message) -> Message:
        return wire.decode(reqs.reader(msg, Limits())(self.view)[4:])

    def test_listings_clip_to_the_range(self) -> None:
        """SIZE, GETKEYS, GETVALUES and RANGE see only the keys in the view's range."""
        def listing(op: int) -> Message:
            return self.run_reader(Message(opcode=op, c_type=wire.CT_NONE))

        self.assertEqual(listing(wire.OP_SIZE).result, 2)
        self.assertEqual(list(listing(wire.OP_GETKEYS).keys), [b"b", b"m"])
        self.assertEqual(list(listing(wire.OP_GETVALUES).values), [b"bb", b"mm"])
        rng = Message(opcode=wire.OP_RANGE, c_type=wire.CT_RANGE)
        rng.range.start = b"a"
        self.assertEqual(list(self.run_reader(rng).keys), [b"b", b"m"])

    def test_tree_counts_and_lists_by_range(self) -> None:
        """BTree.count and listing take a range; they agree with range() on a big tree."""
        tree = BTree()
        for i in range(5000):
            tree.put(b"%05d" % i, b"v")
        self.assertEqual(tree.count(b"01000", b"02000"), 1000)
        self.assertEqual(tree.count(), 5000)
        self.assertEqual(tree.count(b"2", b"1"), 0)
        keys = tree.listing(False, 10**9, 0, b"04990", None)
        self.assertEqual(keys, [k for k, _ in tree.range(b"04990")])
        self.assertIsNone(tree.listing(True, 10, 0, b"0", b"1"))


class MapSplitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.m = ShardMap.initial(3, [b"m"], [("s1", "s2", "s3"), ("s2", "s3", "s1")])

    def test_split_cuts_one_shard_and_places_the_new_chain_alike(self) -> None:
        """The new chain takes the keys from the cut on, on the same servers in the same
        order, split off the old one; the map's version grows; the record round-trips."""
        new = self.m.split("c0", b"f", self.m.free_chain_id())
        self.assertEqual(
            [(s.start, s.end, s.chain) for s in new.shards],
            [(b"", b"f", "c0"), (b"f", b"m", "c2"), (b"m", None, "c1")],
        )
        self.assertEqual(new.chains["c2"], ChainPlan("c2", ("s1", "s2", "s3"), 1, "c0"))
        self.assertEqual(new.version, 2)
        self.assertEqual(ShardMap.decode(new.encode()), new)
        self.assertRaises(BadMap, self.m.split, "c0", b"m", "c9")  # not inside
        self.assertRaises(BadMap, self.m.split, "c0", b"", "c9")

    def test_requests_and_checks(self) -> None:
        """A split request round-trips; one outside the shard or of an unknown chain is
        refused; asking twice is one request; no key given takes the range's middle."""
        req = check_split(self.m, Requests(), "c0", b"f")
        self.assertEqual(req, ShardSplit("c0", b"f"))
        r = Requests().with_split(req)
        self.assertEqual(Requests.decode(r.encode()), r)
        self.assertEqual(check_split(self.m, r, "c0", b"f"), req)
        self.assertRaises(Refused, check_split, self.m, r, "c0", b"g")
        self.assertRaises(Refused, check_split, self.m, Requests(), "c0", b"q")
        self.assertRaises(Refused, check_split, self.m, Requests(), "c7", b"a")
        mid = check_split(self.m, Requests(), "c1", None).at
        self.assertTrue(b"m" < mid)
        self.assertTrue(b"a" < middle_key(b"a", b"b") < b"b")

    def test_controller_makes_the_split_and_clears_the_request(self) -> None:
        """The controller cuts the map as asked and, once the map shows it, drops the
        request; a chain that is changing members waits."""
        core = ControllerCore(60.0)
        live = {s: Server(s, f"127.0.0.1:{i}") for i, s in enumerate(("s1", "s2", "s3", "s4"))}
        core.servers_seen(live, 0.0)
        core.map_seen(self.m, 0.0)
        core.requests_seen(Requests(splits=(ShardSplit("c0", b"f"),)))
        new = core.decide(0.0)
        assert new is not None
        self.assertEqual(new.shard_for(b"g").chain, "c2")
        core.map_seen(new, 0.0)
        self.assertEqual(core.finished_requests(), Requests())
        busy = ShardMap(2, 3, self.m.shards, {**self.m.chains,
                        "c0": ChainPlan("c0", ("s1", "s2", "s3", "s4"), 2)})
        core.map_seen(busy, 0.0)
        core.requests_seen(Requests(splits=(ShardSplit("c0", b"f"),)))
        waited = core.decide(0.0)
        self.assertTrue(waited is None or waited.shard_for(b"g").chain == "c0")
