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

from typing import Any

from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.chain.foreign import ForeignMembers, Verdict
from kvtwist.chain.lifecycle import State
from kvtwist.chain.link import ChainConnection, Link, Side
from kvtwist.chain.reads import ReadingReplica
from kvtwist.chain.recording import RecordKeeper
from kvtwist.chain.view import LinkState, plan_view
from kvtwist.lease import LEASE_FRACTION

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


class MembershipReplica(ReadingReplica):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the members we asked whether they speak kvtwist, and what we do about foreign ones
        self.foreign = ForeignMembers(self)
        #: the head's claim and the tail's commit gate on the chain record
        self.records = RecordKeeper(self)

    def set_view(self, view: Any) -> None:
        """A new chain configuration from ZooKeeper."""
        if self.view is not None and view.config < self.view.config:
            return
        self.view = view
        present = {m.name for m in view.members}
        self.foreign.forget_absent(present)
        if self.name is None:
            return
        if self.life.is_(State.REGISTERING) and view.index(self.name) is not None:
            self._become_member()
        if self.fenced:
            return
        plan = plan_view(
            view, self.name, LinkState.of(self.pred), LinkState.of(self.succ), self._joiner_limbo
        )
        if plan.gone:
            self._confirm_gone()
            return
        log.info(
            "config {config}: {members}; we are {name} ({role})",
            config=view.config,
            members=" -> ".join(m.name for m in view.members),
            name=self.name,
            role=self.role,
        )
        # predecessor side
        if plan.drop_pred and self.pred is not None:
            self.pred.close()
            self.pred = None
        if plan.head:
            self._awaiting_handoff = False
            self.state.continue_numbering()
            if self.head_epoch is None:
                self._claim_head()
        if plan.await_pred is not None:
            self.foreign.watch_predecessor(plan.await_pred)
        # successor side
        if plan.limbo_over:
            self._joiner_limbo = None  # the joiner did register: it is our successor now
        if plan.drop_succ and self.succ is not None:
            self.succ.close()
            self.succ = None
        if plan.tail:
            self._succ_down_since = None
            # the tail before us may have served anything we applied: no read
            # here until we have committed that much too (the record may hold
            # the commit back for a while)
            self.tail_catch_up = max(self.tail_catch_up, self.state.applied_seq)
            self._advance()  # tail now: what we applied is committed
        elif plan.adopt_succ:
            assert self.succ is not None
            self.succ.peer = view.successor(self.name).name  # type: ignore[union-attr]
            self.succ.joining = False
            self.succ.joined = True
            self.succ.hello(self.name, view.config, self.address, self.state.committed_seq)
        elif plan.connect_succ is not None:
            self._succ_down_since = self.reactor.seconds()
            self._connect_successor(plan.connect_succ)
        for link in (self.pred, self.succ):
            if link is not None:
                self._stamp(link)
        self._wake_readers()

    def _become_member(self) -> None:
        """Our znode is in a view we hold: from now on we act on our place in the chain."""
        self.life.to(State.MEMBER)
        self._wake_members()
        self._awaiting_handoff = self.pred is not None
        self.state.next_seq = self.state.last_received + 1
        early, self._early_hello = self._early_hello, None
        if early is not None:
            self.reactor.callLater(0, self._replay_hello, *early)

    def _confirm_gone(self) -> None:
        """A view without our znode: fence only once a fresh read agrees.

        A view read before our registration can arrive after it.  A read
        that fails is tried again: a member whose znode is gone must not go
        on as if it were the whole chain (and meanwhile its lease, tied to
        its znode, lapses: kvtwist.zk).
        """
        if self.zk is None:
            return
        name, gen = self.name, self.life.generation

        def check(view: Any) -> None:
            if gen == self.life.generation and self.name == name and view.index(name) is None:
                self.fence("our znode is gone from the chain", voluntary=False)
            elif gen == self.life.generation:
                self.set_view(view)

        def again(f: Failure) -> None:
            if gen == self.life.generation and self.name == name:
                self.reactor.callLater(VIEW_RETRY_DELAY, self._confirm_gone)

        self.zk.members().addCallbacks(check, again)

    def znode_gone(self, name: str) -> None:
        """A linearized read found our znode gone (kvtwist.zk's lease probe): we are out."""
        if self.name == name and not self.fenced:
            self.fence("our znode is gone from the chain", voluntary=False)

    def _refresh_view(self) -> None:
        if self.zk is not None:
            self.zk.members().addCallbacks(self.set_view, lambda f: None)

    def _stamp(self, link: Link) -> None:
        """Who we are and in which configuration, for the updates this link carries."""
        link.local_name = self.name or ""
        link.config = self.view.config if self.view is not None else 0

    # the chain record (kvtwist.chain.recording)

    def _claim_head(self) -> None:
        self.records.claim_head()

    def _record_allows_commit(self) -> bool:
        return self.records.allows_commit()

    # the successor link

    def _connect_successor(self, member: Any) -> None:
        if member.address is None:
            log.error("successor {name} has no usable address; waiting", name=member.name)
            return
        verdict = self.foreign.verdicts.get(member.name)
        if verdict is Verdict.FOREIGN:
            self.foreign.leave_out(member)
            return
        if verdict is Verdict.ASKING:
            return
        if verdict is None:
            self.foreign.examine_successor(member)
            return
        conn = ChainConnection(self, self.link_config)
        link = self._new_link(conn, Side.SUCCESSOR, peer=member.name)
        self._stamp(link)
        self.succ = link
        gen = self.life.generation
        host, port = member.address

        def connected(_: Any) -> None:
            if link is self.succ and self.name is not None:
                assert self.view is not None
                link.hello(self.name, self.view.config, self.address, self.state.committed_seq)

        def failed(f: Failure) -> None:
            left_out = self._unreachable_log.allow()
            if left_out is not None:
                log.warn(
                    "cannot reach successor {peer}: {e}{more}",
                    peer=member.name,
                    e=f.getErrorMessage(),
                    more=f" ({left_out} more attempts failed)" if left_out else "",
                )
            self._relink_later(link, gen)

        self.connect(host, port, conn).addCallbacks(connected, failed)

    def _relink_later(self, link: Link, gen: int) -> None:
        def again() -> None:
            if link is not self.succ or gen != self.life.generation or self.fenced:
                return
            self.succ = None
            _, succ = self._neighbours()
            if succ is None:
                return
            down = self._succ_down_since
            if down is None:
                down = self._succ_down_since = self.reactor.seconds()
            if self.reactor.seconds() - down > UNREACHABLE_TIMEOUTS * self.link_timeout:
                log.warn(
                    "successor {name} unreachable for {s:.1f}s: removing it from the chain",
                    name=succ.name,
                    s=self.reactor.seconds() - down,
                )
                self._succ_down_since = self.reactor.seconds()
                self._remove_live_member(succ.name)
            self._connect_successor(succ)

        self.reactor.callLater(RECONNECT_DELAY, again)

    def _remove_live_member(self, name: str) -> None:
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
        wait = self._removal_wait()
        why = f"removed {name}"
        self.hold_tail(wait + 3 * self._session_timeout(), why)

        def removed(_: Any) -> None:
            self.hold_tail(wait, why)

        def unknown(f: Failure) -> None:
            log.warn("removing {name} failed: {e}", name=name, e=f.getErrorMessage())
            self.hold_tail(wait + self._session_timeout(), why)

        self.coordinator.remove_member(name).addCallbacks(removed, unknown)

    def _removal_wait(self) -> float:
        """How long a member we removed may go on serving, measured on our clock.

        Its lease lasts at most LEASE_FRACTION of its session timeout past a
        probe that found its znode, so past the deletion; it says how long in
        every HELLO and JOIN, and otherwise ours is taken.  Both clocks may
        run apart by CLOCK_RATE_BOUND.
        """
        lease = max(self._session_timeout() * LEASE_FRACTION, self._peer_lease)
        rate = CLOCK_RATE_BOUND
        return lease * (1 + rate) / (1 - rate) + REMOVAL_MARGIN

    def _note_lease(self, hello: Any) -> None:
        self._peer_lease = max(self._peer_lease, hello.lease_ms / 1000.0)

    def link_lost(self, link: Link) -> None:
        was_closed = link.closed
        link.closed = True
        if link is self.succ and self.intake.link_full:
            self.intake.link_full = False
            self._update_congestion()
        if link is self.pred:
            self.pred = None
            if self.life.is_(State.JOINING, State.REGISTERING):
                self._join_failed("predecessor closed the link during the state transfer")
        elif link is self.succ:
            if link.joining or link.peer.startswith("join:"):
                self._joiner_lost(link)
            elif not self._stopping and not self.fenced:
                if not was_closed:
                    log.info("link to successor {peer} lost; reconnecting", peer=link.peer)
                if self._succ_down_since is None:
                    self._succ_down_since = self.reactor.seconds()
                self._relink_later(link, self.life.generation)

    def _session_timeout(self) -> float:
        return 10.0 if self.zk is None else self.zk.effective_session_timeout

    def _reset_links(self) -> None:
        for link in (self.pred, self.succ):
            if link is not None:
                link.close()
        self.pred = self.succ = None
        self.head_epoch = None
        self._awaiting_handoff = False
        self._early_hello = None
        self._joiner_limbo = None
        self._reset_join()

    def _leave(self) -> None:
        """Delete our znode, so that no one takes us for a member any more."""
        name, self.name = self.name, None
        if name is not None and self.zk is not None:
            self.zk.unregister(name).addErrback(
                lambda f: log.warn("could not delete {name}: {e}", name=name, e=f.getErrorMessage())
            )

    def _schedule_rejoin(self) -> None:
        """Join again once ZooKeeper is reachable, backing off while attempts fail."""
        if self.zk is None or not self.life.is_(State.FENCED):
            return
        gen = self.life.generation
        if not self.zk.connected:
            # "connected" calls again; look now and then too, since session
            # events from kazoo's threads may arrive out of order
            self.reactor.callLater(
                1.0, lambda: self._schedule_rejoin() if gen == self.life.generation else None
            )
            return
        delay = self._rejoin_delay
        self._rejoin_delay = min(self._rejoin_delay * 2, 10.0)
        deferLater(self.reactor, delay, lambda: None).addCallback(
            lambda _: self.join() if gen == self.life.generation else None
        ).addErrback(lambda f: log.failure("rejoin failed", f))
