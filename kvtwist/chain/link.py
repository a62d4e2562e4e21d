"""One replication link between neighbours of the chain.

The same TCP connection carries updates downstream and acknowledgements
upstream, so a link is FIFO both ways.  Which end connected does not matter:
a joining node dials its predecessor, every other predecessor dials its
successor.  Updates and acknowledgements queued in one reactor turn leave as
one frame.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from kvtwist import wire
from kvtwist.proto.kvtwist_pb2 import ChainHello, SnapshotChunk, Update
from kvtwist.wire import FramedProtocol, Message


class Side(enum.Enum):
    """What the far end is to us."""

    SUCCESSOR = "successor"  # we send updates, it acknowledges
    PREDECESSOR = "predecessor"  # it sends updates, we acknowledge


class Link:
    """Chain state of one connection: the peer's name, side, and outgoing batches."""

    def __init__(self, conn: FramedProtocol, side: Side, reactor: Any, peer: str = "") -> None:
        self.conn = conn
        self.side = side
        self.reactor = reactor
        self.peer = peer  # znode name, or "join:<address>" for a joiner
        self.ready = False  # hello exchanged
        self.closed = False
        self.joining = False  # a state transfer runs on this link
        # who we are on this link, stamped on every batch of updates
        self.local_name = ""
        self.config = 0
        self._updates: list[Update] = []
        self._ack = 0
        self._flush: Any = None  # an IDelayedCall
        conn.link = self  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<Link {self.side.value} {self.peer or '?'} ready={self.ready}>"

    def send(self, msg: Message) -> None:
        if not self.closed:
            self._flush_now()
            self.conn.sendMessage(msg)

    def hello(
        self, sender: str, config: int, address: str = "", last_op: int = 0, epoch: int = 0
    ) -> None:
        hello = ChainHello(
            sender=sender, config=config, address=address, last_op=last_op, epoch=epoch
        )
        self.send(Message(opcode=wire.OP_CHAIN_HELLO, c_type=wire.CT_CHAIN, hello=hello))

    def snapshot(self, chunk: SnapshotChunk) -> None:
        self.send(Message(opcode=wire.OP_CHAIN_SNAPSHOT, c_type=wire.CT_CHAIN, snapshot=chunk))

    def queue_update(self, u: Update) -> None:
        self._updates.append(u)
        self._schedule()

    def queue_ack(self, seq: int) -> None:
        if seq > self._ack:
            self._ack = seq
            self._schedule()

    def _schedule(self) -> None:
        if self._flush is None and not self.closed:
            self._flush = self.reactor.callLater(0, self._flush_now)

    def _flush_now(self) -> None:
        if self._flush is not None:
            if self._flush.active():
                self._flush.cancel()
            self._flush = None
        if self.closed:
            return
        if self._updates:
            updates, self._updates = self._updates, []
            stamp = ChainHello(sender=self.local_name, config=self.config)
            self.conn.sendMessage(
                Message(
                    opcode=wire.OP_CHAIN_UPDATE, c_type=wire.CT_CHAIN, updates=updates, hello=stamp
                )
            )
        if self._ack:
            ack, self._ack = self._ack, 0
            stamp = ChainHello(sender=self.local_name, config=self.config)
            self.conn.sendMessage(
                Message(opcode=wire.OP_CHAIN_ACK, c_type=wire.CT_CHAIN, op_n=ack, hello=stamp)
            )

    def refuse(self, reason: str, retry: bool = True) -> None:
        """Tell the peer why, then close."""
        if not self.closed:
            self.conn.sendMessage(wire.error_reply(reason, retry))
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self._flush_now()
        self.closed = True
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        self.conn.disconnect()


class LinkOwner(Protocol):
    """What a connection hands its link's traffic to: the replica."""

    def chain_message(self, link: Link, msg: Message) -> None: ...

    def link_lost(self, link: Link) -> None: ...

    def link_congested(self, link: Link, full: bool) -> None: ...


@implementer(IPushProducer)
class ChainConnection(FramedProtocol):
    """An outgoing replication connection; everything it receives goes to the replica."""

    def __init__(self, replica: LinkOwner) -> None:
        self.replica = replica
        self.link: Link | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.registerProducer(self, True)

    def pauseProducing(self) -> None:
        if self.link is not None:
            self.replica.link_congested(self.link, True)

    def resumeProducing(self) -> None:
        if self.link is not None:
            self.replica.link_congested(self.link, False)

    def stopProducing(self) -> None:
        pass

    def messageReceived(self, msg: Message) -> None:
        if self.link is not None:
            self.replica.chain_message(self.link, msg)

    def badFrame(self, payload: bytes, exc: Exception) -> None:
        self.log.warn("undecodable frame on chain link {link}: {e}", link=self.link, e=exc)
        if self.link is not None:
            self.link.close()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.link is not None:
            self.replica.link_lost(self.link)
