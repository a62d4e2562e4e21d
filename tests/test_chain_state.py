"""The pure chain state, driven as a chain by hypothesis, checked against the paper.

A few :class:`kvtwist.chain.state.ChainState` objects form a chain; the test
plays their drivers: each member's store applies what it was handed when a
rule says so, FIFO links between neighbours carry updates down and
acknowledgements up, and rules break and restore links, fail members
(fail-stop, any position), and add a member at the tail by a copy of the
tail's state.  The chain's configuration reaches the members at once (the
coordinator's delays and losses are the in-memory harness's part, in
tests/test_partition_sim.py); what passes between members is delayed,
interleaved across links and, when a link breaks, lost.

After every step the invariants of van Renesse & Schneider (OSDI 2004, §3)
must hold, for every member ``p`` and its successor ``s``:

- Update Propagation: ``s``'s history is a prefix of ``p``'s, and ``s``
  holds nothing ``p`` has not applied;
- In-process Requests: ``p``'s history is ``s``'s followed by ``p``'s Sent
  list — the Sent list is exactly what ``p`` received and has not committed,
  and ``s`` holds everything ``p`` committed;

and nothing committed is ever dropped: every write the head answered is, with
the same op number and content, in every live member's history, and each
answer is given once.  At the end everything heals and every member must
hold the same state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.chain.holds import Intake, TailHolds
from kvtwist.chain.outcomes import WriteResult
from kvtwist.chain.state import ChainState, Mismatch
from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.store import Applied
from kvtwist.tree import BTree

KEYS = (b"a", b"b", b"c")
MAX_MEMBERS = 4


@dataclass
class Member:
    """One member: its pure state, and what its driver would hold."""

    ident: int
    state: ChainState = field(default_factory=ChainState)
    tree: BTree = field(default_factory=BTree)  # the store's latest state
    store_queue: deque[Update] = field(default_factory=deque)  # handed to the store
    #: every update this member took into its order, by op number (the model's
    #: view of its history; a joiner starts from the copy it was given)
    history: dict[int, tuple[int, bool, bytes, bytes]] = field(default_factory=dict)

    def accept(self, updates: list[Update]) -> None:
        for u in self.state.accept(updates):
            self.history[u.seq] = (u.epoch, u.is_put, u.key, u.data)
            self.store_queue.append(u)

    def apply(self, n: int) -> list[Update]:
        """The store applies up to ``n`` queued writes: what goes down the chain."""
        outcomes = []
        for _ in range(min(n, len(self.store_queue))):
            u = self.store_queue.popleft()
            self.tree = self.tree.copy()
            found = self.tree.put(u.key, u.data) if u.is_put else self.tree.delete(u.key)
            outcomes.append(Applied(u.seq, found, self.tree.copy()))
        batch = self.state.applied(outcomes)
        assert batch.error is None
        return batch.forward


@dataclass
class Link:
    """A FIFO connection from a member to its successor."""

    up: bool = True
    down_queue: deque[list[Update]] = field(default_factory=deque)
    ack_queue: deque[int] = field(default_factory=deque)

    def cut(self) -> None:
        self.up = False
        self.down_queue.clear()
        self.ack_queue.clear()


class ChainMachine(RuleBasedStateMachine):
    """A chain of pure states with its links, under failures."""

    def __init__(self) -> None:
        super().__init__()
        self.chain: list[Member] = []
        self.links: dict[tuple[int, int], Link] = {}
        self.epoch = 1
        self.next_ident = 0
        self.next_value = 0
        self.issued: dict[int, tuple[bytes, bytes]] = {}  # by the head: op -> write
        self.answered: dict[int, WriteResult] = {}  # op -> what the client was told
        self.committed: dict[int, int] = {}  # member ident -> highest committed seen

    def _member(self) -> Member:
        m = Member(self.next_ident)
        self.next_ident += 1
        return m

    @initialize(n=st.integers(min_value=1, max_value=3))
    def start(self, n: int) -> None:
        self.chain = [self._member() for _ in range(n)]
        for p, s in zip(self.chain, self.chain[1:], strict=False):
            self.links[(p.ident, s.ident)] = Link()

    # helpers the driver would be

    def _link_after(self, i: int) -> Link | None:
        if i + 1 >= len(self.chain):
            return None
        return self.links.setdefault((self.chain[i].ident, self.chain[i + 1].ident), Link(up=False))

    def _advance(self, i: int) -> None:
        m = self.chain[i]
        is_tail = i == len(self.chain) - 1
        done = m.state.commit(m.state.commit_target(waits_for_successor=not is_tail))
        assert done is not None
        if not done:
            return
        if i == 0:
            for result in done:
                assert result.op_n not in self.answered, f"op {result.op_n} answered twice"
                self.answered[result.op_n] = result
        elif (link := self._link_after(i - 1)) is not None and link.up:
            link.ack_queue.append(m.state.committed_seq)

    def _forward(self, i: int, updates: list[Update]) -> None:
        link = self._link_after(i)
        if updates and link is not None and link.up:
            link.down_queue.append(updates)

    # rules: clients and stores

    @rule(key=st.sampled_from(KEYS), put=st.booleans(), count=st.integers(1, 3))
    def client_writes(self, key: bytes, put: bool, count: int) -> None:
        head = self.chain[0]
        writes = []
        for _ in range(count):
            self.next_value += 1
            value = str(self.next_value).encode() if put else b""
            writes.append((put, key, value, "", 0, 0, False))
        numbered = head.state.number(writes, self.epoch)
        for u in numbered.updates:
            self.issued[u.seq] = (u.key, u.data)
        head.accept(numbered.updates)

    @rule(data=st.data(), n=st.integers(1, 4))
    def store_applies(self, data: st.DataObject, n: int) -> None:
        i = data.draw(st.integers(0, len(self.chain) - 1))
        self._forward(i, self.chain[i].apply(n))
        self._advance(i)

    # rules: links

    @rule(data=st.data())
    def deliver_updates(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.chain) - 1))
        link = self._link_after(i)
        if link is None or not link.down_queue:
            return
        succ = self.chain[i + 1]
        fresh, gap = succ.state.take_in_order(link.down_queue.popleft())
        assert gap is None, f"a FIFO link left a gap at op {gap}"
        succ.accept(fresh)

    @rule(data=st.data())
    def deliver_ack(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.chain) - 1))
        link = self._link_after(i)
        if link is None or not link.ack_queue:
            return
        self.chain[i].state.acknowledged(link.ack_queue.popleft())
        self._advance(i)

    @rule(data=st.data())
    def cut_link(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.chain) - 1))
        link = self._link_after(i)
        if link is not None:
            link.cut()

    @rule(data=st.data())
    def relink(self, data: st.DataObject) -> None:
        """The predecessor dials; the two compare logs and it resends what is missing."""
        i = data.draw(st.integers(0, len(self.chain) - 1))
        link = self._link_after(i)
        if link is None or link.up:
            return
        pred, succ = self.chain[i], self.chain[i + 1]
        last = succ.state.last_received
        problem = pred.state.successor_problem(last, succ.state.history.epoch_at(last))
        assert problem is None, f"a correct successor was refused: {problem}"
        link.up = True
        self._forward(i, pred.state.resend_after(last))
        if succ.state.committed_seq:
            link.ack_queue.append(succ.state.committed_seq)

    # rules: membership

    @precondition(lambda self: len(self.chain) > 1)
    @rule(data=st.data())
    def member_fails(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.chain) - 1))
        gone = self.chain.pop(i)
        for key in [k for k in self.links if gone.ident in k]:
            del self.links[key]
        if i == 0:
            # the new head claims a fresh epoch and numbers on
            self.epoch += 1
            self.chain[0].state.continue_numbering()
        if i == len(self.chain):
            self._advance(i - 1)  # the new tail commits what it applied
        # a middle's neighbours link when a relink rule says so

    @precondition(lambda self: len(self.chain) < MAX_MEMBERS)
    @rule()
    def member_joins(self) -> None:
        """A new member copies the tail's committed state, then takes its backlog."""
        tail = self.chain[-1]
        new = self._member()
        seq = tail.state.committed_seq
        new.state.reset(seq, tail.state.committed_tree)
        new.state.history = tail.state.history.copy()
        new.state.history.truncate(seq)
        new.tree = tail.state.committed_tree.copy()
        new.history = {s: h for s, h in tail.history.items() if s <= seq}
        backlog = tail.state.sent_after(seq)
        tail.state.new_successor()
        self.chain.append(new)
        self.links[(tail.ident, new.ident)] = Link()
        self._forward(len(self.chain) - 2, backlog)

    # the invariants

    @invariant()
    def update_propagation(self) -> None:
        for p, s in zip(self.chain, self.chain[1:], strict=False):
            assert s.state.last_received <= p.state.applied_seq, (
                f"member {s.ident} holds op {s.state.last_received}, "
                f"its predecessor {p.ident} applied only {p.state.applied_seq}"
            )
            for seq, h in s.history.items():
                assert p.history.get(seq) == h, f"op {seq} differs at {p.ident} and {s.ident}"

    @invariant()
    def in_process_requests(self) -> None:
        for p, s in zip(self.chain, self.chain[1:], strict=False):
            ps = p.state
            expected = set(range(ps.committed_seq + 1, ps.last_received + 1))
            assert set(ps.pending) == expected, (
                f"member {p.ident}'s Sent list {sorted(ps.pending)} is not its "
                f"uncommitted ops {sorted(expected)}"
            )
            assert s.state.last_received >= ps.committed_seq, (
                f"member {p.ident} committed op {ps.committed_seq} that its "
                f"successor {s.ident} lacks"
            )

    @invariant()
    def nothing_committed_is_dropped(self) -> None:
        for seq, result in self.answered.items():
            key, data = self.issued[seq]
            for m in self.chain:
                assert m.state.last_received >= seq, f"member {m.ident} lacks answered op {seq}"
                h = m.history.get(seq)
                if h is not None:  # a joiner's copy starts from a tree, not a history
                    assert (h[2], h[3]) == (key, data), f"op {seq} changed at {m.ident}"
            assert result.op_n == seq

    @invariant()
    def commitment_never_goes_back(self) -> None:
        for m in self.chain:
            seen = self.committed.get(m.ident, 0)
            assert m.state.committed_seq >= seen, f"member {m.ident} uncommitted op {seen}"
            self.committed[m.ident] = m.state.committed_seq
            assert m.state.committed_seq <= m.state.applied_seq <= m.state.last_received

    def teardown(self) -> None:
        """Everything heals: links up, every store and link drained; all agree."""
        if not self.chain:
            return
        for _ in range(4 * len(self.chain) + 4):
            for i in range(len(self.chain)):
                link = self._link_after(i)
                if link is not None and not link.up:
                    pred, succ = self.chain[i], self.chain[i + 1]
                    link.up = True
                    self._forward(i, pred.state.resend_after(succ.state.last_received))
                    if succ.state.committed_seq:
                        link.ack_queue.append(succ.state.committed_seq)
            for i in range(len(self.chain)):
                self._forward(i, self.chain[i].apply(1 << 30))
                self._advance(i)
                link = self._link_after(i)
                while link is not None and link.down_queue:
                    fresh, gap = self.chain[i + 1].state.take_in_order(link.down_queue.popleft())
                    assert gap is None
                    self.chain[i + 1].accept(fresh)
            for i in reversed(range(len(self.chain))):
                link = self._link_after(i)
                while link is not None and link.ack_queue:
                    self.chain[i].state.acknowledged(link.ack_queue.popleft())
                self._advance(i)
        head = self.chain[0].state
        for m in self.chain:
            assert m.state.committed_seq == head.last_received, "the healed chain did not commit"
            assert m.state.committed_tree.items() == self.chain[-1].state.committed_tree.items()
            assert not m.state.pending


