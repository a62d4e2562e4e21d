"""Read-modify-writes decided at the head: the decision, the latest-state
overlay of the Sent list, commitment, resets, retries, across a failover, and
the native opcodes (CAS, INCR, APPEND) through a node's port, all in memory."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.chain.outcomes import Refused, WriteResult
from kvtwist.chain.rmw import NOT_AN_INTEGER, OVERFLOW, Cond, Kind, Rmw, decide, parse_int
from kvtwist.chain.state import RMW_FORGOTTEN, ChainState
from kvtwist.store import Applied
from kvtwist.tree import BTree
from tests.fakes.chain import Net, results
from tests.test_server import Conn, Harness

INCR = Rmw(Kind.INCR, delta=1)


def incr(key: bytes, client: str = "", req: int = 0, delta: int = 1) -> Any:
    return (True, key, b"", client, req, 0, False, Rmw(Kind.INCR, delta=delta))


def cas(key: bytes, data: bytes, cond: Cond, **how: Any) -> Any:
    return (True, key, b"", "", 0, 0, False, Rmw(Kind.CAS, data, cond, **how))


class DecideTests(SynchronousTestCase):
    def test_incr(self) -> None:
        self.assertEqual(decide(INCR, None)[:2], (True, b"1"))
        self.assertEqual(decide(Rmw(Kind.INCR, delta=-5), b"3")[2].number, -2)
        is_put, data, r = decide(INCR, b"abc")
        self.assertEqual((is_put, data, r.error), (True, b"abc", NOT_AN_INTEGER))
        self.assertEqual(decide(INCR, str(2**63 - 1).encode())[2].error, OVERFLOW)

    def test_parse_int_is_redis_strict(self) -> None:
        for bad in (b"", b" 1", b"1 ", b"01", b"+1", b"-0", b"1.0", b"9" * 21, b"\xff"):
            with self.assertRaises(ValueError, msg=bad):
                parse_int(bad)
        self.assertEqual(parse_int(b"-9223372036854775808"), -(2**63))
        self.assertEqual(parse_int(b"0"), 0)

    def test_cas_conditions(self) -> None:
        nx = Rmw(Kind.CAS, b"new", Cond.ABSENT, want_old=True)
        self.assertEqual(decide(nx, None)[:2], (True, b"new"))
        put, data, r = decide(nx, b"old")
        self.assertEqual(
            (put, data, r.applied, r.found, r.old), (True, b"old", False, True, b"old")
        )
        xx = Rmw(Kind.CAS, b"new", Cond.PRESENT)
        put, _, r = decide(xx, None)
        self.assertEqual((put, r.applied, r.found), (False, False, False))  # a DEL of nothing
        eq = Rmw(Kind.CAS, b"n", Cond.EQUALS, expect=b"o")
        self.assertTrue(decide(eq, b"o")[2].applied)
        self.assertFalse(decide(eq, b"x")[2].applied)
        getdel = Rmw(Kind.CAS, cond=Cond.ALWAYS, delete=True, want_old=True)
        put, _, r = decide(getdel, b"v")
        self.assertEqual((put, r.old, r.found), (False, b"v", True))

    def test_append_limit(self) -> None:
        app = Rmw(Kind.APPEND, b"cd", max_value=3)
        self.assertEqual(decide(app, b"a")[1:2], (b"acd",))
        self.assertIn("exceeds", decide(app, b"ab")[2].error)


def apply_all(s: ChainState, tree: BTree) -> BTree:
    """What the store does: apply the Sent list in order, then the state hears of it."""
    outs = []
    for seq in sorted(s.pending):
        if seq <= s.applied_seq:
            continue
        u = s.pending[seq]
        tree = tree.copy()
        found = tree.put(u.key, u.data) if u.is_put else tree.delete(u.key)
        outs.append(Applied(seq, found, tree))
    s.applied(outs)
    return tree


class StateTests(SynchronousTestCase):
    def test_pending_overlay_orders_increments(self) -> None:
        """Increments numbered before any commits see each other, in write order."""
        s = ChainState()
        n = s.number([incr(b"c"), incr(b"c"), incr(b"c", delta=10)], 1)
        s.accept(n.updates)
        self.assertEqual([u.data for u in n.updates], [b"1", b"2", b"12"])
        n2 = s.number([incr(b"c")], 1)  # still nothing applied or committed
        s.accept(n2.updates)
        self.assertEqual(n2.updates[0].data, b"13")
        tree = apply_all(s, BTree())
        done = s.commit(s.applied_seq)
        assert done is not None
        self.assertEqual([d.rmw.number for d in done if d.rmw], [1, 2, 12, 13])
        self.assertEqual(s._latest, {}, "committed updates stay in the overlay")
        self.assertEqual(tree.get(b"c"), b"13")
        n3 = s.number([incr(b"c")], 1)
        self.assertEqual(n3.updates[0].data, b"14", "after commit the tree answers")

    def test_plain_writes_feed_the_overlay(self) -> None:
        s = ChainState()
        s.accept(s.number([(True, b"k", b"41", "", 0, 0, False), incr(b"k")], 1).updates)
        s.accept(s.number([(False, b"k", b"", "", 0, 0, False), incr(b"k")], 1).updates)
        self.assertEqual([u.data for u in s.pending.values()], [b"41", b"42", b"", b"1"])

    def test_failed_condition_writes_back(self) -> None:
        s = ChainState()
        s.accept(s.number([cas(b"k", b"a", Cond.ABSENT)], 1).updates)
        n = s.number([cas(b"k", b"b", Cond.ABSENT, want_old=True)], 1)
        [u] = n.updates
        self.assertEqual((u.is_put, u.data, u.rmw_applied, u.rmw_old), (True, b"a", False, b"a"))

    def test_drop_uncommitted_forgets_the_overlay(self) -> None:
        """A fenced head drops its Sent list: later decisions see only the committed state."""
        s = ChainState()
        base = BTree()
        base.put(b"c", b"5")
        s.reset(0, base)
        s.accept(s.number([incr(b"c")], 1).updates)
        s.drop_uncommitted()
        s.take_back()
        self.assertEqual(s.number([incr(b"c")], 1).updates[0].data, b"6")

    def test_reset_leaves_nothing_past_its_base(self) -> None:
        """A reset (a join, a recovery) is a new base: nothing numbered past it is latest."""
        s = ChainState()
        s.accept(s.number([incr(b"c")], 1).updates)
        base = BTree()
        base.put(b"c", b"7")
        s.drop_uncommitted()
        s.reset(3, base)
        self.assertEqual(s.latest(b"c"), b"7")
        self.assertEqual(s.number([incr(b"c")], 1).updates[0].seq, 4)

    def test_follower_overlay_then_head(self) -> None:
        """A member that becomes head decides against updates it received, uncommitted."""
        head, nxt = ChainState(), ChainState()
        ups = head.number([incr(b"c"), incr(b"c")], 1).updates
        fresh, gap = nxt.take_in_order(ups)
        self.assertIsNone(gap)
        nxt.accept(fresh)
        nxt.continue_numbering()
        [u] = nxt.number([incr(b"c")], 2).updates
        self.assertEqual((u.seq, u.data), (3, b"3"))

    def test_retry_of_an_incr_answers_the_first_outcome(self) -> None:
        s = ChainState()
        first = s.number([incr(b"c", "cli", 1)], 1)
        s.accept(first.updates)
        again = s.number([incr(b"c", "cli", 1)], 1)
        self.assertEqual(again.outcomes, [1], "a pending retry waits for the first op")
        self.assertEqual(again.updates, [])
        apply_all(s, BTree())
        s.commit(1)
        later = s.number([incr(b"c", "cli", 1)], 1)
        [o] = later.outcomes
        assert isinstance(o, WriteResult) and o.rmw is not None
        self.assertEqual((o.op_n, o.rmw.number, later.updates), (1, 1, []))

    def test_retry_whose_answer_is_lost_is_refused(self) -> None:
        """Retry rows from a snapshot carry no answer: the retry is refused, never re-applied."""
        s = ChainState()
        base = BTree()
        base.put(b"c", b"1")
        s.restore(base, 1, [], [("cli", 1, 1, True)])
        [o] = s.number([incr(b"c", "cli", 1)], 1).outcomes
        assert isinstance(o, Refused)
        self.assertEqual(str(o), RMW_FORGOTTEN)


class ChainRmwTests(SynchronousTestCase):
    def test_incr_retried_at_the_new_head_counts_once(self) -> None:
        """INCRs in flight when the head dies: retried at the new head, each counts once."""
        net = Net()
        a, b, c = net.chain(3)
        net.settle()
        for p in [p for p in c.pumps if p in b.pumps]:
            net.pumps.remove(p)  # updates reach the middle, no further
        ds = [a.replica.write(*incr(b"n", "cli", i)) for i in range(1, 4)]
        net.settle(rounds=10)
        self.assertTrue(all(r is None for r in results(ds)))
        lost: list[Any] = []
        for d in ds:
            d.addErrback(lost.append)
        net.kill(a)
        self.assertEqual(len(lost), 3, "the dead head answered")
        net.settle()
        self.assertEqual(b.replica.role, "head")
        again = [b.replica.write(*incr(b"n", "cli", i)) for i in range(1, 4)]
        net.settle()
        self.assertEqual([r.rmw.number for r in results(again)], [1, 2, 3])
        fresh = b.replica.write(*incr(b"n", "cli", 4))
        net.settle()
        self.assertEqual(results([fresh])[0].rmw.number, 4)
        self.assertEqual(c.replica.committed_tree.get(b"n"), b"4")


class NativeOpcodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.conn = Conn(Harness())

    def test_incr_cas_append(self) -> None:
        one = self.conn.one
        r = one(wire.req_incr(b"n", 5))
        self.assertEqual((r.opcode, r.number, r.found), (wire.OP_INCR + 1, 5, False))
        self.assertEqual(one(wire.req_incr(b"n", -7)).number, -2)
        r = one(wire.req_cas(b"k", b"v", cond=1, want_old=True))
        self.assertEqual((r.opcode, r.applied, r.found, list(r.values)), (141, True, False, []))
        r = one(wire.req_cas(b"k", b"w", cond=1, want_old=True))
        self.assertEqual((r.applied, r.found, list(r.values)), (False, True, [b"v"]))
        r = one(wire.req_cas(b"k", b"w", cond=3, expect=b"v"))
        self.assertTrue(r.applied)
        self.assertEqual(one(wire.req_append(b"k", b"xy")).number, 3)
        self.assertEqual(list(one(wire.req_get(b"k")).values), [b"wxy"])
        r = one(wire.req_cas(b"k", delete=True, want_old=True))
        self.assertEqual((r.applied, list(r.values)), (True, [b"wxy"]))
        self.assertEqual(list(one(wire.req_get(b"k")).values), [])

    def test_incr_of_text_is_an_error_and_changes_nothing(self) -> None:
        self.conn.one(wire.req_put(b"k", b"text"))
        r = self.conn.one(wire.req_incr(b"k"))
        self.assertEqual((r.opcode, r.error, r.retry), (wire.OP_ERROR, NOT_AN_INTEGER, False))
        self.assertEqual(list(self.conn.one(wire.req_get(b"k")).values), [b"text"])

    def test_bad_cond_is_refused(self) -> None:
        r = self.conn.one(wire.req_cas(b"k", b"v", cond=9))
        self.assertEqual(r.opcode, wire.OP_ERROR)
        self.assertIn("cond", r.error)

    def test_pipelined_rmws_in_one_batch(self) -> None:
        """A run of writes goes to the head as one batch: each sees the one before."""
        replies = self.conn.send(*[wire.req_incr(b"n") for _ in range(5)])
        self.assertEqual([r.number for r in replies], [1, 2, 3, 4, 5])
