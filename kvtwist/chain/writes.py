"""The write path of a chain member: numbering at the head, applying, forwarding, commitment.

The decisions (numbering, the Sent list, what goes down the chain, what
commits) are :class:`kvtwist.chain.state.ChainState`'s, a pure object; this
part of the replica carries them out: it hands writes to the store's writer
thread, queues updates and acknowledgements on the links, answers the
Deferreds of waiting clients, and pauses client intake while the successor
falls behind.  A standalone node is a chain of one and takes the same path.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.chain.attempt import Attempt
from kvtwist.chain.bounds import HeadOp
from kvtwist.chain.group import Group
from kvtwist.chain.holds import Intake
from kvtwist.chain.link import Link
from kvtwist.chain.outcomes import Unavailable, WriteResult
from kvtwist.chain.rmw import Rmw
from kvtwist.chain.state import WriteRequest
from kvtwist.logs import LogLimiter
from kvtwist.store import Applied

if TYPE_CHECKING:
    from kvtwist.chain.replica import Replica

log = Logger(namespace="kvtwist.chain")

#: Bytes of uncommitted writes (the Sent list) beyond which client intake pauses.
MAX_SENT_BYTES = 256 * 1024 * 1024

__all__ = ["MAX_SENT_BYTES", "WritePath"]


def _fire(d: Deferred[WriteResult], outcome: WriteResult | Exception) -> None:
    if isinstance(outcome, Exception):
        d.errback(outcome)
    else:
        d.callback(outcome)


def _exception(f: Failure) -> Exception:
    return f.value  # type: ignore[return-value]


class _Outcomes:
    """One caller's batch of writes: an outcome each, and a Deferred for the lot."""

    __slots__ = ("done", "left", "outcomes")

    def __init__(self, n: int) -> None:
        self.outcomes: list[WriteResult | Exception | None] = [None] * n
        self.left = n
        self.done: Deferred[list[WriteResult | Exception]] = Deferred()

    def fill(self, i: int, outcome: WriteResult | Exception) -> None:
        self.outcomes[i] = outcome
        self.left -= 1
        if not self.left:
            self.done.callback(self.outcomes)  # type: ignore[arg-type]


