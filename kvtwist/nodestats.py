"""The operations fields of a node's STATS reply (fields 8 and up of ``Stats``).

``kvtwist-admin status`` builds its per-member rows from these; they live
apart from the request dispatch so that the server adds them with one call.
"""

from __future__ import annotations

import os
from typing import Any

import kvtwist
from kvtwist.proto.kvtwist_pb2 import Stats


def directory_bytes(path: str) -> int:
    """Bytes of the regular files under ``path`` (the log segments and snapshots).

    A data directory holds a handful of files, so walking it per STATS request
    is cheap; a file removed meanwhile (an old segment) simply does not count.
    """
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                continue
    return total


def zk_state(replica: Any) -> str:
    """The ZooKeeper session as the node last heard of it; empty when standalone."""
    if replica.standalone or replica.zk is None:
        return ""
    # a coordinator need not say more than the Coordinator protocol does (or even that)
    state = getattr(replica.zk, "state", None)
    if isinstance(state, str):
        return state
    connected = getattr(replica.zk, "connected", None)
    if connected is None:
        return ""
    return "connected" if connected else "suspended"


def unacked_age(replica: Any) -> float:
    """Seconds the oldest update sent to the successor has waited for the chain's
    acknowledgement (0 without one): at the head, how far the tail trails it."""
    succ = replica.succ
    return float(succ.unacked_age()) if succ is not None and not succ.closed else 0.0


def add_operations_fields(stats: Stats, replica: Any) -> Stats:
    """Fill in op numbers, the Sent list, version, disk use and session state."""
    state = replica.state
    stats.received = state.last_received
    stats.applied = state.applied_seq
    stats.sent_count = len(state.pending)
    stats.sent_bytes = state.pending_bytes
    stats.version = kvtwist.__version__
    journal = getattr(replica.store, "journal", None)
    if journal is not None:
        stats.data_dir_bytes = directory_bytes(journal.path)
    stats.zk_state = zk_state(replica)
    stats.member = replica.name or ""
    stats.unacked_age_s = unacked_age(replica)
    for side, link in (("succ", replica.succ), ("pred", replica.pred)):
        if link is not None and not link.closed and link.rtt is not None:
            setattr(stats, f"{side}_rtt_s", link.rtt)
    return stats
