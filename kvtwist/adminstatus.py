"""What ``kvtwist-admin status`` and ``health`` know about a chain, and how they show it.

The chain's shape comes from ZooKeeper (the member znodes in chain order and
the chain record); each member's op numbers, Sent list and the rest come from
its own STATS reply.  Gathering is split from showing so that the rows, the
health rules and both output formats are tested without a chain.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from kvtwist.chain.record import ChainRecord
from kvtwist.membership import Member, format_address

#: Asks one member for its STATS: ``(host, port)`` to the reply's ``Stats``
#: message; raises on no answer (the message becomes the row's ``error``).
AskStats = Callable[[tuple[str, int]], Any]

#: How many members are asked at once: a member that hangs costs its timeout once.
PARALLEL = 8


@dataclass
class MemberRow:
    """One member: where ZooKeeper puts it, and what it said of itself (if it answered)."""

    name: str
    address: str | None
    position: str  # head / middle / tail / head+tail: its place in ZooKeeper's order
    answered: bool = False
    error: str | None = None
    role: str | None = None  # what the node reports (it may still be joining)
    received: int | None = None
    applied: int | None = None
    committed: int | None = None
    lag: int | None = None  # ops the head has received that this member has not applied
    #: seconds, at most, since the head sent on the first op this member lacks (0: none)
    lag_s: float | None = None
    unacked_age_s: float | None = None  # its own oldest update not acknowledged downstream
    succ_rtt_s: float | None = None  # the last round trip on its link to the successor
    pred_rtt_s: float | None = None
    sent_count: int | None = None
    sent_bytes: int | None = None
    uptime_s: float | None = None
    version: str | None = None
    data_dir_bytes: int | None = None  # None: in memory, or no answer
    zk_state: str | None = None
    keys: int | None = None
    connections: int | None = None


@dataclass
class ChainStatus:
    root: str
    record: ChainRecord | None  # None: the chain has never written one
    members: list[MemberRow] = field(default_factory=list)
    waiting: list[dict[str, Any]] = field(default_factory=list)


def position(index: int, count: int) -> str:
    """A member's place in chain order: the first is the head, the last the tail."""
    if count == 1:
        return "head+tail"
    return "head" if index == 0 else "tail" if index == count - 1 else "middle"


def _fill(row: MemberRow, stats: Any) -> None:
    row.answered = True
    row.role = stats.role
    row.received = stats.received
    row.applied = stats.applied
    row.committed = stats.last_op
    row.sent_count = stats.sent_count
    row.sent_bytes = stats.sent_bytes
    row.uptime_s = round(stats.uptime_s, 3)
    row.version = stats.version or None  # nodes before these fields send none
    row.data_dir_bytes = stats.data_dir_bytes if stats.HasField("data_dir_bytes") else None
    row.zk_state = stats.zk_state or None
    row.keys = stats.keys
    row.connections = stats.connections
    row.unacked_age_s = round(stats.unacked_age_s, 6)
    for side in ("succ_rtt_s", "pred_rtt_s"):
        if stats.HasField(side):
            setattr(row, side, round(getattr(stats, side), 6))


def _ask(ask: AskStats, address: tuple[str, int]) -> tuple[Any, str | None]:
    try:
        return ask(address), None
    except Exception as e:  # any failure is this member's row, not the command's end
        return None, str(e) or type(e).__name__


def blank_rows(members: Sequence[Member]) -> list[MemberRow]:
    """One row per member in chain order, before any of them answered."""
    rows = [
        MemberRow(
            m.name, format_address(m.address) if m.address else None, position(i, len(members))
        )
        for i, m in enumerate(members)
    ]
    for row in rows:
        if row.address is None:
            row.error = "no address in its znode"
    return rows


def answered(row: MemberRow, stats: Any, error: str | None) -> None:
    """Fill in a member's row from its STATS, or say why it gave none."""
    if stats is None:
        row.error = error
    else:
        _fill(row, stats)


def member_rows(members: Sequence[Member], ask: AskStats) -> list[MemberRow]:
    """One row per member in chain order, with the lag of each behind the head."""
    rows = blank_rows(members)
    targets = [(row, m.address) for row, m in zip(rows, members, strict=True) if m.address]
    if targets:
        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(targets))) as pool:
            answers = list(pool.map(lambda t: _ask(ask, t[1]), targets))
        for (row, _address), (stats, error) in zip(targets, answers, strict=True):
            answered(row, stats, error)
    return with_lag(rows)


