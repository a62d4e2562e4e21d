"""Sweeps: deleting the keys a split gave away, once the new chain no longer starts
from them.  The rule on the map, the op the head numbers, the controller's settling
of a split, and the driver on a node in memory; no threads, no sleeps."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.chain.bounds import KeyBounds, Sweep
from kvtwist.chain.replica import Replica
from kvtwist.chain.state import ChainState
from kvtwist.cluster import sweep
from kvtwist.cluster.controller import ControllerCore
from kvtwist.cluster.shardmap import Server, ShardMap
from kvtwist.cluster.sweeper import SWEEP_PAUSE, SWEEP_PERIOD, Sweeper
from kvtwist.store import InlineRunner, Store
from kvtwist.tree import BTree

SERVERS = {f"s{i}": Server(f"s{i}", f"127.0.0.1:{7000 + i}") for i in (1, 2, 3)}
ALL = tuple(SERVERS)


def split_map() -> ShardMap:
    """c0 held everything; c1 was split off it at "m" and has not settled."""
    return ShardMap.initial(3, [], [ALL]).split("c0", b"m", "c1")


def bounds(start: bytes, end: bytes | None) -> KeyBounds:
    b = KeyBounds()
    b.set_map(start, end)
    return b


def tree_of(*keys: bytes) -> BTree:
    t = BTree()
    for k in keys:
        t.put(k, b"v:" + k)
    return t


class RuleTests(SynchronousTestCase):
    def test_nothing_while_the_new_chain_starts_from_this_one(self) -> None:
        """Until the split settles, a server placed on c1 may still take its state from
        c0's copy: c0 sweeps nothing."""
        self.assertEqual(sweep.given_away(split_map(), "c0", b"", b"m"), [])

    def test_settled_split_gives_the_range_away(self) -> None:
        """Once c1 is settled, c0 may delete everything from "m" on."""
        m = split_map().settled("c1")
        self.assertIsNone(m.chains["c1"].parent)
        self.assertEqual(m.version, split_map().version + 1)
        self.assertEqual(sweep.given_away(m, "c0", b"", b"m"), [(b"m", None)])

    def test_a_map_older_than_the_split_sweeps_nothing(self) -> None:
        """A head whose log has the marker but whose server's map is older: the map
        still gives c0 the keys above "m", so none goes."""
        old = ShardMap.initial(3, [], [ALL])
        self.assertEqual(sweep.given_away(old, "c0", b"", b"m"), [])

    def test_every_overlapping_chain_must_be_settled(self) -> None:
        """c0 split at "m" (settled) and again at "g" (not yet): [g, ...) waits for c2."""
        m = split_map().settled("c1").split("c0", b"g", "c2")
        self.assertEqual(sweep.given_away(m, "c0", b"", b"g"), [])
        self.assertEqual(sweep.given_away(m.settled("c2"), "c0", b"", b"g"), [(b"g", None)])

    def test_below_the_start_too(self) -> None:
        """A chain whose range starts above b"" may give away what lies below it."""
        m = split_map().settled("c1")
        self.assertEqual(sweep.given_away(m, "c1", b"m", None), [(b"", b"m")])

    def test_next_sweep_in_steps(self) -> None:
        """Keys outside the range only, in key order, at most max_keys or about
        max_bytes a step; none when the chain holds every key or there is no map."""
        m = split_map().settled("c1")
        tree = tree_of(b"a", b"b", b"m", b"n", b"o", b"zz")
        b = bounds(b"", b"m")
        self.assertEqual(sweep.next_sweep(m, "c0", b, tree, max_keys=3), [b"m", b"n", b"o"])
        self.assertEqual(sweep.next_sweep(m, "c0", b, tree, max_bytes=2), [b"m", b"n"])
        self.assertEqual(sweep.next_sweep(m, "c0", b, tree), [b"m", b"n", b"o", b"zz"])
        self.assertEqual(sweep.next_sweep(m, "c0", KeyBounds(), tree), [])
        self.assertEqual(sweep.next_sweep(None, "c0", b, tree), [])


