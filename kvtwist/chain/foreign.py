"""Telling a chain member that speaks kvtwist from one that does not.

The original C servers register in the same layout (``/chain/node<seq>``,
data ``ip:port`` and a NUL) but speak only the original request set: a
kvtwist chain frame (HELLO, JOIN, the key handshake) makes them exit or drop
the connection.  Before a node opens a link to a member it has not yet seen
speak kvtwist, it asks it a question every kvtwist node answers at once and
in its own way: VERIFY of op 0, an original request that changes nothing.
A kvtwist node refuses it with an ERROR whose ``error`` text (field 7, which
the original message does not have) says why; it does so whatever its role
or state, before it looks at any data.

The verdict:

- ``KVTWIST``: the reply carries kvtwist's ``error`` text;
- ``FOREIGN``: a well-formed reply without it, a reply that is no Message, or
  the connection closed once open with no reply at all, twice in a row;
- ``UNKNOWN``: no connection, a TLS handshake that failed, or no reply within
  the timeout.  A member that is slow, partitioned, restarting or
  congested lands here, never in ``FOREIGN``: unknown members are treated as
  today (linked to, and removed only after the unreachable timeout).

Why acting on a ``FOREIGN`` verdict is safe even when it is wrong (a reply
forged on the wire, a node that died in the middle of the answer): the
member is left out by deleting its znode, through ZooKeeper, so every node
and every client sees the same shorter chain, exactly as for a successor
that cannot be reached.  A kvtwist node whose znode goes fences itself,
keeps its data and joins again; the tail commits only once the chain record
lists exactly the members of its view, so the record never claims that a
left-out member holds what was committed after it left.  Nothing the
verdict does can make an acknowledged write depend on the member it judged.

A chain record written before a member was found foreign may list it until
the next view rewrites the record.  That claims nothing harmful: the record's
members only say who may restart an empty chain from its own copy, and a
foreign member's znode name is never a kvtwist node's.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from kvtwist import wire
from kvtwist.tls import TLS_ERRORS
from kvtwist.wire import FramedProtocol, Message


class Verdict(enum.Enum):
    KVTWIST = "kvtwist"
    FOREIGN = "foreign"
    UNKNOWN = "unknown"
    #: closed with no answer: foreign only if it happens again (a kvtwist node
    #: that crashed or stopped in the middle of the answer does it once)
    SILENT = "silent"
    #: not a verdict: the question is out
    ASKING = "asking"


#: The question: an original request that every kvtwist node refuses with a reason.
PROBE = Message(opcode=wire.OP_VERIFY, c_type=wire.CT_RESULT, result=0)


def judge(msg: Message) -> tuple[Verdict, str]:
    """What a member's answer to PROBE says about it."""
    if msg.opcode == wire.OP_ERROR and msg.error:
        return Verdict.KVTWIST, ""
    return Verdict.FOREIGN, (
        f"it answered {wire.op_name(msg.opcode)} without kvtwist's fields, as the "
        "original servers do"
    )


class ProbeProtocol(FramedProtocol):
    """One question on a fresh connection; fires ``verdict`` with (Verdict, why) once."""

    max_frame = 64 * 1024

    def __init__(self, clock: Any, timeout: float) -> None:
        self.verdict: Deferred[tuple[Verdict, str]] = Deferred()
        self._clock = clock
        self._timeout = timeout
        self._timer: Any = None

    def _decide(self, verdict: Verdict, why: str) -> None:
        if self.verdict.called:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.verdict.callback((verdict, why))
        self.disconnect(abort=True)

    def connectionMade(self) -> None:
        super().connectionMade()
        self._timer = self._clock.callLater(
            self._timeout, self._decide, Verdict.UNKNOWN, "no answer in time"
        )
        self.writeMessage(PROBE)

    def messageReceived(self, msg: Message) -> None:
        self._decide(*judge(msg))

    def badFrame(self, payload: bytes, exc: Exception) -> None:
        self._decide(Verdict.FOREIGN, f"it answered with {len(payload)} bytes that are no Message")

    def frameTooLarge(self, exc: wire.FrameTooLarge) -> None:
        self._decide(Verdict.FOREIGN, f"it answered with a frame of {exc.length} bytes")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(*TLS_ERRORS):
            self._decide(Verdict.UNKNOWN, "the TLS handshake failed")
        else:
            self._decide(Verdict.SILENT, "it closed the connection without an answer")


Connector = Callable[[str, int, FramedProtocol], Deferred[Any]]

#: Seconds between the two questions when the first one was met with silence.
SILENCE_RECHECK = 0.2


def probe(
    connect: Connector, clock: Any, address: tuple[str, int], timeout: float
) -> Deferred[tuple[Verdict, str]]:
    """Ask the member at ``address`` the question once; never fails."""
    proto = ProbeProtocol(clock, timeout)
    host, port = address

    def failed(f: Failure) -> None:
        if not proto.verdict.called:
            proto.verdict.callback((Verdict.UNKNOWN, f"cannot connect: {f.getErrorMessage()}"))

    connect(host, port, proto).addErrback(failed)
    return proto.verdict


def examine(
    connect: Connector, clock: Any, address: tuple[str, int], timeout: float
) -> Deferred[tuple[Verdict, str]]:
    """The verdict on the member at ``address``: KVTWIST, FOREIGN or UNKNOWN; never fails.

    A connection closed without an answer counts as foreign only when the
    question, asked again, meets silence again.
    """

    def first(result: tuple[Verdict, str]) -> Any:
        if result[0] is not Verdict.SILENT:
            return result
        d: Deferred[Any] = deferLater(
            clock, SILENCE_RECHECK, probe, connect, clock, address, timeout
        )
        return d.addCallback(second)

    def second(result: tuple[Verdict, str]) -> tuple[Verdict, str]:
        verdict, why = result
        if verdict is Verdict.SILENT:
            return Verdict.FOREIGN, f"{why}, twice"
        return result

    return probe(connect, clock, address, timeout).addCallback(first)
