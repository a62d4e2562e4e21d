"""Reads: served by the tail alone, from its committed state.

A read never waits for a write; it may wait (up to ``READ_WAIT``) for this
node to become a serving tail: one whose view shows it last, whose lease from
ZooKeeper is fresh, which has had its predecessor's handoff after a join, and
which is not holding back for a member it removed (docs/protocol.md, "Timing").
At a node that is still becoming a member it first waits for that.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from kvtwist.chain.core import ReplicaCore
from kvtwist.chain.outcomes import ReadView, Unavailable

#: How long a read may wait for this node to become a serving tail.
READ_WAIT = 5.0


class ReadingReplica(ReplicaCore):
    def serving_view(self) -> ReadView | None:
        """The committed state if this node serves reads now; None if it should wait.

        Raises NotHere or Unavailable when the read belongs elsewhere.
        """
        if self.becoming_member:
            return None
        self._check_member()
        if not self.is_tail:
            raise self._elsewhere("tail", self.tail_address())
        if self.serving_reads:
            return ReadView(self.state.committed_tree, self.state.committed_seq)
        return None

    def read_view(self, allow_wait: bool = True, hold: bool = True) -> Deferred[ReadView]:
        """The committed state, when this node is the serving tail.

        At a node still becoming a member the read waits for it (``hold``),
        then for it to serve as tail (``allow_wait``).
        """
        if hold and self.becoming_member:
            return self._wait_member().addCallback(
                lambda _: self.read_view(allow_wait=allow_wait, hold=False)
            )
        try:
            self._check_member()
            if not self.is_tail:
                raise self._elsewhere("tail", self.tail_address())
        except Exception as e:
            return defer.fail(e)
        if self.serving_reads:
            return defer.succeed(ReadView(self.state.committed_tree, self.state.committed_seq))
        if not allow_wait:
            return defer.fail(Unavailable("tail is not ready to serve reads"))
        return self._wait_ready().addCallback(lambda _: self.read_view(allow_wait=False))

    def _wait_ready(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        # a hold for a removed member has a known end: the read waits it out too
        held = max(0.0, self.tail_hold_until - self.reactor.seconds())
        timeout = self.reactor.callLater(
            READ_WAIT + held,
            lambda: (
                None if d.called else d.errback(Unavailable("timed out waiting to serve reads"))
            ),
        )
        poll = self.reactor.callLater(0.05, self._poll_ready)

        def done(r: Any) -> Any:
            for call in (timeout, poll):
                if call.active():
                    call.cancel()
            return r

        return d.addBoth(done)

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
