"""Histories of a simulated, correct register store: known answers for the checker.

Each simulated process issues one operation at a time; every operation takes
effect at a random instant inside its [invoke, complete] interval, and reads
return what the store held at that instant -- linearizable by construction,
with as much overlap as the timing parameters give.  ``make_stale`` then
breaks exactly one read, so the checker can be seen to reject it.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import replace

from kvtwist.verify.history import Op

__all__ = ["linearizable_history", "make_stale"]


def linearizable_history(
    n_ops: int,
    keys: int = 20,
    processes: int = 10,
    seed: int = 0,
    unknown_rate: float = 0.01,
    fail_rate: float = 0.005,
    mean_latency: float = 0.5,
    mean_gap: float = 0.1,
) -> list[Op]:
    """``n_ops`` operations by ``processes`` clients over ``keys`` keys, in invoke order."""
    rng = random.Random(seed)
    names = [f"k{i}" for i in range(keys)]
    ready = [(rng.random() * mean_gap, p) for p in range(processes)]
    heapq.heapify(ready)
    planned = []  # (effect time or None, index, op)
    for index in range(n_ops):
        t, process = heapq.heappop(ready)
        invoke = t + rng.expovariate(1 / mean_gap)
        duration = rng.expovariate(1 / mean_latency)
        complete = invoke + duration
        effect: float | None = rng.uniform(invoke, complete)
        r = rng.random()
        kind = "get" if r < 0.5 else "put" if r < 0.85 else "del"
        key = rng.choice(names)
        value = f"p{process}-{index}" if kind == "put" else None
        fate = rng.random()
        outcome = "ok"
        if fate < fail_rate:
            outcome, effect = "fail", None
        elif fate < fail_rate + unknown_rate:
            outcome = "unknown"
            if kind == "get" or rng.random() < 0.5:
                effect = None  # a lost request, or a lost reply of a read
        op = Op(process, kind, key, value, invoke, complete, outcome)  # type: ignore[arg-type]
        planned.append((effect, index, op))
        heapq.heappush(ready, (complete, process))
    store: dict[str, str | None] = {}
    out: dict[int, Op] = {}
    for effect, index, op in sorted(planned, key=lambda x: (x[0] is None, x[0] or 0.0, x[1])):
        if effect is not None:
            if op.op == "put":
                store[op.key] = op.value
            elif op.op == "del":
                store[op.key] = None
            else:
                op = replace(op, value=store.get(op.key))
        if op.outcome == "unknown":
            op = replace(op, complete=None, value=None if op.op == "get" else op.value)
        out[index] = op
    return [out[i] for i in range(n_ops)]


def make_stale(ops: list[Op], seed: int = 0) -> tuple[list[Op], int]:
    """Change one read to return a value overwritten before the read began.

    Picks a read R of key K and acknowledged puts W1, then W2 (a put or del of
    K) such that W1 completed before W2 was invoked and W2 completed before R
    was invoked: R cannot linearize before W2, nor W1 after it, so R reading
    W1's (unique) value is a violation.  Returns the new history and the
    index of the changed read.
    """
    rng = random.Random(seed)
    writes: dict[str, list[Op]] = {}
    written: dict[str | None, int] = {}
    for op in ops:
        if op.outcome == "ok" and op.op in ("put", "del"):
            writes.setdefault(op.key, []).append(op)
        if op.op == "put" and op.outcome != "fail":
            written[op.value] = written.get(op.value, 0) + 1
    reads = [i for i, op in enumerate(ops) if op.op == "get" and op.outcome == "ok"]
    rng.shuffle(reads)
    for i in reads:
        r = ops[i]
        ws = writes.get(r.key, [])
        for w2 in ws:
            if w2.complete is None or w2.complete >= r.invoke:
                continue
            for w1 in ws:
                if (
                    w1.op == "put"
                    and w1.complete is not None
                    and w1.complete < w2.invoke
                    and written.get(w1.value) == 1
                    and w1.value != r.value
                ):
                    stale = list(ops)
                    stale[i] = replace(r, value=w1.value)
                    return stale, i
    raise ValueError("no read can be made stale in this history")