class ChainStateInvariantTests(SynchronousTestCase):
    def test_paper_invariants_hold_under_failures(self) -> None:
        """Random runs of writes, store progress, deliveries, cut links, failures and
        joins keep the paper's invariants after every step, and a healed chain agrees."""
        run_state_machine_as_test(
            ChainMachine,
            settings=settings(
                max_examples=150,
                stateful_step_count=60,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                derandomize=True,
            ),
        )


class ChainStateTests(SynchronousTestCase):
    """Single decisions of the state, event by event."""

    def _applied(self, state: ChainState, updates: list[Update]) -> list[Update]:
        tree = BTree()
        outcomes = []
        for u in updates:
            tree = tree.copy()
            tree.put(u.key, u.data)
            outcomes.append(Applied(u.seq, False, tree.copy()))
        return state.applied(outcomes).forward

    def test_a_retry_in_the_same_batch_waits_for_the_first(self) -> None:
        """Two requests with one client id and request id in one batch: one op."""
        s = ChainState()
        n = s.number([(True, b"k", b"v", "c", 1, 0, False)] * 2, 1)
        self.assertEqual(len(n.updates), 1)
        self.assertEqual(n.outcomes, [1, 1])

    def test_a_retry_of_a_committed_write_is_answered_at_once(self) -> None:
        """A retry after commitment gets the first op number, not a new one."""
        s = ChainState()
        s.accept(s.number([(True, b"k", b"v", "c", 1, 0, False)], 1).updates)
        self._applied(s, list(s.pending.values()))
        s.commit(s.commit_target(False))
        n = s.number([(True, b"k", b"v2", "c", 1, 0, True)], 1)
        self.assertEqual((n.updates, n.outcomes), ([], [WriteResult(1, False)]))

    def test_nothing_goes_down_before_it_is_applied(self) -> None:
        """Updates forward only once the store has them, in order."""
        s = ChainState()
        ups = s.accept(s.number([(True, b"a", b"1", "", 0, 0, False)] * 3, 1).updates)
        self.assertEqual(s.resend_after(0), [])
        forward = self._applied(s, ups[:2])
        self.assertEqual([u.seq for u in forward], [1, 2])
        self.assertEqual([u.seq for u in s.resend_after(0)], [1, 2])

    def test_commit_waits_for_the_successor(self) -> None:
        """A member with a successor commits only what it acknowledged."""
        s = ChainState()
        ups = s.accept(s.number([(True, b"a", b"1", "", 0, 0, False)] * 3, 1).updates)
        self._applied(s, ups)
        self.assertEqual(s.commit(s.commit_target(True)), [])
        s.acknowledged(2)
        self.assertEqual([r.op_n for r in s.commit(s.commit_target(True)) or []], [1, 2])
        self.assertEqual(sorted(s.pending), [3])
        s.acknowledged(99)  # never more than it was sent
        self.assertEqual(s.acked, 3)

    def test_gaps_and_duplicates_from_a_predecessor(self) -> None:
        """A resend of what we hold is skipped; a gap stops the batch."""
        s = ChainState()
        s.accept([Update(seq=1, epoch=1, is_put=True, key=b"a", data=b"1")])
        fresh, gap = s.take_in_order(
            [Update(seq=q, epoch=1, is_put=True, key=b"a", data=b"1") for q in (1, 2, 4)]
        )
        self.assertEqual(([u.seq for u in fresh], gap), ([2], 4))

    def test_successor_logs_that_cannot_follow(self) -> None:
        """Behind what we committed, ahead of what we hold, or another epoch: rejoin."""
        s = ChainState()
        ups = s.accept(s.number([(True, b"a", b"1", "", 0, 0, False)] * 3, 7).updates)
        self._applied(s, ups)
        s.acknowledged(2)
        s.commit(s.commit_target(True))
        self.assertIs(s.successor_problem(1, 7), Mismatch.BEHIND)
        self.assertIs(s.successor_problem(4, 7), Mismatch.DIVERGES)
        self.assertIs(s.successor_problem(3, 6), Mismatch.DIVERGES)
        self.assertIsNone(s.successor_problem(2, 7))

    def test_the_state_imports_no_io(self) -> None:
        """The core stays free of Twisted, kazoo and sockets, in everything it imports."""
        deps = _imports_of("kvtwist.chain.state")
        self.assertIn("kvtwist.chain.dedup", deps)  # the walk follows kvtwist's modules
        io = {d for d in deps if d.split(".")[0] in ("twisted", "kazoo", "socket", "threading")}
        self.assertEqual(io, set())


