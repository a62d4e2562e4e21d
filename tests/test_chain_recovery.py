"""Recovery of the chain in memory: session loss, whole-chain restarts, the chain
record, epochs and catch-up by delta.

The nodes are the in-memory ones of tests/fakes/chain.py (iosim pumps, a
clock, a znode registry standing in for ZooKeeper); real processes and a real
ZooKeeper are in tests/test_durability.py.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.chain.epochs import EpochHistory, match_point
from kvtwist.chain.joining import WAIT_POLL
from kvtwist.chain.lifecycle import BadTransition, Lifecycle, State
from kvtwist.chain.record import ChainRecord, matches, may_start
from kvtwist.membership import Member, Membership, format_address, parse_address
from tests.fakes.chain import Net, Node, results


class EpochTests(SynchronousTestCase):
    def test_epoch_at(self) -> None:
        """Each op's epoch is the one of the last mark at or before it."""
        h = EpochHistory()
        for seq, epoch in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 4)]:
            h.note(seq, epoch)
        self.assertEqual(h.marks, [(1, 1), (3, 2), (5, 4)])
        self.assertEqual([h.epoch_at(s) for s in range(0, 7)], [0, 1, 1, 2, 2, 4, 4])
        h.truncate(3)
        self.assertEqual(h.marks, [(1, 1), (3, 2)])

    def test_match_point(self) -> None:
        """Logs agree up to the op before the first one whose epochs differ."""
        tail = EpochHistory([(1, 1), (6, 2)])
        self.assertEqual(match_point(tail, 9, EpochHistory([(1, 1)]), 5), 5)
        # the joiner was an old head with ops 6-7 of epoch 1 nobody else got
        self.assertEqual(match_point(tail, 9, EpochHistory([(1, 1)]), 7), 5)
        self.assertEqual(match_point(tail, 9, EpochHistory([(1, 1), (6, 2)]), 9), 9)
        self.assertEqual(match_point(tail, 9, EpochHistory([(1, 3)]), 4), 0)
        self.assertEqual(match_point(tail, 9, EpochHistory(), 0), 0)
        # the tail is behind a joiner that holds more of the same epoch
        self.assertEqual(match_point(tail, 7, EpochHistory([(1, 1), (6, 2)]), 9), 7)


class RecordTests(SynchronousTestCase):
    def view(self, *names: str, config: int = 5) -> Membership:
        return Membership(config, tuple(Member(n, i, ("h", 1)) for i, n in enumerate(names)))

    def test_roundtrip(self) -> None:
        """The record survives encoding; unreadable data is an error, not a silent default."""
        r = ChainRecord(epoch=3).with_view(self.view("node1", "node2"))
        back = ChainRecord.decode(r.encode(), 7)
        self.assertEqual((back.epoch, back.config, back.names), (3, 5, {"node1", "node2"}))
        self.assertEqual(back.version, 7)
        self.assertRaises(ValueError, ChainRecord.decode, b"{nonsense", 1)

    def test_may_start(self) -> None:
        """Only a member of the last configuration, or the forced node, restarts an empty chain."""
        r = ChainRecord.decode(ChainRecord().with_view(self.view("node1")).encode(), 0)
        self.assertTrue(may_start(ChainRecord(), None, "id"), "a fresh chain starts anywhere")
        self.assertFalse(
            may_start(ChainRecord(), None, "id", config=7), "a used root without a record"
        )
        self.assertTrue(may_start(r, "node1", "id"))
        self.assertFalse(may_start(r, "node2", "id"))
        self.assertFalse(may_start(r, None, "id"))
        forced = ChainRecord.decode(ChainRecord(force="me").encode(), 1)
        self.assertTrue(may_start(forced, None, "me"))
        self.assertFalse(may_start(forced, "node1", "other"))

    def test_addresses_round_trip(self) -> None:
        """Addresses are written as they are parsed: an IPv6 host in brackets (a joiner on
        ::1 was not recognised when its znode appeared, and its join failed)."""
        for address in [("127.0.0.1", 9000), ("::1", 9001), ("node-a", 7)]:
            text = format_address(address)
            self.assertEqual(parse_address(text.encode()), address)
        self.assertEqual(format_address(("::1", 9001)), "[::1]:9001")

    def test_matches(self) -> None:
        """The record matches a view with exactly the same members."""
        r = ChainRecord.decode(ChainRecord().with_view(self.view("a", "b")).encode(), 0)
        self.assertTrue(matches(r, self.view("a", "b", config=9)))
        self.assertFalse(matches(r, self.view("a")))
        self.assertFalse(matches(r, self.view("a", "b", "c")))
        self.assertFalse(matches(ChainRecord(), self.view()), "no record yet")


