"""The campaign's clients speaking RESP (``kvtwist-torture --workload resp``).

Each logical client holds one connection to a node's RESP port, as a Redis
client would (no view of the chain: any member relays), and moves to the
next port when its connection breaks.  Keys of odd index are counters,
driven by INCR and read by GET; the others are registers, driven by SET,
SET NX and DEL and read by GET, every SET writing a value no other writes.
The linearizability checker models both (kvtwist.verify.linearizability):
an INCR answered ``n`` read ``n - 1`` and wrote ``n``; a SET NX answered
``OK`` found the key absent, one answered nil found it present.

Outcome rules: a reply is ``ok``; an error other than ``-TRYAGAIN`` is a
refusal made before anything was applied (``fail``); ``-TRYAGAIN``, a lost
connection or our own timeout leaves a write's fate open (``unknown``):
Redis clients carry no retry identity, so a TRYAGAIN'd write may have been
applied.
"""

from __future__ import annotations

import random
import sys
import time
from collections import deque
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from kvtwist.resp.codec import encode_command
from kvtwist.verify.history import Op
from kvtwist.verify.workload import Workload, log_failed


class ReplyError(Exception):
    """An error reply (``-...``)."""

    @property
    def retry(self) -> bool:
        return str(self).startswith("TRYAGAIN")


class ProtocolError(Exception):
    """A reply that does not parse."""


def parse_reply(buf: bytes, pos: int = 0) -> tuple[Any, int] | None:
    """One RESP2/RESP3 reply from ``buf`` at ``pos``: (value, end), None if incomplete."""
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        return None
    kind, line = buf[pos : pos + 1], buf[pos + 1 : nl]
    end = nl + 2
    if kind == b"+":
        return line.decode(errors="replace"), end
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), end
    if kind == b":":
        return int(line), end
    if kind == b"_":
        return None, end
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, end
        if len(buf) < end + n + 2:
            return None
        return buf[end : end + n], end + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, end
        items = []
        for _ in range(n):
            got = parse_reply(buf, end)
            if got is None:
                return None
            item, end = got
            items.append(item)
        return items, end
    raise ProtocolError(f"unexpected reply type {kind!r}")


class RespClient(Protocol):
    """A pipelining RESP client: one Deferred per command, answered in order."""

    transport: Any

    def __init__(self) -> None:
        self._buf = b""
        self._waiting: deque[Deferred[Any]] = deque()
        self.lost = False

    def command(self, *args: bytes) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if self.lost:
            d.errback(ConnectionLost("connection lost"))
            return d
        self._waiting.append(d)
        self.transport.write(encode_command(*args))
        return d

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        pos = 0
        while self._waiting:
            try:
                got = parse_reply(self._buf, pos)
            except (ProtocolError, ValueError) as e:
                self.transport.abortConnection()
                self._fail(Failure(e))
                return
            if got is None:
                break
            value, pos = got
            d = self._waiting.popleft()
            if isinstance(value, ReplyError):
                d.errback(value)
            else:
                d.callback(value)
        self._buf = self._buf[pos:]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        self._fail(Failure(ConnectionLost("connection lost")))

    def _fail(self, f: Failure) -> None:
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(f)

    def close(self) -> None:
        if not self.lost:
            self.transport.loseConnection()


