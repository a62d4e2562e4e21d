"""A chain member's driver: the write and read paths, around the pure state.

A standalone node is a chain of one: head and tail at once, with no
membership service.  The same code path serves both, so the standalone node
exercises the write path a chain uses.

The decisions of the write path (numbering, the Sent list, what goes down
the chain, what commits) are :class:`kvtwist.chain.state.ChainState`'s, a
pure object; this class carries them out: it hands writes to the store's
writer thread, queues updates and acknowledgements on the links, and
answers the Deferreds of waiting clients.  Membership (views, links, the
chain record) is in :mod:`kvtwist.chain.membership` and joining in
:mod:`kvtwist.chain.joining`.  A node's life is the state machine of
:mod:`kvtwist.chain.lifecycle`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.chain.group import Group
from kvtwist.chain.holds import Intake, TailHolds
from kvtwist.chain.lifecycle import Lifecycle, State
from kvtwist.chain.link import Link, LinkConfig, Side
from kvtwist.chain.outcomes import NotHere, Unavailable, WriteResult
from kvtwist.chain.record import ChainRecord
from kvtwist.chain.rmw import Rmw
from kvtwist.chain.state import ChainState, WriteRequest
from kvtwist.client.protocol import connect_quietly, endpoint
from kvtwist.coordinator import Coordinator
from kvtwist.logs import LogLimiter
from kvtwist.membership import parse_address
from kvtwist.proto.kvtwist_pb2 import SnapshotChunk, Update
from kvtwist.store import Applied, Store
from kvtwist.tree import BTree
from kvtwist.wire import FramedProtocol, Message

log = Logger(namespace="kvtwist.chain")

#: Bytes of uncommitted writes (the Sent list) beyond which client intake pauses.
MAX_SENT_BYTES = 256 * 1024 * 1024


#: How long a request may wait at a node that is becoming a member (joining,
#: registering) before it is refused: the original client, which follows the
#: chain's znodes, reaches a new tail within milliseconds of its registration
#: and gives up on any error.
MEMBER_WAIT = 5.0
#: States of a node on its way into the chain: requests wait for it.
BECOMING = (State.STARTING, State.JOINING, State.REGISTERING)

#: Opens a link: ``(host, port, protocol)``, firing once ``protocol`` is connected.
Dial = Callable[[str, int, FramedProtocol], Deferred[Any]]

__all__ = ["MAX_SENT_BYTES", "MEMBER_WAIT", "ReplicaCore", "WriteRequest"]


def _fire(d: Deferred[WriteResult], outcome: WriteResult | Exception) -> None:
    if isinstance(outcome, Exception):
        d.errback(outcome)
    else:
        d.callback(outcome)


def _exception(f: Failure) -> Exception:
    return f.value  # type: ignore[return-value]


class ReplicaCore:
    """One node's write and read paths; membership and joining build on it."""

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
    ) -> None:
        """``dial`` opens links instead of TCP (in-memory wiring in unit tests);
        ``link_tls`` (a kvtwist.tls.ClientTLS) when the peers' port speaks TLS;
        ``on_congestion`` pauses and resumes client intake; ``on_commit_latency``
        is told, at the head, each batch's seconds from numbering to commitment;
        ``on_link_rtt`` each round trip of a link's probe, with the link's side."""
        self.reactor = reactor
        self.store = store
        self.address = address
        self.zk: Coordinator | None = zk  # None: standalone
        self.link_config = link_config or LinkConfig()
        self.link_timeout = self.link_config.timeout
        self._dial = dial
        self.own_address = parse_address(address.encode()) if address else None
        self.link_tls = link_tls
        self.life = Lifecycle(standalone=zk is None)
        self.view: Any = None  # kvtwist.membership.Membership, None when standalone
        self.name: str | None = None  # our znode name, once registered
        self.record = ChainRecord()  # the last chain record we read or wrote
        self.head_epoch: int | None = 0 if zk is None else None  # claimed as head

        #: op numbers, the Sent list and commitment: the decisions of the write path
        self.state = ChainState(keep_recent=zk is not None)
        #: who waits for each uncommitted op: called with its outcome or the failure
        self._waiting: dict[int, list[Callable[[WriteResult | Exception], None]]] = {}
        #: the batches numbered here on their way to commitment, by last op
        self.on_commit_latency = on_commit_latency
        self._numbered_at: deque[tuple[int, float]] = deque()
        self.on_link_rtt = on_link_rtt

        self.succ: Link | None = None
        self.pred: Link | None = None
        self._ready_waiters: list[Deferred[None]] = []
        self._member_waiters: list[Deferred[None]] = []
        #: holds on commits and reads as tail, by what they wait for (a member
        #: we removed, a restart): each ends at a reactor time on the node's
        #: steady clock (kvtwist.clock), and the latest end rules
        self.holds = TailHolds()
        #: no read served as tail before committed_seq reaches this (kvtwist.chain.membership)
        self.tail_catch_up = 0
        self._tail_hold_call: Any = None
        self._peer_lease = 0.0  # the longest lease a neighbour told us it holds
        self._claim_waiters: list[Deferred[None]] = []
        # flow control: a slow successor slows the intake of client writes
        self.intake = Intake(MAX_SENT_BYTES)
        self.on_congestion: Callable[[bool], None] = on_congestion or (lambda congested: None)
        # membership (kvtwist.chain.membership)
        self._awaiting_handoff = False
        self._early_hello: tuple[Link, Message] | None = None
        self._joiner_limbo: str | None = None
        self._succ_down_since: float | None = None
        self._unreachable_log = LogLimiter(5.0, lambda: float(self.reactor.seconds()))
        # members we asked whether they speak kvtwist (kvtwist.chain.foreign), by znode name
        self._congestion_log = LogLimiter(5.0, lambda: float(self.reactor.seconds()))
        # joining (kvtwist.chain.joining, .serving)
        self._rejoin_delay = 0.5

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

    @property
    def pending(self) -> dict[int, Update]:
        """The Sent list."""
        return self.state.pending

    def _new_link(self, conn: FramedProtocol, side: Side, peer: str) -> Link:
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

    # roles

    @property
    def standalone(self) -> bool:
        return self.zk is None

    @property
    def fenced(self) -> bool:
        return not self.life.serving

    @property
    def status(self) -> str:
        return self.life.state.value

    def _neighbours(self) -> tuple[Any, Any]:
        if self.view is None or self.name is None:
            return None, None
        return self.view.predecessor(self.name), self.view.successor(self.name)

    @property
    def is_head(self) -> bool:
        if self.standalone:
            return True
        return self.life.serving and self.name is not None and self._neighbours()[0] is None

    @property
    def is_tail(self) -> bool:
        if self.standalone:
            return True
        return self.life.serving and self.name is not None and self._neighbours()[1] is None

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

    def _lease_ok(self) -> bool:
        return self.zk is None or self.zk.lease_valid()

    @property
    def serving_reads(self) -> bool:
        """True when this node may answer reads: the tail, sure of its place."""
        # An old tail that has handed a joiner the state keeps serving reads from
        # what the joiner acknowledged until its view shows the joiner as tail;
        # the joiner serves none before the old tail's handoff, so the two never
        # answer reads at the same time.
        return (
            self.is_tail
            and not self._awaiting_handoff
            and self.state.committed_seq >= self.tail_catch_up
            and self._lease_ok()
            and not self.tail_held()
        )

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
            self._advance()
            self._wake_readers()

    def head_address(self) -> tuple[str, int] | None:
        head = self.view.head() if self.view is not None else None
        return head.address if head is not None else None

    def tail_address(self) -> tuple[str, int] | None:
        tail = self.view.tail() if self.view is not None else None
        return tail.address if tail is not None else None

    def _elsewhere(self, role: str, target: tuple[str, int] | None) -> Exception:
        """Where a request that is not ours goes; never back to this very node.

        Just after a restart ZooKeeper may still list this node's previous
        incarnation, at this same address, as head or tail: forwarding there
        would send the request to ourselves, behind itself.
        """
        if target is not None and target == self.own_address:
            return Unavailable(f"the {role} is a stale registration of this node; retry")
        return NotHere(role, target)

    def _tie_lease(self, name: str | None) -> None:
        """From now on our lease holds only while the znode ``name`` exists (kvtwist.zk)."""
        if self.zk is not None:
            self.zk.lease_member(name)

    def _check_member(self) -> None:
        if self.fenced:
            raise Unavailable(f"node is not serving ({self.life.describe()})")

    @property
    def becoming_member(self) -> bool:
        return self.life.is_(*BECOMING)

    def _wait_member(self) -> Deferred[None]:
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

    def _wake_members(self) -> None:
        """The node became a member, or left the way in: held requests look again."""
        waiters, self._member_waiters = self._member_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    # client writes

    def write(
        self,
        is_put: bool,
        key: bytes,
        data: bytes = b"",
        client_id: str = "",
        request_id: int = 0,
        ack_below: int = 0,
        resend: bool = False,
        rmw: Rmw | Group | None = None,
        hold: bool = True,
    ) -> Deferred[WriteResult]:
        """Order, apply and commit one client write; fires once committed.

        ``rmw``: a read-modify-write, decided at the head when it is numbered.
        At a node still becoming a member the write waits for it (``hold``).
        """
        request = (is_put, key, data, client_id, request_id, ack_below, resend, rmw)
        if hold and self.becoming_member:
            return self._wait_member().addCallback(lambda _: self.write(*request, hold=False))
        try:
            self._check_member()
            if not self.is_head:
                raise self._elsewhere("head", self.head_address())
        except Exception as e:
            return defer.fail(e)
        if self.head_epoch is None:
            # a new head records its epoch before it numbers anything
            d: Deferred[None] = Deferred()
            self._claim_waiters.append(d)
            return d.addCallback(lambda _: self.write(*request))
        numbered = self.state.number([request], self.head_epoch)
        self._note_numbered(numbered.updates)
        outcome = numbered.outcomes[0]
        if isinstance(outcome, int):
            done = self._wait_commit(outcome)
        else:
            done = defer.fail(outcome) if isinstance(outcome, Exception) else defer.succeed(outcome)
        self._accept(numbered.updates)
        return done

    def write_many(self, writes: list[WriteRequest]) -> Deferred[list[WriteResult | Exception]]:
        """``write`` for requests that arrived together: one outcome each, one Deferred.

        The head numbers and logs them as one batch; anything out of the
        ordinary (not the head, no epoch yet) takes the one-by-one path.
        """
        if not writes:
            return defer.succeed([])
        if self.fenced or not self.is_head or self.head_epoch is None:
            return defer.gatherResults([self.write(*w).addErrback(_exception) for w in writes])
        outcomes: list[WriteResult | Exception | None] = [None] * len(writes)
        done: Deferred[list[WriteResult | Exception]] = Deferred()
        left = [len(writes)]

        def fill(i: int, outcome: WriteResult | Exception) -> None:
            outcomes[i] = outcome
            left[0] -= 1
            if not left[0]:
                done.callback(outcomes)  # type: ignore[arg-type]

        numbered = self.state.number(writes, self.head_epoch)
        self._note_numbered(numbered.updates)
        waiting = self._waiting
        for i, outcome in enumerate(numbered.outcomes):
            if isinstance(outcome, int):
                waiting.setdefault(outcome, []).append(partial(fill, i))
            else:
                fill(i, outcome)
        self._accept(numbered.updates)
        return done

    def _note_numbered(self, updates: list[Update]) -> None:
        if self.on_commit_latency is not None and updates:
            self._numbered_at.append((updates[-1].seq, time.perf_counter()))

    def _wait_commit(self, seq: int) -> Deferred[WriteResult]:
        """Fires when ``seq`` (not yet committed) commits."""
        d: Deferred[WriteResult] = Deferred()
        self._waiting.setdefault(seq, []).append(partial(_fire, d))
        return d

    def _release_claim_waiters(self, failure: Exception | None = None) -> None:
        waiters, self._claim_waiters = self._claim_waiters, []
        for d in waiters:
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)

    # the write path shared by head, middle and tail

    def _accept(self, updates: list[Update]) -> None:
        """Take the next updates in order: note them, then hand them to the store together."""
        writes = self.state.accept(updates)
        if not writes:
            return
        gen = self.life.generation
        self.store.apply_many(writes).addCallbacks(
            self._applied, self._apply_failed, callbackArgs=(gen,), errbackArgs=(gen,)
        )
        if self.unsent_bytes > self.intake.limit:
            self._update_congestion()

    def _applied(self, outcomes: list[Applied | Exception], gen: int) -> None:
        if gen != self.life.generation:
            return
        batch = self.state.applied(outcomes)
        for u in batch.forward:
            if gen != self.life.generation:
                return
            if self.succ is not None and self.succ.ready:
                self.succ.queue_update(u)
            self._backlog_applied(u)
        if gen != self.life.generation:
            return
        self._advance()
        if batch.error is not None:
            # what was applied before it stands (and may commit); the rest fails
            self._apply_failed(Failure(batch.error), gen)
            return
        self._join_applied()

    def _apply_failed(self, f: Failure, gen: int) -> None:
        if gen != self.life.generation:
            return
        why = f.getErrorMessage() or repr(f.value)
        log.error("writing to disk failed: {why}", why=why)
        if self.standalone:
            # nothing after the failed write was applied: take those op numbers back
            self._drop_uncommitted(Unavailable(f"write not stored: {why}; retry"))
            self.life.generation += 1
            self.state.take_back()
        else:
            self.fence(f"store failure: {why}")

    def _waits_for_successor(self) -> bool:
        if self.succ is not None and self.succ.ready:
            return True
        if self._joiner_limbo is not None:
            return True
        return self._neighbours()[1] is not None

    def _advance(self) -> None:
        """Commit as far as the successor's acknowledgements (or, at the tail, our own) allow."""
        if self._stopping:
            return
        state = self.state
        target = state.commit_target(self._waits_for_successor())
        if target <= state.committed_seq:
            return
        if not self._record_allows_commit():
            return
        done = state.commit(target)
        if done is None:  # applied but its snapshot was dropped: only on a reset
            return
        waiting = self._waiting
        for result in done:
            for wake in waiting.pop(result.op_n, ()):
                wake(result)
        if self._numbered_at:
            self._committed_numbered(target)
        if self.pred is not None and self.pred.ready:
            self.pred.queue_ack(target)
        if self.intake.paused:
            self._update_congestion()

    def _committed_numbered(self, target: int) -> None:
        observe, batches = self.on_commit_latency, self._numbered_at
        now = time.perf_counter()
        while batches and batches[0][0] <= target:
            _, at = batches.popleft()
            if observe is not None:
                observe(now - at)

    def link_congested(self, link: Link, full: bool) -> None:
        """A link's send buffer filled up or drained."""
        if link is self.succ:
            self.intake.link_full = full
            self._update_congestion()

    @property
    def backlog_bytes(self) -> int:
        """A joiner's backlog held here: the joining layer's (kvtwist.chain.serving)."""
        return 0

    @property
    def unsent_bytes(self) -> int:
        """Writes held in memory for a neighbour: the Sent list and a joiner's backlog."""
        return self.state.pending_bytes + self.backlog_bytes

    @property
    def congested(self) -> bool:
        """Client intake is paused: the successor falls behind."""
        return self.intake.paused

    def _update_congestion(self) -> None:
        want = self.intake.decide(self.unsent_bytes)
        if want is not None:
            left_out = self._congestion_log.allow()
            if left_out is not None:  # a link that fills and drains by turns says so rarely
                log.info(
                    "chain {state}{more}",
                    state="congested: pausing client intake"
                    if want
                    else "drained: resuming client intake",
                    more=f" ({left_out} changes since the last line)" if left_out else "",
                )
            self.on_congestion(want)

    def _drop_uncommitted(self, why: Exception) -> None:
        """Fail every write waiting for commitment and forget the Sent list."""
        waiting, self._waiting = self._waiting, {}
        self._numbered_at.clear()  # their ops may commit under a later head, or never
        for wakes in waiting.values():
            for wake in wakes:
                wake(why)
        self.state.drop_uncommitted()
        self._numbered_at.clear()  # those batches never commit: no latency to tell
        if self.intake.paused:
            self._update_congestion()

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
            self._leave()
        self.name = None
        self._tie_lease(None)
        self.tail_catch_up = 0  # op numbers of the copy we had; the rejoin may rewind it
        self.life.to(State.FENCED, why)
        self._reset_links()
        self._drop_uncommitted(Unavailable("node left the chain; retry"))
        self._release_claim_waiters(Unavailable("node left the chain; retry"))
        self._wake_readers()
        self._wake_members()
        self._schedule_rejoin()

    def zk_state(self, state: str) -> None:
        """Session events from ZooKeeper, on the reactor thread."""
        if state == "lost":
            self.fence("ZooKeeper session lost", voluntary=False)
        elif state == "connected" and self.life.is_(State.FENCED):
            self._schedule_rejoin()

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
        self._drop_uncommitted(Unavailable("node is stopping; retry"))
        self._release_claim_waiters(Unavailable("node is stopping; retry"))
        self._wake_readers()
        self._wake_members()
        self._stop_waiting()
        for link in (self.pred, self.succ):
            if link is not None:
                link.close()

    @property
    def _stopping(self) -> bool:
        return self.life.is_(State.STOPPED)

    def storage_description(self) -> str:
        return str(getattr(self.store, "description", "in-memory"))

    # implemented by the membership and joining layers

    def set_view(self, view: Any) -> None:
        raise NotImplementedError

    def link_lost(self, link: Link) -> None:
        raise NotImplementedError

    def chain_message(self, link: Link, msg: Message) -> None:
        raise NotImplementedError

    def _wake_readers(self) -> None:
        raise NotImplementedError

    def _replay_hello(self, link: Link, msg: Message) -> None:
        raise NotImplementedError

    def _record_allows_commit(self) -> bool:
        raise NotImplementedError

    def _reset_links(self) -> None:
        raise NotImplementedError

    def _leave(self) -> None:
        raise NotImplementedError

    def _schedule_rejoin(self) -> None:
        raise NotImplementedError

    def _backlog_applied(self, u: Update) -> None:
        raise NotImplementedError

    def _join_applied(self) -> None:
        raise NotImplementedError

    def _stop_waiting(self) -> None:
        raise NotImplementedError

    def _serve_join(self, conn: FramedProtocol, msg: Message) -> None:
        raise NotImplementedError

    def _snapshot_chunk(self, link: Link, chunk: SnapshotChunk) -> None:
        raise NotImplementedError

    def _join_caught_up_to(self, link: Link, hello: Any) -> None:
        raise NotImplementedError

    def _joiner_lost(self, link: Link) -> None:
        raise NotImplementedError

    def _join_failed(self, why: str) -> None:
        raise NotImplementedError

    def _reset_join(self) -> None:
        raise NotImplementedError

    def join(self) -> Deferred[None]:
        raise NotImplementedError
