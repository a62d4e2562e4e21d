"""Whole replicas under hypothesis: a chain in memory, faults as rules, the paper as invariants.

Where tests/test_chain_state.py drives the pure state, this drives the real
:class:`~kvtwist.chain.replica.Replica` objects of a :class:`tests.fakes.chain.Net`
(iosim links, one clock, the in-memory coordinator): clients write at the
head with a client id and request numbers (retrying some), links are cut and
healed, nodes are cut off from ZooKeeper (their sessions expiring when the
cut outlasts the timeout), nodes crash and new ones join, and time passes in
steps hypothesis picks.  The partition issue's scenarios are sequences of
these rules.

After every step:

- reads are linearizable: a node that would serve a read holds, for every
  key, at least the latest acknowledged write, and never less than a read
  before it (registers of rising values);
- Update Propagation: between two neighbours of the current configuration
  that are linked, the successor holds nothing its predecessor has not
  applied, and the same epoch at its last op;
- In-process Requests: a member's Sent list is exactly what it received and
  has not committed, and its successor has committed at least as much;
- nothing acknowledged is dropped: every member of the current configuration
  has received every acknowledged op; no op number is acknowledged for two
  different writes.

At the end everything heals and every live member holds every acknowledged
write.
"""

from __future__ import annotations

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

from kvtwist.chain.lifecycle import State
from kvtwist.chain.outcomes import WriteResult
from kvtwist.chain.record import ChainRecord, may_start
from tests.fakes.chain import Net, Node

KEYS = (b"a", b"b", b"c")
SESSION = 2.0  # the fake's effective session timeout
MAX_NODES = 5


class ReplicaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.net = Net()
        self.next_value = 1
        self.next_request = 1
        self.acked: dict[bytes, int] = dict.fromkeys(KEYS, 0)
        self.seen: dict[bytes, int] = dict.fromkeys(KEYS, 0)
        self.ops: dict[int, tuple[bytes, int]] = {}  # acknowledged op -> (key, value)
        self.requests: dict[int, tuple[bytes, int]] = {}  # request id -> (key, value)
        self.latest: dict[bytes, int] = {}  # key -> its latest request id
        self.answered: set[int] = set()  # request ids answered

    @initialize(n=st.integers(min_value=1, max_value=3))
    def start(self, n: int) -> None:
        self.net.chain(n)

    @property
    def live(self) -> list[Node]:
        return [n for n in self.net.nodes.values() if n.alive]

    def _pick(self, data: st.DataObject, nodes: list[Node] | None = None) -> Node:
        nodes = self.live if nodes is None else nodes
        return data.draw(st.sampled_from(sorted(nodes, key=lambda n: n.port)))

    # clients

    def _send(self, request: int, retry: bool) -> None:
        head = next(
            (n for n in self.live if n.replica.is_head and n.zk.cut_at is None), None
        )
        if head is None:
            return
        key, value = self.requests[request]

        def answered(result: WriteResult) -> WriteResult:
            self.answered.add(request)
            seen = self.ops.setdefault(result.op_n, (key, value))
            assert seen == (key, value), f"op {result.op_n} acknowledged for {seen} and {key!r}"
            self.acked[key] = max(self.acked[key], value)
            return result

        head.replica.write(
            True, key, str(value).encode(), "client", request, 1, retry
        ).addCallbacks(answered, lambda f: None)

    @rule(key=st.sampled_from(KEYS))
    def write(self, key: bytes) -> None:
        request = self.next_request
        self.next_request += 1
        self.requests[request] = (key, self.next_value)
        self.latest[key] = request
        self.next_value += 1
        self._send(request, False)

    def _unanswered(self) -> list[int]:
        return sorted(r for r in self.latest.values() if r not in self.answered)

    @precondition(lambda self: self._unanswered())
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """A client that got no answer sends the same request again: the latest of
        its key (values of a key rise in the order they are written, so a read
        below the latest acknowledged one is stale)."""
        self._send(data.draw(st.sampled_from(self._unanswered())), True)

    # faults

    @rule(data=st.data())
    def cut_links(self, data: st.DataObject) -> None:
        self.net.cut_links(self._pick(data))

    @rule()
    def heal_links(self) -> None:
        self.net.heal_links()

    @rule(data=st.data())
    def cut_zk(self, data: st.DataObject) -> None:
        self.net.cut_zk(self._pick(data))

    @rule(data=st.data())
    def heal_zk(self, data: st.DataObject) -> None:
        self.net.heal_zk(self._pick(data), SESSION)

    @precondition(lambda self: len(self.live) > 1)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        self.net.kill(self._pick(data))

    @precondition(lambda self: len(self.net.nodes) < MAX_NODES)
    @rule()
    def join(self) -> None:
        self.net.add()

    @rule(seconds=st.sampled_from((0.0, 0.05, 0.2, 0.8, 1.5, 3.0)))
    def time_passes(self, seconds: float) -> None:
        for p in list(self.net.pumps):
            p.pump()
        self.net.clock.advance(seconds)
        self.net.expire_sessions(SESSION)

    @rule()
    def settle(self) -> None:
        self.net.settle(rounds=20)
        self.net.expire_sessions(SESSION)

    # invariants

    def _serving(self) -> list[Node]:
        return [n for n in self.live if n.replica.serving_reads]

    @invariant()
    def reads_are_linearizable(self) -> None:
        for node in self._serving():
            for key in KEYS:
                raw = node.replica.committed_tree.get(key)
                value = int(raw) if raw is not None else 0
                assert value >= self.acked[key], (
                    f"{node.name} would read {key!r}={value}; {self.acked[key]} was acknowledged"
                )
                assert value >= self.seen[key], (
                    f"{node.name} would read {key!r}={value} after a read of {self.seen[key]}"
                )
                self.seen[key] = max(self.seen[key], value)

    def _current_members(self) -> list[Node]:
        """Live members, in chain order, that act on the registry's current view."""
        view = self.net.registry.view()
        by_name = {n.name: n for n in self.live if n.name is not None}
        out = []
        for m in view.members:
            node = by_name.get(m.name)
            if (
                node is not None
                and node.replica.life.is_(State.MEMBER)
                and node.replica.view is not None
                and node.replica.view.config == view.config
            ):
                out.append(node)
        return out

    @invariant()
    def linked_neighbours_agree(self) -> None:
        members = self._current_members()
        for p, s in zip(members, members[1:], strict=False):
            ps, ss = p.replica.state, s.replica.state
            succ, pred = p.replica.succ, s.replica.pred
            if succ is None or pred is None or not (succ.ready and pred.ready):
                continue
            if succ.peer != s.name or pred.peer != p.name:
                continue
            assert ss.last_received <= ps.applied_seq, (
                f"{s.name} holds op {ss.last_received}; {p.name} applied {ps.applied_seq}"
            )
            last = ss.last_received
            assert ss.history.epoch_at(last) == ps.history.epoch_at(last), (
                f"{s.name} and {p.name} disagree on the epoch of op {last}"
            )
            assert ss.committed_seq >= ps.committed_seq, (
                f"{p.name} committed op {ps.committed_seq}, its successor {s.name} "
                f"only {ss.committed_seq}"
            )

    @invariant()
    def sent_list_is_what_is_uncommitted(self) -> None:
        for node in self._current_members():
            st_ = node.replica.state
            expected = set(range(st_.committed_seq + 1, st_.last_received + 1))
            assert set(st_.pending) == expected, (
                f"{node.name}'s Sent list {sorted(st_.pending)[:5]}… is not its "
                f"uncommitted ops {sorted(expected)[:5]}…"
            )

    @invariant()
    def nothing_acknowledged_is_dropped(self) -> None:
        if not self.ops:
            return
        top = max(self.ops)
        for node in self._current_members():
            assert node.replica.state.last_received >= top, (
                f"{node.name} lacks acknowledged op {top} "
                f"(it holds {node.replica.state.last_received})"
            )

    def _describe(self) -> str:
        rows = [f"record {self.net.registry.record!r}"]
        for n in self.live:
            r = n.replica
            rows.append(
                f"{n.port} {r.name} {r.life.describe()} ops {r.state.last_received}/"
                f"{r.state.committed_seq} zk-cut {n.zk.cut_at}"
            )
        return "; ".join(rows)

    def teardown(self) -> None:
        self.net.heal_links()
        for node in self.live:
            self.net.heal_zk(node, SESSION)
        for _ in range(40):
            self.net.settle(rounds=20)
            self.net.clock.advance(0.5)
            self.net.expire_sessions(SESSION)
        self.reads_are_linearizable()
        record = ChainRecord.decode(*self.net.registry.record)
        if not any(may_start(record, n.store.meta.get("name"), n.store.node_id) for n in self.live):
            # every member of the last configuration crashed: the chain waits for
            # one of them (or an operator), rather than restart from an older copy
            if not self.net.registry.members:
                assert all(n.replica.life.is_(State.WAITING) for n in self.live), self._describe()
                return
        serving = self._serving()
        assert serving, "no node serves reads after healing: " + self._describe()
        for node in self._current_members():
            for key, value in self.acked.items():
                raw = node.replica.committed_tree.get(key)
                held = int(raw) if raw is not None else 0
                assert held >= value, f"{node.name} lost {key!r}={value} (holds {held})"


class ReplicaMachineTests(SynchronousTestCase):
    def test_chain_of_replicas_keeps_the_invariants(self) -> None:
        """Random runs of writes, retries, link and ZooKeeper cuts, session expiries,
        crashes and joins keep reads linearizable and the paper's invariants after
        every step, and a healed chain holds every acknowledged write."""
        run_state_machine_as_test(
            ReplicaMachine,
            settings=settings(
                max_examples=200,
                stateful_step_count=50,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                derandomize=True,
            ),
        )
