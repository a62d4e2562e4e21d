"""Redis's WATCH at the head, in memory: a watched group aborts, writing
nothing, when a watched key was written after its watch point (put, deleted,
even to the same value), passes otherwise, aborts when the head's memory no
longer reaches the point, and the head's decision travels in the update so
that every member applies the same outcome, across a failover too."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.chain.group import Group, Op, apply_group
from kvtwist.chain.outcomes import WriteResult
from kvtwist.chain.rmw import Cond, Kind, Rmw
from kvtwist.chain.state import ChainState
from kvtwist.chain.watch import ENTRY_OVERHEAD, WriteIndex
from kvtwist.store import Applied
from tests.fakes.chain import Net, results
from tests.test_group import put
from tests.test_server import Conn, Harness


def watched(watch: list[tuple[bytes, int]], *ops: Op) -> Any:
    return (False, b"", b"", "", 0, 0, False, Group(ops, watch=tuple(watch)))


def write(key: bytes, value: bytes | None) -> Any:
    return (value is not None, key, value or b"", "", 0, 0, False)


def apply_all_groups(s: ChainState) -> None:
    """The store's part: apply the Sent list past what is applied, in order."""
    tree = s.committed_tree.copy()
    outs = []
    for q in sorted(s.pending):
        u = s.pending[q]
        if u.group:
            apply_group(tree, u)
        elif u.is_put:
            tree.put(u.key, u.data)
        else:
            tree.delete(u.key)
        outs.append(Applied(q, True, tree.copy()))
    s.applied(outs)


def run(s: ChainState, *writes: Any) -> list[WriteResult]:
    """Number, apply and commit ``writes`` at a head of one: their results."""
    s.accept(s.number(list(writes), 1).updates)
    apply_all_groups(s)
    done = s.commit(s.applied_seq)
    assert done is not None
    return done


def aborted(r: WriteResult) -> bool:
    return r.rmw is not None and not r.rmw.applied and not r.rmw.error


class WriteIndexTests(SynchronousTestCase):
    def test_floor_and_bounds(self) -> None:
        """A point below the floor, or past what is held, is unknown; an evicted
        key raises the floor to its last write, so it is never judged unwritten."""
        w = WriteIndex(max_bytes=2 * (1 + ENTRY_OVERHEAD))
        w.wrote([b"a"], 3)
        w.wrote([b"b"], 4)
        self.assertTrue(w.unchanged([(b"a", 3), (b"b", 4)], 4))
        self.assertFalse(w.unchanged([(b"a", 2)], 4))
        self.assertFalse(w.unchanged([(b"z", 5)], 4), "a point past what we hold")
        w.wrote([b"c"], 5)  # over the bound: a (op 3) goes
        self.assertEqual((len(w), w.floor), (2, 3))
        self.assertFalse(w.unchanged([(b"a", 2)], 5))
        self.assertTrue(w.unchanged([(b"a", 3)], 5))
        w.reset(9)
        self.assertFalse(w.unchanged([(b"a", 8)], 9))
        self.assertTrue(w.unchanged([(b"a", 9)], 9))


class StateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.s = ChainState()
        run(self.s, write(b"k", b"1"), write(b"other", b"x"))
        self.point = self.s.committed_seq  # what OP_WATCH answers at the head

    def exec_(self, *between: Any) -> WriteResult:
        """Writes after the watch point, then a watched group INCRing k."""
        done = run(
            self.s, *between, watched([(b"k", self.point)], Op(b"k", Rmw(Kind.INCR, delta=1)))
        )
        return done[-1]

    def test_unwritten_key_passes(self) -> None:
        """Writes of other keys after the point do not abort the group."""
        r = self.exec_(write(b"other", b"y"))
        self.assertFalse(aborted(r))
        self.assertEqual(self.s.committed_tree.get(b"k"), b"2")

    def test_any_write_after_the_point_aborts(self) -> None:
        """A put (even of the same value) or a delete of k after the point: nothing applied."""
        for between, left in (
            (write(b"k", b"1"), b"1"),
            (write(b"k", b"5"), b"5"),
            (write(b"k", None), None),
        ):
            r = self.exec_(between)
            self.assertTrue(aborted(r), between)
            self.assertIsNone(r.group)
            self.assertEqual(self.s.committed_tree.get(b"k"), left, "the INCR was not applied")

    def test_a_failed_condition_is_no_write(self) -> None:
        """A SETNX of k that fails writes nothing, as in Redis: the group passes."""
        setnx = (True, b"k", b"", "", 0, 0, False, Rmw(Kind.CAS, b"v", Cond.ABSENT))
        self.assertFalse(aborted(self.exec_(setnx)))

    def test_a_write_in_the_same_batch_aborts(self) -> None:
        """The head decides in write order: a write numbered just before the group counts."""
        s = self.s
        n = s.number([write(b"k", b"9"), watched([(b"k", self.point)], put(b"k", b"10"))], 1)
        s.accept(n.updates)
        apply_all_groups(s)
        done = s.commit(s.applied_seq)
        assert done is not None
        self.assertTrue(aborted(done[1]))
        self.assertEqual(s.committed_tree.get(b"k"), b"9")

    def test_forgotten_history_aborts(self) -> None:
        """After a restart (a reset) a point before it is unknown: the group aborts."""
        s = self.s
        run(s, write(b"other", b"y"))
        s.reset(s.committed_seq)  # the writes between the point and here are forgotten
        self.assertTrue(aborted(self.exec_()))
        self.point = s.committed_seq
        self.assertFalse(aborted(self.exec_()))

    def test_members_apply_the_heads_decision(self) -> None:
        """A member takes the head's outcome from the update and never decides again,
        even when its own memory would have judged otherwise."""
        s, member = self.s, ChainState()
        member.reset(0)
        member.written.reset(10**6)  # it remembers nothing
        n = s.number([watched([(b"other", self.point)], put(b"k", b"7"))], 1)
        self.assertEqual(len(n.updates[0].group), 1, "the head let it pass")
        member.reset(s.committed_seq, s.committed_tree.copy())
        member.accept(n.updates)
        apply_all_groups(member)
        [r] = member.commit(member.applied_seq) or []
        self.assertFalse(aborted(r))
        self.assertEqual(member.committed_tree.get(b"k"), b"7")


class ChainTests(SynchronousTestCase):
    def test_watch_across_a_failover(self) -> None:
        """A point taken at the old head is judged by the new one, which learned every
        write of the old head as a member: a write after the point aborts, none passes."""
        net = Net()
        a, b, c = net.chain(3)
        net.settle()
        results([a.replica.write(True, b"k", b"1")])
        net.settle()
        point = a.replica.state.committed_seq  # what OP_WATCH answers at the head
        results([a.replica.write(True, b"k", b"2")])
        net.settle()
        net.kill(a)
        net.settle()
        self.assertEqual(b.replica.role, "head")
        d1 = b.replica.write(*watched([(b"k", point)], put(b"k", b"3")))
        d2 = b.replica.write(*watched([(b"j", point)], put(b"j", b"4")))
        net.settle()
        r1, r2 = results([d1, d2])
        self.assertTrue(aborted(r1))
        self.assertFalse(aborted(r2))
        self.assertEqual(c.replica.committed_tree.items(), [(b"j", b"4"), (b"k", b"2")])


class NativeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.conn = Conn(Harness())

    def test_watch_through_the_port(self) -> None:
        """OP_WATCH answers the head's committed op; an OP_MULTI watching a key written
        after it is answered ``aborted`` and writes nothing."""
        one = self.conn.one
        one(wire.req_put(b"k", b"1"))
        point = one(wire.req_watch())
        self.assertEqual((point.opcode, point.op_n), (wire.OP_WATCH + 1, 1))
        one(wire.req_put(b"k", b"2"))
        r = one(wire.req_multi([wire.req_put(b"k", b"3")], watch=[(b"k", point.op_n)]))
        self.assertEqual((r.opcode, r.aborted, list(r.ops)), (wire.OP_MULTI + 1, True, []))
        self.assertEqual(list(one(wire.req_get(b"k")).values), [b"2"])
        r = one(wire.req_multi([wire.req_put(b"k", b"3")], watch=[(b"j", point.op_n)]))
        self.assertFalse(r.aborted)
        self.assertEqual(list(one(wire.req_get(b"k")).values), [b"3"])

    def test_bad_watches_are_refused(self) -> None:
        """Unpaired watch fields or an empty watched key: an ERROR, nothing applied."""
        one = self.conn.one
        m = wire.req_multi([wire.req_put(b"k", b"1")], watch=[(b"k", 0)])
        m.watch_ops.append(3)
        self.assertIn("watch_ops", one(m).error)
        m = wire.req_multi([wire.req_put(b"k", b"1")], watch=[(b"", 0)])
        self.assertIn("empty", one(m).error)
        self.assertIn("c_type", one(wire.Message(opcode=wire.OP_WATCH)).error)
        self.assertEqual(list(one(wire.req_get(b"k")).values), [])
