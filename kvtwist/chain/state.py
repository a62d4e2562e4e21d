"""The replication state of one chain member, as a pure object (no I/O).

This is the part of Chain Replication (van Renesse & Schneider, OSDI 2004,
§3) that the paper's invariants speak of: the op numbers a member has
received, applied and committed, its Sent list, and the rules that move them.
Every decision about *which* update goes where and *what* commits is taken
here, from events handed in:

==========================  ===================================================
event (method)              what it returns: the actions for the driver
==========================  ===================================================
``number(writes, epoch)``   the head numbers client writes: the new updates to
                            ``accept``, and per write its outcome now (a retry
                            answered, a refusal) or the op it waits for
``take_in_order(updates)``  updates from the predecessor: the fresh ones, in
                            order, and the first gap if one broke the order
``accept(updates)``         notes them in the Sent list: what to hand the store
``applied(outcomes)``       the store logged and applied up to N: the updates
                            to send to the successor, in order (and the error
                            that stopped the batch, if one did)
``acknowledged(n)``         the successor holds up to ``n``
``commit(target)``          commit up to ``target``: the ops now committed,
                            with their outcome, to answer and acknowledge
``resend_after(last_op)``   a new successor holds ``last_op``: what to resend
``successor_problem(...)``  why a successor's log cannot follow ours, if so
``reset(seq)``              start again from a state that ends at ``seq``
==========================  ===================================================

The driver (:class:`kvtwist.chain.replica.Replica` and its parts)
turns those into I/O: the store's writer thread, the links, the Deferreds
of waiting clients, the coordinator.  So a test can drive several states as
a chain, drop and reorder what passes between them, and check the paper's
invariants after every step (``tests/test_chain_state.py``).

Vocabulary:

- *received* (``last_received``): the highest op number taken into our order;
- *applied* (``applied_seq``): logged and put in the tree; only then may an
  update go down the chain, so a successor's log is a prefix of ours;
- *committed* (``committed_seq``): the tail has it;
- the Sent list (``pending``): received but not committed, by op number.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvtwist.chain.bounds import HeadOp, KeyBounds, Moved, Split, Sweep
from kvtwist.chain.dedup import OUTCOME_UNKNOWN, DedupTable, Entry
from kvtwist.chain.epochs import EpochHistory, Mark
from kvtwist.chain.group import Group, answers_of, decide_group, group_size, writes_of
from kvtwist.chain.outcomes import Refused, WriteResult
from kvtwist.chain.rmw import Rmw, RmwResult, decide, result_of, stamp
from kvtwist.chain.watch import WriteIndex, changed_keys
from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.tree import BTree

if TYPE_CHECKING:  # the store runs threads; the state only reads its answers
    from kvtwist.store import Applied

#: Committed writes kept in memory so that a node that was away briefly can
#: catch up by delta instead of copying the whole store.
RECENT_BYTES = 64 * 1024 * 1024
#: Memory of one held update beyond its key, value and client id: a protobuf
#: message made at the head measures about 500 B (RSS over 200,000 of them), so
#: the byte bounds on held updates are bounds on memory, not only on payload.
UPDATE_OVERHEAD = 512

#: A client write: is_put, key, value, client id, request id, ack_below, resend;
#: and, for a read-modify-write, what it asks (the head decides is_put and value);
#: for a group (kvtwist.chain.group), its requests (the key is then empty).
WriteRequest = (
    tuple[bool, bytes, bytes, str, int, int, bool]
    | tuple[bool, bytes, bytes, str, int, int, bool, Rmw | Group | HeadOp | None]
)

#: A retried read-modify-write whose first answer the chain no longer holds
#: (it came through a snapshot or a restart, whose retry rows carry none).
RMW_FORGOTTEN = (
    f"{OUTCOME_UNKNOWN}: the answer of this retried read-modify-write is no longer kept"
    " (not applied now; the first attempt was)"
)


#: A watched group's outcome when a watched key was written after its point.
ABORTED = RmwResult(applied=False)


def update_size(u: Update) -> int:
    size = len(u.key) + len(u.data) + len(u.client_id) + UPDATE_OVERHEAD
    return size + group_size(u) if u.group else size


class Mismatch(enum.Enum):
    """Why a successor's log cannot continue from ours: it must rejoin."""

    BEHIND = "behind the committed state"
    DIVERGES = "diverges from our log"


@dataclass
class Numbered:
    """What the head made of a batch of client writes."""

    #: the new updates, numbered in order: ``accept`` them
    updates: list[Update] = field(default_factory=list)
    #: per write, in order: its outcome now (a retry of a committed write, or
    #: a refusal), or the op number whose commitment answers it
    outcomes: list[WriteResult | Exception | int] = field(default_factory=list)


