"""Groups decided at the head as one write (OP_MULTI): the decisions, the Sent
list's overlay, commitment with one answer per request, the store and the log
applying a group as one op (a crash keeps all of it or none), a chain carrying
it to the tail and across a failover, and the native opcode, all in memory."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.chain.group import NO_SUCH_KEY, Group, Op, decide_group
from kvtwist.chain.rmw import NOT_A_FLOAT, NOT_AN_INTEGER, Cond, Kind, Rmw, format_float
from kvtwist.chain.state import ChainState
from kvtwist.storage import DataDir
from kvtwist.storage.fakedisk import FakeDisk
from kvtwist.store import InlineRunner, Store
from kvtwist.tree import BTree
from tests.fakes.chain import Net, results
from tests.test_server import Conn, Harness


def put(key: bytes, value: bytes) -> Op:
    return Op(key, Rmw(Kind.CAS, value))


def group(*ops: Op, all_or_nothing: bool = False, max_bytes: int = 0) -> Any:
    return (False, b"", b"", "", 0, 0, False, Group(ops, all_or_nothing, max_bytes))


class DecideTests(SynchronousTestCase):
    def test_each_request_sees_the_ones_before(self) -> None:
        """Within a group a request is decided against the group's earlier writes."""
        ops = Group((put(b"a", b"1"), Op(b"a", Rmw(Kind.INCR, delta=4)), Op(b"a", Rmw(Kind.READ))))
        subs, refusal = decide_group(ops, lambda k: None)
        self.assertEqual(refusal, "")
        self.assertEqual([s.data for s in subs[:2]], [b"1", b"5"])
        self.assertTrue(subs[2].skip)
        self.assertEqual(subs[2].rmw_old, b"5")

    def test_rename(self) -> None:
        """RENAME moves the value and deletes the old name; a missing key is refused."""
        state = {b"a": b"v"}
        subs, _ = decide_group(Group((Op(b"a", Rmw(Kind.CAS), b"b"),)), state.get)
        self.assertEqual(
            [(s.key, s.is_put, s.data) for s in subs], [(b"b", True, b"v"), (b"a", False, b"")]
        )
        subs, _ = decide_group(Group((Op(b"x", Rmw(Kind.CAS), b"b"),)), state.get)
        self.assertEqual((subs[0].skip, subs[0].rmw_error), (True, NO_SUCH_KEY))

    def test_renamenx(self) -> None:
        """RENAMENX moves only to a free name (as the group's earlier writes left it):
        a taken name, or its own, moves nothing and answers not applied."""
        nx = Rmw(Kind.CAS, cond=Cond.ABSENT)
        state = {b"a": b"v", b"t": b"taken"}
        subs, _ = decide_group(Group((Op(b"a", nx, b"b"),)), state.get)
        self.assertEqual(
            [(s.key, s.is_put, s.skip) for s in subs], [(b"b", True, False), (b"a", False, False)]
        )
        self.assertTrue(subs[0].rmw_applied)
        for dest in (b"t", b"a"):
            subs, _ = decide_group(Group((Op(b"a", nx, dest),)), state.get)
            self.assertEqual([(s.skip, s.rmw_applied) for s in subs], [(True, False)])
        freed = Group((Op(b"t", Rmw(Kind.CAS, delete=True)), Op(b"a", nx, b"t")))
        subs, _ = decide_group(freed, state.get)
        self.assertEqual(
            [(s.key, s.is_put, s.data) for s in subs if not s.skip][-2:],
            [(b"t", True, b"v"), (b"a", False, b"")],
        )
        subs, _ = decide_group(Group((Op(b"x", nx, b"b"),)), state.get)
        self.assertEqual(subs[0].rmw_error, NO_SUCH_KEY)
        taken = Group((put(b"n", b"1"), Op(b"a", nx, b"t")), all_or_nothing=True)
        self.assertTrue(all(s.skip for s in decide_group(taken, state.get)[0]))

    def test_all_or_nothing(self) -> None:
        """MSETNX: one key present and nothing is written."""
        nx = Group(
            (
                Op(b"a", Rmw(Kind.CAS, b"1", Cond.ABSENT)),
                Op(b"b", Rmw(Kind.CAS, b"2", Cond.ABSENT)),
            ),
            all_or_nothing=True,
        )
        subs, _ = decide_group(nx, {b"b": b"old"}.get)
        self.assertTrue(all(s.skip for s in subs))
        self.assertFalse(subs[0].rmw_applied)
        subs, _ = decide_group(nx, {}.get)
        self.assertEqual([(s.skip, s.data) for s in subs], [(False, b"1"), (False, b"2")])

    def test_errors_stay_in_their_place(self) -> None:
        """A refused request (INCR of text) writes nothing; the others still apply."""
        g = Group((put(b"t", b"text"), Op(b"t", Rmw(Kind.INCR, delta=1)), put(b"u", b"1")))
        subs, _ = decide_group(g, {}.get)
        self.assertEqual(subs[1].rmw_error, NOT_AN_INTEGER)
        self.assertEqual([s.skip for s in subs], [False, True, False])

    def test_too_big_is_refused_whole(self) -> None:
        subs, refusal = decide_group(Group((put(b"a", b"x" * 50),), max_bytes=20), {}.get)
        self.assertEqual(subs, [])
        self.assertIn("over the limit of 20", refusal)
        tiny = Group(tuple(put(b"k%d" % i, b"") for i in range(200)), max_bytes=1000)
        subs, refusal = decide_group(tiny, {}.get)
        self.assertIn("over the limit", refusal, "encoded, 200 small writes exceed 1000 bytes")

    def test_setrange_and_incrbyfloat(self) -> None:
        """SETRANGE pads with zero bytes; INCRBYFLOAT writes Redis's positional form."""
        g = Group(
            (
                Op(b"s", Rmw(Kind.SETRANGE, b"ab", offset=3)),
                Op(b"f", Rmw(Kind.INCRFLOAT, fdelta="10.5")),
                Op(b"f", Rmw(Kind.INCRFLOAT, fdelta="0.1")),
                Op(b"f", Rmw(Kind.INCRFLOAT, fdelta="abc")),
            )
        )
        subs, _ = decide_group(g, {}.get)
        self.assertEqual((subs[0].data, subs[0].rmw_number), (b"\x00\x00\x00ab", 5))
        self.assertEqual([subs[1].data, subs[2].data], [b"10.5", b"10.6"])
        self.assertEqual(subs[3].rmw_error, NOT_A_FLOAT)
        self.assertEqual(format_float(1e20), "100000000000000000000")
        self.assertEqual(format_float(3.0), "3")