def _imports_of(module: str) -> set[str]:
    """The modules ``module`` imports at run time, followed within kvtwist."""
    import ast
    import importlib.util

    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        with open(spec.origin) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                node.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for found in names:
                if found.startswith("kvtwist"):
                    todo.append(found)
                else:
                    seen.add(found)
    return seen


class HoldsAndIntakeTests(SynchronousTestCase):
    """The two small decisions of kvtwist.chain.holds, without a clock."""

    def test_holds_by_reason(self) -> None:
        """A new hold for one reason replaces that reason's; others stay; ended ones go."""
        h = TailHolds()
        self.assertEqual(h.hold(100.0, 10.0, "removed x"), 110.0)
        self.assertEqual(h.hold(100.0, 30.0, "removed y"), 130.0)
        self.assertEqual(h.hold(101.0, 1.0, "removed y"), 110.0)
        self.assertTrue(h.held(109.9))
        self.assertFalse(h.held(110.0))
        self.assertEqual(h.hold(120.0, 1.0, "restart"), 121.0)  # x's ended hold is gone

    def test_intake_pauses_past_the_limit_and_resumes_below_half(self) -> None:
        """Hysteresis: no flapping at the bound; a full link pauses whatever the bytes."""
        i = Intake(1000)
        self.assertIsNone(i.decide(1000))
        self.assertIs(i.decide(1001), True)
        self.assertIsNone(i.decide(600))
        self.assertIs(i.decide(500), False)
        i.link_full = True
        self.assertIs(i.decide(0), True)
        i.link_full = False
        self.assertIs(i.decide(0), False)
