"""Reads: served by the tail alone, from its committed state.

A read never waits for a write; it may wait (up to ``READ_WAIT``) for this
node to become a serving tail: one whose view shows it last, whose lease from
ZooKeeper is fresh, which has had its predecessor's handoff after a join, and
which is not holding back for a member it removed (docs/protocol.md, "Timing").
At a node that is still becoming a member it first waits for that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from kvtwist.chain.outcomes import ReadView, Unavailable

if TYPE_CHECKING:
    from kvtwist.chain.replica import Replica

#: How long a read may wait for this node to become a serving tail.
READ_WAIT = 5.0
#: Readiness also depends on the lease, which changes with time: how often a
#: waiting read looks again.
READY_POLL = 0.05


class Reads:
    """One replica's reads, and the reads waiting for it to serve as tail."""

    def __init__(self, replica: Replica) -> None:
        self.r = replica
        self._ready_waiters: list[Deferred[None]] = []

    def serving_view(self) -> ReadView | None:
        """The committed state if this node serves reads now; None if it should wait.

        Raises NotHere or Unavailable when the read belongs elsewhere.
        """
        r = self.r
        if r.becoming_member:
            return None
        self._check_tail()
        if r.serving_reads:
            return r.committed_view()
        return None

    def _check_tail(self) -> None:
        r = self.r
        r.check_member()
        if not r.is_tail:
            raise r.elsewhere("tail", r.tail_address())

    def read_view(self, allow_wait: bool = True, hold: bool = True) -> Deferred[ReadView]:
        """The committed state, when this node is the serving tail.

        At a node still becoming a member the read waits for it (``hold``),
        then for it to serve as tail (``allow_wait``).
        """
        r = self.r
        if hold and r.becoming_member:
            return r.wait_member().addCallback(
                lambda _: self.read_view(allow_wait=allow_wait, hold=False)
            )
        try:
            self._check_tail()
        except Exception as e:
            return defer.fail(e)
        if r.serving_reads:
            return defer.succeed(r.committed_view())
        if not allow_wait:
            return defer.fail(Unavailable("tail is not ready to serve reads"))
        # a hold for a removed member has a known end: the read waits it out too
        now = r.reactor.seconds()
        return self._serving_by(now + READ_WAIT + max(0.0, r.tail_hold_until - now))

    def _serving_by(self, deadline: float) -> Deferred[ReadView]:
        """The committed state once this node serves as tail, waiting until ``deadline``:
        a wake-up for another change (a new view before the predecessor's handoff)
        waits again rather than refusing the read."""

        def look(_: object) -> Deferred[ReadView] | ReadView:
            r = self.r
            self._check_tail()
            if r.serving_reads:
                return r.committed_view()
            if r.reactor.seconds() >= deadline:
                raise Unavailable("timed out waiting to serve reads")
            return self._serving_by(deadline)

        return self._wait_ready(deadline).addCallback(look)

    def _wait_ready(self, deadline: float) -> Deferred[None]:
        reactor = self.r.reactor
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        timeout = reactor.callLater(
            max(0.0, deadline - reactor.seconds()),
            lambda: (
                None if d.called else d.errback(Unavailable("timed out waiting to serve reads"))
            ),
        )
        poll = reactor.callLater(READY_POLL, self._poll_ready)

        def done(result: Any) -> Any:
            for call in (timeout, poll):
                if call.active():
                    call.cancel()
            return result

        return d.addBoth(done)

    def _poll_ready(self) -> None:
        r = self.r
        if r.serving_reads or r.fenced or not r.is_tail:
            self.wake()
        elif self._ready_waiters:
            r.reactor.callLater(READY_POLL, self._poll_ready)

    def wake(self) -> None:
        """Something that readiness depends on changed: waiting reads look again."""
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)