class StateTests(SynchronousTestCase):
    def test_group_is_one_op_with_an_answer_per_request(self) -> None:
        """A group takes one op number; at commit each request has its answer."""
        s = ChainState()
        n = s.number(
            [
                group(put(b"a", b"1"), Op(b"a", Rmw(Kind.INCR, delta=1))),
                group(Op(b"a", Rmw(Kind.READ))),
            ],
            1,
        )
        self.assertEqual(n.outcomes, [1, 2])
        s.accept(n.updates)
        self.assertEqual(s.latest(b"a"), b"2", "the overlay holds the group's writes")
        tree = apply_all_groups(s)
        done = s.commit(s.applied_seq)
        assert done is not None
        first, second = done
        assert first.group is not None and second.group is not None
        self.assertEqual([a.number for a in first.group], [0, 2])
        self.assertEqual(second.group[0].old, b"2")
        self.assertEqual(tree.get(b"a"), b"2")
        self.assertEqual(s._latest, {})


def apply_all_groups(s: ChainState) -> BTree:
    """``apply_all`` through a real store, which knows groups."""
    store = Store(Clock(), InlineRunner(), None)
    tree: BTree = BTree()
    outs: list[Any] = []
    store.apply_many([s.pending[q] for q in sorted(s.pending)]).addCallback(outs.extend)
    store.reactor.advance(0)
    s.applied(outs)
    if outs:
        tree = outs[-1].tree
    return tree


