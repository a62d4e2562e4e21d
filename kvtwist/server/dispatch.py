"""Answering client requests: a table from opcode to handler, and the batched paths.

Each handler validates its kind of request (kvtwist.server.requests) and
returns the reply frame, or a Deferred of it.  Whatever a handler raises or
fails with becomes an ERROR reply here, or a relay to the member the request
belongs to: nothing a client sends fails past this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist import wire
from kvtwist.chain.bounds import Moved
from kvtwist.chain.outcomes import Refused, WriteResult
from kvtwist.chain.replica import NotHere, ReadView, Replica, Unavailable
from kvtwist.client.protocol import ConnectionPool
from kvtwist.server import requests
from kvtwist.server.limits import Limits
from kvtwist.server.metrics import Metrics, stats_reply
from kvtwist.server.requests import BIG_READS, POINT_READS, BadRequest
from kvtwist.store import Store
from kvtwist.wire import Message

log = Logger(namespace="kvtwist.server")

#: How often a request may be relayed (to the head or tail) before it is refused.
MAX_HOPS = 2

#: Answers one kind of request: a reply frame, or a Deferred of it.
Handler = Callable[[Message], "Deferred[bytes] | bytes"]


def write_reply(op: int, r: WriteResult, msg: Message | None = None) -> bytes:
    """The reply frame to a committed write; a refused read-modify-write raises Refused.

    ``msg``: the request, which a group's reply needs (its requests' kinds).
    """
    if op == wire.OP_MULTI and msg is not None:
        if r.rmw is not None and r.rmw.error:
            raise Refused(r.rmw.error)
        if r.rmw is not None and not r.rmw.applied:  # a watched key was written
            aborted = wire.result_reply(wire.OP_MULTI, r.op_n)
            aborted.aborted = True
            return wire.frame(aborted)
        return wire.frame(group_reply(msg, r))
    rmw = r.rmw
    if rmw is None or op not in wire.RMW_OPS:
        return wire.write_reply_frame(op, r.op_n, r.found if op == wire.OP_DEL else None)
    if rmw.error:
        raise Refused(rmw.error)
    old = rmw.old if rmw.found else None
    return wire.frame(wire.rmw_reply(op, r.op_n, rmw.applied, rmw.found, old, rmw.number))


def group_reply(msg: Message, r: WriteResult) -> Message:
    """An OP_MULTI's reply: in ``ops``, each request's own reply, or its ERROR."""
    out = wire.result_reply(wire.OP_MULTI, r.op_n)
    answers = r.group or ()
    for sub, a in zip(msg.ops, answers, strict=False):
        op = sub.opcode
        if a.error:
            one = wire.error_reply(a.error)
        elif op == wire.OP_GET:
            one = wire.reply(op, c_type=wire.CT_VALUE, values=[a.old] if a.found else [])
        elif op == wire.OP_PUT:
            one = wire.result_reply(op, r.op_n)
        elif op == wire.OP_RENAME:
            one = wire.result_reply(op, r.op_n)
            one.applied = a.applied
        elif op == wire.OP_DEL:
            one = wire.result_reply(op, r.op_n)
            one.found = a.found
        elif op == wire.OP_INCRBYFLOAT:
            one = wire.rmw_reply(op, r.op_n, True, a.found, None, 0)
            one.values.append(a.old)
        else:  # CAS, INCR, APPEND, SETRANGE
            old = a.old if a.found and sub.want_old else None
            one = wire.rmw_reply(op, r.op_n, a.applied, a.found, old, a.number)
        out.ops.append(one)
    return out


class Found:
    """GETs looked up and not yet answered: their values (None: no such key), with
    the ERROR frames of bad ones by position; or answers built already (``built``:
    relayed to the tail, or waited for)."""

    __slots__ = ("count", "errors", "frames", "metrics", "start", "values")

    def __init__(
        self,
        count: int,
        values: list[bytes | None],
        errors: dict[int, bytes],
        metrics: Metrics | None,
        start: float,
        frames: list[bytes] | None = None,
    ) -> None:
        self.count = count  # the GETs; ``values`` may hold only the first of them
        self.values = values
        self.errors = errors
        self.metrics = metrics
        self.start = start
        self.frames = frames

    @classmethod
    def built(cls, frames: list[bytes]) -> Found:
        return cls(len(frames), [], {}, None, 0.0, frames)


def fit(values: list[bytes | None], room: int, one: bool) -> int:
    """How many of ``values``, from the first, fit in ``room`` bytes (at least ``one``)."""
    total = 0
    for n, v in enumerate(values):
        total += len(v) if v else 0
        if total > room:
            return max(n, int(one))
    return len(values)


def answer_gets(founds: list[Found], room: int | None) -> list[bytes]:
    """The reply frames of GETs looked up, in order, while their values fit in ``room``
    (at least one): a prefix of the GETs, the caller asking again for the rest.

    Frames are built only here, once it is known which fit: the values are the
    tree's own until then, so GETs of several chains answered together cost no
    more memory than one chain's.
    """
    out: list[bytes] = []
    left = room
    reply = wire.get_reply_frame
    for found in founds:
        if found.frames is not None:
            out.extend(found.frames)
            continue
        values = found.values
        if left is not None:
            size = sum(map(len, filter(None, values)))
            if size > left:
                values = values[: fit(values, left, not out)]
                size = sum(map(len, filter(None, values)))
            left -= size
        n = len(values)
        errors = found.errors
        if not errors:
            out.extend([reply(v) for v in values])
            bad = 0
        else:
            out.extend([errors[i] if i in errors else reply(v) for i, v in enumerate(values)])
            bad = sum(i < n for i in errors)
        if found.metrics is not None:
            found.metrics.record_many(wire.OP_GET, time.perf_counter() - found.start, n, bad)
        if n < found.count:
            break
    return out


class Dispatcher:
    """Sends each request to its handler, relays what belongs elsewhere, keeps the counters."""

    def __init__(
        self,
        replica: Replica,
        limits: Limits,
        metrics: Metrics,
        forwarder: ConnectionPool,
        connections: Callable[[], int],
        map_version: Callable[[], int] = lambda: 0,
    ) -> None:
        """``connections``: how many clients are connected now (for STATS);
        ``map_version``: the shard map version the server acts on (a cluster's)."""
        self.replica = replica
        self.map_version = map_version
        self.limits = limits
        self.metrics = metrics
        self.forwarder = forwarder
        self._connections = connections
        self.table: dict[int, Handler] = {
            wire.OP_PUT: self._write,
            wire.OP_DEL: self._write,
            wire.OP_STATS: self._stats,
            wire.OP_WATCH: self._watch,
        }
        for rmw_op in wire.RMW_OPS | {wire.OP_MULTI}:
            self.table[rmw_op] = self._write
        for op in requests.READERS:
            self.table[op] = self._read

    @property
    def store(self) -> Store:
        return self.replica.store

    # the handlers

    def _write(self, msg: Message) -> Deferred[bytes]:
        op = msg.opcode
        request = requests.write_request(msg, self.limits)
        return self.replica.write(*request).addCallback(lambda r: write_reply(op, r, msg))

    def _watch(self, msg: Message) -> bytes:
        """Redis's WATCH: the head's watch point (kvtwist.chain.watch); relayed to it."""
        requests.check_ctype(msg, wire.CT_NONE)
        replica = self.replica
        if replica.fenced:
            raise Unavailable(f"node is not serving ({replica.life.describe()})")
        if not replica.is_head:
            head = replica.head_address()
            if head is not None and head == replica.own_address:
                raise Unavailable("the head is a stale registration of this node; retry")
            raise NotHere("head", head)
        # committed: the connection's later reads see every write up to it
        return wire.frame(wire.result_reply(wire.OP_WATCH, replica.state.committed_seq))

    def _stats(self, msg: Message) -> bytes:
        requests.check_ctype(msg, wire.CT_NONE)
        return wire.frame(stats_reply(self.replica, self.metrics, self._connections()))

    def _read(self, msg: Message) -> Deferred[bytes]:
        reader = requests.reader(msg, self.limits)
        op = msg.opcode
        store = self.store

        point = op in POINT_READS and len(msg.keys) <= requests.LOOK_KEYS

        def run(v: ReadView) -> Deferred[bytes]:
            if point:
                return store.look(lambda: reader(v))
            return store.read(lambda: reader(v), big=op in BIG_READS)

        replica = self.replica
        view: ReadView | None
        if msg.local:
            view = replica.committed_view()
        else:
            view = replica.serving_view()
        if view is None:  # this tail is not ready yet: wait for it, bounded
            return replica.read_view().addCallback(run)
        return run(view)

    @staticmethod
    def _not_a_request(msg: Message) -> bytes:
        raise requests.not_a_request(msg)

    # answering

    def handle(
        self, msg: Message, peer: Callable[[], str], handler: Handler | None = None
    ) -> Deferred[bytes]:
        """Answer one request with a complete reply frame; never fails.

        ``handler``: the connection's own (BACKUP keeps its cursor there), else the table's.
        """
        start = time.perf_counter()
        if handler is None:
            handler = self.table.get(msg.opcode, self._not_a_request)
        try:
            result = handler(msg)
        except Exception:
            answer = self._failed(Failure(), msg, start, peer)
            return answer if isinstance(answer, Deferred) else defer.succeed(answer)
        if isinstance(result, bytes):
            return defer.succeed(self._answered(result, msg.opcode, start))
        return result.addCallbacks(
            self._answered,
            self._failed,
            callbackArgs=(msg.opcode, start),
            errbackArgs=(msg, start, peer),
        )

    def get_many(
        self, msgs: list[Message], peer: Callable[[], str], room: int | None = None
    ) -> Deferred[list[bytes]]:
        """Answer GETs that arrived together with one lookup; never fails.

        Each GET is validated on its own (a bad one gets its ERROR in its
        place); when this node does not serve reads now, each goes the way of
        any other request (forwarded to the tail, or waiting for this node).
        With ``room``, replies are built only while their values fit in it (at
        least one): the answer then covers the first GETs only, and the caller
        asks again for the rest.
        """
        found = self.find_many(msgs, peer, room)
        return found.addCallback(lambda found: answer_gets([found], room))

    def find_many(
        self, msgs: list[Message], peer: Callable[[], str], room: int | None = None
    ) -> Deferred[Found]:
        """The values of GETs that arrived together, not yet answered (``answer_gets``);
        with ``room``, only those of the first GETs whose values fit in it (at least one)."""
        start = time.perf_counter()
        try:
            view = self.replica.serving_view()
        except Exception:
            view = None
        if view is None:
            return self._one_by_one(msgs, peer)
        keys: list[bytes | None] = []
        errors: dict[int, bytes] = {}
        for i, msg in enumerate(msgs):
            try:
                keys.append(requests.single_key(msg, self.limits))
            except BadRequest as e:
                keys.append(None)
                errors[i] = wire.frame(wire.error_reply(str(e)))
                log.debug("{peer}: bad GET: {e}", peer=peer(), e=e)
        if not view.whole and not all(k is None or view.holds(k) for k in keys):
            return self._one_by_one(msgs, peer)  # a key the chain gave away: refused there
        tree = view.tree

        def run() -> list[bytes | None]:
            get = tree.get
            if not errors:
                found = [get(k) for k in keys]  # type: ignore[arg-type]
            else:
                found = [None if k is None else get(k) for k in keys]
            if room is not None and sum(map(len, filter(None, found))) > room:
                found = found[: fit(found, room, True)]
            return found

        def looked(values: list[bytes | None]) -> Found:
            return Found(len(msgs), values, errors, self.metrics, start)

        def failed(f: Failure) -> Found:
            log.failure("{peer}: GET failed", f, peer=peer())
            self.metrics.record_many(wire.OP_GET, time.perf_counter() - start, len(msgs), len(msgs))
            error = wire.frame(wire.error_reply(f"internal error: {f.getErrorMessage()}"))
            return Found.built([error] * len(msgs))

        return self.store.look(run).addCallbacks(looked, failed)

    def _one_by_one(self, msgs: list[Message], peer: Callable[[], str]) -> Deferred[Found]:
        """Each GET the way of any request: relayed, waited for, or refused."""
        return defer.gatherResults([self.handle(m, peer) for m in msgs]).addCallback(Found.built)

    def write_many(self, msgs: list[Message], peer: Callable[[], str]) -> Deferred[list[bytes]]:
        """Answer PUTs and DELs that arrived together: numbered and logged as one batch.

        A bad one gets its ERROR in its place; at a node that is not the
        head, each goes the way of any other request (forwarded to the head).
        """
        replica = self.replica
        if replica.fenced or not replica.is_head:
            return defer.gatherResults([self.handle(m, peer) for m in msgs])
        start = time.perf_counter()
        frames: list[Any] = [None] * len(msgs)
        batch = []
        index = []
        for i, msg in enumerate(msgs):
            try:
                batch.append(requests.write_request(msg, self.limits))
            except BadRequest as e:
                frames[i] = self._failed(Failure(e), msg, start, peer)
                continue
            index.append(i)

        def answered(outcomes: list[WriteResult | Exception]) -> Any:
            metrics = self.metrics
            elapsed = time.perf_counter() - start
            for i, o in zip(index, outcomes, strict=True):
                msg = msgs[i]
                if isinstance(o, Exception):
                    frames[i] = self._failed(Failure(o), msg, start, peer)
                    continue
                op = msg.opcode
                try:
                    frames[i] = write_reply(op, o, msg)
                except Refused as e:
                    frames[i] = self._failed(Failure(e), msg, start, peer)
                    continue
                metrics.record(op, elapsed, False)
            if any(isinstance(f, Deferred) for f in frames):
                return defer.gatherResults(
                    [f if isinstance(f, Deferred) else defer.succeed(f) for f in frames]
                )
            return frames

        if not batch:
            return defer.succeed(frames)
        return replica.write_many(batch).addCallback(answered)

    def _answered(self, data: bytes, op: int, start: float) -> bytes:
        self.metrics.record(op, time.perf_counter() - start, False)
        return data

    def _failed(
        self, f: Failure, msg: Message, start: float, peer: Callable[[], str]
    ) -> bytes | Deferred[bytes]:
        """An ERROR reply for a failed request, or the answer of the member it belongs to."""
        op = msg.opcode
        if f.check(NotHere):
            forwarded = self._forward(f.value, msg)  # type: ignore[arg-type]
            if forwarded is not None:
                return forwarded.addCallback(self._answered, op, start)
        if f.check(BadRequest, Refused):
            log.debug(
                "{peer}: bad {op}: {e}", peer=peer(), op=wire.op_name(op), e=f.getErrorMessage()
            )
            reply = wire.error_reply(f.getErrorMessage())
        elif f.check(Moved):
            # a client routing by an older map: it reads the map again, then retries
            reply = wire.error_reply(
                f"{f.getErrorMessage()} (shard map version {self.map_version()}): "
                "read the map again",
                retry=True,
            )
            reply.map_version = self.map_version()
        elif f.check(Unavailable, NotHere):
            reply = wire.error_reply(f.getErrorMessage(), retry=True)
        else:
            log.failure("{peer}: {op} failed", f, peer=peer(), op=wire.op_name(op))
            reply = wire.error_reply(f"internal error: {f.getErrorMessage()}")
        self.metrics.record(op, time.perf_counter() - start, True)
        return wire.frame(reply)

    def _forward(self, exc: NotHere, msg: Message) -> Deferred[bytes] | None:
        """Relay a request to the head or tail; None when it may not travel further."""
        if exc.target is None or msg.hops >= MAX_HOPS:
            return None
        fwd = Message()
        fwd.CopyFrom(msg)
        fwd.hops += 1

        def unreachable(f: Failure) -> bytes:
            return wire.frame(
                wire.error_reply(f"the {exc.role} is unreachable: {f.getErrorMessage()}", True)
            )

        return self.forwarder.request(exc.target, fwd).addCallbacks(wire.frame, unreachable)
