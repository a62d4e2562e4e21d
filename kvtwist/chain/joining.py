"""Joining the chain, and serving a joiner: catch-up by delta or by a full copy.

A node joins at the tail.  It holds the join lock, tells the tail what its
log holds (its last op and epoch history), and the tail answers with one of:

- a *delta*: the op number up to which both logs agree, then every update
  after it, from the tail's memory of recent commits and its Sent list.  The
  joiner first drops anything it holds past that point (writes the chain
  never committed), so no op number ever names two different writes;
- a *full copy*: a snapshot of the committed state in chunks, when the tail
  no longer has the updates the joiner lacks.

Either way the writes that arrive meanwhile follow as a backlog, then a hello
marks its end; the joiner registers its znode once it holds that much, and the
old tail hands over reads when its view shows the new tail.

An empty chain restarts only from a member of the last configuration in the
chain record; anyone else waits, and says so.

A joiner asks the tail whether it speaks kvtwist before it sends JOIN
(kvtwist.chain.foreign).  A tail that does not is an original server: under a
root with a kvtwist chain record the joiner deletes its znode and looks again;
under a root without one the root is not a kvtwist chain's, so the joiner
leaves the foreign member alone and, with no kvtwist member to join, waits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist import wire
from kvtwist.chain.attempt import Attempt
from kvtwist.chain.foreign import Verdict
from kvtwist.chain.lifecycle import State
from kvtwist.chain.link import ChainConnection, Link, Side
from kvtwist.chain.record import ChainRecord, may_start
from kvtwist.chain.serving import history_of, marks_of
from kvtwist.chain.transfer import SnapshotReceiver
from kvtwist.chain.view import plan_join
from kvtwist.membership import format_address
from kvtwist.proto.kvtwist_pb2 import ChainHello, SnapshotChunk
from kvtwist.storage import ClientRow
from kvtwist.tree import BTree
from kvtwist.wire import Message

if TYPE_CHECKING:
    from kvtwist.chain.replica import Replica

log = Logger(namespace="kvtwist.chain")

#: How often a node waiting for the last configuration looks again.
WAIT_POLL = 1.0


def together(ds: list[Deferred[Any]]) -> Deferred[list[Any]]:
    """All the results, or the first failure as it was: when ZooKeeper is unreachable
    every call fails, and none of those failures may go unhandled."""

    def first(f: Failure) -> Failure:
        if isinstance(f.value, defer.FirstError):
            return f.value.subFailure
        return f

    return defer.gatherResults(ds, consumeErrors=True).addErrback(first)


class Joining:
    """This node's join, and its wait for the last configuration; one per replica."""

    def __init__(self, replica: Replica) -> None:
        self.r = replica
        self._join: Attempt | None = None  # the join on its way
        self._release_lock: Callable[[], Deferred[None]] | None = None
        self._received = SnapshotReceiver()
        self._loaded: Deferred[BTree] | None = None
        self._loaded_seq = -1
        self._catch_up_to = -1
        self._want_full = False
        self._join_ticket: int | None = None  # the record version we may register against
        self.last_catch_up = ""  # "delta" or "full": how the last join caught up
        self._wait_call: Any = None

    def _join_attempt(self) -> Attempt:
        """The join on its way (one that is over if none is)."""
        if self._join is None:
            self._join = Attempt("join")
            self._join.end()
        return self._join

    def reset(self) -> None:
        self.r.join_server.set_backlog(None)
        self._received = SnapshotReceiver()
        self._loaded = None
        self._catch_up_to = -1
        release, self._release_lock = self._release_lock, None
        if release is not None:
            release().addErrback(lambda f: None)

    def start(self) -> Deferred[None]:
        """Join the chain: catch up from the tail, then register as the new tail."""
        assert self.r.zk is not None
        self.r.life.to(State.JOINING, "catching up from the tail")
        attempt = self._join = self.r.life.begin("join")
        d = self.r.zk.lock("join").addCallback(lambda release: self._join_locked(release, attempt))
        d.addErrback(self._join_errback, attempt)
        return d

    def _join_locked(
        self, release: Callable[[], Deferred[None]], attempt: Attempt
    ) -> Deferred[None]:
        self._release_lock = release
        if not attempt.live:
            self.reset()
            return defer.succeed(None)
        # what the writer thread holds is what we have: anything received and
        # not stored was never acknowledged by us
        d: Deferred[Any] = self.r.store.current().addCallback(self._resync, attempt)
        d.addCallback(lambda _: self._read_chain())
        d.addCallback(self._join_decide, attempt)
        return d

    def _read_chain(self) -> Deferred[list[Any]]:
        """The membership and the chain record, read together: ``[view, (data, version)]``."""
        zk = self.r.coordinator
        reads: list[Deferred[Any]] = [zk.members(), zk.read_record()]
        return together(reads)

    def _resync(self, state: tuple[BTree, int], attempt: Attempt) -> None:
        if not attempt.live:
            return
        tree, last = state
        self.r.state.reset(last, tree)
        self.r.state.truncate(last)
        self.r.state.forget_recent()

    def _join_decide(self, found: list[Any], attempt: Attempt, cleaned: bool = False) -> Any:
        if not attempt.live:
            return None
        view, (data, version) = found
        record = ChainRecord.decode(data, version)
        plan = plan_join(
            view,
            record,
            self.r.own_address,
            self.r.foreign.verdicts,
            self.r.store.meta.get("name"),
            self.r.store.node_id,
            cleaned,
        )
        if plan.stale:
            # our previous incarnation, whose session has not expired yet: we
            # listen on its address now, so it is dead; its znode goes at once
            # rather than a session timeout later (and we never join from it)
            log.info("removing {names}: an earlier registration of this node", names=plan.stale)
            d = together([self.r.coordinator.unregister(name) for name in plan.stale])
            d.addCallback(lambda _: self._read_chain())
            return d.addCallback(self._join_decide, attempt, True)
        self.r.view = view
        self.r.record = record
        # we register only against this version: a tail that drops us bumps it
        self._join_ticket = version if view.members and version >= 0 else None
        if plan.examine is not None:
            tail = plan.examine
            return self.r.foreign.examine(tail).addCallback(self._tail_judged, tail, found, attempt)
        if plan.transfer_from is not None:
            return self._transfer_from(plan.transfer_from, view)
        if plan.start and not self.r.seeded:
            # split off another chain and not given its state: starting the chain
            # from nothing would lose the keys it takes over
            log.info("the chain is empty; waiting for a member that holds its state")
            self._wait_for_members(attempt)
            return None
        if plan.start:
            log.info(
                "the chain is empty; starting it from our copy (op {n})",
                n=self.r.state.last_received,
            )
            return self._register(attempt, restart=plan.restart)
        self._wait_for_members(attempt, list(plan.foreign))
        return None

    def _tail_judged(
        self, result: tuple[Verdict, str], tail: Any, found: list[Any], attempt: Attempt
    ) -> Any:
        if not attempt.live:
            return None
        verdict, why = result
        if verdict is not Verdict.FOREIGN:
            return self._transfer_from(tail, self.r.view)
        if self.r.record.version < 0:
            # not a kvtwist chain's root: its members are not ours to remove
            log.warn(
                "{name} at {address} does not speak kvtwist's chain protocol ({why}), and this "
                "root keeps no kvtwist chain record: not joining it, leaving it alone",
                name=tail.name,
                address=format_address(tail.address),
                why=why,
            )
            return self._join_decide(found, attempt, True)
        d: Deferred[Any] = self.r.foreign.leave_out(tail, why)
        d.addCallback(lambda _: self._read_chain())
        return d.addCallback(self._join_decide, attempt, True)

    def _join_errback(self, f: Failure, attempt: Attempt) -> None:
        if attempt.live:
            self.failed(f.getErrorMessage() or repr(f.value))

    def _transfer_from(self, tail: Any, view: Any) -> Deferred[None]:
        self._received = SnapshotReceiver()
        self._loaded = None
        self._catch_up_to = -1
        conn = ChainConnection(self.r, self.r.link_config)
        link = self.r.new_link(conn, Side.PREDECESSOR, peer=tail.name)
        self.r.pred = link
        host, port = tail.address
        full = self._want_full or not self.r.state.last_received
        log.info(
            "joining: catching up from tail {name} at {host}:{port} (we hold op {n})",
            name=tail.name,
            host=host,
            port=port,
            n=self.r.state.last_received,
        )

        def connected(_: Any) -> None:
            hello = ChainHello(
                config=view.config,
                address=self.r.address,
                last_op=0 if full else self.r.state.last_received,
                marks=[] if full else marks_of(self.r.state.history),
            )
            conn.sendMessage(Message(opcode=wire.OP_CHAIN_JOIN, c_type=wire.CT_CHAIN, hello=hello))

        return self.r.connect(host, port, conn).addCallback(connected)

    def snapshot_chunk(self, link: Link, chunk: SnapshotChunk) -> None:
        if not self.r.life.is_(State.JOINING) or link is not self.r.pred:
            link.refuse("no state transfer expected", retry=False)
            return
        if chunk.delta:
            self._delta_base(link, chunk.last_op)
            return
        self._received.add(chunk)
        if chunk.done:
            received, self._received = self._received, SnapshotReceiver()
            keys, values = received.keys, received.values
            self.r.state.dedup.clear()
            rows = [(r.client_id, r.request_id, r.seq, r.found) for r in received.clients]
            self.r.state.dedup.load(rows)
            self.r.state.history = history_of(chunk.marks)
            self.r.state.bounds.clear()  # the tail's markers are not in the copy
            self.last_catch_up = "full"
            self._based_at(chunk.last_op)
            self._loaded = self.r.store.load(
                keys,
                values,
                chunk.last_op,
                self.r.state.history.marks,
                [ClientRow(*row) for row in self.r.state.dedup.rows()],
            )
            self._await_base()

    def _delta_base(self, link: Link, agreed: int) -> None:
        if agreed > self.r.state.last_received:
            link.refuse("delta past our log", retry=False)
            self.failed("the tail named a delta base past our log")
            return
        self.last_catch_up = "delta"
        rewind = agreed < self.r.state.last_received
        if rewind:
            log.warn(
                "dropping ops {a}-{b}: the chain never committed them",
                a=agreed + 1,
                b=self.r.state.last_received,
            )
            # back to nothing needs no log; anything else is replayed from ours
            if agreed == 0:
                self._loaded = self.r.store.load((), (), 0)
            else:
                self._loaded = self.r.store.rewind(agreed)
        else:
            self._loaded = defer.succeed(self.r.state.committed_tree)
        self.r.state.truncate(agreed)
        self._based_at(agreed)
        self._await_base()

    def _based_at(self, seq: int) -> None:
        self.r.state.reset(seq)
        self._loaded_seq = seq

    def _await_base(self) -> None:
        assert self._loaded is not None
        attempt = self._join_attempt()
        self._loaded.addCallback(self._snapshot_loaded, attempt)
        self._loaded.addErrback(self._base_failed, attempt)

    def _base_failed(self, f: Failure, attempt: Attempt) -> None:
        if not attempt.live:
            return
        self._want_full = True  # our own copy cannot go back that far: take a full one
        self.failed(f"preparing our copy failed: {f.getErrorMessage()}")

    def _snapshot_loaded(self, tree: BTree, attempt: Attempt) -> None:
        if not attempt.live:
            return
        if self.r.state.committed_seq == self._loaded_seq:
            self.r.state.committed_tree = tree
        log.info("joining: state ready ({n} keys at op {s})", n=len(tree), s=self._loaded_seq)
        self._join_check()

    def caught_up_to(self, link: Link, hello: Any) -> None:
        """The tail marks the end of the backlog: register once we hold that much."""
        link.ready = True
        link.peer = hello.sender
        self._catch_up_to = hello.last_op
        if self.r.state.committed_seq:
            link.queue_ack(self.r.state.committed_seq)
        self._join_check()

    def applied(self) -> None:
        if self.r.life.is_(State.JOINING):
            self._join_check()

    def _join_check(self) -> None:
        if (
            self.r.life.is_(State.JOINING)
            and self._catch_up_to >= 0
            and self._loaded is not None
            and self._loaded.called
            and self.r.state.applied_seq >= self._catch_up_to
        ):
            self._catch_up_to = -1
            attempt = self._join_attempt()
            self._register(attempt).addErrback(self._join_errback, attempt)

    def _register(self, attempt: Attempt, restart: bool = False) -> Deferred[None]:
        """Create our znode; we act as a member once a view we read holds it.

        ``restart``: we start an empty chain from our own copy.
        """
        assert self.r.zk is not None
        zk = self.r.zk
        self.r.life.to(State.REGISTERING, f"at op {self.r.state.last_received}")

        def registered(name: str) -> Any:
            if not attempt.live:
                # the join was abandoned meanwhile: this znode must not stay a member
                log.info("dropping {name}, registered by an abandoned join", name=name)
                return self.r.coordinator.unregister(name)
            self.r.name = name
            self.r.tie_lease(name)
            if restart:
                # the members before us left no word of whom they removed and
                # when: any of them may still serve until its lease is out
                self.r.hold_tail(self.r.members.removal_wait(), "restart")
            for link in (self.r.pred, self.r.succ):
                if link is not None:
                    self.r.members.stamp(link)  # our acknowledgements carry our name from now on
            self._want_full = False
            self.r.members.rejoin_delay = 0.5
            log.info(
                "joined the chain as {name} at op {n}", name=name, n=self.r.state.last_received
            )
            self.r.store.save_meta({**self.r.store.meta, "name": name}).addErrback(
                lambda f: log.warn("could not record our name: {e}", e=f.getErrorMessage())
            )
            release, self._release_lock = self._release_lock, None
            d = release() if release else defer.succeed(None)
            d.addCallback(lambda _: self.r.members.refresh_view())
            return d

        def register(_: object) -> Any:
            if not attempt.live:
                return None
            return zk.register(self.r.address, self._join_ticket).addCallback(registered)

        first = self.r.before_register  # a cluster server's fresh look at its map
        d = first() if first is not None else defer.succeed(None)
        return d.addCallback(register)

    def failed(self, why: str) -> None:
        if self.r.life.is_(State.STOPPED, State.FENCED):
            return
        log.warn("join failed: {why}; retrying", why=why)
        self.r.fence(f"join failed: {why}")

    def _wait_for_members(self, attempt: Attempt, foreign: list[Any] | None = None) -> None:
        if foreign:
            who = ", ".join(f"{m.name} ({format_address(m.address)})" for m in foreign)
            names = (
                f"a chain whose members do not speak kvtwist ({who}: original servers?), "
                "see docs/migrating.md"
            )
        elif self.r.record.version >= 0:
            names = self.r.record.describe()
        else:
            names = "a chain that had members but keeps no kvtwist record (older or foreign nodes)"
        self.r.life.to(State.WAITING, f"the chain is empty; waiting for a node of {names}")
        self.r.wake_members()  # held requests are refused now: this may take an operator
        attempt = self.r.life.begin("waiting for the last configuration")
        log.warn(
            "the chain is empty and our copy (op {n}) is not from its last configuration "
            "({names}); waiting for one of those nodes, or for an operator to run "
            "'kvtwist-admin force-start'",
            n=self.r.state.last_received,
            names=names,
        )
        self.reset()  # releases the join lock
        info = {
            "address": self.r.address,
            "last_op": self.r.state.last_received,
            "epoch": self.r.state.history.epoch_at(self.r.state.last_received),
            "name": self.r.store.meta.get("name") or "",
        }
        advert = json.dumps(info).encode()
        self.r.coordinator.advertise_waiting(self.r.store.node_id, advert).addErrback(
            lambda f: None
        )
        self._wait_call = self.r.reactor.callLater(WAIT_POLL, self._look_again, attempt)

    def _look_again(self, attempt: Attempt) -> None:
        self._wait_call = None
        if not attempt.live:
            return

        def decide(found: list[Any]) -> None:
            if not attempt.live:
                return
            view, (data, version) = found
            record = ChainRecord.decode(data, version)
            last = self.r.store.meta.get("name")
            members = self.r.foreign.kvtwist_members(view)
            if members or may_start(record, last, self.r.store.node_id, view.config):
                self.stop_waiting()
                self.start()
            else:
                self._wait_call = self.r.reactor.callLater(WAIT_POLL, self._look_again, attempt)

        def failed(f: Failure) -> None:
            if attempt.live:
                self._wait_call = self.r.reactor.callLater(WAIT_POLL, self._look_again, attempt)

        d = self._read_chain()
        d.addCallbacks(decide, failed)

    def stop_waiting(self) -> None:
        if self._wait_call is not None and self._wait_call.active():
            self._wait_call.cancel()
        self._wait_call = None
        if self.r.zk is not None and self.r.life.is_(State.WAITING, State.STOPPED):
            self.r.zk.withdraw_waiting(self.r.store.node_id).addErrback(lambda f: None)