class LifecycleTests(SynchronousTestCase):
    def test_transitions(self) -> None:
        """Allowed transitions move and count generations; others are refused."""
        life = Lifecycle(standalone=False)
        g = life.generation
        life.to(State.JOINING)
        life.to(State.REGISTERING)
        life.to(State.MEMBER)
        self.assertTrue(life.serving)
        self.assertRaises(BadTransition, life.to, State.REGISTERING)
        life.to(State.FENCED, "lost")
        self.assertEqual(life.describe(), "fenced: lost")
        self.assertGreater(life.generation, g)
        self.assertRaises(BadTransition, Lifecycle(standalone=True).to, State.JOINING)


class ChainRecoveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net()

    def write_all(self, node: Node, n: int, prefix: str = "k") -> list[Any]:
        ds = [node.write(f"{prefix}{i:03d}".encode(), f"{prefix}{i}".encode()) for i in range(n)]
        self.net.settle()
        out = results(ds)
        self.assertTrue(all(r is not None and hasattr(r, "op_n") for r in out), out)
        return out

    def lose_session(self, node: Node) -> None:
        """ZooKeeper expires the node's session: its znode goes, it learns it later."""
        if node.name is not None:
            self.net.registry.remove(node.name)
        node.replica.zk_state("lost")

    def identical(self, nodes: list[Node]) -> list[tuple[str, bytes]]:
        states = [n.state() for n in nodes]
        for s in states[1:]:
            self.assertEqual(s, states[0])
        return states[0]

    def test_session_loss_keeps_data_and_catches_up_by_delta(self) -> None:
        """A tail whose session expired keeps its copy and rejoins with only what it missed."""
        a, b, c = self.net.chain(3)
        self.write_all(a, 10)
        self.lose_session(c)
        self.assertEqual(c.replica.status, "fenced")
        self.assertEqual(len(c.replica.committed_tree), 10, "the fenced node threw its data away")
        self.net.settle()
        self.write_all(a, 5, prefix="late")
        c.replica.zk_state("connected")
        self.net.settle()
        self.assertEqual(c.replica.role, "tail")
        self.assertEqual(c.replica.last_catch_up, "delta")
        self.assertEqual(len(self.identical([a, b, c])), 15)

    def test_whole_chain_restart_keeps_acknowledged_writes(self) -> None:
        """Every session lost at once (a ZooKeeper outage): the chain comes back with its data."""
        a, b, c = self.net.chain(3)
        acked = self.write_all(a, 20)
        for n in (a, b, c):
            self.lose_session(n)
        self.assertEqual(self.net.registry.members, [])
        self.net.settle()
        for n in (c, a, b):  # the old tail reconnects first
            n.replica.zk_state("connected")
            self.net.settle()
        self.assertEqual(sorted(n.replica.role for n in (a, b, c)), ["head", "middle", "tail"])
        self.assertEqual(len(self.identical([a, b, c])), 20)
        head = next(n for n in (a, b, c) if n.replica.role == "head")
        (more,) = self.write_all(head, 1, prefix="after")
        self.assertEqual(more.op_n, acked[-1].op_n + 1, "op numbers reused or skipped")

    def test_node_outside_last_configuration_waits(self) -> None:
        """An empty chain does not restart from a node that was not in its last configuration."""
        a, b = self.net.chain(2)
        self.write_all(a, 3)
        for n in (a, b):
            n.replica.stop()
            self.net.registry.remove(n.name or "")
        d = Node(self.net, 9100)
        self.net.nodes[9100] = d
        d.replica.join()
        self.net.settle()
        self.assertEqual(d.replica.status, "waiting")
        self.assertIn(d.store.node_id, self.net.registry.waiting)
        self.assertEqual(self.net.registry.members, [])
        self.failureResultOf(d.write(b"k", b"v"))
        # an operator accepts the loss and lets this node start the chain
        data, version = self.net.registry.record
        forced = ChainRecord.decode(data, version)
        self.net.registry.record = (
            ChainRecord(forced.epoch, forced.config, forced.members, d.store.node_id).encode(),
            version + 1,
        )
        self.net.clock.advance(WAIT_POLL)
        self.net.settle()
        self.assertEqual(d.replica.role, "head+tail")
        self.assertNotIn(d.store.node_id, self.net.registry.waiting)
        self.write_all(d, 1)

    def test_new_head_takes_a_new_epoch(self) -> None:
        """After the head dies its successor records a higher epoch before numbering writes."""
        a, b, c = self.net.chain(3)
        self.write_all(a, 2)
        first = a.replica.head_epoch
        self.net.kill(a)
        self.write_all(b, 2, prefix="b")
        assert first is not None and b.replica.head_epoch is not None
        self.assertGreater(b.replica.head_epoch, first)
        self.assertEqual(c.replica.state.history.marks, [(1, first), (3, b.replica.head_epoch)])
        data, _ = self.net.registry.record
        self.assertEqual(ChainRecord.decode(data, 0).epoch, b.replica.head_epoch)

    def test_tail_commits_only_once_the_record_lists_its_view(self) -> None:
        """A tail that cannot record the chain's new members commits nothing new."""
        a, b = self.net.chain(2)
        self.write_all(a, 2)  # the tail records {a, b}
        data, _ = self.net.registry.record
        self.assertEqual(ChainRecord.decode(data, 0).names, {a.name, b.name})
        a.zk.overrides["write_record"] = lambda data, version: defer.succeed(False)
        self.net.kill(b)
        d = a.write(b"x", b"1")
        self.net.settle(rounds=20)
        self.assertNoResult(d)  # b might have been the restart source without this write
        del a.zk.overrides["write_record"]
        self.net.settle()
        self.assertEqual(self.successResultOf(d).op_n, 3)
        data, _ = self.net.registry.record
        self.assertEqual(ChainRecord.decode(data, 0).names, {a.name})

    def test_unreachable_successor_is_removed(self) -> None:
        """A predecessor that cannot reach its successor removes it; the chain commits again."""
        a, b, c = self.net.chain(3)
        self.write_all(a, 2)
        for p in [p for p in c.pumps if p in b.pumps]:
            p.serverIO.loseConnection()
            p.clientIO.loseConnection()
        self.net.blocked.add((b.port, c.port))
        d = a.write(b"during", b"cut")
        self.net.settle()
        self.assertEqual(self.successResultOf(d).op_n, 3)
        self.assertEqual(c.replica.role, "tail", "the removed node did not come back")
        self.assertEqual(len(self.identical([a, b, c])), 3)

    def test_in_memory_old_head_with_an_orphan_write_starts_over(self) -> None:
        """An in-memory node cannot replay back to the agreed op: it takes a copy from
        nothing instead, and ends identical without the write nobody else got."""
        a, b, c = self.net.chain(3)
        self.write_all(a, 3)
        for p in [p for p in a.pumps if p in b.pumps]:
            p.serverIO.loseConnection()
            p.clientIO.loseConnection()
        self.net.blocked |= {(a.port, b.port), (b.port, a.port)}
        orphan = a.write(b"orphan", b"x")
        self.net.settle(rounds=5)
        self.lose_session(a)
        self.failureResultOf(orphan)
        self.write_all(b, 1, prefix="new")
        self.net.settle()
        self.assertEqual(a.replica.role, "tail")
        self.assertEqual(a.state(), c.state())
        self.assertNotIn(b"orphan", dict(a.state()))


