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
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist import wire
from kvtwist.chain.attempt import Attempt
from kvtwist.logs import LogLimiter
from kvtwist.membership import format_address
from kvtwist.tls import TLS_ERRORS
from kvtwist.wire import FramedProtocol, Message

if TYPE_CHECKING:
    from kvtwist.chain.replica import Replica

log = Logger(namespace="kvtwist.chain")

#: Seconds between attempts to delete a foreign member's znode.
LEAVE_OUT_RETRY = 1.0


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


class ForeignMembers:
    """One replica's verdicts on its neighbours, and what it does about foreign ones.

    A successor is asked before any chain frame goes to it; a predecessor that
    has not linked within a link timeout is asked too (a foreign member before
    us never links).  A foreign member's znode is deleted.
    """

    def __init__(self, replica: Replica) -> None:
        self.r = replica
        #: by znode name: what each member we asked answered
        self.verdicts: dict[str, Verdict] = {}
        self._log = LogLimiter(5.0, lambda: float(replica.reactor.seconds()))
        self._pred_check: Any = None  # an IDelayedCall: is a silent predecessor kvtwist?

    def forget_absent(self, present: set[str]) -> None:
        """Members that left the view: a newcomer of the same name is asked again."""
        for name in [n for n in self.verdicts if n not in present]:
            del self.verdicts[name]

    def kvtwist_members(self, view: Any) -> list[Any]:
        """The members of ``view`` not known to be foreign."""
        return [m for m in view.members if self.verdicts.get(m.name) is not Verdict.FOREIGN]

    def examine(self, member: Any) -> Deferred[tuple[Verdict, str]]:
        """Ask ``member`` whether it speaks kvtwist; the verdict is kept by its name."""
        name = member.name
        self.verdicts[name] = Verdict.ASKING

        def keep(result: tuple[Verdict, str]) -> tuple[Verdict, str]:
            if self.verdicts.get(name) is Verdict.ASKING:
                self.verdicts[name] = result[0]
            return result

        d = examine(self.r.connect, self.r.reactor, member.address, self.r.link_timeout)
        return d.addCallback(keep)

    def examine_successor(self, member: Any) -> None:
        """First contact with a successor: a question before any chain frame."""
        attempt = self.r.life.begin(f"asking {member.name}")

        def judged(result: tuple[Verdict, str]) -> None:
            verdict, why = result
            if not attempt.live or self.r.fenced:
                return
            _, succ = self.r.neighbours()
            if succ is None or succ.name != member.name or self.r.succ is not None:
                return
            if verdict is Verdict.FOREIGN:
                self.leave_out(succ, why)
            else:
                self.r.members.connect_successor(succ)

        self.examine(member).addCallback(judged)

    def watch_predecessor(self, pred: Any) -> None:
        """A predecessor that has not linked: once a link timeout passes, ask it.

        Only a predecessor removes a successor it cannot reach; a foreign
        member before us (or at the head) never links, so we ask ourselves.
        """
        verdict = self.verdicts.get(pred.name)
        if verdict is Verdict.FOREIGN:
            self.leave_out(pred)
            return
        if verdict is Verdict.KVTWIST or pred.address is None:
            return  # a kvtwist predecessor links when it can; the unreachable rule is its own
        call = self._pred_check
        if call is not None and call.active():
            if call.args[0] == pred.name:
                return
            call.cancel()
        self._pred_check = self.r.reactor.callLater(
            self.r.link_timeout,
            self._check_predecessor,
            pred.name,
            self.r.life.begin(f"watching {pred.name}"),
        )

    def _check_predecessor(self, name: str, attempt: Attempt) -> None:
        self._pred_check = None
        pred, _ = self.r.neighbours()
        if not attempt.live or self.r.fenced or pred is None or pred.name != name:
            return
        if (self.r.pred is not None and self.r.pred.ready) or self.verdicts.get(name) in (
            Verdict.ASKING,
            Verdict.KVTWIST,
        ):
            return

        def judged(result: tuple[Verdict, str]) -> None:
            verdict, why = result
            now, _ = self.r.neighbours()
            if not attempt.live or now is None or now.name != name:
                return
            if verdict is Verdict.FOREIGN:
                self.leave_out(now, why)
            elif verdict is Verdict.UNKNOWN and (self.r.pred is None or not self.r.pred.ready):
                self.watch_predecessor(now)  # ask again later: it may be restarting

        self.examine(pred).addCallback(judged)

    def in_view(self) -> bool:
        return self.r.view is not None and any(
            self.verdicts.get(m.name) is Verdict.FOREIGN for m in self.r.view.members
        )

    def leave_out(self, member: Any, why: str = "") -> Deferred[None]:
        """Delete the znode of a member that does not speak kvtwist: one line says so.

        Deleting it through ZooKeeper, rather than skipping it in our own view
        only, keeps every node, the chain record and every client (the
        original one included) on the same chain.
        """
        name = member.name
        if why:
            left_out = self._log.allow()
            if left_out is not None:
                log.warn(
                    "{name} at {address} does not speak kvtwist's chain protocol ({why}): "
                    "an original server? Leaving it out of the chain (its znode is deleted); "
                    "see docs/migrating.md{more}",
                    name=name,
                    address=format_address(member.address),
                    why=why,
                    more=f" ({left_out} more not logged)" if left_out else "",
                )
        self.verdicts[name] = Verdict.FOREIGN
        attempt = self.r.life.begin(f"leaving out {name}")

        def failed(f: Failure) -> None:
            left_out = self.r.members.unreachable_log.allow()
            if left_out is not None:
                log.warn(
                    "cannot delete the znode of {name}, which does not speak kvtwist: {e}; "
                    "retrying",
                    name=name,
                    e=f.getErrorMessage(),
                )
            self.r.reactor.callLater(LEAVE_OUT_RETRY, again)

        def again() -> None:
            if attempt.live and self.r.view is not None and name in self.r.view:
                self.leave_out(member)

        return self.r.coordinator.remove_member(name).addErrback(failed)

