"""The pure decision a member takes on a new view (kvtwist.chain.view): every place
in the chain, every state of its two links, one plan that leaves it linked right."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.chain.foreign import Verdict
from kvtwist.chain.record import ChainRecord
from kvtwist.chain.view import JoinPlan, LinkState, ViewPlan, plan_join, plan_view
from kvtwist.membership import Member, Membership, format_address


def member(i: int) -> Member:
    return Member(f"node{i:010d}", i, ("10.0.0.1", 9000 + i))


def view(*seqs: int) -> Membership:
    return Membership(7, tuple(member(i) for i in seqs))


NAME = member(5).name

links = st.one_of(
    st.none(),
    st.builds(
        LinkState,
        peer=st.sampled_from(
            [member(i).name for i in range(1, 9)] + [f"join:{format_address(member(6).address)}"]
        ),
        ready=st.booleans(),
        joining=st.booleans(),
    ),
)


def apply(
    plan: ViewPlan, pred: LinkState | None, succ: LinkState | None, v: Membership
) -> tuple[str | None, str | None]:
    """The peers the member's links lead to once the plan is carried out (a link
    dialled or awaited counts as leading to its member)."""
    pred_peer = None if plan.drop_pred or pred is None else pred.peer
    if plan.await_pred is not None:
        pred_peer = plan.await_pred.name
    succ_peer = None if plan.drop_succ or succ is None else succ.peer
    if plan.adopt_succ:
        succ_peer = v.successor(NAME).name  # type: ignore[union-attr]
    if plan.connect_succ is not None:
        succ_peer = plan.connect_succ.name
    return pred_peer, succ_peer


class PlanTests(SynchronousTestCase):
    def test_not_in_the_view(self) -> None:
        """A view without us decides nothing but to check again (it may predate us)."""
        self.assertEqual(plan_view(view(1, 2), NAME, None, None), ViewPlan(gone=True))

    def test_alone(self) -> None:
        plan = plan_view(view(5), NAME, None, None)
        self.assertEqual(plan, ViewPlan(head=True, tail=True))

    def test_a_middle_links_both_ways(self) -> None:
        plan = plan_view(view(3, 5, 8), NAME, None, None)
        self.assertEqual((plan.await_pred, plan.connect_succ), (member(3), member(8)))
        self.assertFalse(plan.head or plan.tail)

    def test_linked_and_ready_changes_nothing(self) -> None:
        plan = plan_view(
            view(3, 5, 8), NAME, LinkState(member(3).name, True), LinkState(member(8).name, True)
        )
        self.assertEqual(plan, ViewPlan())

    def test_the_joiner_we_serve_registered(self) -> None:
        """Its state transfer's link becomes the successor link: no redial."""
        joiner = LinkState(f"join:{format_address(member(6).address)}", True, joining=True)
        plan = plan_view(view(5, 6), NAME, None, joiner)
        self.assertTrue(plan.adopt_succ)
        self.assertIsNone(plan.connect_succ)
        self.assertFalse(plan.drop_succ)

    def test_a_tail_keeps_the_joiner_it_serves(self) -> None:
        joiner = LinkState(f"join:{format_address(member(6).address)}", False, joining=True)
        plan = plan_view(view(3, 5), NAME, LinkState(member(3).name, True), joiner)
        self.assertTrue(plan.tail)
        self.assertFalse(plan.drop_succ)

    def test_limbo_ends_when_the_joiner_registers(self) -> None:
        plan = plan_view(view(5, 6), NAME, None, None, format_address(member(6).address))
        self.assertTrue(plan.limbo_over)

    @given(
        st.lists(st.integers(1, 8), unique=True, max_size=6),
        st.booleans(),
        links,
        links,
    )
    def test_every_plan_leaves_the_member_linked_to_its_neighbours(
        self, others: list[int], present: bool, pred: LinkState | None, succ: LinkState | None
    ) -> None:
        """Head iff first, tail iff last; once carried out, the predecessor link leads to
        the member before us and the successor link to the one after (or, at the tail,
        at most to a joiner it serves); never both an adoption and a dial."""
        seqs = sorted(set(others) - {5} | ({5} if present else set()))
        v = view(*seqs)
        plan = plan_view(v, NAME, pred, succ)
        if not present:
            self.assertEqual(plan, ViewPlan(gone=True))
            return
        before, after = v.predecessor(NAME), v.successor(NAME)
        self.assertEqual(plan.head, before is None)
        self.assertEqual(plan.tail, after is None)
        self.assertFalse(plan.adopt_succ and plan.connect_succ is not None)
        pred_peer, succ_peer = apply(plan, pred, succ, v)
        self.assertEqual(pred_peer, None if before is None else before.name)
        if after is not None:
            self.assertEqual(succ_peer, after.name)
        else:
            self.assertTrue(succ_peer is None or (succ is not None and succ.joining))
        if plan.await_pred is not None and pred is not None and pred.peer == before.name:  # type: ignore[union-attr]
            self.assertFalse(pred.ready)  # a ready link to the right member is kept as it is


class JoinPlanTests(SynchronousTestCase):
    """What a joiner does with the membership and record it read under the join lock."""

    def plan(self, v: Membership, record: ChainRecord | None = None, **kw: object) -> JoinPlan:
        args: dict[str, object] = {
            "own_address": ("10.0.0.2", 7000),
            "examined": {},
            "last_name": None,
            "node_id": "me",
        }
        args.update(kw)
        return plan_join(v, record or ChainRecord(), **args)  # type: ignore[arg-type]

    def test_an_earlier_registration_of_ours_goes_first(self) -> None:
        """Our own address in the chain is a dead incarnation: removed, never joined from."""
        mine = Member("node0000000004", 4, ("10.0.0.2", 7000))
        v = Membership(3, (member(1), mine))
        self.assertEqual(self.plan(v), JoinPlan(stale=(mine.name,)))
        self.assertEqual(self.plan(v, cleaned=True).examine, mine)

    def test_the_tail_is_examined_then_joined(self) -> None:
        v = view(1, 2)
        self.assertEqual(self.plan(v), JoinPlan(examine=member(2)))
        judged = {member(2).name: Verdict.KVTWIST}
        self.assertEqual(self.plan(v, examined=judged), JoinPlan(transfer_from=member(2)))

    def test_a_foreign_tail_is_passed_over(self) -> None:
        """The last member that speaks kvtwist is the one to catch up from."""
        judged = {member(2).name: Verdict.FOREIGN, member(1).name: Verdict.KVTWIST}
        self.assertEqual(self.plan(view(1, 2), examined=judged), JoinPlan(transfer_from=member(1)))

    def test_an_empty_chain(self) -> None:
        """A brand-new chain starts at once; one that had members starts only from a
        member of its last configuration, and as a restart; others wait."""
        empty = Membership(0, ())
        self.assertEqual(self.plan(empty), JoinPlan(start=True, restart=False))
        record = ChainRecord(epoch=3, config=9, members=(("node1", "10.0.0.2:7000"),), version=4)
        self.assertEqual(
            self.plan(Membership(12, ()), record, last_name="node1"),
            JoinPlan(start=True, restart=True),
        )
        self.assertEqual(
            self.plan(Membership(12, ()), record, last_name="node7"), JoinPlan(wait=True)
        )
        judged = {member(3).name: Verdict.FOREIGN}
        self.assertEqual(
            self.plan(view(3), record, last_name="node7", examined=judged),
            JoinPlan(wait=True, foreign=(member(3),)),
        )
