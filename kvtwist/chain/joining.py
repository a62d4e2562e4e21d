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
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist import wire
from kvtwist.chain.attempt import Attempt
from kvtwist.chain.epochs import EpochHistory, match_point
from kvtwist.chain.foreign import Verdict
from kvtwist.chain.lifecycle import State
from kvtwist.chain.link import ChainConnection, Link, Side
from kvtwist.chain.links import LinkedReplica
from kvtwist.chain.record import ChainRecord, may_start
from kvtwist.chain.state import update_size
from kvtwist.chain.transfer import SnapshotReceiver, SnapshotSender, freeze_committed
from kvtwist.membership import format_address
from kvtwist.proto.kvtwist_pb2 import ChainHello, EpochMark, SnapshotChunk, Update
from kvtwist.storage import ClientRow
from kvtwist.tree import BTree
from kvtwist.wire import FramedProtocol, Message

log = Logger(namespace="kvtwist.chain")

#: How often a node waiting for the last configuration looks again.
WAIT_POLL = 1.0
#: Delay before a failed read of who is in the chain, after dropping a joiner, is tried again.
LIMBO_RETRY_DELAY = 0.5


def marks_of(history: EpochHistory) -> list[EpochMark]:
    return [EpochMark(first_seq=s, epoch=e) for s, e in history.marks]


def history_of(marks: Any) -> EpochHistory:
    return EpochHistory((m.first_seq, m.epoch) for m in marks)


def together(ds: list[Deferred[Any]]) -> Deferred[list[Any]]:
    """All the results, or the first failure as it was: when ZooKeeper is unreachable
    every call fails, and none of those failures may go unhandled."""

    def first(f: Failure) -> Failure:
        if isinstance(f.value, defer.FirstError):
            return f.value.subFailure
        return f

    return defer.gatherResults(ds, consumeErrors=True).addErrback(first)


