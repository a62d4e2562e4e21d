"""A chain member's state machine (van Renesse & Schneider, OSDI 2004).

A standalone node is a chain of one: head and tail at once, with no
membership service.  The same code path serves both, so the standalone node
exercises the write path a chain uses.

Vocabulary:

- *received* (``last_received``): the highest op number this node has taken
  into its order; the head assigns it, the others get it from the predecessor.
- *applied* (``applied_seq``): the writer thread has put it in the tree.
- *committed* (``committed_seq``): the tail has it.  The tail commits what it
  applies; the others commit what their successor acknowledges.  Reads are
  served at the tail from the committed snapshot, and a client's write is
  answered by the head once committed.
- the Sent list (``pending``): received but not committed; resent to a new
  successor after a failure.

The replica talks to the outside only through :class:`Link` objects (one per
neighbour connection) and :class:`Membership` views delivered by ZooKeeper,
so unit tests drive it with in-memory transports.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist import wire
from kvtwist.chain.link import ChainConnection, Link, Side
from kvtwist.chain.transfer import SnapshotReceiver, SnapshotSender
from kvtwist.proto.kvtwist_pb2 import ChainHello, SnapshotChunk, Update
from kvtwist.store import Applied, Store, Write
from kvtwist.tree import AVLTree
from kvtwist.wire import FramedProtocol, Message

log = Logger(namespace="kvtwist.chain")

#: Retried writes remembered for duplicate suppression, across all clients.
DEDUP_ENTRIES = 100_000
#: How long a read may wait for this node to become a serving tail.
READ_WAIT = 5.0
RECONNECT_DELAY = 0.1
#: Writes not yet committed beyond which client intake pauses.
MAX_SENT = 20_000


class Unavailable(Exception):
    """This node cannot serve the request now; a retry (maybe elsewhere) may succeed."""


class NotHere(Exception):
    """The request belongs to another member: ``target`` is its address, if known."""

    def __init__(self, role: str, target: tuple[str, int] | None) -> None:
        where = f"{target[0]}:{target[1]}" if target else "unknown"
        super().__init__(f"this node is not the {role}; the {role} is at {where}")
        self.role = role
        self.target = target


@dataclass(frozen=True)
class WriteResult:
    op_n: int
    found: bool


@dataclass(frozen=True)
class ReadView:
    """What a read sees: the committed tree and the op number it includes."""

    tree: AVLTree
    seq: int


class _DedupEntry:
    __slots__ = ("found", "seq")

    def __init__(self, seq: int, found: bool | None) -> None:
        self.seq = seq
        self.found = found


class Replica:
    """Ordering, forwarding and commitment of writes on one node."""

    def __init__(
        self,
        reactor: Any,
        store: Store,
        address: str = "",
        zk: Any = None,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.address = address
        self.zk = zk
        self.view: Any = None  # kvtwist.zk.Membership, None when standalone
        self.name: str | None = None  # our znode name, once registered

        self.last_received = 0
        self.applied_seq = 0
        self.committed_seq = 0
        self.committed_tree = AVLTree()
        self.next_seq = 1
        self.acked = 0  # highest op our successor acknowledged

        self.pending: dict[int, Update] = {}  # the Sent list, by op number
        self._trees: dict[int, AVLTree] = {}  # state after each uncommitted op
        self._found: dict[int, bool] = {}
        self._waiting: dict[int, list[Deferred[WriteResult]]] = {}
        self.dedup: OrderedDict[tuple[str, int], _DedupEntry] = OrderedDict()

        self.succ: Link | None = None
        self.pred: Link | None = None
        self._join_backlog: list[Update] | None = None
        self._awaiting_handoff = False
        self._ready_waiters: list[Deferred[None]] = []
        self.fenced = zk is not None  # a chain node serves nothing until it has joined
        self.status = "standalone" if zk is None else "starting"
        self._stopping = False
        self._epoch = 0  # bumped on every fence, so stale callbacks can tell
        # flow control: a slow successor slows the intake of client writes
        self.congested = False
        self._link_full = False
        self.on_congestion: Callable[[bool], None] = lambda congested: None
        # joining
        self._release_lock: Callable[[], Deferred[None]] | None = None
        self._received = SnapshotReceiver()
        self._loaded: Deferred[AVLTree] | None = None
        self._loaded_seq = -1
        self._catch_up_to = -1
        self._early_hello: tuple[Link, Message] | None = None
        self._joiner_limbo: str | None = None

    def connect(self, host: str, port: int, protocol: FramedProtocol) -> Deferred[Any]:
        """Open a link to a peer; replaced by in-memory wiring in unit tests."""
        ep = TCP4ClientEndpoint(self.reactor, host, port, timeout=5)
        return connectProtocol(ep, protocol)

    # roles

    @property
    def standalone(self) -> bool:
        return self.zk is None

    def _neighbours(self) -> tuple[Any, Any]:
        if self.view is None or self.name is None:
            return None, None
        return self.view.predecessor(self.name), self.view.successor(self.name)

    @property
    def is_head(self) -> bool:
        if self.standalone:
            return True
        return not self.fenced and self.name is not None and self._neighbours()[0] is None

    @property
    def is_tail(self) -> bool:
        if self.standalone:
            return True
        return not self.fenced and self.name is not None and self._neighbours()[1] is None

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
        return self.is_tail and not self._awaiting_handoff and self._lease_ok()

    def head_address(self) -> tuple[str, int] | None:
        head = self.view.head() if self.view is not None else None
        return head.address if head is not None else None

    def tail_address(self) -> tuple[str, int] | None:
        tail = self.view.tail() if self.view is not None else None
        return tail.address if tail is not None else None

    def _check_member(self) -> None:
        if self.fenced:
            raise Unavailable(f"node is not serving ({self.status})")

    # client writes

    def write(
        self, is_put: bool, key: str, data: bytes = b"", client_id: str = "", request_id: int = 0
    ) -> Deferred[WriteResult]:
        """Order, apply and commit one client write; fires once committed."""
        try:
            self._check_member()
            if not self.is_head:
                raise NotHere("head", self.head_address())
        except Exception as e:
            return defer.fail(e)
        if client_id:
            entry = self.dedup.get((client_id, request_id))
            if entry is not None:  # a retry: answer with the first attempt's outcome
                if entry.seq <= self.committed_seq:
                    found = entry.found if entry.found is not None else True
                    return defer.succeed(WriteResult(entry.seq, found))
                return self._wait_commit(entry.seq)
        seq = self.next_seq
        self.next_seq += 1
        u = Update(
            seq=seq, is_put=is_put, key=key, data=data, client_id=client_id, request_id=request_id
        )
        d = self._wait_commit(seq)
        self._accept(u)
        return d

    def _wait_commit(self, seq: int) -> Deferred[WriteResult]:
        """Fires when ``seq`` (not yet committed) commits."""
        d: Deferred[WriteResult] = Deferred()
        self._waiting.setdefault(seq, []).append(d)
        return d

    # the write path shared by head, middle and tail

    def _accept(self, u: Update) -> None:
        self.last_received = u.seq
        self.pending[u.seq] = u
        if u.client_id:
            self._remember(u.client_id, u.request_id, u.seq, None)
        epoch = self._epoch
        w = Write(u.seq, u.is_put, u.key, u.data)
        self.store.apply(w).addCallbacks(
            lambda a: self._applied(a, epoch), lambda f: self._apply_failed(f, epoch)
        )
        if self.succ is not None and self.succ.ready:
            self.succ.queue_update(u)
        if self._join_backlog is not None:
            self._join_backlog.append(u)
        if len(self.pending) > MAX_SENT:
            self._update_congestion()

    def _remember(self, client_id: str, request_id: int, seq: int, found: bool | None) -> None:
        key = (client_id, request_id)
        self.dedup[key] = _DedupEntry(seq, found)
        self.dedup.move_to_end(key)
        while len(self.dedup) > DEDUP_ENTRIES:
            self.dedup.popitem(last=False)

    def _applied(self, a: Applied, epoch: int) -> None:
        if epoch != self._epoch:
            return
        self.applied_seq = a.seq
        u = self.pending.get(a.seq)
        if u is not None:
            self._trees[a.seq] = a.tree
            self._found[a.seq] = a.found
            if u.client_id:
                entry = self.dedup.get((u.client_id, u.request_id))
                if entry is not None and entry.seq == a.seq:
                    entry.found = a.found
        self._advance()
        if self.status == "joining":
            self._join_check()

    def _apply_failed(self, f: Failure, epoch: int) -> None:
        if epoch != self._epoch:
            return
        log.failure("applying a write failed; leaving the chain", f)
        self.fence("store failure")

    def _waits_for_successor(self) -> bool:
        if self.succ is not None and self.succ.ready:
            return True
        if self._joiner_limbo is not None:
            return True
        return self._neighbours()[1] is not None

    def _advance(self) -> None:
        """Commit as far as the successor's acknowledgements (or, at the tail, our own) allow."""
        target = self.applied_seq
        if self._waits_for_successor():
            target = min(target, self.acked)
        if target <= self.committed_seq:
            return
        old = self.committed_seq
        tree = self._trees.get(target)
        if tree is None:  # applied but its snapshot was dropped: only on a reset
            return
        self.committed_seq = target
        self.committed_tree = tree
        for seq in range(old + 1, target + 1):
            self.pending.pop(seq, None)
            self._trees.pop(seq, None)
            found = self._found.pop(seq, True)
            for d in self._waiting.pop(seq, ()):
                d.callback(WriteResult(seq, found))
        if self.pred is not None and self.pred.ready:
            self.pred.queue_ack(target)
        if self.congested:
            self._update_congestion()

    def link_congested(self, link: Link, full: bool) -> None:
        """A link's send buffer filled up or drained."""
        if link is self.succ:
            self._link_full = full
            self._update_congestion()

    def _update_congestion(self) -> None:
        if self.congested:
            want = self._link_full or len(self.pending) > MAX_SENT // 2
        else:
            want = self._link_full or len(self.pending) > MAX_SENT
        if want != self.congested:
            self.congested = want
            log.info(
                "chain {state}",
                state="congested: pausing client intake"
                if want
                else "drained: resuming client intake",
            )
            self.on_congestion(want)

    # reads

    def serving_view(self) -> ReadView | None:
        """The committed state if this node serves reads now; None if it should wait.

        Raises NotHere or Unavailable when the read belongs elsewhere.
        """
        self._check_member()
        if not self.is_tail:
            raise NotHere("tail", self.tail_address())
        if self.serving_reads:
            return ReadView(self.committed_tree, self.committed_seq)
        return None

    def read_view(self, allow_wait: bool = True) -> Deferred[ReadView]:
        """The committed state, when this node is the serving tail."""
        try:
            self._check_member()
            if not self.is_tail:
                raise NotHere("tail", self.tail_address())
        except Exception as e:
            return defer.fail(e)
        if self.serving_reads:
            return defer.succeed(ReadView(self.committed_tree, self.committed_seq))
        if not allow_wait:
            return defer.fail(Unavailable("tail is not ready to serve reads"))
        return self._wait_ready().addCallback(lambda _: self.read_view(allow_wait=False))

    def _wait_ready(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        timeout = self.reactor.callLater(
            READ_WAIT,
            lambda: (
                None if d.called else d.errback(Unavailable("timed out waiting to serve reads"))
            ),
        )

        def done(r: Any) -> Any:
            if timeout.active():
                timeout.cancel()
            return r

        poll = self.reactor.callLater(0.05, self._poll_ready)
        d.addBoth(done)
        d.addBoth(lambda r: (poll.cancel() if poll.active() else None, r)[1])
        return d

    def _poll_ready(self) -> None:
        """Readiness also depends on the lease, which changes with time: look again."""
        if self.serving_reads or self.fenced or not self.is_tail:
            self._wake_readers()
        elif self._ready_waiters:
            self.reactor.callLater(0.05, self._poll_ready)

    def _wake_readers(self) -> None:
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    # membership

    def set_view(self, view: Any) -> None:
        """A new chain configuration from ZooKeeper."""
        if self.view is not None and view.config < self.view.config:
            return
        self.view = view
        if self.name is None:
            return
        if self.status == "registering" and view.index(self.name) is not None:
            self._become_member()
        if self.fenced:
            return
        if view.index(self.name) is None:
            self._confirm_gone()
            return
        pred, succ = self._neighbours()
        log.info(
            "config {config}: {members}; we are {name} ({role})",
            config=view.config,
            members=" -> ".join(m.name for m in view.members),
            name=self.name,
            role=self.role,
        )
        # predecessor side
        if pred is None:
            if self.pred is not None:
                self.pred.close()
                self.pred = None
            self._awaiting_handoff = False
            self.next_seq = max(self.next_seq, self.last_received + 1)
        elif self.pred is not None and self.pred.peer != pred.name:
            self.pred.close()
            self.pred = None
        # successor side
        if succ is not None and self._joiner_limbo == _fmt(succ.address):
            self._joiner_limbo = None  # the joiner did register: it is our successor now
        if succ is None:
            if self.succ is not None and not self.succ.joining:
                self.succ.close()
                self.succ = None
            self._advance()  # tail now: what we applied is committed
        elif self.succ is None or self.succ.peer != succ.name:
            adopt = (
                self.succ is not None
                and self.succ.peer == f"join:{_fmt(succ.address)}"
                and self.succ.ready
            )
            if adopt:
                assert self.succ is not None
                self.succ.peer = succ.name
                self.succ.joining = False
                self.succ.hello(self.name, view.config, self.address, self.committed_seq)
            else:
                if self.succ is not None:
                    self.succ.close()
                    self.succ = None
                self._connect_successor(succ)
        for link in (self.pred, self.succ):
            if link is not None:
                self._stamp(link)
        self._wake_readers()

    def _become_member(self) -> None:
        """Our znode is in a view we hold: from now on we act on our place in the chain."""
        self.fenced = False
        self.status = "member"
        self._awaiting_handoff = self.pred is not None
        self.next_seq = self.last_received + 1
        early, self._early_hello = self._early_hello, None
        if early is not None:
            self.reactor.callLater(0, self._replay_hello, *early)

    def _replay_hello(self, link: Link, msg: Message) -> None:
        if not link.closed:
            self._predecessor_hello(link, msg)

    def _confirm_gone(self) -> None:
        """A view without our znode: fence only once a fresh read agrees.

        A view read before our registration can arrive after it.
        """
        if self.zk is None:
            return
        name, epoch = self.name, self._epoch

        def check(view: Any) -> None:
            if epoch == self._epoch and self.name == name and view.index(name) is None:
                self.fence("our znode is gone from the chain", voluntary=False)
            elif epoch == self._epoch:
                self.set_view(view)

        self.zk.members().addCallbacks(check, lambda f: None)

    def _stamp(self, link: Link) -> None:
        """Who we are and in which configuration, for the updates this link carries."""
        link.local_name = self.name or ""
        link.config = self.view.config if self.view is not None else 0

    def _connect_successor(self, member: Any) -> None:
        if member.address is None:
            log.error("successor {name} has no usable address; waiting", name=member.name)
            return
        conn = ChainConnection(self)
        link = Link(conn, Side.SUCCESSOR, self.reactor, peer=member.name)
        self._stamp(link)
        self.succ = link
        epoch = self._epoch
        host, port = member.address

        def connected(_: Any) -> None:
            if link is self.succ and self.name is not None:
                assert self.view is not None
                link.hello(self.name, self.view.config, self.address, self.committed_seq)

        def failed(f: Failure) -> None:
            log.warn("cannot reach successor {peer}: {e}", peer=member.name, e=f.getErrorMessage())
            self._relink_later(link, epoch)

        self.connect(host, port, conn).addCallbacks(connected, failed)

    def _relink_later(self, link: Link, epoch: int) -> None:
        def again() -> None:
            if link is self.succ and epoch == self._epoch and not self.fenced:
                self.succ = None
                _, succ = self._neighbours()
                if succ is not None:
                    self._connect_successor(succ)

        self.reactor.callLater(RECONNECT_DELAY, again)

    def link_lost(self, link: Link) -> None:
        was_closed = link.closed
        link.closed = True
        if link is self.succ and self._link_full:
            self._link_full = False
            self._update_congestion()
        if link is self.pred:
            self.pred = None
            if self.status in ("joining", "registering"):
                self._join_failed("predecessor closed the link during the state transfer")
        elif link is self.succ:
            if link.joining or link.peer.startswith("join:"):
                self.succ = None
                self._join_backlog = None
                if link.ready:
                    # It had our backlog and may be registering: until its fate is known
                    # nothing commits here, or it could become tail without our writes.
                    address = link.peer.removeprefix("join:")
                    log.info("joiner {a} went away; waiting to learn if it joined", a=address)
                    self._joiner_limbo = address
                    wait = 1.5 * self._session_timeout()
                    self.reactor.callLater(wait, self._end_limbo, address, self._epoch)
                else:
                    log.info("joiner {peer} went away during the state transfer", peer=link.peer)
                    self._advance()
            elif not self._stopping and not self.fenced:
                if not was_closed:
                    log.info("link to successor {peer} lost; reconnecting", peer=link.peer)
                self._relink_later(link, self._epoch)

    def _session_timeout(self) -> float:
        return float(getattr(self.zk, "effective_session_timeout", 10.0))

    def _end_limbo(self, address: str, epoch: int) -> None:
        """By now a crashed joiner's session has expired: read who is in the chain."""
        if epoch != self._epoch or self._joiner_limbo != address or self.zk is None:
            return

        def decide(view: Any) -> None:
            if self._joiner_limbo != address or epoch != self._epoch:
                return
            self._joiner_limbo = None
            self.set_view(view)
            self._advance()

        self.zk.members().addCallbacks(decide, lambda f: self._end_limbo(address, epoch))

    # chain messages

    def chain_message(self, link: Link, msg: Message) -> None:
        op = msg.opcode
        if op == wire.OP_ERROR:
            log.warn("{link} refused: {why}", link=link, why=msg.error)
            link.close()
            if link.side is Side.SUCCESSOR and link is self.succ and not link.joining:
                self._relink_later(link, self._epoch)
            elif link is self.pred and not msg.retry and self.status == "member":
                self.fence(f"predecessor refused us: {msg.error}")
            return
        if link.side is Side.SUCCESSOR:
            if op == wire.OP_CHAIN_HELLO:
                self._successor_hello(link, msg.hello.last_op)
            elif op == wire.OP_CHAIN_ACK:
                if link is not self.succ or (
                    msg.hello.sender
                    and not link.peer.startswith("join:")
                    and msg.hello.sender != link.peer
                ):
                    link.refuse("acknowledgements accepted only from the current successor")
                    return
                self.acked = max(self.acked, msg.op_n)
                self._advance()
            else:
                link.refuse(f"unexpected {wire.op_name(op)} from a successor", retry=False)
            return
        if op == wire.OP_CHAIN_UPDATE:
            sender = msg.hello.sender
            pred = self._neighbours()[0]
            member = self.status == "member"
            if (
                link is not self.pred
                or sender != link.peer
                or (member and (pred is None or pred.name != sender))
            ):
                log.warn(
                    "updates from {sender} (config {config}) refused: not our predecessor",
                    sender=sender or "?",
                    config=msg.hello.config,
                )
                link.refuse("updates accepted only from the current predecessor")
                return
            self._updates(link, list(msg.updates))
        elif op == wire.OP_CHAIN_SNAPSHOT:
            self._snapshot_chunk(link, msg.snapshot)
        elif op == wire.OP_CHAIN_HELLO:
            self._predecessor_hello(link, msg)
        else:
            link.refuse(f"unexpected {wire.op_name(op)} from a predecessor", retry=False)

    def incoming(self, conn: FramedProtocol, msg: Message) -> None:
        """A HELLO or JOIN on a fresh connection: the peer opens a link to us."""
        if msg.opcode == wire.OP_CHAIN_HELLO:
            link = Link(conn, Side.PREDECESSOR, self.reactor, peer=msg.hello.sender)
            self._predecessor_hello(link, msg)
        else:
            self._serve_join(conn, msg)

    def _predecessor_hello(self, link: Link, msg: Message) -> None:
        hello = msg.hello
        if link is self.pred and self.status == "joining":
            self._join_caught_up_to(link, hello)
            return
        if link is self.pred and self.status == "registering":
            self._early_hello = (link, msg)  # the handoff, ahead of our own view
            return
        if self.fenced or self.name is None or self.view is None:
            link.refuse(f"not a chain member ({self.status})")
            return
        if hello.config > self.view.config:
            # our watch has not fired yet: look, then judge the hello again
            assert self.zk is not None
            self.zk.members().addCallback(self._view_then_hello, link, msg)
            return
        pred, _ = self._neighbours()
        if pred is None or pred.name != hello.sender:
            log.warn(
                "link from {sender} refused: our predecessor is {pred}",
                sender=hello.sender,
                pred=pred.name if pred else "none",
            )
            link.refuse(f"{hello.sender} is not our predecessor in config {self.view.config}")
            return
        if self.last_received < hello.last_op:
            # it committed writes we never got: we cannot be its successor
            log.error(
                "predecessor {p} committed op {c}, we hold only {n}",
                p=hello.sender,
                c=hello.last_op,
                n=self.last_received,
            )
            link.refuse("successor is behind the committed state; it rejoins", retry=False)
            self.fence("behind the predecessor's committed state")
            return
        if self.pred is not None and self.pred is not link:
            self.pred.close()
        link.peer = hello.sender
        self.pred = link
        self._stamp(link)
        link.ready = True
        self._awaiting_handoff = False
        link.hello(self.name, self.view.config, self.address, self.last_received)
        if self.committed_seq:
            link.queue_ack(self.committed_seq)
        self._wake_readers()

    def _view_then_hello(self, view: Any, link: Link, msg: Message) -> None:
        self.set_view(view)
        if link.closed:
            return
        if msg.hello.config > self.view.config:
            link.refuse("configuration newer than ours; retry")
        else:
            self._predecessor_hello(link, msg)

    def _successor_hello(self, link: Link, last_op: int) -> None:
        if link is not self.succ:
            link.close()
            return
        if last_op < self.committed_seq:
            # everything we committed went through it to the tail: it lost state
            log.error(
                "successor {peer} holds op {n}, we committed {c}; refusing it",
                peer=link.peer,
                n=last_op,
                c=self.committed_seq,
            )
            link.refuse("successor is behind the committed state; it must rejoin", False)
            return
        link.ready = True
        resend = [u for seq, u in self.pending.items() if seq > last_op]
        if resend:
            log.info("resending {n} writes to {peer}", n=len(resend), peer=link.peer)
        for u in resend:
            link.queue_update(u)
        log.info("linked to successor {peer} (it holds op {n})", peer=link.peer, n=last_op)

    def _updates(self, link: Link, updates: list[Update]) -> None:
        for u in updates:
            if u.seq <= self.last_received:
                continue  # a resend after a reconfiguration: already have it
            if u.seq != self.last_received + 1:
                log.error(
                    "gap from {peer}: op {n} after {last}; relinking",
                    peer=link.peer,
                    n=u.seq,
                    last=self.last_received,
                )
                link.refuse("gap in op numbers")
                return
            self._accept(u)

    def _refresh_view(self) -> None:
        if self.zk is not None:
            self.zk.members().addCallbacks(self.set_view, lambda f: None)

    # state transfer, the serving side

    def _serve_join(self, conn: FramedProtocol, msg: Message) -> None:
        address = msg.hello.address
        link = Link(conn, Side.SUCCESSOR, self.reactor, peer=f"join:{address}")
        self._stamp(link)
        link.joining = True
        if not self.is_tail or self.succ is not None or self._join_backlog is not None:
            link.refuse("not the tail, or a join is already running; retry")
            return
        self.succ = link
        tree, seq = self.committed_tree, self.committed_seq
        # writes after the snapshot go to the joiner once the snapshot is through
        self._join_backlog = [u for s, u in self.pending.items() if s > seq]
        clients = [
            Update(seq=e.seq, client_id=c, request_id=r, found=bool(e.found))
            for (c, r), e in self.dedup.items()
            if e.seq <= seq
        ]
        epoch = self._epoch

        def wanted() -> bool:
            return link is self.succ and not link.closed and epoch == self._epoch

        SnapshotSender(
            self.reactor,
            self.store.runner,
            link,
            tree,
            seq,
            clients,
            wanted,
            lambda: self._switch_to_joiner(link),
        ).start()

    def _switch_to_joiner(self, link: Link) -> None:
        """The snapshot is through: send the backlog, then treat the joiner as our successor."""
        backlog = self._join_backlog or []
        self._join_backlog = None
        link.ready = True
        for u in backlog:
            link.queue_update(u)
        # from here on, nothing commits here before the joiner has it
        self.acked = self.committed_seq
        link.hello(
            self.name or "", self.view.config if self.view else 0, self.address, self.last_received
        )
        log.info("{n} writes of backlog sent to {peer}", n=len(backlog), peer=link.peer)

    # state transfer, the joining side

    def join(self) -> Deferred[None]:
        """Join the chain: copy the tail's state, catch up, then register as the new tail."""
        assert self.zk is not None
        self.status = "joining"
        self._epoch += 1
        epoch = self._epoch
        d = self.zk.lock("join").addCallback(lambda release: self._join_locked(release, epoch))
        return d

    def _join_locked(self, release: Callable[[], Deferred[None]], epoch: int) -> Deferred[None]:
        self._release_lock = release
        d = self.zk.members()

        def got(view: Any) -> Any:
            if epoch != self._epoch:
                return release()
            self.view = view
            if not view.members:
                return self._register(epoch)
            tail = view.tail()
            if tail.address is None:
                raise Unavailable(f"tail {tail.name} has no usable address")
            return self._transfer_from(tail, view, epoch)

        d.addCallback(got)
        d.addErrback(self._join_errback, epoch)
        return d

    def _join_errback(self, f: Failure, epoch: int) -> None:
        if epoch == self._epoch:
            self._join_failed(f.getErrorMessage())

    def _transfer_from(self, tail: Any, view: Any, epoch: int) -> Deferred[None]:
        self._received = SnapshotReceiver()
        self._loaded = None
        self._catch_up_to = -1
        conn = ChainConnection(self)
        link = Link(conn, Side.PREDECESSOR, self.reactor, peer=tail.name)
        self.pred = link
        host, port = tail.address
        log.info(
            "joining: copying state from tail {name} at {host}:{port}",
            name=tail.name,
            host=host,
            port=port,
        )

        def connected(_: Any) -> None:
            conn.sendMessage(
                Message(
                    opcode=wire.OP_CHAIN_JOIN,
                    c_type=wire.CT_CHAIN,
                    hello=ChainHello(config=view.config, address=self.address),
                )
            )

        return self.connect(host, port, conn).addCallback(connected)

    def _snapshot_chunk(self, link: Link, chunk: SnapshotChunk) -> None:
        if self.status != "joining" or link is not self.pred:
            link.refuse("no state transfer expected", retry=False)
            return
        self._received.add(chunk)
        if chunk.done:
            keys, values = self._received.keys, self._received.values
            self._received = SnapshotReceiver()
            for row in chunk.clients:
                self._remember(row.client_id, row.request_id, row.seq, row.found)
            self.last_received = self.applied_seq = self.committed_seq = chunk.last_op
            self._loaded_seq = chunk.last_op
            self.next_seq = chunk.last_op + 1
            epoch = self._epoch
            self._loaded = self.store.load(keys, values, chunk.last_op)
            self._loaded.addCallback(self._snapshot_loaded, epoch)
            self._loaded.addErrback(self._join_errback, epoch)

    def _snapshot_loaded(self, tree: AVLTree, epoch: int) -> None:
        if epoch != self._epoch:
            return
        if self.committed_seq == self._loaded_seq:
            self.committed_tree = tree
        log.info("joining: state loaded ({n} keys)", n=len(tree))
        self._join_check()

    def _join_caught_up_to(self, link: Link, hello: Any) -> None:
        """The tail marks the end of the backlog: register once we hold that much."""
        link.ready = True
        link.peer = hello.sender
        self._catch_up_to = hello.last_op
        if self.committed_seq:
            link.queue_ack(self.committed_seq)
        self._join_check()

    def _join_check(self) -> None:
        if (
            self.status == "joining"
            and self._catch_up_to >= 0
            and self._loaded is not None
            and self._loaded.called
            and self.applied_seq >= self._catch_up_to
        ):
            self._catch_up_to = -1
            self.status = "registering"
            self._register(self._epoch).addErrback(self._join_errback, self._epoch)

    def _register(self, epoch: int) -> Deferred[None]:
        """Create our znode; we act as a member once a view we read holds it."""
        assert self.zk is not None
        self.status = "registering"

        def registered(name: str) -> Any:
            if epoch != self._epoch:
                # the join was abandoned meanwhile: this znode must not stay a member
                log.info("dropping {name}, registered by an abandoned join", name=name)
                return self.zk.unregister(name)
            self.name = name
            log.info("joined the chain as {name} at op {n}", name=name, n=self.last_received)
            release, self._release_lock = self._release_lock, None
            d = release() if release else defer.succeed(None)
            d.addCallback(lambda _: self._refresh_view())
            return d

        return self.zk.register(self.address).addCallback(registered)

    def _join_failed(self, why: str) -> None:
        log.warn("join failed: {why}; retrying", why=why)
        self._leave()
        self._reset_state()
        release, self._release_lock = self._release_lock, None
        d = release() if release else defer.succeed(None)
        epoch = self._epoch
        d.addBoth(lambda _: deferLater(self.reactor, 0.5, lambda: None))
        d.addCallback(
            lambda _: self.join() if epoch == self._epoch and not self._stopping else None
        )
        d.addErrback(lambda f: log.failure("rejoin failed", f))

    def _leave(self) -> None:
        """Delete our znode, so that no one takes us for a member any more."""
        name, self.name = self.name, None
        if name is not None and self.zk is not None:
            self.zk.unregister(name).addErrback(
                lambda f: log.warn("could not delete {name}: {e}", name=name, e=f.getErrorMessage())
            )

    # fencing

    def fence(self, why: str, voluntary: bool = True) -> None:
        """Stop acting as a member at once; in-flight client writes fail as retryable.

        A node that fences itself (not through a lost session) deletes its znode
        and joins again with a fresh copy.
        """
        if self.status == "fenced":
            return
        log.warn("fenced: {why}", why=why)
        rejoin = voluntary and self.zk is not None and not self._stopping
        if voluntary:
            self._leave()
        self.fenced = True
        self.status = "fenced"
        self.name = None
        self._reset_state()
        if rejoin:
            epoch = self._epoch
            deferLater(self.reactor, 0.5, lambda: None).addCallback(
                lambda _: self.join() if epoch == self._epoch and not self._stopping else None
            ).addErrback(lambda f: log.failure("rejoin failed", f))

    def _reset_state(self) -> None:
        self._epoch += 1
        for link in (self.pred, self.succ):
            if link is not None:
                link.close()
        self.pred = self.succ = None
        self._join_backlog = None
        self._joiner_limbo = None
        self._early_hello = None
        self._awaiting_handoff = False
        self._received = SnapshotReceiver()
        self._loaded = None
        self._catch_up_to = -1
        waiting, self._waiting = self._waiting, {}
        for ds in waiting.values():
            for d in ds:
                d.errback(Unavailable("node left the chain; retry"))
        self.pending.clear()
        self._trees.clear()
        self._found.clear()
        self.dedup.clear()
        self.last_received = self.applied_seq = self.committed_seq = 0
        self.acked = 0
        self.next_seq = 1
        self.committed_tree = AVLTree()
        self.store.reset()
        self._wake_readers()

    def zk_state(self, state: str) -> None:
        """Session events from ZooKeeper, on the reactor thread."""
        if state == "lost":
            self.fence("ZooKeeper session lost", voluntary=False)
        elif state == "connected" and self.fenced and self.status == "fenced":
            if not self._stopping:
                log.info("ZooKeeper reachable again: rejoining with a fresh copy")
                self.join().addErrback(lambda f: log.failure("rejoin failed", f))

    def stop(self) -> None:
        self._stopping = True
        for link in (self.pred, self.succ):
            if link is not None:
                link.close()


def _fmt(address: tuple[str, int] | None) -> str:
    return f"{address[0]}:{address[1]}" if address else ""
