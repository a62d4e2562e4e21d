"""A chain member (van Renesse & Schneider, OSDI 2004): one object, composed of parts.

The replica holds what every part shares (its identity, its place in the
latest view, its links, the pure write-path state :class:`ChainState`, its
:class:`~kvtwist.chain.lifecycle.Lifecycle`) and decides who it is (head,
tail, serving or not, fenced).  Each job is a part handed the replica at
construction, never a layer stacked under it:

=============  ==========================================  =======================
part           job                                         module
=============  ==========================================  =======================
``writes``     numbering, applying, forwarding, commit     :mod:`.writes`
``reads``      reads at the tail, from the committed state :mod:`.reads`
``members``    views, the successor link, leaving, rejoin  :mod:`.membership`
``links``      updates, acknowledgements, hellos arriving  :mod:`.links`
``records``    the head's claim and the tail's commit gate :mod:`.recording`
``foreign``    members that do not speak kvtwist           :mod:`.foreign`
``joining``    this node's join                            :mod:`.joining`
``join_server`` the tail's side of another's join          :mod:`.serving`
=============  ==========================================  =======================

The pure decisions live apart from all of them: :mod:`kvtwist.chain.state`
(the write path), :mod:`kvtwist.chain.view` (a new view, a join),
:mod:`kvtwist.chain.record` (the chain record), :mod:`kvtwist.chain.holds`.
The replica talks to the outside only through :class:`Link` objects,
membership views and its coordinator (:class:`kvtwist.coordinator.Coordinator`),
so unit tests drive it with in-memory transports and a fake coordinator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.chain.bounds import HeadOp, Split, Sweep
from kvtwist.chain.foreign import ForeignMembers
from kvtwist.chain.group import Group
from kvtwist.chain.holds import TailHolds
from kvtwist.chain.joining import Joining
from kvtwist.chain.lifecycle import Lifecycle, State
from kvtwist.chain.link import Link, LinkConfig, Side
from kvtwist.chain.links import LinkTraffic
from kvtwist.chain.membership import Membership
from kvtwist.chain.outcomes import NotHere, ReadView, Unavailable, WriteResult
from kvtwist.chain.reads import Reads
from kvtwist.chain.record import ChainRecord
from kvtwist.chain.recording import RecordKeeper
from kvtwist.chain.rmw import Rmw
from kvtwist.chain.serving import JoinServer
from kvtwist.chain.state import ChainState, WriteRequest
from kvtwist.chain.writes import WritePath
from kvtwist.client.protocol import connect_quietly, endpoint
from kvtwist.coordinator import Coordinator
from kvtwist.membership import parse_address
from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.store import Store
from kvtwist.tree import BTree
from kvtwist.wire import FramedProtocol, Message

log = Logger(namespace="kvtwist.chain")

#: How long a request may wait at a node that is becoming a member (joining,
#: registering) before it is refused: the original client, which follows the
#: chain's znodes, reaches a new tail within milliseconds of its registration
#: and gives up on any error.
MEMBER_WAIT = 5.0
#: States of a node on its way into the chain: requests wait for it.
BECOMING = (State.STARTING, State.JOINING, State.REGISTERING)

#: Seconds before a split marker that could not be written is tried again.
MARK_RETRY = 0.5

#: Opens a link: ``(host, port, protocol)``, firing once ``protocol`` is connected.
Dial = Callable[[str, int, FramedProtocol], Deferred[Any]]

__all__ = ["MEMBER_WAIT", "NotHere", "ReadView", "Replica", "Unavailable", "WriteResult"]


class Replica:
    """One node's part of the chain (standalone: a chain of one)."""

    def __init__(
        self,
        reactor: Any,
        store: Store,
        address: str = "",
        zk: Coordinator | None = None,
        dial: Dial | None = None,
        link_config: LinkConfig | None = None,
        link_tls: Any = None,
        on_congestion: Callable[[bool], None] | None = None,
        on_commit_latency: Callable[[float], None] | None = None,
        on_link_rtt: Callable[[str, float], None] | None = None,
        before_register: Callable[[], Deferred[None]] | None = None,
    ) -> None:
        """``dial`` opens links instead of TCP (in-memory wiring in unit tests);
        ``link_tls`` (a kvtwist.tls.ClientTLS) when the peers' port speaks TLS;
        ``on_congestion`` pauses and resumes client intake; ``on_commit_latency``
        is told, at the head, each batch's seconds from numbering to commitment;
        ``on_link_rtt`` each round trip of a link's probe, with the link's side;
        ``before_register``, a cluster server's: re-read the shard map before this
        replica, its state copied or recovered, registers as a member (so it learns
        of a split its copy holds the marker of, kvtwist.chain.bounds)."""
        self.reactor = reactor
        self.store = store
        self.address = address
        self.zk: Coordinator | None = zk  # None: standalone
        self.link_config = link_config or LinkConfig()
        self.link_timeout = self.link_config.timeout
        self._dial = dial
        self.own_address = parse_address(address.encode()) if address else None
        self.link_tls = link_tls
        self.on_link_rtt = on_link_rtt
        self.life = Lifecycle(standalone=zk is None)
        self.view: Any = None  # kvtwist.membership.Membership, None when standalone
        self.name: str | None = None  # our znode name, once registered
        self.record = ChainRecord()  # the last chain record we read or wrote
        self.head_epoch: int | None = 0 if zk is None else None  # claimed as head
        #: op numbers, the Sent list and commitment: the decisions of the write path
        self.state = ChainState(keep_recent=zk is not None)
        self.succ: Link | None = None
        self.pred: Link | None = None
        #: holds on commits and reads as tail, by what they wait for (a member
        #: we removed, a restart): each ends at a reactor time on the node's
        #: steady clock (kvtwist.clock), and the latest end rules
        self.holds = TailHolds()
        self._tail_hold_call: Any = None
        #: no read served as tail before committed_seq reaches this (kvtwist.chain.membership)
        self.tail_catch_up = 0
        #: a new member waits for its predecessor's handoff before it serves reads
        self.awaiting_handoff = False
        #: a predecessor's hello that came before our own view showed us a member
        self.early_hello: tuple[Link, Message] | None = None
        #: the address of a joiner we handed the state to, until its znode shows
        self.joiner_limbo: str | None = None
        self._member_waiters: list[Deferred[None]] = []
        self.before_register = before_register
        #: False for a chain split off another whose state this node has not taken
        #: yet: it may join the chain, never start it from what it holds
        self.seeded = True
        self._marking = False  # a split marker on its way

        self.writes = WritePath(self, on_congestion, on_commit_latency)
        self.reads = Reads(self)
        self.members = Membership(self)
        self.links = LinkTraffic(self)
        self.records = RecordKeeper(self)
        self.foreign = ForeignMembers(self)
        self.joining = Joining(self)
        self.join_server = JoinServer(self)

    def restore(self, tree: BTree, last_seq: int, marks: Any, clients: Any) -> None:
        """Start from a state recovered from disk."""
        self.state.restore(tree, last_seq, marks, clients)

    # what observers read (STATS, tests): the state's numbers, read-only

    @property
    def last_received(self) -> int:
        return self.state.last_received

    @property
    def applied_seq(self) -> int:
        return self.state.applied_seq

    @property
    def committed_seq(self) -> int:
        return self.state.committed_seq

    @property
    def committed_tree(self) -> BTree:
        return self.state.committed_tree

    @property
    def acked(self) -> int:
        return self.state.acked

    def committed_view(self) -> ReadView:
        """The committed state as a read sees it, with the keys that are still ours."""
        state = self.state
        seq, bounds = state.committed_seq, state.bounds
        if not bounds.limited:
            return ReadView(state.committed_tree, seq)
        return ReadView(state.committed_tree, seq, bounds.start, bounds.end(seq))

    @property
    def pending(self) -> dict[int, Update]:
        """The Sent list."""
        return self.state.pending

    @property
    def backlog_bytes(self) -> int:
        """A joiner's backlog held here (kvtwist.chain.serving)."""
        return self.join_server.backlog_bytes

    @property
    def unsent_bytes(self) -> int:
        return self.writes.unsent_bytes

    @property
    def congested(self) -> bool:
        """Client intake is paused: the successor falls behind."""
        return self.writes.intake.paused

    @property
    def last_catch_up(self) -> str:
        return self.joining.last_catch_up

    def storage_description(self) -> str:
        return str(getattr(self.store, "description", "in-memory"))

    # what clients ask (kvtwist.server)

    def write(
        self,
        is_put: bool,
        key: bytes,
        data: bytes = b"",
        client_id: str = "",
        request_id: int = 0,
        ack_below: int = 0,
        resend: bool = False,
        rmw: Rmw | Group | HeadOp | None = None,
        hold: bool = True,
    ) -> Deferred[WriteResult]:
        """Order, apply and commit one client write (:meth:`WritePath.write`)."""
        return self.writes.write(
            is_put, key, data, client_id, request_id, ack_below, resend, rmw, hold
        )

    def write_many(self, writes: list[WriteRequest]) -> Deferred[list[WriteResult | Exception]]:
        return self.writes.write_many(writes)

    def serving_view(self) -> ReadView | None:
        return self.reads.serving_view()

    def read_view(self, allow_wait: bool = True, hold: bool = True) -> Deferred[ReadView]:
        return self.reads.read_view(allow_wait, hold)

    # what the coordinator, the acceptor and the links tell it

    def set_view(self, view: Any) -> None:
        """A new chain configuration from ZooKeeper."""
        self.members.set_view(view)

    def znode_gone(self, name: str) -> None:
        self.members.znode_gone(name)

    def incoming(self, conn: FramedProtocol, msg: Message) -> None:
        """A HELLO or JOIN on a fresh connection: the peer opens a link to us."""
        self.links.incoming(conn, msg)

    def chain_message(self, link: Link, msg: Message) -> None:
        self.links.chain_message(link, msg)

    def link_lost(self, link: Link) -> None:
        self.members.link_lost(link)

    def link_congested(self, link: Link, full: bool) -> None:
        self.writes.link_congested(link, full)

    def join(self) -> Deferred[None]:
        """Join the chain: catch up from the tail, then register as the new tail."""
        return self.joining.start()

    # a cluster chain's keys (kvtwist.chain.bounds)

    def keep_within(self, start: bytes, end: bytes | None, split: bool = False) -> None:
        """The shard's range by the server's latest map (``split``: the next shard was
        split off this chain); the head marks the split in the log."""
        self.state.bounds.set_map(start, end, split)
        self.mark_split()

    def mark_split(self) -> None:
        """At the head, write the split marker the map asks for, unless the log has it."""
        at = self.state.bounds.marker_due()
        if at is None or self._marking or not self.is_head:
            return
        self._marking = True

        def done(result: Any) -> None:
            self._marking = False
            if isinstance(result, Failure):
                log.info("split marker at {at!r} not written: {e}", at=at, e=result.value)
                self.reactor.callLater(MARK_RETRY, self.mark_split)
            else:
                log.info("split marker at {at!r}: op {n}", at=at, n=result.op_n)

        self.writes.write(False, b"", b"", rmw=Split(at), hold=False).addBoth(done)

    def sweep(self, keys: Sequence[bytes]) -> Deferred[WriteResult]:
        """At the head: delete, as one op, keys the chain gave away (kvtwist.cluster.sweep
        decides which may go); fires once committed."""
        return self.writes.write(False, b"", b"", rmw=Sweep(tuple(keys)), hold=False)

    # links

    def new_link(self, conn: FramedProtocol, side: Side, peer: str) -> Link:
        link = Link(conn, side, self.reactor, peer=peer)
        link.on_dead = self.link_lost
        if self.on_link_rtt is not None:
            observe = self.on_link_rtt
            link.on_rtt = lambda link, rtt: observe(link.side.value, rtt)
        return link

    def connect(self, host: str, port: int, protocol: FramedProtocol) -> Deferred[Any]:
        """Open a link to a peer: over TCP (TLS if the port speaks it), or through ``dial``."""
        if self._dial is not None:
            return self._dial(host, port, protocol)
        return connect_quietly(
            endpoint(self.reactor, host, port, timeout=5, tls=self.link_tls), protocol
        )

    @property
    def coordinator(self) -> Coordinator:
        """``zk``, on the paths only a chain member takes (joining, views, the record)."""
        if self.zk is None:
            raise RuntimeError("a standalone node has no coordinator")
        return self.zk

    def session_timeout(self) -> float:
        return 10.0 if self.zk is None else self.zk.effective_session_timeout

    def tie_lease(self, name: str | None) -> None:
        """From now on our lease holds only while the znode ``name`` exists (kvtwist.zk)."""
        if self.zk is not None:
            self.zk.lease_member(name)

    # roles

    @property
    def standalone(self) -> bool:
        return self.zk is None

    @property
    def fenced(self) -> bool:
        return not self.life.serving

    @property
    def stopping(self) -> bool:
        return self.life.is_(State.STOPPED)

    @property
    def status(self) -> str:
        return self.life.state.value

    def neighbours(self) -> tuple[Any, Any]:
        """Our predecessor and successor in the view we hold (None where there is none)."""
        if self.view is None or self.name is None:
            return None, None
        return self.view.predecessor(self.name), self.view.successor(self.name)

    @property
    def is_head(self) -> bool:
        if self.standalone:
            return True
        return self.life.serving and self.name is not None and self.neighbours()[0] is None

    @property
    def is_tail(self) -> bool:
        if self.standalone:
            return True
        return self.life.serving and self.name is not None and self.neighbours()[1] is None

    @property
    def role(self) -> str:
        if self.standalone:
            return "standalone"
        if self.fenced or self.name is None:
            return self.status
        head, tail = self.is_head, self.is_tail
        if head and tail:
            return "head+tail"
        return "head" if head else "tail" if tail else "middle"

    @property
    def serving_reads(self) -> bool:
        """True when this node may answer reads: the tail, sure of its place."""
        # An old tail that has handed a joiner the state keeps serving reads from
        # what the joiner acknowledged until its view shows the joiner as tail;
        # the joiner serves none before the old tail's handoff, so the two never
        # answer reads at the same time.
        return (
            self.is_tail
            and not self.awaiting_handoff
            and self.state.committed_seq >= self.tail_catch_up
            and (self.zk is None or self.zk.lease_valid())
            and not self.tail_held()
        )

    def head_address(self) -> tuple[str, int] | None:
        head = self.view.head() if self.view is not None else None
        return head.address if head is not None else None

    def tail_address(self) -> tuple[str, int] | None:
        tail = self.view.tail() if self.view is not None else None
        return tail.address if tail is not None else None

    def elsewhere(self, role: str, target: tuple[str, int] | None) -> Exception:
        """Where a request that is not ours goes; never back to this very node.

        Just after a restart ZooKeeper may still list this node's previous
        incarnation, at this same address, as head or tail: forwarding there
        would send the request to ourselves, behind itself.
        """
        if target is not None and target == self.own_address:
            return Unavailable(f"the {role} is a stale registration of this node; retry")
        return NotHere(role, target)

    # holds on the tail

    @property
    def tail_hold_until(self) -> float:
        """No commit as tail, and no read served, before this reactor time."""
        return self.holds.until

    def tail_held(self) -> bool:
        """Whether a member we removed may still serve: we may not commit or read as tail."""
        return self.holds.held(self.reactor.seconds())

    def hold_tail(self, seconds: float, why: str = "") -> None:
        """No commit or read as tail for ``seconds`` from now, on account of ``why``
        (:class:`kvtwist.chain.holds.TailHolds`); once the holds end, commits and
        reads go on."""
        now = self.reactor.seconds()
        until = self.holds.hold(now, seconds, why)
        call = self._tail_hold_call
        if call is not None and call.active():
            call.cancel()
        self._tail_hold_call = self.reactor.callLater(until - now, self._tail_hold_over)

    def _tail_hold_over(self) -> None:
        self._tail_hold_call = None
        if not self.tail_held():
            self.writes.advance()
            self.reads.wake()

    # becoming a member

    def check_member(self) -> None:
        if self.fenced:
            raise Unavailable(f"node is not serving ({self.life.describe()})")

    @property
    def becoming_member(self) -> bool:
        return self.life.is_(*BECOMING)

    def wait_member(self) -> Deferred[None]:
        """Fires once this node is a member, or has left the way in (then the caller
        looks again and refuses); fails after MEMBER_WAIT."""
        d: Deferred[None] = Deferred()
        self._member_waiters.append(d)
        why = self.life.describe()
        timeout = self.reactor.callLater(
            MEMBER_WAIT,
            lambda: None if d.called else d.errback(Unavailable(f"node is not serving ({why})")),
        )

        def done(r: Any) -> Any:
            if timeout.active():
                timeout.cancel()
            return r

        return d.addBoth(done)

    def wake_members(self) -> None:
        """The node became a member, or left the way in: held requests look again."""
        waiters, self._member_waiters = self._member_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    # leaving

    def fence(self, why: str, voluntary: bool = True) -> None:
        """Stop acting as a member at once; in-flight client writes fail as retryable.

        The node keeps its data and joins again, catching up from the tail.  A
        node that fences itself (not through a lost session) deletes its znode
        first, so that no one takes it for a member any more.
        """
        if self.life.is_(State.FENCED, State.STOPPED, State.STANDALONE):
            return
        if voluntary:
            self.members.leave()
        self.name = None
        self.tie_lease(None)
        self.tail_catch_up = 0  # op numbers of the copy we had; the rejoin may rewind it
        self.life.to(State.FENCED, why)
        self.members.reset_links()
        self.writes.drop_uncommitted(Unavailable("node left the chain; retry"))
        self.writes.release_claim_waiters(Unavailable("node left the chain; retry"))
        self.reads.wake()
        self.wake_members()
        self.members.schedule_rejoin()

    def zk_state(self, state: str) -> None:
        """Session events from ZooKeeper, on the reactor thread."""
        if state == "lost":
            self.fence("ZooKeeper session lost", voluntary=False)
        elif state == "connected" and self.life.is_(State.FENCED):
            self.members.schedule_rejoin()

    def stop(self) -> None:
        """Stop deciding: no commit, answer or record write comes from here any more.

        Writes still waiting for commitment fail as retryable (their outcome
        is the chain's to decide); timers that fire later find a stopped node.
        """
        if self.life.is_(State.STOPPED):
            return
        self.life.to(State.STOPPED, "stopping")
        call = self._tail_hold_call
        if call is not None and call.active():
            call.cancel()
        self.writes.drop_uncommitted(Unavailable("node is stopping; retry"))
        self.writes.release_claim_waiters(Unavailable("node is stopping; retry"))
        self.reads.wake()
        self.wake_members()
        self.joining.stop_waiting()
        for link in (self.pred, self.succ):
            if link is not None:
                link.close()