@dataclass
class AppliedBatch:
    """What the store's answer to ``apply_many`` means for the chain."""

    #: applied updates of the Sent list, in order: they may go down the chain
    forward: list[Update] = field(default_factory=list)
    #: the failure that stopped the batch; what was applied before it stands
    error: Exception | None = None


class ChainState:
    """One member's op numbers, Sent list and commitment; decisions only."""

    def __init__(self, keep_recent: bool = True) -> None:
        """``keep_recent``: remember committed updates for catch-up by delta (a
        standalone node never sends a joiner what it missed)."""
        self.keep_recent = keep_recent
        self.last_received = 0
        self.applied_seq = 0
        self.committed_seq = 0
        self.committed_tree = BTree()
        self.next_seq = 1
        self.acked = 0  # the highest op our successor acknowledged
        self.history = EpochHistory()
        self.dedup = DedupTable()
        #: the keys the chain holds (a cluster's shard, narrowed by splits)
        self.bounds = KeyBounds()
        self.pending: dict[int, Update] = {}  # the Sent list, by op number
        self.pending_bytes = 0
        self.recent: deque[Update] = deque()  # committed, for catch-up by delta
        self.recent_bytes = 0
        self._trees: dict[int, BTree] = {}  # the state after each uncommitted op
        self._found: dict[int, bool] = {}
        #: per key, its last update in the Sent list (op, value or None when
        #: deleted): with the committed tree, the latest state a head decides
        #: a read-modify-write against
        self._latest: dict[bytes, tuple[int, bytes | None]] = {}
        #: per key, the op of its last write: what a watched group is checked against
        self.written = WriteIndex()

    def restore(
        self,
        tree: BTree,
        last_seq: int,
        marks: Iterable[Mark],
        clients: Iterable[tuple[str, int, int, bool]],
    ) -> None:
        """Start from a state recovered from disk."""
        self.reset(last_seq, tree)
        self.history = EpochHistory(marks)
        self.dedup.load(clients)

    def reset(self, seq: int, tree: BTree | None = None) -> None:
        """Received, applied and committed are ``seq`` (a base to build on)."""
        self.last_received = self.applied_seq = self.committed_seq = seq
        self.next_seq = seq + 1
        if tree is not None:
            self.committed_tree = tree
        self.written.reset(seq)
        self._relatest()

    def truncate(self, seq: int) -> None:
        """Forget what our epoch history and retry table say past ``seq``."""
        self.history.truncate(seq)
        self.dedup.forget_after(seq)
        self.bounds.truncate(seq)

    def _relatest(self) -> None:
        """Rebuild the per-key latest updates from the Sent list as it stands."""
        latest = self._latest
        latest.clear()
        for seq in sorted(self.pending):
            if seq > self.last_received:
                break
            for w in writes_of(self.pending[seq]):
                latest[w.key] = (seq, w.data if w.is_put else None)

    def latest(self, key: bytes) -> bytes | None:
        """The value of ``key`` after every update received (numbered, at the head)."""
        hit = self._latest.get(key)
        if hit is not None:
            return hit[1]
        return self.committed_tree.get(key)

    def forget_recent(self) -> None:
        self.recent.clear()
        self.recent_bytes = 0

    # the head

    def continue_numbering(self) -> None:
        """A new head numbers on from what it received."""
        self.next_seq = max(self.next_seq, self.last_received + 1)

    def number(self, writes: Sequence[WriteRequest], epoch: int) -> Numbered:
        """Number client writes at the head, answering retries from the table.

        A retry of a write in this very batch finds it: each is remembered as
        it is numbered.  A read-modify-write is decided here, against the
        latest state (each write of the batch sees the ones before it), and
        numbered as the plain PUT or DEL it comes to.
        """
        out = Numbered()
        latest = self._latest
        for w in writes:
            is_put, key, data, client_id, request_id, ack_below, resend = w[:7]
            rmw = w[7] if len(w) > 7 else None
            if client_id:
                try:
                    entry = self.dedup.check(client_id, request_id, resend)
                except Refused as e:
                    out.outcomes.append(e)
                    continue
                if entry is not None:  # a retry: the first attempt's outcome
                    out.outcomes.append(self._retried(entry, rmw))
                    continue
            if isinstance(rmw, Split):
                out.updates.append(self._marker(rmw.at, epoch))
                out.outcomes.append(out.updates[-1].seq)
                continue
            if isinstance(rmw, Sweep):
                out.updates.append(self._sweep(rmw.keys, epoch))
                out.outcomes.append(out.updates[-1].seq)
                continue
            if self.bounds.limited and not self._holds(key, rmw):
                out.outcomes.append(Moved("the key's shard was split off this chain"))
                continue
            result: RmwResult | None = None
            subs: list[Update] = []
            if isinstance(rmw, Group):
                is_put, key, data = False, b"", b""
                if rmw.watch and not self.written.unchanged(rmw.watch, self.next_seq - 1):
                    result = ABORTED  # a watched key was written: nothing is applied
                else:
                    subs, refusal = decide_group(rmw, self.latest)
                    if refusal:
                        result = RmwResult(error=refusal)
            elif rmw is not None:
                is_put, data, result = decide(rmw, self.latest(key))
            seq = self.next_seq
            self.next_seq += 1
            u = Update(
                seq=seq,
                epoch=epoch,
                is_put=is_put,
                key=key,
                data=data,
                client_id=client_id,
                request_id=request_id,
                ack_below=ack_below,
            )
            if result is not None:
                stamp(u, result)
            if subs:
                u.group.extend(subs)
            if client_id:
                answers = answers_of(u) if subs else None
                self.dedup.remember(client_id, request_id, seq, None, ack_below, result, answers)
            for made in writes_of(u):
                latest[made.key] = (seq, made.data if made.is_put else None)
            self.written.wrote(changed_keys(u), seq)
            out.updates.append(u)
            out.outcomes.append(seq)
        return out

    def _holds(self, key: bytes, rmw: Rmw | Group | None) -> bool:
        """Whether every key the write names is still this chain's."""
        holds = self.bounds.holds
        if isinstance(rmw, Group):  # its watched keys too: their writes go elsewhere now
            return all(
                holds(op.key) and (op.dest is None or holds(op.dest)) for op in rmw.ops
            ) and all(holds(k) for k, _ in rmw.watch)
        return holds(key)

    def _marker(self, at: bytes, epoch: int) -> Update:
        """The split marker (kvtwist.chain.bounds): an op that writes nothing, after
        which the writes that follow in this very batch see the narrower range."""
        seq = self.next_seq
        self.next_seq += 1
        self.bounds.note(seq, at)
        return Update(seq=seq, epoch=epoch, group=[Update(skip=True)], split_at=at)

    def _sweep(self, keys: Iterable[bytes], epoch: int) -> Update:
        """A sweep (kvtwist.chain.bounds): one op deleting keys the chain gave away,
        never one it still holds (an op that writes nothing if none is left)."""
        seq = self.next_seq
        self.next_seq += 1
        holds = self.bounds.holds
        gone = [Update(key=k, is_put=False) for k in keys if not holds(k)]
        u = Update(seq=seq, epoch=epoch, group=gone or [Update(skip=True)])
        for w in gone:
            self._latest[w.key] = (seq, None)
        self.written.wrote(changed_keys(u), seq)
        return u

    def _retried(
        self, entry: Entry, rmw: Rmw | Group | HeadOp | None
    ) -> WriteResult | Exception | int:
        """A retry's outcome: the op it waits for, or the first attempt's answer."""
        if entry.seq > self.committed_seq:
            return entry.seq  # its commitment answers it, from the Sent list
        if isinstance(rmw, Group):
            if entry.result is None and entry.group is None:
                return Refused(RMW_FORGOTTEN)
        elif rmw is not None and entry.result is None:
            return Refused(RMW_FORGOTTEN)
        found = entry.found if entry.found is not None else True
        return WriteResult(entry.seq, found, entry.result, entry.group)

    # every member

    def take_in_order(self, updates: Iterable[Update]) -> tuple[list[Update], int | None]:
        """Updates from the predecessor: the fresh ones, and the op of a gap.

        Those we hold already are a resend after a reconfiguration; after a
        gap nothing is taken (the link is refused and relinks).
        """
        last = self.last_received
        fresh: list[Update] = []
        for u in updates:
            if u.seq <= last:
                continue
            if u.seq != last + 1:
                return fresh, u.seq
            fresh.append(u)
            last = u.seq
        return fresh, None

    def accept(self, updates: list[Update], numbered: bool = False) -> list[Update]:
        """Take the next updates in order into the Sent list: the writes for the store.

        ``numbered``: the head numbered them here, and ``number`` noted their
        latest values, watch index entries and retry-table rows already.
        """
        if not updates:
            return updates
        pending = self.pending
        latest = self._latest
        size = 0
        for u in updates:
            seq = u.seq
            self.history.note(seq, u.epoch)
            if u.split_at:
                self.bounds.note(seq, u.split_at)
            pending[seq] = u
            size += update_size(u)
            if numbered:
                continue
            for w in writes_of(u):
                latest[w.key] = (seq, w.data if w.is_put else None)
            self.written.wrote(changed_keys(u), seq)
            if u.client_id:
                answers = answers_of(u) if u.group else None
                self.dedup.remember(
                    u.client_id, u.request_id, seq, None, u.ack_below, result_of(u), answers
                )
        self.last_received = updates[-1].seq
        self.pending_bytes += size
        return updates  # the journal logs each Update as it is

    def applied(self, outcomes: Iterable[Applied | Exception]) -> AppliedBatch:
        """The store applied a batch: what may go down the chain now."""
        out = AppliedBatch()
        for a in outcomes:
            if isinstance(a, Exception):
                out.error = a
                return out
            self.applied_seq = a.seq
            u = self.pending.get(a.seq)
            if u is not None:
                self._trees[a.seq] = a.tree
                self._found[a.seq] = a.found
                if u.client_id:
                    self.dedup.applied(u.client_id, u.request_id, a.seq, a.found)
                out.forward.append(u)  # on disk now: only from here down the chain
        return out

    def new_successor(self) -> None:
        """A successor that holds only what we committed (a joiner): nothing
        more commits here before it acknowledges it."""
        self.acked = self.committed_seq

    def acknowledged(self, n: int) -> None:
        """The successor holds up to ``n`` (never more than we sent it)."""
        self.acked = max(self.acked, min(n, self.last_received))

    def commit_target(self, waits_for_successor: bool) -> int:
        """How far we may commit: what we applied, and (unless we are the tail)
        what our successor acknowledged."""
        target = self.applied_seq
        if waits_for_successor:
            target = min(target, self.acked)
        return target

    def commit(self, target: int) -> list[WriteResult] | None:
        """Commit up to ``target``: the ops committed now, each with its outcome.

        None if the state after ``target`` is not known (dropped on a reset):
        nothing commits.
        """
        if target <= self.committed_seq:
            return []
        tree = self._trees.get(target)
        if tree is None:
            return None
        old = self.committed_seq
        self.committed_seq = target
        self.committed_tree = tree
        recent = self.recent if self.keep_recent else None
        latest = self._latest
        done = []
        for seq in range(old + 1, target + 1):
            u = self.pending.pop(seq, None)
            result = None
            if u is not None:
                size = update_size(u)
                self.pending_bytes -= size
                if recent is not None:
                    recent.append(u)
                    self.recent_bytes += size
                for w in writes_of(u):
                    hit = latest.get(w.key)
                    if hit is not None and hit[0] == seq:
                        del latest[w.key]  # the committed tree holds it now
                if u.rmw:
                    result = result_of(u)
            self._trees.pop(seq, None)
            found = self._found.pop(seq, True)
            if u is not None and u.group:
                done.append(WriteResult(seq, found, result, answers_of(u)))
                continue
            done.append(WriteResult(seq, found, result))
        while self.recent_bytes > RECENT_BYTES and self.recent:
            self.recent_bytes -= update_size(self.recent.popleft())
        return done

    def sent_after(self, seq: int) -> list[Update]:
        """Applied updates of the Sent list past ``seq``, in order."""
        return [u for s, u in self.pending.items() if seq < s <= self.applied_seq]

    def resend_after(self, last_op: int) -> list[Update]:
        """A new successor holds ``last_op``: the updates it lacks."""
        return self.sent_after(last_op)

    def successor_problem(self, last_op: int, epoch: int) -> Mismatch | None:
        """Whether a successor holding ``last_op`` of ``epoch`` can follow us."""
        if last_op < self.committed_seq:
            return Mismatch.BEHIND  # everything we committed went through it
        if last_op > self.last_received or (last_op and self.history.epoch_at(last_op) != epoch):
            return Mismatch.DIVERGES  # it holds writes nobody committed
        return None

    def catch_up_after(self, agreed: int) -> list[Update] | None:
        """What a joiner that agrees with us up to ``agreed`` lacks, from memory.

        None when our memory of recent commits does not reach back that far
        (the joiner needs a full copy).
        """
        if agreed < self.committed_seq:
            if not self.recent or self.recent[-1].seq != self.committed_seq:
                return None
            if self.recent[0].seq > agreed + 1:
                return None
        return [u for u in self.recent if u.seq > agreed] + self.sent_after(agreed)

    def drop_uncommitted(self) -> None:
        """Forget the Sent list (its writes are failed by the driver)."""
        self.pending.clear()
        self.pending_bytes = 0
        self._trees.clear()
        self._found.clear()
        self._latest.clear()

    def take_back(self) -> None:
        """Nothing after the applied op stands (a write that failed on a node
        of its own): its op numbers are numbered again."""
        self.last_received = self.applied_seq
        self.next_seq = self.applied_seq + 1
        self.truncate(self.applied_seq)
        self._relatest()