class StalledJoinerTests(SynchronousTestCase):
    def test_stalled_joiner_is_dropped_and_cannot_register_late(self) -> None:
        """A joiner that stops after the handoff (SIGSTOP, a cut) is dropped within the link
        timeout; the tail commits alone at once, and the joiner's late registration fails
        instead of making it a tail without those writes."""
        net = Net()
        a, t = net.chain(2)
        j = Node(net, 9100)
        net.nodes[9100] = j
        # the joiner runs on a clock of its own, so that it can be stopped dead
        own = MemoryReactorClock()
        j.replica.reactor = j.store.reactor = j.factory.reactor = own
        held: list[tuple[defer.Deferred[str], str, int | None]] = []


        def register(address: str, record_version: int | None = None) -> defer.Deferred[str]:
            d: defer.Deferred[str] = defer.Deferred()
            held.append((d, address, record_version))  # the create reaches ZooKeeper later
            return d

        j.zk.overrides["register"] = register
        j.replica.join()
        for _ in range(30):
            for p in list(net.pumps):
                p.pump()
            net.clock.advance(0)
            own.advance(0)
            if held:
                break
        self.assertEqual(len(held), 1, "the joiner never got to register")
        for p in j.pumps:  # the joiner stops: nothing from it any more
            net.pumps.remove(p)
        start = net.clock.seconds()
        w = a.write(b"while-stalled", b"x")
        while not w.called and net.clock.seconds() - start < 60:
            net.settle(rounds=1)
            net.clock.advance(0.1)
        self.assertEqual(self.successResultOf(w).op_n, 1)
        # dropped after the link timeout (3 s), then committed: no session-long wait
        self.assertLessEqual(net.clock.seconds() - start, 4.5)
        self.assertIsNone(t.replica.joiner_limbo)
        # the stalled joiner wakes up: its registration reaches ZooKeeper only now
        d, address, version = held[0]
        j.zk.answer("register", address, version).chainDeferred(d)
        self.assertEqual([m.name for m in net.registry.members], [a.name, t.name])
        self.assertNotEqual(j.replica.status, "member")

    def test_root_used_by_foreign_nodes_is_not_restarted_empty(self) -> None:
        """A root that has had members but has no chain record (the original C servers
        used it) is not restarted from an empty copy: the node waits for an operator."""
        net = Net()
        net.registry.add("10.0.0.9:9999")  # an original C server came and went
        net.registry.remove(net.registry.members[0].name)
        n = Node(net, 9000)
        net.nodes[9000] = n
        n.replica.join()
        net.settle()
        self.assertEqual(n.replica.status, "waiting")
        self.assertEqual(net.registry.members, [])
        self.assertIn("foreign", n.replica.life.why)


class DivergenceTests(SynchronousTestCase):
    def test_successor_with_a_foreign_log_is_made_to_rejoin(self) -> None:
        """A successor whose last op carries another epoch than ours holds writes nobody
        committed: the predecessor refuses the link, and it rejoins and ends identical."""
        net = Net()
        a, b = net.chain(2)
        for i in range(2):
            a.write(f"k{i}".encode(), b"x")
        net.settle()
        b.replica.state.history = EpochHistory([(1, 99)])  # as if another head had numbered them
        link = a.replica.succ
        assert link is not None
        link.close()
        a.replica.link_lost(link)  # relink: the hellos compare the logs
        net.settle()
        self.assertEqual(b.replica.role, "tail")
        self.assertEqual(b.replica.state.history.marks, a.replica.state.history.marks)
        self.assertEqual(b.state(), a.state())
        self.assertIn(b.replica.last_catch_up, ("delta", "full"))
