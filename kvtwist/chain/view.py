"""What a member decides when ZooKeeper gives it a new view: pure, no I/O.

The view is the chain's membership, head first.  A member acts on its place
in it: the predecessor it takes updates from, the successor it sends them to.
:func:`plan_view` turns a view, the member's name and the state of its two
links into a :class:`ViewPlan`; the replica carries the plan out (closing and
dialling links, claiming the head, committing as the tail).  Keeping the
decision here lets a test enumerate it: every combination of place and link
state has exactly one plan.  :func:`plan_join` is the same for a node about to
join: what it does with the membership and the chain record it read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvtwist.chain.foreign import Verdict
from kvtwist.chain.record import ChainRecord, may_start
from kvtwist.membership import Member, Membership, format_address

__all__ = ["JoinPlan", "LinkState", "ViewPlan", "plan_join", "plan_view"]


@dataclass(frozen=True)
class LinkState:
    """What the plan needs to know of one of a member's links."""

    peer: str  # the znode name at the other end, or "join:<address>" for a joiner
    ready: bool  # the hello has been exchanged
    joining: bool = False  # a successor link serving a joiner's state transfer

    @classmethod
    def of(cls, link: Any) -> LinkState | None:
        if link is None:
            return None
        return cls(link.peer, bool(link.ready), bool(getattr(link, "joining", False)))


@dataclass(frozen=True)
class ViewPlan:
    """A member's decisions on a view; see :func:`plan_view`."""

    #: our znode is not in the view: confirm with a fresh read before fencing
    #: (a view read before we registered can arrive after)
    gone: bool = False
    #: close the predecessor link (we head the chain now, or another member precedes us)
    drop_pred: bool = False
    #: we are the head: go on numbering; claim a fresh epoch if we hold none
    head: bool = False
    #: wait for this member to link to us (it dials), unless already linked and ready
    await_pred: Member | None = None
    #: close the successor link
    drop_succ: bool = False
    #: the joiner we serve registered and follows us: keep its link, as its successor link
    adopt_succ: bool = False
    #: dial this member, our new successor
    connect_succ: Member | None = None
    #: we are the tail: what we applied is committed once the record allows it
    tail: bool = False
    #: the joiner we had dropped did register (it is our successor): its limbo is over
    limbo_over: bool = False


def plan_view(
    view: Membership,
    name: str,
    pred: LinkState | None,
    succ: LinkState | None,
    joiner_limbo: str | None = None,
) -> ViewPlan:
    """Our decisions as member ``name`` on ``view``, with links ``pred`` and ``succ``."""
    i = view.index(name)
    if i is None:
        return ViewPlan(gone=True)
    before = view.members[i - 1] if i > 0 else None
    after = view.members[i + 1] if i + 1 < len(view.members) else None
    plan: dict[str, Any] = {}
    # the predecessor side
    if before is None:
        plan["drop_pred"] = pred is not None
        plan["head"] = True
    else:
        stale = pred is not None and pred.peer != before.name
        plan["drop_pred"] = stale
        if pred is None or stale or not pred.ready:
            plan["await_pred"] = before
    # the successor side
    if after is not None and joiner_limbo == format_address(after.address):
        plan["limbo_over"] = True
    if after is None:
        plan["tail"] = True
        plan["drop_succ"] = succ is not None and not succ.joining
    elif succ is None or succ.peer != after.name:
        adopt = (
            succ is not None and succ.ready and succ.peer == f"join:{format_address(after.address)}"
        )
        if adopt:
            plan["adopt_succ"] = True
        else:
            plan["drop_succ"] = succ is not None
            plan["connect_succ"] = after
    return ViewPlan(**plan)


# -- joining ------------------------------------------------------------------


@dataclass(frozen=True)
class JoinPlan:
    """What a joiner does with the membership and record it read under the join lock.

    Exactly one of: remove ``stale`` (registrations of this node's earlier
    incarnation, then read again); ``examine`` the tail (does it speak kvtwist?);
    ``transfer_from`` the tail (catch up, then register behind it); ``start``
    the empty chain from our own copy (``restart``: it had members once, so a
    removed one may still serve and the new head holds its reads); or
    ``wait`` for a member of the last configuration (``foreign``: the members
    left out as not speaking kvtwist).
    """

    stale: tuple[str, ...] = ()
    examine: Member | None = None
    transfer_from: Member | None = None
    start: bool = False
    restart: bool = False
    wait: bool = False
    foreign: tuple[Member, ...] = ()


def plan_join(
    view: Membership,
    record: ChainRecord,
    own_address: tuple[str, int] | None,
    examined: Mapping[str, Verdict],
    last_name: str | None,
    node_id: str,
    cleaned: bool = False,
) -> JoinPlan:
    """The joiner's decision; ``cleaned``: stale registrations were removed already."""
    stale = tuple(m.name for m in view.members if m.address and m.address == own_address)
    if stale and not cleaned:
        return JoinPlan(stale=stale)
    members = [m for m in view.members if examined.get(m.name) is not Verdict.FOREIGN]
    if members:
        tail = members[-1]
        if tail.address is None:
            raise ValueError(f"tail {tail.name} has no usable address")
        if examined.get(tail.name) is None:
            return JoinPlan(examine=tail)
        return JoinPlan(transfer_from=tail)
    if may_start(record, last_name, node_id, view.config):
        return JoinPlan(start=True, restart=record.version >= 0)
    return JoinPlan(wait=True, foreign=tuple(m for m in view.members if m not in members))
