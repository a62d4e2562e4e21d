"""The campaign's clients: one reactor process, many logical clients, one history.

Run by ``kvtwist-torture`` as ``python -m kvtwist.verify.workload ...``.  It is
a separate process so that the runner's blocking work (starting nodes,
reading ZooKeeper, signalling) never delays a client's clock readings.  Each
logical client has its own :class:`ChainClient` (its own view of the chain)
and issues one operation at a time: a random get, put or delete on a small
key set, every put writing a value no other put writes.  Every operation
becomes one JSON line, flushed at once, so a crash of this process loses
nothing already decided.

Times are ``time.monotonic() - epoch`` with the runner's epoch: the monotonic
clock is system-wide, so the runner's fault times and these line up.

With ``--big-values FRACTION`` that share of puts writes a value of 64 KiB up
to ``--max-big-value`` bytes (log-uniform).  Such a value is its unique tag,
its size and a filler derived from the tag (:func:`big_value`); the history
records only ``tag#size``, and a read turns the bytes back into that text
after checking every byte (:func:`value_text`), so a torn or mixed-up big
value reads as a value nobody wrote and the checker says so.

Outcome rules: success is ``ok``; an ERROR reply that is not retryable comes
from validation before anything is applied, so it is ``fail``, unless it says
the outcome is unknown (a re-send the chain can no longer deduplicate); that
and anything else (the client's deadline, our own per-operation timeout, a
lost connection, an internal error) leaves a write's fate open, so it is
``unknown``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import signal
import sys
import time
from typing import IO, Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from kvtwist.chain.dedup import OUTCOME_UNKNOWN
from kvtwist.client.api import Client
from kvtwist.client.chain import ChainClient
from kvtwist.client.protocol import KVError
from kvtwist.verify.history import Op, dumps

log = Logger(namespace="kvtwist.verify.workload")

#: Big values start here; the cap is ``--max-big-value``.
BIG_MIN = 64 * 1024


def big_value(tag: str, size: int) -> bytes:
    """``size`` bytes that only ``tag`` produces: a header, then a filler from its hash."""
    head = f"{tag}#{size}|".encode()
    seed = hashlib.sha256(head).digest()
    rest = max(0, size - len(head))
    return head + (seed * (rest // len(seed) + 1))[:rest]


def key_text(key: bytes) -> str:
    """A stored key as the history names it (the workload's keys are ASCII text)."""
    return key.decode("utf-8", "backslashreplace")


def value_text(data: bytes) -> str:
    """A value as the history records it; a big one is ``tag#size`` once every byte checks."""
    bar = data.find(b"|", 0, 200)
    if bar > 0 and b"#" in data[:bar]:
        head = data[:bar].decode("utf-8", "replace")
        tag, _, size = head.rpartition("#")
        if size.isdigit() and big_value(tag, int(size)) == data:
            return head
        return f"corrupt big value {head!r} ({len(data)} bytes)"
    return data.decode("utf-8", "replace")



def log_failed(
    at: float, process: int, kind: str, key: Any, invoke: float, outcome: str, e: Exception
) -> None:
    """One stderr line for an operation that failed (``outcome`` fail or unknown)."""
    print(
        f"[{at:8.3f}] client {process} {kind} {key!r} invoked at {invoke:.3f}:"
        f" {outcome}: {type(e).__name__}: {e}",
        file=sys.stderr,
        flush=True,
    )

class Workload:
    """Logical clients that stop issuing at ``stop_at`` (or on ``stop()``)."""

    def __init__(
        self,
        reactor: Any,
        out: IO[str],
        zk_hosts: str,
        root: str,
        clients: int,
        keys: int,
        duration: float,
        seed: int,
        epoch: float,
        deadline: float,
        op_timeout: float,
        think: float,
        big_values: float = 0.0,
        max_big_value: int = 1 << 20,
        first_client: int = 0,
        get_share: float = 0.5,
        cluster: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.cluster = cluster  # a cluster's name: each client a ClusterClient of it
        self.first_client = first_client
        self.get_share = get_share
        self.big_values = big_values
        self.max_big_value = max(BIG_MIN, max_big_value)
        self.out = out
        self.zk_hosts = zk_hosts
        self.root = root
        self.n_clients = clients
        self.keys = [f"k{i}" for i in range(keys)]
        self.duration = duration
        self.rng = random.Random(seed)
        self.epoch = epoch
        self.deadline = deadline
        self.op_timeout = op_timeout
        self.think = think
        self.stopping = False
        self.stopped: Deferred[None] = Deferred()
        self.stop_at = 0.0
        self.in_flight: dict[int, tuple[str, str, str | None, float]] = {}
        self.counts = {"ok": 0, "fail": 0, "unknown": 0}

    def now(self) -> float:
        return time.monotonic() - self.epoch

    def record(self, op: Op) -> None:
        self.counts[op.outcome] += 1
        self.out.write(dumps(op) + "\n")
        self.out.flush()

    def stop(self) -> None:
        """Stop now: operations in flight are recorded as unknown (we will not wait)."""
        self.stopping = True
        if not self.stopped.called:
            self.stopped.callback(None)

    @defer.inlineCallbacks
    def run(self) -> Any:
        clients = []
        for _ in range(self.n_clients):
            clients.append((yield self.connect()))
        print("ready", file=sys.stderr, flush=True)
        self.stop_at = time.monotonic() + self.duration
        loops = defer.DeferredList(
            [self.client_loop(i, c) for i, c in enumerate(clients, self.first_client)],
            consumeErrors=True,
        )
        yield defer.DeferredList([loops, self.stopped], fireOnOneCallback=True)
        self.stopping = True
        self.abandon()
        for c in clients:
            try:
                yield c.close()
            except Exception:  # closing a session of a dead ZooKeeper: nothing to keep
                pass
        return None

    def connect(self) -> Deferred[Any]:
        """One logical client: of the chain at ``root``, or of the cluster named."""
        if self.cluster is not None:
            from kvtwist.client.cluster import ClusterClient

            return ClusterClient.connect(
                self.reactor, self.zk_hosts, self.cluster, deadline=self.deadline
            )
        return ChainClient.connect(self.reactor, self.zk_hosts, self.root, deadline=self.deadline)

    def abandon(self) -> None:
        """Record whatever is still in flight as unknown (its reply never came)."""
        for process, (kind, key, value, invoke) in sorted(self.in_flight.items()):
            print(
                f"[{self.now():8.3f}] client {process} {kind} {key!r} invoked at {invoke:.3f}:"
                " still in flight at the end: unknown",
                file=sys.stderr,
                flush=True,
            )
            self.record(
                Op(
                    process,
                    kind,  # type: ignore[arg-type]
                    key,
                    value if kind in ("put", "setnx") else None,
                    invoke,
                    None,
                    "unknown",
                )
            )
        self.in_flight.clear()

    @defer.inlineCallbacks
    def client_loop(self, process: int, client: Client) -> Any:
        rng = random.Random(self.rng.random())
        n = 0
        while not self.stopping and time.monotonic() < self.stop_at:
            r = rng.random()
            puts = self.get_share + 0.7 * (1 - self.get_share)
            kind = "get" if r < self.get_share else "put" if r < puts else "del"
            key = rng.choice(self.keys)
            value = f"c{process}-{n}" if kind == "put" else None
            data: bytes | None = None
            if value is not None and rng.random() < self.big_values:
                size = int(math.exp(rng.uniform(math.log(BIG_MIN), math.log(self.max_big_value))))
                data = big_value(value, size)
                value = f"{value}#{size}"
            n += 1
            invoke = self.now()
            self.in_flight[process] = (kind, key, value, invoke)
            d: Deferred[Any]
            if kind == "get":
                d = client.get(key)
            elif kind == "put":
                assert value is not None
                d = client.put(key, value if data is None else data)
            else:
                d = client.delete(key)
            d.addTimeout(self.op_timeout, self.reactor)
            try:
                result = yield d
            except Exception as e:
                outcome = "fail" if self.definite(e) else "unknown"
                complete = self.now()
                log_failed(complete, process, kind, key, invoke, outcome, e)
                if self.in_flight.pop(process, None) is None:
                    return None  # abandoned at shutdown: already recorded
                self.record(
                    Op(
                        process,
                        kind,  # type: ignore[arg-type]
                        key,
                        value,
                        invoke,
                        complete if outcome == "fail" else None,
                        outcome,  # type: ignore[arg-type]
                    )
                )
            else:
                complete = self.now()
                if self.in_flight.pop(process, None) is None:
                    return None
                if kind == "get":
                    value = None if result is None else value_text(result)
                self.record(Op(process, kind, key, value, invoke, complete, "ok"))  # type: ignore[arg-type]
            if self.think > 0:
                yield task.deferLater(self.reactor, rng.uniform(0, 2 * self.think), lambda: None)
        return None

    @staticmethod
    def definite(e: Exception) -> bool:
        """Did the node refuse the request before doing anything?"""
        return (
            isinstance(e, KVError)
            and not e.retry
            and not e.reason.startswith(("internal error", "undecodable reply", OUTCOME_UNKNOWN))
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kvtwist.verify.workload")
    parser.add_argument("--zk", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epoch", type=float, default=None)
    parser.add_argument("--deadline", type=float, default=8.0)
    parser.add_argument("--op-timeout", type=float, default=12.0)
    parser.add_argument("--think", type=float, default=0.02)
    parser.add_argument("--big-values", type=float, default=0.0)
    parser.add_argument("--max-big-value", type=int, default=1 << 20)
    # a second workload process appending to the same history numbers its clients on
    parser.add_argument("--first-client", type=int, default=0)
    parser.add_argument("--get-share", type=float, default=0.5)
    # --cluster NAME: the clients are cluster clients (kvtwist.client.cluster) of NAME
    parser.add_argument("--cluster", default=None)
    # --protocol resp: the clients speak RESP to these ports (kvtwist.verify.resp_workload)
    parser.add_argument("--protocol", choices=("kv", "resp"), default="kv")
    parser.add_argument("--resp-ports", default="")
    parser.add_argument("--resp-ports-file", default="")
    args = parser.parse_args(argv)
    epoch = time.monotonic() if args.epoch is None else args.epoch

    def go(reactor: Any) -> Deferred[Any]:
        out = open(args.out, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
        kind: Any = Workload
        extra: dict[str, Any] = {}
        if args.protocol == "resp":
            from kvtwist.verify.resp_workload import RespWorkload

            kind = RespWorkload
            extra["ports"] = [int(p) for p in args.resp_ports.split(",") if p]
            extra["ports_file"] = args.resp_ports_file
        elif args.cluster:
            extra["cluster"] = args.cluster
        w = kind(
            reactor,
            out,
            args.zk,
            args.root,
            args.clients,
            args.keys,
            args.duration,
            args.seed,
            epoch,
            args.deadline,
            args.op_timeout,
            args.think,
            args.big_values,
            args.max_big_value,
            args.first_client,
            args.get_share,
            **extra,
        )

        def on_term(*_: object) -> None:
            reactor.callFromThread(w.stop)

        signal.signal(signal.SIGTERM, on_term)

        def closed(result: Any) -> Any:
            out.close()
            return result

        d: Deferred[Any] = w.run()
        return d.addBoth(closed)

    task.react(go)


if __name__ == "__main__":
    main()
