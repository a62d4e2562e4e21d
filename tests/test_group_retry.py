"""A retried group (OP_MULTI with a client_id) is applied once: at a new head
after a failover, the re-send whose first reply was lost is answered from the
retry table with the first attempt's op number and answers, in memory."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.chain.group import Group, Op
from kvtwist.chain.outcomes import Refused, WriteResult
from kvtwist.chain.rmw import Kind, Rmw
from kvtwist.chain.state import RMW_FORGOTTEN, ChainState
from tests.fakes.chain import Net, results
from tests.test_server import Conn, Harness
from tests.test_watch import apply_all_groups

COUNT = Group((Op(b"n", Rmw(Kind.INCR, delta=1)), Op(b"n", Rmw(Kind.READ))))


def counted(rid: int, resend: bool = False) -> Any:
    return (False, b"", b"", "c", rid, 0, resend, COUNT)


class StateTests(SynchronousTestCase):
    def test_a_retry_waits_for_the_first_attempt(self) -> None:
        """A re-send numbered while the first is uncommitted takes no new op: it is
        answered when the first commits, with its answers."""
        s = ChainState()
        n = s.number([counted(1)], 1)
        s.accept(n.updates)
        again = s.number([counted(1, resend=True)], 1)
        self.assertEqual((again.updates, again.outcomes), ([], [1]))
        apply_all_groups(s)
        [r] = s.commit(s.applied_seq) or []
        assert r.group is not None
        self.assertEqual([a.number for a in r.group], [1, 0])

    def test_a_committed_retry_is_answered_from_the_table(self) -> None:
        """Once committed, a retry's answers come from the table on every member."""
        head, member = ChainState(), ChainState()
        n = head.number([counted(1)], 1)
        for s in (head, member):
            s.accept(n.updates)
            apply_all_groups(s)
            s.commit(s.applied_seq)
        member.continue_numbering()  # the member becomes head
        [r] = member.number([counted(1, resend=True)], 2).outcomes
        assert isinstance(r, WriteResult) and r.group is not None
        self.assertEqual((r.op_n, [a.number for a in r.group]), (1, [1, 0]))
        self.assertEqual(r.group[1].old, b"1")
        self.assertEqual(member.next_seq, 2, "nothing new was numbered")

    def test_a_forgotten_answer_is_refused(self) -> None:
        """A retry whose entry came through a snapshot (rows carry no answers) is
        refused as of unknown outcome, never applied again."""
        head = ChainState()
        n = head.number([counted(1)], 1)
        head.accept(n.updates)
        apply_all_groups(head)
        head.commit(head.applied_seq)
        copy = ChainState()
        copy.restore(head.committed_tree, 1, [], head.dedup.rows())
        [r] = copy.number([counted(1, resend=True)], 2).outcomes
        self.assertIsInstance(r, Refused)
        self.assertEqual(str(r), RMW_FORGOTTEN)


class ChainTests(SynchronousTestCase):
    def test_retried_group_after_failover_is_applied_once(self) -> None:
        """The head applies a group down the chain and dies before its reply reaches the
        client; the client's re-send to the new head gets the first answers and the
        counter counts once."""
        net = Net()
        a, b, c = net.chain(3)
        net.settle()
        d = a.replica.write(*counted(1))
        net.settle()
        self.assertEqual(c.replica.committed_tree.get(b"n"), b"1", "applied at the tail")
        d.addErrback(lambda _: None)  # the reply is lost with the head
        net.kill(a)
        net.settle()
        self.assertEqual(b.replica.role, "head")
        op = b.replica.committed_seq
        [r] = results([b.replica.write(*counted(1, resend=True))])
        net.settle()
        assert isinstance(r, WriteResult) and r.group is not None
        self.assertEqual([x.number for x in r.group], [1, 0])
        self.assertEqual(b.replica.committed_seq, op, "no new op")
        self.assertEqual(c.replica.committed_tree.get(b"n"), b"1")
        b.replica.write(*counted(2))
        net.settle()
        self.assertEqual(c.replica.committed_tree.get(b"n"), b"2", "a new request counts")


class NativeTests(SynchronousTestCase):
    def test_multi_with_a_client_id(self) -> None:
        """Through the port: the same MULTI re-sent is answered the same, applied once."""
        conn = Conn(Harness())
        m = wire.req_multi([wire.req_incr(b"n"), wire.req_get(b"n")])
        m.client_id, m.request_id = "c", 1
        first = conn.one(m)
        m.resend = True
        again = conn.one(m)
        self.assertEqual(first, again)
        self.assertEqual(list(again.ops[1].values), [b"1"])
        self.assertEqual(list(conn.one(wire.req_get(b"n")).values), [b"1"])