def with_lag(rows: list[MemberRow]) -> list[MemberRow]:
    """Each answering member's lag behind the head, in ops and in seconds."""
    head = rows[0] if rows else None
    if head is not None and head.answered and head.received is not None:
        for row in rows:
            if row.answered and row.applied is not None:
                # replies come at slightly different moments: never a negative lag
                row.lag = max(0, head.received - row.applied)
                row.lag_s = lag_seconds(row.lag, head.unacked_age_s)
    return rows


def lag_seconds(lag: int, head_unacked_age: float | None) -> float | None:
    """How long, at most, a member has lacked an op the head holds: 0 when it lacks none.

    Every op a member lacks is one the head has not had acknowledged yet (the
    chain acknowledges an op only once every member applied it), so the age of
    the head's oldest unacknowledged update bounds how long ago the head sent
    on the first op the member lacks.
    """
    if lag == 0:
        return 0.0
    return head_unacked_age


def problems(status: ChainStatus, want_members: int = 1) -> list[str]:
    """What keeps the chain from being healthy, one line each; empty when it is."""
    out: list[str] = []
    rows = status.members
    if not rows:
        return [f"the chain {status.root} has no members"]
    if len(rows) < want_members:
        out.append(f"the chain has {len(rows)} members, fewer than the {want_members} wanted")
    for row in rows:
        where = f"{row.name} at {row.address}" if row.address else row.name
        if not row.answered:
            out.append(f"{row.position} {where} does not answer: {row.error}")
            continue
        if row.position in ("head", "head+tail") and row.role not in ("head", "head+tail"):
            out.append(f"head {where} is not serving as head (it says {row.role or 'nothing'})")
        if row.position in ("tail", "head+tail") and row.role not in ("tail", "head+tail"):
            out.append(f"tail {where} is not serving as tail (it says {row.role or 'nothing'})")
    return out


# -- showing ------------------------------------------------------------------


def record_json(record: ChainRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "epoch": record.epoch,
        "config": record.config,
        "members": [{"name": n, "address": a} for n, a in record.members],
        "force": record.force or None,
    }


def status_json(status: ChainStatus) -> str:
    """The machine-readable form; its keys are stable (docs/operations.md lists them)."""
    body = {
        "root": status.root,
        "record": record_json(status.record),
        "members": [asdict(row) for row in status.members],
        "waiting": status.waiting,
    }
    return json.dumps(body, indent=2, sort_keys=True)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_seconds(seconds: float | None) -> str:
    """A short span: ``0``, ``850µs``, ``12.3ms``, ``4.56s``."""
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {s:02d}s"


COLUMNS = (
    "NAME",
    "ROLE",
    "ADDRESS",
    "RECEIVED",
    "APPLIED",
    "COMMITTED",
    "LAG",
    "LAG S",
    "RTT",
    "SENT",
    "SENT BYTES",
    "UPTIME",
    "VERSION",
    "DATA DIR",
    "ZK",
)


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def table_rows(rows: Sequence[MemberRow]) -> list[list[str]]:
    out = [list(COLUMNS)]
    for r in rows:
        if not r.answered:
            out.append([r.name, r.position, r.address or "-", f"does not answer: {r.error}"])
            continue
        out.append(
            [
                r.name,
                r.role or "-",
                r.address or "-",
                _cell(r.received),
                _cell(r.applied),
                _cell(r.committed),
                _cell(r.lag),
                human_seconds(r.lag_s),
                human_seconds(r.succ_rtt_s),
                _cell(r.sent_count),
                human_bytes(r.sent_bytes),
                human_duration(r.uptime_s),
                _cell(r.version),
                human_bytes(r.data_dir_bytes) if r.data_dir_bytes is not None else "in memory",
                _cell(r.zk_state),
            ]
        )
    return out


def align(rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell; a short row (no answer) ends in its message."""
    full = [r for r in rows if len(r) == len(rows[0])]
    widths = [max(len(r[i]) for r in full) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i]) for i, c in enumerate(r[:-1])] + [r[-1]]
        lines.append("  ".join(cells).rstrip())
    return lines


def status_table(status: ChainStatus) -> str:
    record = status.record
    lines = [f"chain       {status.root}"]
    lines.append(f"record      {record.describe() if record is not None else 'none yet'}")
    lines.append(f"members     {len(status.members) or 'none'}")
    if status.members:
        lines.append("")
        lines += align(table_rows(status.members))
    for info in status.waiting:
        lines.append(
            f"waiting     {info.get('node_id')} at {info.get('address')}: "
            f"op {info.get('last_op')}, epoch {info.get('epoch')}, "
            f"last name {info.get('name') or '-'}"
        )
    return "\n".join(lines)


def health_json(found: list[str]) -> str:
    return json.dumps({"healthy": not found, "problems": found}, indent=2, sort_keys=True)


def health_table(found: list[str]) -> str:
    return "\n".join(found) if found else "healthy"
