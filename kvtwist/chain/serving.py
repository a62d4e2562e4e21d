"""Serving a joiner, at the tail: catch-up by delta or a full copy, then the backlog.

The tail answers a JOIN with a delta (when its memory of recent commits and its
Sent list hold everything the joiner lacks) or a snapshot of its committed
state; the writes that arrive meanwhile gather as a backlog, sent once the
joiner has its base, and from then on nothing commits here before the joiner
has it.  A joiner that goes away after its backlog may still register: until
its fate is known (the chain record bumped, the members read) nothing
commits here.  See :mod:`kvtwist.chain.joining` for the joiner's side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.chain.attempt import Attempt
from kvtwist.chain.epochs import EpochHistory, match_point
from kvtwist.chain.link import Link, Side
from kvtwist.chain.state import update_size
from kvtwist.chain.transfer import SnapshotSender, freeze_committed
from kvtwist.proto.kvtwist_pb2 import EpochMark, SnapshotChunk, Update
from kvtwist.wire import FramedProtocol, Message

if TYPE_CHECKING:
    from kvtwist.chain.replica import Replica

log = Logger(namespace="kvtwist.chain")

#: Delay before a failed read of who is in the chain, after dropping a joiner, is tried again.
LIMBO_RETRY_DELAY = 0.5


def marks_of(history: EpochHistory) -> list[EpochMark]:
    return [EpochMark(first_seq=s, epoch=e) for s, e in history.marks]


def history_of(marks: Any) -> EpochHistory:
    return EpochHistory((m.first_seq, m.epoch) for m in marks)


class JoinServer:
    """The tail's side of a join; one per replica."""

    def __init__(self, replica: Replica) -> None:
        self.r = replica
        self._join_backlog: list[Update] | None = None
        self.backlog_bytes = 0  # of the joiner's backlog, bounded with the Sent list

    def set_backlog(self, backlog: list[Update] | None) -> None:
        self._join_backlog = backlog
        self.backlog_bytes = sum(update_size(u) for u in backlog or ())
        self.r.writes.update_congestion()

    def serve(self, conn: FramedProtocol, msg: Message) -> None:
        hello = msg.hello
        link = self.r.new_link(conn, Side.SUCCESSOR, peer=f"join:{hello.address}")
        self.r.members.stamp(link)
        link.joining = True
        if not self.r.is_tail or self.r.succ is not None or self.r.joiner_limbo is not None:
            link.refuse("not the tail, or a join is already running; retry")
            return
        self.r.succ = link
        seq = self.r.state.committed_seq
        theirs = history_of(hello.marks)
        agreed = match_point(
            self.r.state.history, self.r.state.last_received, theirs, hello.last_op
        )
        attempt = self.r.life.begin("state transfer to a joiner")
        # Op 0 names no one state: a chain split off another starts at op 0 from the
        # keys it took over, and a joiner holding op 0 may hold nothing (it never took
        # them), so a joiner that agrees with us only up to op 0 gets a full copy.
        delta = self.r.state.catch_up_after(agreed) if agreed > 0 else None
        if delta is not None:
            log.info(
                "catch-up of {peer} by delta after op {m} (we hold {n})",
                peer=link.peer,
                m=agreed,
                n=self.r.state.last_received,
            )
            link.snapshot(SnapshotChunk(done=True, delta=True, last_op=agreed))
            self.set_backlog(delta)
            self._switch_to_joiner(link)
            return
        # writes after the snapshot go to the joiner once the snapshot is through
        self.set_backlog(self.r.state.sent_after(seq))
        frozen = freeze_committed(self.r.state)

        def wanted() -> bool:
            return link is self.r.succ and not link.closed and attempt.live

        SnapshotSender(
            self.r.reactor,
            self.r.store.runner,
            link,
            frozen.tree,
            frozen.seq,
            frozen.clients,
            wanted,
            lambda: self._switch_to_joiner(link),
            marks=frozen.marks,
        ).start()

    def backlog_applied(self, u: Update) -> None:
        if self._join_backlog is not None:
            self._join_backlog.append(u)
            self.backlog_bytes += update_size(u)
            if self.r.writes.unsent_bytes > self.r.writes.intake.limit:
                self.r.writes.update_congestion()  # a slow joiner slows the intake, not our memory

    def _switch_to_joiner(self, link: Link) -> None:
        """The joiner has its base: send the backlog, then treat it as our successor."""
        backlog = self._join_backlog or []
        self.set_backlog(None)
        link.ready = True
        for u in backlog:
            link.queue_update(u)
        # from here on, nothing commits here before the joiner has it
        self.r.state.new_successor()
        link.hello(
            self.r.name or "",
            self.r.view.config if self.r.view else 0,
            self.r.address,
            self.r.state.last_received,
        )
        log.info("{n} writes of backlog sent to {peer}", n=len(backlog), peer=link.peer)

    def lost(self, link: Link) -> None:
        self.r.succ = None
        self.set_backlog(None)
        if not link.ready:
            log.info("joiner {peer} went away during the state transfer", peer=link.peer)
            self.r.writes.advance()
            return
        # It had our backlog and may be registering: until its fate is known
        # nothing commits here, or it could become tail without our writes.
        # Bumping the chain record voids the registration it may still attempt
        # (it registers only against the record version it read); after that
        # a look at the members settles it.
        address = link.peer.removeprefix("join:")
        attempt = self.r.life.begin("voiding a dropped joiner")
        self.r.joiner_limbo = address
        log.info("joiner {a} went away; making sure it cannot register late", a=address)

        def bumped(version: int) -> Any:
            if version < 0:  # no record to void against: wait out its session instead
                wait = 1.5 * self.r.session_timeout()
                self.r.reactor.callLater(wait, self.end_limbo, address, attempt)
                return None
            return self.end_limbo(address, attempt)

        def failed(f: Failure) -> None:
            log.warn("voiding the joiner's registration failed: {e}", e=f.getErrorMessage())
            if attempt.live and self.r.joiner_limbo == address:
                self.r.reactor.callLater(0.5, self._joiner_retry, link, attempt)

        self.r.coordinator.bump_record().addCallbacks(bumped, failed)

    def _joiner_retry(self, link: Link, attempt: Attempt) -> None:
        if attempt.live and self.r.succ is None:
            self.lost(link)

    def end_limbo(self, address: str, attempt: Attempt) -> None:
        """The dropped joiner can no longer register: read who is in the chain."""
        if not attempt.live or self.r.joiner_limbo != address or self.r.zk is None:
            return

        def decide(view: Any) -> None:
            if self.r.joiner_limbo != address or not attempt.live:
                return
            self.r.joiner_limbo = None
            self.r.set_view(view)
            self.r.writes.advance()

        def again(f: Failure) -> None:  # ZooKeeper unreachable: look again, not at once
            self.r.reactor.callLater(LIMBO_RETRY_DELAY, self.end_limbo, address, attempt)

        self.r.zk.members().addCallbacks(decide, again)
