"""What arrives on chain links: updates, acknowledgements and hellos.

A member accepts updates only from the predecessor of its current view and
acknowledgements only from its successor.  When a predecessor links to it,
the two compare logs: the successor's must be a prefix of the predecessor's
(same last op, same epoch there), or the successor holds writes the chain
never committed and must rejoin, dropping them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from kvtwist import wire
from kvtwist.chain.foreign import Verdict
from kvtwist.chain.lifecycle import State
from kvtwist.chain.link import Link, Side
from kvtwist.chain.state import Mismatch
from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.wire import FramedProtocol, Message

if TYPE_CHECKING:
    from kvtwist.chain.replica import Replica

log = Logger(namespace="kvtwist.chain")


class LinkTraffic:
    """One replica's dealings with what its neighbours send it."""

    def __init__(self, replica: Replica) -> None:
        self.r = replica

    def chain_message(self, link: Link, msg: Message) -> None:
        op = msg.opcode
        if op == wire.OP_CHAIN_HELLO:
            self.r.members.note_lease(msg.hello)
        if op == wire.OP_ERROR:
            log.warn("{link} refused: {why}", link=link, why=msg.error)
            link.close()
            if link.side is Side.SUCCESSOR and link is self.r.succ and not link.joining:
                self.r.members.relink_later(link)
            elif link is self.r.pred and not msg.retry and self.r.life.is_(State.MEMBER):
                self.r.fence(f"predecessor refused us: {msg.error}")
            return
        if link.side is Side.SUCCESSOR:
            if op == wire.OP_CHAIN_HELLO:
                self._successor_hello(link, msg.hello)
            elif op == wire.OP_CHAIN_ACK:
                # a joiner signs with its znode name once it knows it; until its
                # registration reply arrives it may still send an empty one
                expected = {link.peer, ""} if link.joined else {link.peer}
                if link is not self.r.succ or (
                    not link.peer.startswith("join:") and msg.hello.sender not in expected
                ):
                    link.refuse("acknowledgements accepted only from the current successor")
                    return
                self.r.state.acknowledged(msg.op_n)
                self.r.writes.advance()
            else:
                link.refuse(f"unexpected {wire.op_name(op)} from a successor", retry=False)
            return
        if op == wire.OP_CHAIN_UPDATE:
            sender = msg.hello.sender
            pred = self.r.neighbours()[0]
            member = self.r.life.is_(State.MEMBER)
            if (
                link is not self.r.pred
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
            self.r.joining.snapshot_chunk(link, msg.snapshot)
        elif op == wire.OP_CHAIN_HELLO:
            self._predecessor_hello(link, msg)
        else:
            link.refuse(f"unexpected {wire.op_name(op)} from a predecessor", retry=False)

    def incoming(self, conn: FramedProtocol, msg: Message) -> None:
        """A HELLO or JOIN on a fresh connection: the peer opens a link to us."""
        self.r.members.note_lease(msg.hello)
        if msg.opcode == wire.OP_CHAIN_HELLO:
            # with a cluster key the peer is who the handshake proved, and the
            # connection has already refused a hello naming anyone else
            peer = msg.hello.sender
            if getattr(conn, "authenticated", False):
                peer = conn.peer_identity  # type: ignore[attr-defined]
            link = self.r.new_link(conn, Side.PREDECESSOR, peer=peer)
            self._predecessor_hello(link, msg)
        else:
            self.r.join_server.serve(conn, msg)

    def _predecessor_hello(self, link: Link, msg: Message) -> None:
        hello = msg.hello
        if link is self.r.pred and self.r.life.is_(State.JOINING):
            self.r.joining.caught_up_to(link, hello)
            return
        if link is self.r.pred and self.r.life.is_(State.REGISTERING):
            self.r.early_hello = (link, msg)  # the handoff, ahead of our own view
            return
        if self.r.fenced or self.r.name is None or self.r.view is None:
            link.refuse(f"not a chain member ({self.r.status})")
            return
        if hello.config > self.r.view.config:
            # our watch has not fired yet: look, then judge the hello again
            assert self.r.zk is not None
            self.r.zk.members().addCallbacks(
                self._view_then_hello,
                lambda f: link.refuse("cannot read the configuration now; retry"),
                callbackArgs=(link, msg),
            )
            return
        pred, _ = self.r.neighbours()
        if pred is None or pred.name != hello.sender:
            log.warn(
                "link from {sender} refused: our predecessor is {pred}",
                sender=hello.sender,
                pred=pred.name if pred else "none",
            )
            link.refuse(f"{hello.sender} is not our predecessor in config {self.r.view.config}")
            return
        if self.r.state.last_received < hello.last_op:
            # it committed writes we never got: we cannot be its successor
            log.error(
                "predecessor {p} committed op {c}, we hold only {n}",
                p=hello.sender,
                c=hello.last_op,
                n=self.r.state.last_received,
            )
            link.refuse("successor is behind the committed state; it rejoins", retry=False)
            self.r.fence("behind the predecessor's committed state")
            return
        if self.r.pred is not None and self.r.pred is not link:
            self.r.pred.close()
        link.peer = hello.sender
        self.r.pred = link
        self.r.members.stamp(link)
        link.ready = True
        self.r.foreign.verdicts[hello.sender] = Verdict.KVTWIST
        self.r.awaiting_handoff = False
        link.hello(
            self.r.name,
            self.r.view.config,
            self.r.address,
            self.r.state.last_received,
            epoch=self.r.state.history.epoch_at(self.r.state.last_received),
        )
        if self.r.state.committed_seq:
            link.queue_ack(self.r.state.committed_seq)
        self.r.reads.wake()

    def _view_then_hello(self, view: Any, link: Link, msg: Message) -> None:
        self.r.members.set_view(view)
        if link.closed:
            return
        if msg.hello.config > self.r.view.config:
            link.refuse("configuration newer than ours; retry")
        else:
            self._predecessor_hello(link, msg)

    def _successor_hello(self, link: Link, hello: Any) -> None:
        if link is not self.r.succ:
            link.close()
            return
        last_op = hello.last_op
        problem = self.r.state.successor_problem(last_op, hello.epoch)
        if problem is Mismatch.BEHIND:
            # everything we committed went through it to the tail: it lost state
            log.error(
                "successor {peer} holds op {n}, we committed {c}; refusing it",
                peer=link.peer,
                n=last_op,
                c=self.r.state.committed_seq,
            )
            link.refuse("successor is behind the committed state; it must rejoin", False)
            return
        if problem is Mismatch.DIVERGES:
            # its log is no prefix of ours: it holds writes nobody committed
            log.error(
                "successor {peer} holds op {n} of epoch {e}, not in our log; refusing it",
                peer=link.peer,
                n=last_op,
                e=hello.epoch,
            )
            link.refuse("successor's log diverges from ours; it must rejoin", False)
            return
        link.ready = True
        self.r.foreign.verdicts[link.peer] = Verdict.KVTWIST
        self.r.members.succ_down_since = None
        resend = self.r.state.resend_after(last_op)
        if resend:
            log.info("resending {n} writes to {peer}", n=len(resend), peer=link.peer)
        for u in resend:
            link.queue_update(u)
        log.info("linked to successor {peer} (it holds op {n})", peer=link.peer, n=last_op)

    def _updates(self, link: Link, updates: list[Update]) -> None:
        fresh, gap = self.r.state.take_in_order(updates)
        self.r.writes.accept(fresh)
        if gap is not None:
            log.error(
                "gap from {peer}: op {n} after {last}; relinking",
                peer=link.peer,
                n=gap,
                last=self.r.state.last_received,
            )
            link.refuse("gap in op numbers")

    def replay_hello(self, link: Link, msg: Message) -> None:
        if not link.closed:
            self._predecessor_hello(link, msg)