class NumberTests(SynchronousTestCase):
    def test_a_sweep_is_one_op_of_deletes_outside_the_range(self) -> None:
        """The head numbers a sweep as one op deleting its keys, leaving out any key the
        chain still holds; the latest state it decides against sees them gone."""
        s = ChainState()
        s.committed_tree = tree_of(b"a", b"m", b"n")
        s.bounds.set_map(b"", b"m")
        request = (False, b"", b"", "", 0, 0, False, Sweep((b"a", b"m", b"n")))
        numbered = s.number([request], 1)
        [u] = numbered.updates
        self.assertEqual(numbered.outcomes, [u.seq])
        self.assertEqual([(g.key, g.is_put, g.skip) for g in u.group],
                         [(b"m", False, False), (b"n", False, False)])
        self.assertIsNone(s.latest(b"m"))
        self.assertEqual(s.latest(b"a"), b"v:a")

    def test_a_sweep_of_held_keys_writes_nothing(self) -> None:
        s = ChainState()
        s.bounds.set_map(b"", b"m")
        [u] = s.number([(False, b"", b"", "", 0, 0, False, Sweep((b"a",)))], 1).updates
        self.assertEqual([g.skip for g in u.group], [True])


class SettleTests(SynchronousTestCase):
    def test_settled_once_every_planned_server_is_a_member(self) -> None:
        """The controller watches a split-off chain's members; with two of three
        registered it leaves the map alone, with all three it clears the parent."""
        core = ControllerCore(60.0)
        core.map_seen(split_map(), 0.0)
        core.servers_seen(SERVERS, 0.0)
        self.assertIn("c1", core.watched_chains())
        core.members_seen("c1", [SERVERS["s1"].address, SERVERS["s2"].address])
        self.assertIsNone(core.decide(1.0))
        core.members_seen("c1", [s.address for s in SERVERS.values()])
        new = core.decide(2.0)
        assert new is not None
        self.assertIsNone(new.chains["c1"].parent)
        self.assertEqual(new.chains["c1"].version, split_map().chains["c1"].version)
        core.map_seen(new, 2.0)
        self.assertNotIn("c1", core.watched_chains())
        self.assertIsNone(core.decide(3.0))


class SweeperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.store = Store(self.reactor, InlineRunner())
        self.replica = Replica(self.reactor, self.store)
        self.map: ShardMap | None = split_map()
        for i in range(30):
            self.write(b"k%02d" % i)
        for i in range(700):
            self.write(b"n%03d" % i)
        self.replica.keep_within(b"", b"m")
        self.sweeper = Sweeper(self.reactor, lambda: {"c0": self.replica}, lambda: self.map)
        self.sweeper.start()
        self.addCleanup(self.sweeper.stop)

    def write(self, key: bytes) -> None:
        self.replica.write(True, key, b"v")
        self.settle()

    def settle(self, seconds: float = 0.0) -> None:
        self.reactor.advance(seconds)
        for _ in range(10):
            self.reactor.advance(0)

    def test_sweeps_in_steps_once_settled_and_keeps_the_rest(self) -> None:
        """Nothing goes while c1 may start from c0; once settled, the head deletes the
        700 keys from "m" on in ops of at most SWEEP_KEYS, and keeps its own 30."""
        tree = lambda: self.replica.state.committed_tree  # noqa: E731
        self.settle(SWEEP_PERIOD * 3)
        self.assertEqual(len(tree()), 730)
        self.map = split_map().settled("c1")
        before = self.replica.state.committed_seq
        self.settle(SWEEP_PERIOD)
        for _ in range(10):
            self.settle(SWEEP_PAUSE)
        self.assertEqual(tree().keys(), [b"k%02d" % i for i in range(30)])
        ops = self.replica.state.committed_seq - before
        self.assertEqual(ops, -(-700 // sweep.SWEEP_KEYS))
        self.assertEqual(self.sweeper.swept, {"c0": 700})
        self.settle(SWEEP_PERIOD * 3)
        self.assertEqual(self.replica.state.committed_seq - before, ops, "nothing more to sweep")
