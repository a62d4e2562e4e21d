"""The chain record kept in step with the chain: a new head's claim, the tail's commit gate.

Two rules tie the chain to its persistent record (:mod:`kvtwist.chain.record`)
so that a whole-chain restart never starts from a copy that misses a
committed write: a new head claims a fresh epoch in the record before it
numbers a write, and a tail commits only while the record lists exactly the
members of its view, confirmed against ZooKeeper for that very view.  Each
round trip is an attempt of the node's present life (kvtwist.chain.attempt).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.chain.attempt import Attempt, running
from kvtwist.chain.record import ChainRecord, matches

if TYPE_CHECKING:
    from kvtwist.chain.replica import Replica

log = Logger(namespace="kvtwist.chain")

RECORD_RETRY_DELAY = 0.2


class RecordKeeper:
    """One replica's dealings with the chain record."""

    def __init__(self, replica: Replica) -> None:
        self.r = replica
        self._claim: Attempt | None = None  # the head claim on its way
        self._fix: Attempt | None = None  # the record fix on its way
        self.confirmed = -1  # the view config the record was last confirmed for

    def claim_head(self) -> None:
        """Take a fresh epoch for the writes we are about to number."""
        if running(self._claim) or self.r.zk is None:
            return
        claim = self._claim = self.r.life.begin("head claim")

        def decide(found: tuple[bytes | None, int]) -> Any:
            if not self.r.is_head:
                return None
            record = ChainRecord.decode(*found)
            if record.config > self.r.view.config:
                return self.r.coordinator.members().addCallback(self.r.set_view)
            if self.r.foreign.in_view():
                return None  # the record lists kvtwist members only: after its removal
            epoch = max(record.epoch, self.r.state.history.epoch_at(self.r.state.last_received)) + 1
            new = record.with_view(self.r.view, epoch)
            return self.r.coordinator.write_record(new.encode(), record.version).addCallback(
                claim.guard(written), new, record.version
            )

        def written(ok: bool, new: ChainRecord, version: int) -> None:
            if ok:
                self.r.record = ChainRecord.decode(new.encode(), version + 1)
                self.confirmed = new.config
                self.r.head_epoch = new.epoch
                self.r.state.continue_numbering()
                log.info("head of epoch {e} from op {n}", e=new.epoch, n=self.r.state.next_seq)
                self.r.writes.release_claim_waiters()
                self.r.writes.advance()

        def done(result: Any) -> None:
            live = claim.live
            claim.end()
            if isinstance(result, Failure):
                log.warn("claiming the head failed: {e}", e=result.getErrorMessage())
            if live and self.r.is_head and self.r.head_epoch is None:
                self.r.reactor.callLater(RECORD_RETRY_DELAY, self.claim_head)

        d = self.r.zk.read_record().addCallback(claim.guard(decide))
        d.addBoth(done)

    def allows_commit(self) -> bool:
        """A tail commits only while the record lists exactly its view's members."""
        if self.r.standalone or self.r.neighbours()[1] is not None or self.r.name is None:
            return True
        if self.r.foreign.in_view():
            return False  # its removal brings a new view, and _advance with it
        # Confirmed against ZooKeeper for this very view: a cached copy may be
        # older than a member's own rewrite of it.
        if self.r.tail_held():
            return False  # a member we removed may still serve; _tail_hold_over looks again
        if self.confirmed == self.r.view.config and matches(self.r.record, self.r.view):
            return True
        self.fix()
        return False

    def fix(self) -> None:
        if running(self._fix) or self.r.zk is None:
            return
        fix = self._fix = self.r.life.begin("record fix")

        def decide(found: tuple[bytes | None, int]) -> Any:
            if self.r.view is None:
                return None
            record = ChainRecord.decode(*found)
            if record.config > self.r.view.config:
                return self.r.coordinator.members().addCallback(self.r.set_view)
            config = self.r.view.config
            if self.r.foreign.in_view():
                return None
            if matches(record, self.r.view):
                self.r.record = record
                self.confirmed = config
                return None
            new = record.with_view(self.r.view)
            log.info("recording the chain's members: {m}", m=new.describe())

            def written(ok: bool) -> None:
                if ok:
                    self.r.record = ChainRecord.decode(new.encode(), record.version + 1)
                    self.confirmed = config

            return self.r.coordinator.write_record(new.encode(), record.version).addCallback(
                fix.guard(written)
            )

        def done(result: Any) -> None:
            live = fix.live
            fix.end()
            if isinstance(result, Failure):
                log.warn("updating the chain record failed: {e}", e=result.getErrorMessage())
            if not live:
                return
            confirmed = self.confirmed == self.r.view.config
            if isinstance(result, Failure) or not confirmed:
                self.r.reactor.callLater(RECORD_RETRY_DELAY, self.r.writes.advance)
            else:
                self.r.writes.advance()

        self.r.zk.read_record().addCallback(fix.guard(decide)).addBoth(done)

