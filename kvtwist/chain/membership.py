"""Views, links and the chain record: how a member finds and keeps its neighbours.

A member acts on its place in the latest view ZooKeeper gave it: it links to
its successor (the predecessor dials), accepts updates only from its
predecessor and acknowledgements only from its successor.  Two rules tie the
chain to the persistent record (kvtwist.chain.record) so that a whole-chain
restart never starts from a copy that misses a committed write:

- a new head claims a fresh epoch in the record before it numbers a write;
- a tail commits only while the record lists exactly the members of its view.

A member that does not speak kvtwist's chain protocol (an original C server
registered under the same root) is recognised before any chain frame goes to
it (kvtwist.chain.foreign) and left out: its znode is deleted, so the chain,
its record and its clients all go on without it.  No record is written and
nothing commits while a view holds a member known to be foreign.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.chain.attempt import Attempt
from kvtwist.chain.foreign import Verdict
from kvtwist.chain.lifecycle import State
from kvtwist.chain.link import ChainConnection, Link, Side
from kvtwist.chain.view import LinkState, plan_view
from kvtwist.lease import LEASE_FRACTION
from kvtwist.logs import LogLimiter

if TYPE_CHECKING:
    from kvtwist.chain.replica import Replica

log = Logger(namespace="kvtwist.chain")

RECONNECT_DELAY = 0.1
#: Delay before a failed membership read is tried again.
VIEW_RETRY_DELAY = 0.5
#: The assumed bound on how far two members' clocks may disagree about the
#: length of an interval (a rate, not an offset): 5%, far beyond the drift of
#: any clock NTP keeps in step (docs/protocol.md, "Timing").
CLOCK_RATE_BOUND = 0.05
#: Added to every hold for a removed member, for scheduling delays.
REMOVAL_MARGIN = 0.25
#: A successor we cannot link to for this many link timeouts, while ZooKeeper
#: still lists it, is removed from the chain: it rejoins, and writes go on.
UNREACHABLE_TIMEOUTS = 1.0


class Membership:
    """One replica's place in the chain: its views, its successor link, leaving, rejoining."""

    def __init__(self, replica: Replica) -> None:
        self.r = replica
        self.succ_down_since: float | None = None  # since when we cannot link to our successor
        self.unreachable_log = LogLimiter(5.0, lambda: float(replica.reactor.seconds()))
        self.peer_lease = 0.0  # the longest lease a neighbour told us it holds
        self.rejoin_delay = 0.5

    def set_view(self, view: Any) -> None:
        """A new chain configuration from ZooKeeper."""
        if self.r.view is not None and view.config < self.r.view.config:
            return
        self.r.view = view
        present = {m.name for m in view.members}
        self.r.foreign.forget_absent(present)
        if self.r.name is None:
            return
        if self.r.life.is_(State.REGISTERING) and view.index(self.r.name) is not None:
            self.become_member()
        if self.r.fenced:
            return
        r, name = self.r, self.r.name
        plan = plan_view(view, name, LinkState.of(r.pred), LinkState.of(r.succ), r.joiner_limbo)
        if plan.gone:
            self.confirm_gone()
            return
        log.info(
            "config {config}: {members}; we are {name} ({role})",
            config=view.config,
            members=" -> ".join(m.name for m in view.members),
            name=self.r.name,
            role=self.r.role,
        )
        # predecessor side
        if plan.drop_pred and self.r.pred is not None:
            self.r.pred.close()
            self.r.pred = None
        if plan.head:
            self.r.awaiting_handoff = False
            self.r.state.continue_numbering()
            if self.r.head_epoch is None:
                self.r.records.claim_head()
            self.r.mark_split()
        if plan.await_pred is not None:
            self.r.foreign.watch_predecessor(plan.await_pred)
        # successor side
        if plan.limbo_over:
            self.r.joiner_limbo = None  # the joiner did register: it is our successor now
        if plan.drop_succ and self.r.succ is not None:
            self.r.succ.close()
            self.r.succ = None
        if plan.tail:
            self.succ_down_since = None
            # the tail before us may have served anything we applied: no read
            # here until we have committed that much too (the record may hold
            # the commit back for a while)
            self.r.tail_catch_up = max(self.r.tail_catch_up, self.r.state.applied_seq)
            self.r.writes.advance()  # tail now: what we applied is committed
        elif plan.adopt_succ:
            assert self.r.succ is not None
            self.r.succ.peer = view.successor(self.r.name).name  # type: ignore[union-attr]
            self.r.succ.joining = False
            self.r.succ.joined = True
            self.r.succ.hello(self.r.name, view.config, self.r.address, self.r.state.committed_seq)
        elif plan.connect_succ is not None:
            self.succ_down_since = self.r.reactor.seconds()
            self.connect_successor(plan.connect_succ)
        for link in (self.r.pred, self.r.succ):
            if link is not None:
                self.stamp(link)
        self.r.reads.wake()

    def become_member(self) -> None:
        """Our znode is in a view we hold: from now on we act on our place in the chain."""
        self.r.life.to(State.MEMBER)
        self.r.wake_members()
        self.r.awaiting_handoff = self.r.pred is not None
        self.r.state.next_seq = self.r.state.last_received + 1
        early, self.r.early_hello = self.r.early_hello, None
        if early is not None:
            self.r.reactor.callLater(0, self.r.links.replay_hello, *early)

    def confirm_gone(self) -> None:
        """A view without our znode: fence only once a fresh read agrees.

        A view read before our registration can arrive after it.  A read
        that fails is tried again: a member whose znode is gone must not go
        on as if it were the whole chain (and meanwhile its lease, tied to
        its znode, lapses: kvtwist.zk).
        """
        if self.r.zk is None:
            return
        name, attempt = self.r.name, self.r.life.begin("confirming our znode is gone")

        def check(view: Any) -> None:
            if attempt.live and self.r.name == name and view.index(name) is None:
                self.r.fence("our znode is gone from the chain", voluntary=False)
            elif attempt.live:
                self.set_view(view)

        def again(f: Failure) -> None:
            if attempt.live and self.r.name == name:
                self.r.reactor.callLater(VIEW_RETRY_DELAY, self.confirm_gone)

        self.r.zk.members().addCallbacks(check, again)

    def znode_gone(self, name: str) -> None:
        """A linearized read found our znode gone (kvtwist.zk's lease probe): we are out."""
        if self.r.name == name and not self.r.fenced:
            self.r.fence("our znode is gone from the chain", voluntary=False)

    def refresh_view(self) -> None:
        if self.r.zk is not None:
            self.r.zk.members().addCallbacks(self.set_view, lambda f: None)

    def stamp(self, link: Link) -> None:
        """Who we are and in which configuration, for the updates this link carries."""
        link.local_name = self.r.name or ""
        link.config = self.r.view.config if self.r.view is not None else 0

    # the successor link

    def connect_successor(self, member: Any) -> None:
        if member.address is None:
            log.error("successor {name} has no usable address; waiting", name=member.name)
            return
        verdict = self.r.foreign.verdicts.get(member.name)
        if verdict is Verdict.FOREIGN:
            self.r.foreign.leave_out(member)
            return
        if verdict is Verdict.ASKING:
            return
        if verdict is None:
            self.r.foreign.examine_successor(member)
            return
        conn = ChainConnection(self.r, self.r.link_config)
        link = self.r.new_link(conn, Side.SUCCESSOR, peer=member.name)
        self.stamp(link)
        self.r.succ = link
        attempt = self.r.life.begin(f"link to {member.name}")
        host, port = member.address

        def connected(_: Any) -> None:
            r, name = self.r, self.r.name
            if link is r.succ and name is not None:
                assert r.view is not None
                link.hello(name, r.view.config, r.address, r.state.committed_seq)

        def failed(f: Failure) -> None:
            left_out = self.unreachable_log.allow()
            if left_out is not None:
                log.warn(
                    "cannot reach successor {peer}: {e}{more}",
                    peer=member.name,
                    e=f.getErrorMessage(),
                    more=f" ({left_out} more attempts failed)" if left_out else "",
                )
            self.relink_later(link, attempt)

        self.r.connect(host, port, conn).addCallbacks(connected, failed)

    def relink_later(self, link: Link, attempt: Attempt | None = None) -> None:
        """Dial the successor again in a moment, unless ``link`` was replaced or the
        node started over since (``attempt``: the present life's, by default)."""
        attempt = attempt or self.r.life.begin("relinking")

        def again() -> None:
            if link is not self.r.succ or not attempt.live or self.r.fenced:
                return
            self.r.succ = None
            _, succ = self.r.neighbours()
            if succ is None:
                return
            down = self.succ_down_since
            if down is None:
                down = self.succ_down_since = self.r.reactor.seconds()
            if self.r.reactor.seconds() - down > UNREACHABLE_TIMEOUTS * self.r.link_timeout:
                log.warn(
                    "successor {name} unreachable for {s:.1f}s: removing it from the chain",
                    name=succ.name,
                    s=self.r.reactor.seconds() - down,
                )
                self.succ_down_since = self.r.reactor.seconds()
                self.remove_live_member(succ.name)
            self.connect_successor(succ)

        self.r.reactor.callLater(RECONNECT_DELAY, again)

    def remove_live_member(self, name: str) -> None:
        """Delete the znode of a member that may still be running, and wait out its lease.

        Once it cannot reach us it may still serve reads to clients on its
        side of a partition, for as long as its lease lasts: until then we
        neither commit as tail nor serve reads (docs/protocol.md, "Timing").
        The hold counts from the deletion's acknowledgement; if the outcome is
        unknown the deletion may yet happen, so the hold adds a session
        timeout, within which ZooKeeper applies or drops it.  Until the answer
        comes the hold lasts long enough for either (kazoo answers every
        request, if only with a connection loss), but not for ever: a hold
        that never ended would keep this node from ever serving as tail.
        """
        wait = self.removal_wait()
        why = f"removed {name}"
        self.r.hold_tail(wait + 3 * self.r.session_timeout(), why)

        def removed(_: Any) -> None:
            self.r.hold_tail(wait, why)

        def unknown(f: Failure) -> None:
            log.warn("removing {name} failed: {e}", name=name, e=f.getErrorMessage())
            self.r.hold_tail(wait + self.r.session_timeout(), why)

        self.r.coordinator.remove_member(name).addCallbacks(removed, unknown)

    def removal_wait(self) -> float:
        """How long a member we removed may go on serving, measured on our clock.

        Its lease lasts at most LEASE_FRACTION of its session timeout past a
        probe that found its znode, so past the deletion; it says how long in
        every HELLO and JOIN, and otherwise ours is taken.  Both clocks may
        run apart by CLOCK_RATE_BOUND.
        """
        lease = max(self.r.session_timeout() * LEASE_FRACTION, self.peer_lease)
        rate = CLOCK_RATE_BOUND
        return lease * (1 + rate) / (1 - rate) + REMOVAL_MARGIN

    def note_lease(self, hello: Any) -> None:
        self.peer_lease = max(self.peer_lease, hello.lease_ms / 1000.0)

    def link_lost(self, link: Link) -> None:
        was_closed = link.closed
        link.closed = True
        if link is self.r.succ and self.r.writes.intake.link_full:
            self.r.writes.intake.link_full = False
            self.r.writes.update_congestion()
        if link is self.r.pred:
            self.r.pred = None
            if self.r.life.is_(State.JOINING, State.REGISTERING):
                self.r.joining.failed("predecessor closed the link during the state transfer")
        elif link is self.r.succ:
            if link.joining or link.peer.startswith("join:"):
                self.r.join_server.lost(link)
            elif not self.r.stopping and not self.r.fenced:
                if not was_closed:
                    log.info("link to successor {peer} lost; reconnecting", peer=link.peer)
                if self.succ_down_since is None:
                    self.succ_down_since = self.r.reactor.seconds()
                self.relink_later(link)

    def reset_links(self) -> None:
        for link in (self.r.pred, self.r.succ):
            if link is not None:
                link.close()
        self.r.pred = self.r.succ = None
        self.r.head_epoch = None
        self.r.awaiting_handoff = False
        self.r.early_hello = None
        self.r.joiner_limbo = None
        self.r.joining.reset()

    def leave(self) -> None:
        """Delete our znode, so that no one takes us for a member any more."""
        name, self.r.name = self.r.name, None
        if name is not None and self.r.zk is not None:
            self.r.zk.unregister(name).addErrback(
                lambda f: log.warn("could not delete {name}: {e}", name=name, e=f.getErrorMessage())
            )

    def schedule_rejoin(self) -> None:
        """Join again once ZooKeeper is reachable, backing off while attempts fail."""
        if self.r.zk is None or not self.r.life.is_(State.FENCED):
            return
        attempt = self.r.life.begin("rejoining")
        if not self.r.zk.connected:
            # "connected" calls again; look now and then too, since session
            # events from kazoo's threads may arrive out of order
            self.r.reactor.callLater(1.0, attempt.guard(self.schedule_rejoin))
            return
        delay = self.rejoin_delay
        self.rejoin_delay = min(self.rejoin_delay * 2, 10.0)
        deferLater(self.r.reactor, delay, attempt.guard(self.r.join)).addErrback(
            lambda f: log.failure("rejoin failed", f)
        )