class WritePath:
    """One replica's writes on their way from a client to commitment."""

    def __init__(
        self,
        replica: Replica,
        on_congestion: Callable[[bool], None] | None = None,
        on_commit_latency: Callable[[float], None] | None = None,
    ) -> None:
        """``on_congestion`` pauses and resumes client intake; ``on_commit_latency``
        is told, at the head, each batch's seconds from numbering to commitment."""
        self.r = replica
        #: who waits for each uncommitted op: called with its outcome or the failure
        self._waiting: dict[int, list[Callable[[WriteResult | Exception], None]]] = {}
        self.on_commit_latency = on_commit_latency
        #: the batches numbered here on their way to commitment, by last op
        self._numbered_at: deque[tuple[int, float]] = deque()
        #: the head's client writes of this reactor turn, numbered at its end
        self._turn: list[tuple[list[WriteRequest], _Outcomes]] = []
        #: writes that wait for a new head's epoch claim
        self._claim_waiters: list[Deferred[None]] = []
        # flow control: a slow successor slows the intake of client writes
        self.intake = Intake(MAX_SENT_BYTES)
        self.on_congestion: Callable[[bool], None] = on_congestion or (lambda congested: None)
        self._congestion_log = LogLimiter(5.0, lambda: float(replica.reactor.seconds()))

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
        rmw: Rmw | Group | HeadOp | None = None,
        hold: bool = True,
    ) -> Deferred[WriteResult]:
        """Order, apply and commit one client write; fires once committed.

        ``rmw``: a read-modify-write, decided at the head when it is numbered.
        At a node still becoming a member the write waits for it (``hold``).
        """
        r = self.r
        request = (is_put, key, data, client_id, request_id, ack_below, resend, rmw)
        if hold and r.becoming_member:
            return r.wait_member().addCallback(lambda _: self.write(*request, hold=False))
        try:
            r.check_member()
            if not r.is_head:
                raise r.elsewhere("head", r.head_address())
        except Exception as e:
            return defer.fail(e)
        if r.head_epoch is None:
            # a new head records its epoch before it numbers anything
            d: Deferred[None] = Deferred()
            self._claim_waiters.append(d)
            return d.addCallback(lambda _: self.write(*request))
        numbered = r.state.number([request], r.head_epoch)
        self._note_numbered(numbered.updates)
        outcome = numbered.outcomes[0]
        if isinstance(outcome, int):
            done = self._wait_commit(outcome)
        else:
            done = defer.fail(outcome) if isinstance(outcome, Exception) else defer.succeed(outcome)
        self.accept(numbered.updates, numbered=True)
        return done

    def write_many(self, writes: list[WriteRequest]) -> Deferred[list[WriteResult | Exception]]:
        """``write`` for requests that arrived together: one outcome each, one Deferred.

        At the head, every caller's writes of one reactor turn are numbered,
        logged and committed as one batch at the end of the turn: with many
        connections sending one write each, the chain's bookkeeping then runs
        once a turn, not once a connection.  The writes keep their order of
        arrival.  Anything out of the ordinary (not the head, no epoch yet)
        takes the one-by-one path.
        """
        if not writes:
            return defer.succeed([])
        batch = _Outcomes(len(writes))
        if not self._fast_path():
            self._one_by_one(writes, batch)
            return batch.done
        if not self._turn:
            self.r.reactor.callLater(0, self._number_turn)
        self._turn.append((writes, batch))
        return batch.done

    def _fast_path(self) -> bool:
        r = self.r
        return not r.fenced and r.is_head and r.head_epoch is not None

    def _one_by_one(self, writes: list[WriteRequest], batch: _Outcomes) -> None:
        for i, w in enumerate(writes):
            self.write(*w).addErrback(_exception).addCallback(partial(batch.fill, i))

    def _number_turn(self) -> None:
        """Number the writes of the turn that ended, in their order of arrival."""
        turn, self._turn = self._turn, []
        if not self._fast_path():  # the role changed within the turn
            for writes, batch in turn:
                self._one_by_one(writes, batch)
            return
        r = self.r
        writes = turn[0][0] if len(turn) == 1 else [w for ws, _ in turn for w in ws]
        numbered = r.state.number(writes, r.head_epoch)  # type: ignore[arg-type]
        self._note_numbered(numbered.updates)
        waiting = self._waiting
        outcomes = iter(numbered.outcomes)
        for ws, batch in turn:
            for i in range(len(ws)):
                outcome = next(outcomes)
                if isinstance(outcome, int):
                    waiting.setdefault(outcome, []).append(partial(batch.fill, i))
                else:
                    batch.fill(i, outcome)
        self.accept(numbered.updates, now=True, numbered=True)

    def _note_numbered(self, updates: list[Any]) -> None:
        if self.on_commit_latency is not None and updates:
            self._numbered_at.append((updates[-1].seq, time.perf_counter()))

    def _wait_commit(self, seq: int) -> Deferred[WriteResult]:
        """Fires when ``seq`` (not yet committed) commits."""
        d: Deferred[WriteResult] = Deferred()
        self._waiting.setdefault(seq, []).append(partial(_fire, d))
        return d

    def release_claim_waiters(self, failure: Exception | None = None) -> None:
        """The head's epoch is claimed (or never will be): writes waiting for it go on."""
        waiters, self._claim_waiters = self._claim_waiters, []
        for d in waiters:
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)

    # the write path shared by head, middle and tail

    def accept(self, updates: list[Any], now: bool = False, numbered: bool = False) -> None:
        """Take the next updates in order: note them, then hand them to the store together
        (``now``: at the end of a turn, so the store need not wait for one; ``numbered``:
        this head numbered them)."""
        r = self.r
        writes = r.state.accept(updates, numbered)
        if not writes:
            return
        attempt = r.life.begin("applying")
        r.store.apply_many(writes, now).addCallbacks(
            self._applied, self._apply_failed, callbackArgs=(attempt,), errbackArgs=(attempt,)
        )
        if self.unsent_bytes > self.intake.limit:
            self.update_congestion()

    def _applied(self, outcomes: list[Applied | Exception], attempt: Attempt) -> None:
        """The store's answer to a batch: forward and commit, unless the node started
        over since it handed the batch over (then its outcomes are another life's)."""
        r = self.r
        if not attempt.live:
            return
        batch = r.state.applied(outcomes)
        serving = r.join_server
        for u in batch.forward:
            if not attempt.live:
                return
            if r.succ is not None and r.succ.ready:
                r.succ.queue_update(u)
            serving.backlog_applied(u)
        if not attempt.live:
            return
        self.advance()
        if batch.error is not None:
            # what was applied before it stands (and may commit); the rest fails
            self._apply_failed(Failure(batch.error), attempt)
            return
        r.joining.applied()

    def _apply_failed(self, f: Failure, attempt: Attempt) -> None:
        r = self.r
        if not attempt.live:
            return
        why = f.getErrorMessage() or repr(f.value)
        log.error("writing to disk failed: {why}", why=why)
        if r.standalone:
            # nothing after the failed write was applied: take those op numbers back
            self.drop_uncommitted(Unavailable(f"write not stored: {why}; retry"))
            r.life.start_over()  # the answers of batches handed over after it are void
            r.state.take_back()
        else:
            r.fence(f"store failure: {why}")

    def _waits_for_successor(self) -> bool:
        r = self.r
        if r.succ is not None and r.succ.ready:
            return True
        if r.joiner_limbo is not None:
            return True
        return r.neighbours()[1] is not None

    def advance(self) -> None:
        """Commit as far as the successor's acknowledgements (or, at the tail, our own) allow."""
        r = self.r
        if r.stopping:
            return
        state = r.state
        target = state.commit_target(self._waits_for_successor())
        if target <= state.committed_seq:
            return
        if not r.records.allows_commit():
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
        if r.pred is not None and r.pred.ready:
            r.pred.queue_ack(target)
        if self.intake.paused:
            self.update_congestion()

    def _committed_numbered(self, target: int) -> None:
        observe, batches = self.on_commit_latency, self._numbered_at
        now = time.perf_counter()
        while batches and batches[0][0] <= target:
            _, at = batches.popleft()
            if observe is not None:
                observe(now - at)

    # flow control

    def link_congested(self, link: Link, full: bool) -> None:
        """A link's send buffer filled up or drained."""
        if link is self.r.succ:
            self.intake.link_full = full
            self.update_congestion()

    @property
    def unsent_bytes(self) -> int:
        """Writes held in memory for a neighbour: the Sent list and a joiner's backlog."""
        return self.r.state.pending_bytes + self.r.join_server.backlog_bytes

    def update_congestion(self) -> None:
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

    def drop_uncommitted(self, why: Exception) -> None:
        """Fail every write waiting for commitment and forget the Sent list."""
        waiting, self._waiting = self._waiting, {}
        self._numbered_at.clear()  # those batches never commit: no latency to tell
        for wakes in waiting.values():
            for wake in wakes:
                wake(why)
        self.r.state.drop_uncommitted()
        if self.intake.paused:
            self.update_congestion()
