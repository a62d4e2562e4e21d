"""Where one request's time goes: the node's request path timed piece by piece.

Every piece is the project's own code (``kvtwist.wire``, ``Dispatcher.get_many``/``write_many``,
``Store``, ``BTree``, ``ThreadRunner``) run in a loop in this process, and
reported in microseconds per request, timeit-style: the best of several
repeats, each the mean over many requests.  Each piece is measured with one
request per call (as a node serves 32 connections × pipeline 1: one frame per
read, one reply per send, one request per reactor turn) and with a batch of 32
(as under pipelining, where one read, one turn and one thread hop carry many).

A piece whose code cannot be found or called any more (the request path is
changing) is reported with the reason and left out of the sums; the others
are still measured.

    python benchmarks/breakdown.py [--keys 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VALUE = b"v" * 32
BATCHES = (1, 32)
OPS = ("GET", "PUT")
REPEATS = 5
#: Requests timed in each repeat of a piece (more for the cheapest pieces).
MIN_REQUESTS = 2_000


@dataclass
class Piece:
    """One row of the breakdown: what was timed, and its cost per request."""

    name: str
    calls: str  # the project code that was timed
    op: str  # GET or PUT
    batch: int  # requests per call, read, reactor turn or hop
    in_sum: bool  # False for rows contained in another row (shown for reference)
    us: float | None = None
    error: str | None = None


def best_per_request(run_batch: Callable[[], float], requests: int, batch: int) -> float:
    """µs per request: the best of REPEATS means, each over about ``requests`` requests.

    ``run_batch`` handles ``batch`` requests and returns the seconds that count
    (set-up and clean-up around the timed part are its own business).
    """
    rounds = max(1, requests // batch)
    best = float("inf")
    for _ in range(REPEATS):
        total = 0.0
        for _ in range(rounds):
            total += run_batch()
        best = min(best, total / (rounds * batch))
    return best * 1e6


def timed(f: Callable[[], Any]) -> Callable[[], float]:
    """A batch runner that times all of ``f``."""

    def run() -> float:
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0

    return run


# ---- what the node is fed ----------------------------------------------------


class Workload:
    """Keys as the node's wire format takes them, and request frames built by ``kvtwist.wire``."""

    def __init__(self, keys: int, seed: int = 7) -> None:
        from kvtwist import wire
        from kvtwist.bench.workload import key_name

        self.wire = wire
        self.n = keys
        field = wire.Message.DESCRIPTOR.fields_by_name["keys"]
        as_bytes = field.type == field.TYPE_BYTES
        prefix = "bench:"
        self.keys: list[Any] = [
            (prefix + key_name(i)).encode() if as_bytes else prefix + key_name(i)
            for i in range(keys)
        ]
        rng = random.Random(seed)
        self.order = [rng.randrange(keys) for _ in range(1 << 14)]
        self.pos = 0

    def next_key(self) -> Any:
        self.pos = (self.pos + 1) % len(self.order)
        return self.keys[self.order[self.pos]]

    def request(self, op: str) -> Any:
        key = self.next_key()
        if op == "GET":
            return self.wire.req_get(key)
        return self.wire.req_put(key, VALUE)

    def frames(self, op: str, n: int) -> list[bytes]:
        return [self.wire.frame(self.request(op)) for _ in range(n)]


# ---- pieces without a reactor --------------------------------------------------