class JoiningReplica(LinkedReplica):
    def _set_backlog(self, backlog: list[Update] | None) -> None:
        self._join_backlog = backlog
        self.backlog_bytes = sum(update_size(u) for u in backlog or ())
        self._update_congestion()

    def _join_attempt(self) -> Attempt:
        """The join on its way (one that is over if none is)."""
        if self._join is None:
            self._join = Attempt("join")
            self._join.end()
        return self._join

    def _reset_join(self) -> None:
        self._set_backlog(None)
        self._received = SnapshotReceiver()
        self._loaded = None
        self._catch_up_to = -1
        release, self._release_lock = self._release_lock, None
        if release is not None:
            release().addErrback(lambda f: None)

    # the serving side (the tail)

    def _serve_join(self, conn: FramedProtocol, msg: Message) -> None:
        hello = msg.hello
        link = self._new_link(conn, Side.SUCCESSOR, peer=f"join:{hello.address}")
        self._stamp(link)
        link.joining = True
        if not self.is_tail or self.succ is not None or self._joiner_limbo is not None:
            link.refuse("not the tail, or a join is already running; retry")
            return
        self.succ = link
        seq = self.state.committed_seq
        theirs = history_of(hello.marks)
        agreed = match_point(self.state.history, self.state.last_received, theirs, hello.last_op)
        attempt = self.life.begin("state transfer to a joiner")
        delta = self.state.catch_up_after(agreed)
        if delta is not None:
            log.info(
                "catch-up of {peer} by delta after op {m} (we hold {n})",
                peer=link.peer,
                m=agreed,
                n=self.state.last_received,
            )
            link.snapshot(SnapshotChunk(done=True, delta=True, last_op=agreed))
            self._set_backlog(delta)
            self._switch_to_joiner(link)
            return
        # writes after the snapshot go to the joiner once the snapshot is through
        self._set_backlog(self.state.sent_after(seq))
        frozen = freeze_committed(self.state)

        def wanted() -> bool:
            return link is self.succ and not link.closed and attempt.live

        SnapshotSender(
            self.reactor,
            self.store.runner,
            link,
            frozen.tree,
            frozen.seq,
            frozen.clients,
            wanted,
            lambda: self._switch_to_joiner(link),
            marks=frozen.marks,
        ).start()

    def _backlog_applied(self, u: Update) -> None:
        if self._join_backlog is not None:
            self._join_backlog.append(u)
            self.backlog_bytes += update_size(u)
            if self.unsent_bytes > self.intake.limit:
                self._update_congestion()  # a slow joiner slows the intake, not our memory

    def _switch_to_joiner(self, link: Link) -> None:
        """The joiner has its base: send the backlog, then treat it as our successor."""
        backlog = self._join_backlog or []
        self._set_backlog(None)
        link.ready = True
        for u in backlog:
            link.queue_update(u)
        # from here on, nothing commits here before the joiner has it
        self.state.new_successor()
        link.hello(
            self.name or "",
            self.view.config if self.view else 0,
            self.address,
            self.state.last_received,
        )
        log.info("{n} writes of backlog sent to {peer}", n=len(backlog), peer=link.peer)

    def _joiner_lost(self, link: Link) -> None:
        self.succ = None
        self._set_backlog(None)
        if not link.ready:
            log.info("joiner {peer} went away during the state transfer", peer=link.peer)
            self._advance()
            return
        # It had our backlog and may be registering: until its fate is known
        # nothing commits here, or it could become tail without our writes.
        # Bumping the chain record voids the registration it may still attempt
        # (it registers only against the record version it read); after that
        # a look at the members settles it.
        address = link.peer.removeprefix("join:")
        attempt = self.life.begin("voiding a dropped joiner")
        self._joiner_limbo = address
        log.info("joiner {a} went away; making sure it cannot register late", a=address)

        def bumped(version: int) -> Any:
            if version < 0:  # no record to void against: wait out its session instead
                wait = 1.5 * self._session_timeout()
                self.reactor.callLater(wait, self._end_limbo, address, attempt)
                return None
            return self._end_limbo(address, attempt)

        def failed(f: Failure) -> None:
            log.warn("voiding the joiner's registration failed: {e}", e=f.getErrorMessage())
            if attempt.live and self._joiner_limbo == address:
                self.reactor.callLater(0.5, self._joiner_retry, link, attempt)

        self.coordinator.bump_record().addCallbacks(bumped, failed)

    def _joiner_retry(self, link: Link, attempt: Attempt) -> None:
        if attempt.live and self.succ is None:
            self._joiner_lost(link)

    def _end_limbo(self, address: str, attempt: Attempt) -> None:
        """The dropped joiner can no longer register: read who is in the chain."""
        if not attempt.live or self._joiner_limbo != address or self.zk is None:
            return

        def decide(view: Any) -> None:
            if self._joiner_limbo != address or not attempt.live:
                return
            self._joiner_limbo = None
            self.set_view(view)
            self._advance()

        def again(f: Failure) -> None:  # ZooKeeper unreachable: look again, not at once
            self.reactor.callLater(LIMBO_RETRY_DELAY, self._end_limbo, address, attempt)

        self.zk.members().addCallbacks(decide, again)

    # the joining side

    def join(self) -> Deferred[None]:
        """Join the chain: catch up from the tail, then register as the new tail."""
        assert self.zk is not None
        self.life.to(State.JOINING, "catching up from the tail")
        attempt = self._join = self.life.begin("join")
        d = self.zk.lock("join").addCallback(lambda release: self._join_locked(release, attempt))
        d.addErrback(self._join_errback, attempt)
        return d

    def _join_locked(
        self, release: Callable[[], Deferred[None]], attempt: Attempt
    ) -> Deferred[None]:
        self._release_lock = release
        if not attempt.live:
            self._reset_join()
            return defer.succeed(None)
        # what the writer thread holds is what we have: anything received and
        # not stored was never acknowledged by us
        d: Deferred[Any] = self.store.current().addCallback(self._resync, attempt)
        d.addCallback(lambda _: self._read_chain())
        d.addCallback(self._join_decide, attempt)
        return d

    def _read_chain(self) -> Deferred[list[Any]]:
        """The membership and the chain record, read together: ``[view, (data, version)]``."""
        zk = self.coordinator
        reads: list[Deferred[Any]] = [zk.members(), zk.read_record()]
        return together(reads)

    def _resync(self, state: tuple[BTree, int], attempt: Attempt) -> None:
        if not attempt.live:
            return
        tree, last = state
        self.state.reset(last, tree)
        self.state.truncate(last)
        self.state.forget_recent()

    def _join_decide(self, found: list[Any], attempt: Attempt, cleaned: bool = False) -> Any:
        if not attempt.live:
            return None
        view, (data, version) = found
        stale = [m.name for m in view.members if m.address and m.address == self.own_address]
        if stale and not cleaned:
            # our previous incarnation, whose session has not expired yet: we
            # listen on its address now, so it is dead; its znode goes at once
            # rather than a session timeout later (and we never join from it)
            log.info("removing {names}: an earlier registration of this node", names=stale)
            d = together([self.coordinator.unregister(name) for name in stale])
            d.addCallback(lambda _: self._read_chain())
            return d.addCallback(self._join_decide, attempt, True)
        self.view = view
        self.record = ChainRecord.decode(data, version)
        # we register only against this version: a tail that drops us bumps it
        self._join_ticket = version if view.members and version >= 0 else None
        members = self._kvtwist_members(view)
        if members:
            tail = members[-1]
            if tail.address is None:
                raise RuntimeError(f"tail {tail.name} has no usable address")
            if self._examined.get(tail.name) is None:
                return self._examine(tail).addCallback(self._tail_judged, tail, found, attempt)
            return self._transfer_from(tail, view)
        if may_start(self.record, self.store.meta.get("name"), self.store.node_id, view.config):
            log.info(
                "the chain is empty; starting it from our copy (op {n})", n=self.state.last_received
            )
            # a chain that had members (it has a record) may have a removed one
            # still serving; a brand-new chain has nobody to wait for
            return self._register(attempt, restart=self.record.version >= 0)
        self._wait_for_members(attempt, [m for m in view.members if m not in members])
        return None

    def _kvtwist_members(self, view: Any) -> list[Any]:
        """The members of ``view`` not known to be foreign."""
        return [m for m in view.members if self._examined.get(m.name) is not Verdict.FOREIGN]

    def _tail_judged(
        self, result: tuple[Verdict, str], tail: Any, found: list[Any], attempt: Attempt
    ) -> Any:
        if not attempt.live:
            return None
        verdict, why = result
        if verdict is not Verdict.FOREIGN:
            return self._transfer_from(tail, self.view)
        if self.record.version < 0:
            # not a kvtwist chain's root: its members are not ours to remove
            log.warn(
                "{name} at {address} does not speak kvtwist's chain protocol ({why}), and this "
                "root keeps no kvtwist chain record: not joining it, leaving it alone",
                name=tail.name,
                address=format_address(tail.address),
                why=why,
            )
            return self._join_decide(found, attempt, True)
        d: Deferred[Any] = self._leave_out(tail, why)
        d.addCallback(lambda _: self._read_chain())
        return d.addCallback(self._join_decide, attempt, True)

    def _join_errback(self, f: Failure, attempt: Attempt) -> None:
        if attempt.live:
            self._join_failed(f.getErrorMessage() or repr(f.value))

    def _transfer_from(self, tail: Any, view: Any) -> Deferred[None]:
        self._received = SnapshotReceiver()
        self._loaded = None
        self._catch_up_to = -1
        conn = ChainConnection(self, self.link_config)
        link = self._new_link(conn, Side.PREDECESSOR, peer=tail.name)
        self.pred = link
        host, port = tail.address
        full = self._want_full or not self.state.last_received
        log.info(
            "joining: catching up from tail {name} at {host}:{port} (we hold op {n})",
            name=tail.name,
            host=host,
            port=port,
            n=self.state.last_received,
        )

        def connected(_: Any) -> None:
            hello = ChainHello(
                config=view.config,
                address=self.address,
                last_op=0 if full else self.state.last_received,
                marks=[] if full else marks_of(self.state.history),
            )
            conn.sendMessage(Message(opcode=wire.OP_CHAIN_JOIN, c_type=wire.CT_CHAIN, hello=hello))

        return self.connect(host, port, conn).addCallback(connected)

    def _snapshot_chunk(self, link: Link, chunk: SnapshotChunk) -> None:
        if not self.life.is_(State.JOINING) or link is not self.pred:
            link.refuse("no state transfer expected", retry=False)
            return
        if chunk.delta:
            self._delta_base(link, chunk.last_op)
            return
        self._received.add(chunk)
        if chunk.done:
            received, self._received = self._received, SnapshotReceiver()
            keys, values = received.keys, received.values
            self.state.dedup.clear()
            rows = [(r.client_id, r.request_id, r.seq, r.found) for r in received.clients]
            self.state.dedup.load(rows)
            self.state.history = history_of(chunk.marks)
            self.last_catch_up = "full"
            self._based_at(chunk.last_op)
            self._loaded = self.store.load(
                keys,
                values,
                chunk.last_op,
                self.state.history.marks,
                [ClientRow(*row) for row in self.state.dedup.rows()],
            )
            self._await_base()

    def _delta_base(self, link: Link, agreed: int) -> None:
        if agreed > self.state.last_received:
            link.refuse("delta past our log", retry=False)
            self._join_failed("the tail named a delta base past our log")
            return
        self.last_catch_up = "delta"
        rewind = agreed < self.state.last_received
        if rewind:
            log.warn(
                "dropping ops {a}-{b}: the chain never committed them",
                a=agreed + 1,
                b=self.state.last_received,
            )
            # back to nothing needs no log; anything else is replayed from ours
            if agreed == 0:
                self._loaded = self.store.load((), (), 0)
            else:
                self._loaded = self.store.rewind(agreed)
        else:
            self._loaded = defer.succeed(self.state.committed_tree)
        self.state.truncate(agreed)
        self._based_at(agreed)
        self._await_base()

    def _based_at(self, seq: int) -> None:
        self.state.reset(seq)
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
        self._join_failed(f"preparing our copy failed: {f.getErrorMessage()}")

    def _snapshot_loaded(self, tree: BTree, attempt: Attempt) -> None:
        if not attempt.live:
            return
        if self.state.committed_seq == self._loaded_seq:
            self.state.committed_tree = tree
        log.info("joining: state ready ({n} keys at op {s})", n=len(tree), s=self._loaded_seq)
        self._join_check()

    def _join_caught_up_to(self, link: Link, hello: Any) -> None:
        """The tail marks the end of the backlog: register once we hold that much."""
        link.ready = True
        link.peer = hello.sender
        self._catch_up_to = hello.last_op
        if self.state.committed_seq:
            link.queue_ack(self.state.committed_seq)
        self._join_check()

    def _join_applied(self) -> None:
        if self.life.is_(State.JOINING):
            self._join_check()

    def _join_check(self) -> None:
        if (
            self.life.is_(State.JOINING)
            and self._catch_up_to >= 0
            and self._loaded is not None
            and self._loaded.called
            and self.state.applied_seq >= self._catch_up_to
        ):
            self._catch_up_to = -1
            attempt = self._join_attempt()
            self._register(attempt).addErrback(self._join_errback, attempt)

    def _register(self, attempt: Attempt, restart: bool = False) -> Deferred[None]:
        """Create our znode; we act as a member once a view we read holds it.

        ``restart``: we start an empty chain from our own copy.
        """
        assert self.zk is not None
        self.life.to(State.REGISTERING, f"at op {self.state.last_received}")

        def registered(name: str) -> Any:
            if not attempt.live:
                # the join was abandoned meanwhile: this znode must not stay a member
                log.info("dropping {name}, registered by an abandoned join", name=name)
                return self.coordinator.unregister(name)
            self.name = name
            self._tie_lease(name)
            if restart:
                # the members before us left no word of whom they removed and
                # when: any of them may still serve until its lease is out
                self.hold_tail(self._removal_wait(), "restart")
            for link in (self.pred, self.succ):
                if link is not None:
                    self._stamp(link)  # our acknowledgements carry our name from now on
            self._want_full = False
            self._rejoin_delay = 0.5
            log.info("joined the chain as {name} at op {n}", name=name, n=self.state.last_received)
            self.store.save_meta({"name": name}).addErrback(
                lambda f: log.warn("could not record our name: {e}", e=f.getErrorMessage())
            )
            release, self._release_lock = self._release_lock, None
            d = release() if release else defer.succeed(None)
            d.addCallback(lambda _: self._refresh_view())
            return d

        return self.zk.register(self.address, self._join_ticket).addCallback(registered)

    def _join_failed(self, why: str) -> None:
        if self.life.is_(State.STOPPED, State.FENCED):
            return
        log.warn("join failed: {why}; retrying", why=why)
        self.fence(f"join failed: {why}")

    # waiting for the last configuration

    def _wait_for_members(self, attempt: Attempt, foreign: list[Any] | None = None) -> None:
        if foreign:
            who = ", ".join(f"{m.name} ({format_address(m.address)})" for m in foreign)
            names = (
                f"a chain whose members do not speak kvtwist ({who}: original servers?), "
                "see docs/migrating.md"
            )
        elif self.record.version >= 0:
            names = self.record.describe()
        else:
            names = "a chain that had members but keeps no kvtwist record (older or foreign nodes)"
        self.life.to(State.WAITING, f"the chain is empty; waiting for a node of {names}")
        self._wake_members()  # held requests are refused now: this may take an operator
        attempt = self.life.begin("waiting for the last configuration")
        log.warn(
            "the chain is empty and our copy (op {n}) is not from its last configuration "
            "({names}); waiting for one of those nodes, or for an operator to run "
            "'kvtwist-admin force-start'",
            n=self.state.last_received,
            names=names,
        )
        self._reset_join()  # releases the join lock
        info = {
            "address": self.address,
            "last_op": self.state.last_received,
            "epoch": self.state.history.epoch_at(self.state.last_received),
            "name": self.store.meta.get("name") or "",
        }
        advert = json.dumps(info).encode()
        self.coordinator.advertise_waiting(self.store.node_id, advert).addErrback(lambda f: None)
        self._wait_call = self.reactor.callLater(WAIT_POLL, self._look_again, attempt)

    def _look_again(self, attempt: Attempt) -> None:
        self._wait_call = None
        if not attempt.live:
            return

        def decide(found: list[Any]) -> None:
            if not attempt.live:
                return
            view, (data, version) = found
            record = ChainRecord.decode(data, version)
            last = self.store.meta.get("name")
            members = self._kvtwist_members(view)
            if members or may_start(record, last, self.store.node_id, view.config):
                self._stop_waiting()
                self.join()
            else:
                self._wait_call = self.reactor.callLater(WAIT_POLL, self._look_again, attempt)

        def failed(f: Failure) -> None:
            if attempt.live:
                self._wait_call = self.reactor.callLater(WAIT_POLL, self._look_again, attempt)

        d = self._read_chain()
        d.addCallbacks(decide, failed)

    def _stop_waiting(self) -> None:
        if self._wait_call is not None and self._wait_call.active():
            self._wait_call.cancel()
        self._wait_call = None
        if self.zk is not None and self.life.is_(State.WAITING, State.STOPPED):
            self.zk.withdraw_waiting(self.store.node_id).addErrback(lambda f: None)