class StoreTests(SynchronousTestCase):
    def test_a_logged_group_recovers_whole(self) -> None:
        """The log holds a group as one record: recovery replays all of its writes."""
        disk = FakeDisk()
        dd = DataDir("/data", disk=disk)
        dd.open()
        clock = Clock()
        store = Store(clock, InlineRunner(), dd, snapshot_bytes=10**9)
        s = ChainState()
        s.accept(
            s.number(
                [group(put(b"a", b"1"), put(b"b", b"2"), Op(b"a", Rmw(Kind.CAS), b"c"))], 1
            ).updates
        )
        out: list[Any] = []
        store.apply_many([s.pending[1]]).addCallback(out.extend)
        clock.advance(0)
        self.assertEqual(out[0].tree.items(), [(b"b", b"2"), (b"c", b"1")])
        dd.close()
        disk.crash()
        again = DataDir("/data", disk=disk)
        r = again.open()
        again.close()
        self.assertEqual((r.last_seq, r.tree.items()), (1, [(b"b", b"2"), (b"c", b"1")]))

    def test_a_torn_group_is_dropped_whole(self) -> None:
        """A crash during the group's write leaves none of it (the record is cut as one)."""
        disk = FakeDisk()
        dd = DataDir("/data", disk=disk)
        dd.open()
        clock = Clock()
        store = Store(clock, InlineRunner(), dd, snapshot_bytes=10**9)
        s = ChainState()
        s.accept(
            s.number([group(put(b"a", b"1")), group(put(b"b", b"2"), put(b"c", b"3"))], 1).updates
        )
        store.apply_many([s.pending[1]])
        clock.advance(0)
        disk.fail("write", partial=True)  # half of the record reaches the disk
        out: list[Any] = []
        store.apply_many([s.pending[2]]).addCallback(out.extend)
        clock.advance(0)
        self.assertIsInstance(out[0], Exception)
        self.assertEqual(store._tree.items(), [(b"a", b"1")])
        dd.close()
        disk.crash()
        again = DataDir("/data", disk=disk)
        r = again.open()
        again.close()
        self.assertEqual(r.tree.items(), [(b"a", b"1")])


class ChainTests(SynchronousTestCase):
    def test_group_reaches_the_tail_and_survives_failover(self) -> None:
        """A group written at the head is whole at the tail, and a new head builds on it."""
        net = Net()
        a, b, c = net.chain(3)
        net.settle()
        d = a.replica.write(*group(put(b"x", b"1"), put(b"y", b"2")))
        net.settle()
        [r] = results([d])
        self.assertEqual(len(r.group), 2)
        self.assertEqual(c.replica.committed_tree.items(), [(b"x", b"1"), (b"y", b"2")])
        net.kill(a)
        net.settle()
        self.assertEqual(b.replica.role, "head")
        d = b.replica.write(
            *group(Op(b"x", Rmw(Kind.CAS), b"z"), Op(b"y", Rmw(Kind.INCR, delta=1)))
        )
        net.settle()
        self.assertEqual(c.replica.committed_tree.items(), [(b"y", b"3"), (b"z", b"1")])


class NativeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.conn = Conn(Harness())

    def test_multi_through_the_port(self) -> None:
        """OP_MULTI answers each request in ops, in order, errors in their place."""
        ops = [
            wire.req_put(b"k", b"v"),
            wire.req_incr(b"k"),
            wire.req_get(b"k"),
            wire.req_rename(b"k", b"m"),
            wire.req_del(b"k"),
            wire.req_setrange(b"m", 1, b"X"),
            wire.req_incrbyfloat(b"f", "1.5"),
        ]
        r = self.conn.one(wire.req_multi(ops))
        self.assertEqual(r.opcode, wire.OP_MULTI + 1)
        got = [x.opcode for x in r.ops]
        self.assertEqual(got[1], wire.OP_ERROR)
        self.assertEqual(r.ops[1].error, NOT_AN_INTEGER)
        self.assertEqual(list(r.ops[2].values), [b"v"])
        self.assertEqual(r.ops[3].opcode, wire.OP_RENAME + 1)
        self.assertFalse(r.ops[4].found)
        self.assertEqual(r.ops[5].number, 2)
        self.assertEqual(list(r.ops[6].values), [b"1.5"])
        self.assertEqual(list(self.conn.one(wire.req_get(b"m")).values), [b"vX"])

    def test_bad_multis_are_refused(self) -> None:
        """An empty group, a nested one, a chain opcode, one too big: each an ERROR."""
        one = self.conn.one
        self.assertIn("at least one", one(wire.req_multi([])).error)
        self.assertIn(
            "cannot hold", one(wire.req_multi([wire.req_multi([wire.req_get(b"a")])])).error
        )
        self.assertIn("cannot hold", one(wire.req_multi([wire.req_stats()])).error)
        big = wire.req_multi([wire.req_setrange(b"a", 2**40, b"x")])
        self.assertIn("exceeds", one(big).error)
