"""Counters of answered requests, and the STATS reply made from them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kvtwist import wire
from kvtwist.chain.replica import Replica
from kvtwist.nodestats import add_operations_fields
from kvtwist.proto.kvtwist_pb2 import OpStats
from kvtwist.proto.kvtwist_pb2 import Stats as StatsMsg
from kvtwist.tree import BTree
from kvtwist.wire import Message


@dataclass
class OpCounter:
    count: int = 0
    errors: int = 0
    total_s: float = 0.0


@dataclass
class Metrics:
    started: float = field(default_factory=time.monotonic)
    ops: dict[int, OpCounter] = field(default_factory=dict)  # by opcode
    connections_refused: int = 0  # over --max-connections
    #: told ``(opcode, seconds, count)`` per answered run (the Prometheus histograms)
    observe: Callable[[int, float, int], None] | None = None

    def record(self, op: int, seconds: float, error: bool) -> None:
        self.record_many(op, seconds, 1, 1 if error else 0)

    def record_many(self, op: int, seconds: float, count: int, errors: int) -> None:
        """``count`` requests of one kind answered together, each in ``seconds``."""
        c = self.ops.get(op)
        if c is None:
            c = self.ops[op] = OpCounter()
        c.count += count
        c.total_s += seconds * count
        c.errors += errors
        if self.observe is not None:
            self.observe(op, seconds, count)


def stats_reply(replica: Replica, metrics: Metrics, connections: int) -> Message:
    """The STATS reply: the committed state's shape, the node's role, per-opcode counters."""
    tree: BTree = replica.committed_tree
    stats = StatsMsg(
        keys=len(tree),
        height=tree.height(),
        connections=connections,
        uptime_s=time.monotonic() - metrics.started,
        last_op=replica.committed_seq,
        role=replica.role,
    )
    for name, c in sorted((wire.op_name(op), c) for op, c in metrics.ops.items()):
        mean = c.total_s / c.count * 1e6 if c.count else 0.0
        stats.ops.append(OpStats(op=name, count=c.count, mean_service_us=mean, errors=c.errors))
    add_operations_fields(stats, replica)
    return wire.reply(wire.OP_STATS, c_type=wire.CT_STATS, stats=stats)