class RespWorkload(Workload):
    """The workload's logical clients over RESP, to the nodes' RESP ports."""

    def __init__(self, *args: Any, ports: list[int], ports_file: str = "", **kw: Any) -> None:
        """``ports_file``: one RESP port a line, appended to as the campaign starts nodes."""
        super().__init__(*args, **kw)
        self.ports = ports
        self.ports_file = ports_file
        self.conns: dict[int, RespClient] = {}

    def known_ports(self) -> list[int]:
        if self.ports_file:
            try:
                with open(self.ports_file, encoding="ascii") as f:
                    found = [int(line) for line in f if line.strip().isdigit()]
            except OSError:
                found = []
            self.ports = list(dict.fromkeys(self.ports + found))
        return self.ports

    @defer.inlineCallbacks
    def connection(self, process: int, rng: random.Random) -> Any:
        """The client's connection, or a new one to the next port that answers."""
        conn = self.conns.get(process)
        if conn is not None and not conn.lost:
            return conn
        while not self.stopping and (not self.stop_at or time.monotonic() < self.stop_at):
            ports = self.known_ports()
            start = rng.randrange(len(ports))
            for i in range(len(ports)):
                port = ports[(start + i) % len(ports)]
                endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port, timeout=2)
                try:
                    conn = yield connectProtocol(endpoint, RespClient())
                except Exception:
                    continue
                self.conns[process] = conn
                return conn
            yield task.deferLater(self.reactor, 0.2, lambda: None)
        return None

    @defer.inlineCallbacks
    def run(self) -> Any:
        rng = random.Random(self.rng.random())
        processes = range(self.first_client, self.first_client + self.n_clients)
        for i in processes:
            yield self.connection(i, rng)
        print("ready", file=sys.stderr, flush=True)
        self.stop_at = time.monotonic() + self.duration
        loops = defer.DeferredList(
            [self.client_loop(i, None) for i in processes], consumeErrors=True
        )
        yield defer.DeferredList([loops, self.stopped], fireOnOneCallback=True)
        self.stopping = True
        self.abandon()
        for c in self.conns.values():
            c.close()
        return None

    def choose(self, rng: random.Random, process: int, n: int) -> tuple[str, str, str | None]:
        """The next operation: (kind, key, value written)."""
        index = rng.randrange(len(self.keys))
        key = self.keys[index]
        r = rng.random()
        if index % 2:
            return ("get" if r < self.get_share else "incr"), key, None
        if r < self.get_share:
            return "get", key, None
        rest = (r - self.get_share) / (1 - self.get_share) if self.get_share < 1 else 0.0
        kind = "put" if rest < 0.5 else "setnx" if rest < 0.8 else "del"
        return kind, key, (f"c{process}-{n}" if kind != "del" else None)

    @defer.inlineCallbacks
    def client_loop(self, process: int, client: Any) -> Any:
        rng = random.Random(self.rng.random() + process)
        n = 0
        while not self.stopping and time.monotonic() < self.stop_at:
            conn = yield self.connection(process, rng)
            if conn is None:
                break
            kind, key, value = self.choose(rng, process, n)
            n += 1
            k = key.encode()
            if kind == "get":
                d = conn.command(b"GET", k)
            elif kind == "incr":
                d = conn.command(b"INCR", k)
            elif kind == "put":
                d = conn.command(b"SET", k, value.encode())  # type: ignore[union-attr]
            elif kind == "setnx":
                d = conn.command(b"SET", k, value.encode(), b"NX")  # type: ignore[union-attr]
            else:
                d = conn.command(b"DEL", k)
            invoke = self.now()
            self.in_flight[process] = (kind, key, value, invoke)
            d.addTimeout(self.op_timeout, self.reactor)
            try:
                result = yield d
            except Exception as e:
                definite = isinstance(e, ReplyError) and not e.retry and "internal" not in str(e)
                outcome = "fail" if definite else "unknown"
                complete = self.now()
                log_failed(complete, process, kind, key, invoke, outcome, e)
                if not isinstance(e, ReplyError):
                    conn.close()
                    self.conns.pop(process, None)
                if self.in_flight.pop(process, None) is None:
                    return None
                done = complete if outcome == "fail" else None
                self.record(Op(process, kind, key, value, invoke, done, outcome))  # type: ignore[arg-type]
            else:
                complete = self.now()
                if self.in_flight.pop(process, None) is None:
                    return None
                if kind == "get":
                    value = None if result is None else result.decode("utf-8", "replace")
                elif kind == "incr":
                    value = str(result)
                elif kind == "setnx" and result is None:
                    kind = "setnx_refused"
                self.record(Op(process, kind, key, value, invoke, complete, "ok"))  # type: ignore[arg-type]
            if self.think > 0:
                yield task.deferLater(self.reactor, rng.uniform(0, 2 * self.think), lambda: None)
        return None