def socket_io(w: Workload, op: str, batch: int) -> Callable[[], float]:
    """One send and one recv of ``batch`` frames over a TCP loopback connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = b"".join(w.frames(op, batch))
    size = len(data)
    send, recv = a.send, b.recv

    def run() -> float:
        t0 = time.perf_counter()
        send(data)
        got = len(recv(65536))
        t1 = time.perf_counter()
        while got < size:
            got += len(recv(65536))
        return t1 - t0

    return run


def frame_parse(w: Workload, op: str, batch: int) -> Callable[[], float]:
    decoder = w.wire.FrameDecoder()
    data = b"".join(w.frames(op, batch))
    return timed(lambda: decoder.feed(data))


def decode(w: Workload, op: str, batch: int) -> Callable[[], float]:
    payloads = [f[4:] for f in w.frames(op, batch)]
    dec = w.wire.decode

    def run() -> float:
        t0 = time.perf_counter()
        for p in payloads:
            dec(p)
        return time.perf_counter() - t0

    return run


def tree_op(w: Workload, op: str, batch: int) -> Callable[[], float]:
    from kvtwist.tree import BTree

    tree = BTree()
    for k in w.keys:
        tree.put(k, VALUE)
    if op == "GET":
        f: Callable[[Any], Any] = tree.get
    else:
        put = tree.put
        value = b"w" * len(VALUE)

        def f(k: Any) -> Any:
            return put(k, value)

    def run() -> float:
        keys = [w.next_key() for _ in range(batch)]
        t0 = time.perf_counter()
        for k in keys:
            f(k)
        return time.perf_counter() - t0

    return run


def reply_encoding(w: Workload, op: str, batch: int) -> Callable[[], float]:
    """The reply message built and framed as the server builds it, with ``kvtwist.wire``."""
    wire = w.wire

    def one() -> bytes:
        if op == "GET":
            return wire.get_reply_frame(VALUE)
        return wire.write_reply_frame(wire.OP_PUT, 12345)

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(batch):
            one()
        return time.perf_counter() - t0

    return run


# ---- pieces through a node in memory (no threads, no sockets) -------------------


class Node:
    """A standalone node as the unit tests build one: inline tree work, a memory reactor."""

    def __init__(self, w: Workload) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from kvtwist.chain.replica import Replica
        from kvtwist.server import NodeFactory
        from kvtwist.store import InlineRunner, Store

        self.reactor = MemoryReactorClock()
        self.store = Store(self.reactor, InlineRunner())
        self.replica = Replica(self.reactor, self.store)
        self.factory = NodeFactory(self.reactor, self.replica)
        self.w = w
        handle = self.factory.dispatcher.handle
        for start in range(0, w.n, 1000):
            for k in w.keys[start : start + 1000]:
                handle(w.wire.req_put(k, VALUE), _peer)
            self.settle()
        size = len(self.replica.committed_tree)
        if size != w.n:
            raise RuntimeError(f"preloading the node left {size} keys, not {w.n}")

    def settle(self) -> None:
        for _ in range(3):
            self.reactor.advance(0)


def _peer() -> str:
    return "127.0.0.1:0"


def _batch_entry(node: Node, op: str) -> Callable[[list[Any], Callable[[], str]], Any]:
    """What the protocol calls for requests that arrived together: get_many or write_many."""
    d = node.factory.dispatcher
    return d.get_many if op == "GET" else d.write_many


def dispatch(node: Node, op: str, batch: int) -> Callable[[], float]:
    """``Dispatcher.get_many`` / ``write_many`` for ``batch`` requests, up to the queued work."""
    entry, w = _batch_entry(node, op), node.w

    def run() -> float:
        msgs = [w.request(op) for _ in range(batch)]
        t0 = time.perf_counter()
        d = entry(msgs, _peer)
        t1 = time.perf_counter()
        node.settle()
        _check_answered(d, batch, op)
        return t1 - t0

    return run


def completion(node: Node, op: str, batch: int) -> Callable[[], float]:
    """The reactor turn after the batch entry point: the queued batch run, replies made."""
    entry, w = _batch_entry(node, op), node.w

    def run() -> float:
        d = entry([w.request(op) for _ in range(batch)], _peer)
        t0 = time.perf_counter()
        node.settle()
        t1 = time.perf_counter()
        _check_answered(d, batch, op)
        return t1 - t0

    return run


def _check_answered(d: Any, batch: int, op: str) -> None:
    answers: list[list[bytes]] = []
    d.addCallback(answers.append)
    if len(answers) != 1 or len(answers[0]) != batch:
        raise RuntimeError(f"the {batch} {op}s were not answered in one reactor turn")


def protocol_path(node: Node, op: str, batch: int) -> Callable[[], float]:
    """``NodeProtocol.dataReceived`` of ``batch`` frames on a StringTransport, through the reply."""
    from twisted.internet.testing import StringTransport

    proto: Any = node.factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    w = node.w

    def run() -> float:
        data = b"".join(w.frames(op, batch))
        t0 = time.perf_counter()
        proto.dataReceived(data)
        node.settle()
        t1 = time.perf_counter()
        out = transport.value()
        transport.clear()
        if len(w.wire.FrameDecoder().feed(out)) != batch:
            raise RuntimeError(f"{op}: {batch} frames in, not {batch} replies out")
        return t1 - t0

    return run


# ---- the thread hand-off (a real reactor and real threads) ---------------------


def thread_hops() -> dict[tuple[str, int], float]:
    """µs per request of the hop to the reader or writer threads and back.

    GET: ``Store.read`` on a ``ThreadRunner``, which carries all the reads of a
    reactor turn in one hop; PUT: ``ThreadRunner.write`` with one job running a
    whole batch, as the store sends a batch of writes.  The work done on the
    thread is nothing, so this is the hand-off alone.  Runs the reactor once.
    """
    from twisted.internet import defer
    from twisted.internet import reactor as the_reactor

    from kvtwist.store import Store, ThreadRunner

    reactor: Any = the_reactor
    out: dict[tuple[str, int], float] = {}
    failed: list[BaseException] = []

    @defer.inlineCallbacks
    def measure() -> Any:
        runner = ThreadRunner(reactor)
        store = Store(reactor, runner)
        try:
            for op in OPS:
                for batch in BATCHES:
                    rounds = max(200, MIN_REQUESTS // batch)
                    best = float("inf")
                    for _ in range(REPEATS):
                        t0 = time.perf_counter()
                        for _ in range(rounds):
                            if op == "GET":
                                yield defer.gatherResults(
                                    [store.read(_nothing) for _ in range(batch)]
                                )
                            else:
                                yield runner.write(functools.partial(_batch_of_nothing, batch))
                        best = min(best, (time.perf_counter() - t0) / (rounds * batch))
                    out[(op, batch)] = best * 1e6
        except Exception as e:  # reported by the caller
            failed.append(e)
        finally:
            runner.stop()
            reactor.stop()

    reactor.callWhenRunning(measure)
    reactor.run()
    if failed:
        raise failed[0]
    return out


def _nothing() -> int:
    return 0


def _batch_of_nothing(n: int) -> list[int]:
    return [_nothing() for _ in range(n)]


# ---- all of it -----------------------------------------------------------------


class Context:
    """What the pieces share, built on first use; a part that cannot be built fails
    only the pieces that need it, with the reason."""

    def __init__(self, keys: int) -> None:
        self.keys = keys
        self._made: dict[str, Any] = {}

    def _get(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._made:
            try:
                self._made[name] = make()
            except Exception as e:
                self._made[name] = RuntimeError(f"{name}: {type(e).__name__}: {e}")
        got = self._made[name]
        if isinstance(got, RuntimeError):
            raise got
        return got

    @property
    def w(self) -> Workload:
        return self._get("the workload (kvtwist.wire requests)", lambda: Workload(self.keys))  # type: ignore[no-any-return]

    @property
    def node(self) -> Node:
        return self._get(  # type: ignore[no-any-return]
            "a node in memory (NodeFactory, Replica, Store with InlineRunner)",
            lambda: Node(self.w),
        )

    def hop(self, op: str, batch: int) -> float:
        hops = self._get("the thread hand-off (ThreadRunner, a running reactor)", thread_hops)
        return hops[(op, batch)]  # type: ignore[no-any-return]


def timed_piece(
    build: Callable[[Context, str, int], Callable[[], float]],
) -> Callable[[Context, str, int], float]:
    return lambda ctx, op, batch: best_per_request(build(ctx, op, batch), MIN_REQUESTS, batch)


#: Every piece, in request order: (name, the code timed, counted in the sum,
#: how to measure it in µs per request for an op and a batch size).  Rows not
#: counted in the sum are contained in another row, or a check on the sum.
PIECES: list[tuple[str, str, bool, Callable[[Context, str, int], float]]] = [
    (
        "socket I/O: one send + one recv",
        "socket send and recv over TCP on 127.0.0.1 (the request read, the reply written)",
        True,
        timed_piece(lambda c, op, b: socket_io(c.w, op, b)),
    ),
    (
        "frame parse",
        "kvtwist.wire.FrameDecoder.feed",
        True,
        timed_piece(lambda c, op, b: frame_parse(c.w, op, b)),
    ),
    (
        "protobuf decode",
        "kvtwist.wire.decode",
        True,
        timed_piece(lambda c, op, b: decode(c.w, op, b)),
    ),
    (
        "dispatch",
        "kvtwist.server.dispatch.Dispatcher.get_many (GET) / write_many (PUT), "
        "up to the queued work",
        True,
        timed_piece(lambda c, op, b: dispatch(c.node, op, b)),
    ),
    (
        "completion",
        "the reactor turn after get_many / write_many: the store's batch run inline "
        "(InlineRunner), tree work, reply encoding, Deferreds fired",
        True,
        timed_piece(lambda c, op, b: completion(c.node, op, b)),
    ),
    (
        "of which: tree get / put",
        "kvtwist.tree.BTree.get (GET), BTree.put over an existing key (PUT)",
        False,
        timed_piece(lambda c, op, b: tree_op(c.w, op, b)),
    ),
    (
        "of which: reply encoding",
        "kvtwist.wire.get_reply_frame (GET) / write_reply_frame (PUT)",
        False,
        timed_piece(lambda c, op, b: reply_encoding(c.w, op, b)),
    ),
    (
        "thread hand-off, one hop per batch",
        "kvtwist.store.Store.read (GET) / ThreadRunner.write (PUT) on a ThreadRunner: "
        "a SimpleQueue to its thread, callFromThread back",
        True,
        lambda c, op, b: c.hop(op, b),
    ),
    (
        "check: in-process path",
        "NodeProtocol.dataReceived on a StringTransport and the reactor turn: frame "
        "parse to reply written, no sockets, no threads (compare: parse + decode + "
        "dispatch + completion)",
        False,
        timed_piece(lambda c, op, b: protocol_path(c.node, op, b)),
    ),
]


def measure_all(keys: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every piece for GET and PUT at each batch size; a failure becomes a row with its reason."""
    ctx = Context(keys)
    pieces: list[Piece] = []
    gc.collect()
    for name, calls, in_sum, measure in PIECES:
        for op in OPS:
            for batch in BATCHES:
                piece = Piece(name, calls, op, batch, in_sum)
                try:
                    piece.us = measure(ctx, op, batch)
                except Exception as e:  # one missing piece must not end the run
                    piece.error = (
                        str(e)
                        if isinstance(e, RuntimeError)
                        else (f"{calls}: {type(e).__name__}: {e}")
                    )
                    log(f"  breakdown: {name} ({op}, batch {batch}) not measured: {piece.error}")
                pieces.append(piece)
    sums: dict[str, Any] = {}
    for op in OPS:
        for batch in BATCHES:
            rows = [p for p in pieces if p.op == op and p.batch == batch and p.in_sum]
            sums[f"{op} {batch}"] = {
                "us": sum(p.us for p in rows if p.us is not None),
                "missing": [p.name for p in rows if p.us is None],
            }
    return {
        "keys": keys,
        "batches": list(BATCHES),
        "pieces": [asdict(p) for p in pieces],
        "sums": sums,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=100_000, help="keys in the tree (100000)")
    p.add_argument("--json", help="write the pieces here")
    args = p.parse_args(argv)
    data = measure_all(args.keys)
    for piece in data["pieces"]:
        cost = f"{piece['us']:8.2f} us" if piece["us"] is not None else "     n/a   "
        print(f"{piece['op']} x{piece['batch']:<3d} {cost}  {piece['name']}")
    for name, s in data["sums"].items():
        missing = f" (not measured: {', '.join(s['missing'])})" if s["missing"] else ""
        print(f"sum {name}: {s['us']:.2f} us per request{missing}")
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
