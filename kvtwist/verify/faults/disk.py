"""The disk fault: a hostile value that embeds a log record, a kill while it is logged,
and the log's last record torn as a power cut would."""

from __future__ import annotations

import os
import socket
import time
import zlib
from pathlib import Path
from random import Random
from typing import TYPE_CHECKING

from kvtwist import wire
from kvtwist.procs import RawClient
from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.storage import wal
from kvtwist.storage.records import CorruptData, LogRecord
from kvtwist.verify.faults.base import Active, Healthy, Node, file_size, read_bytes_from
from kvtwist.verify.faults.signals import pick_victims, restart_later

if TYPE_CHECKING:
    from kvtwist.verify.nemesis import Nemesis

#: hostile-torn: the key it writes (not a client key: no history of its own).
HOSTILE_KEY = b"hostile-torn"
HOSTILE_WAIT = 5.0


def hostile_torn(nem: Nemesis, healthy: Healthy) -> Active | None:
    members = nem.w.members()
    head = nem.w.node_of(members[0][1]) if members else None
    if head is None or head.state != "running":
        return None
    variants = ["one", "all"] if nem.whole(healthy) else ["one"]
    every = nem.pick("hostile-torn", healthy, variants) == "all"
    victims, what = pick_victims(nem, "hostile-torn", healthy, every)
    try:
        with RawClient(head.port, timeout=2.0) as c:
            seq = int(c.stats().last_op) + 2  # the op after the hostile put, most likely
    except (OSError, RuntimeError, ValueError):
        return None
    embedded = embedded_record(seq)
    segments = {id(n): newest_segment(n) for n in victims}
    starts = {
        id(n): file_size(p) if p is not None else 0
        for n, p in zip(victims, segments.values(), strict=True)
    }
    logged: set[int] = set()
    with socket.create_connection(("127.0.0.1", head.port), timeout=2.0) as sock:
        sock.sendall(wire.frame(wire.req_put(HOSTILE_KEY, hostile_value(embedded))))
        # kill each victim the moment the value is in its log, or all once it is in all
        deadline = time.monotonic() + HOSTILE_WAIT
        while len(logged) < len(victims) and time.monotonic() < deadline:
            for n in victims:
                path = newest_segment(n)
                if id(n) not in logged and path is not None:
                    if path != segments[id(n)]:
                        segments[id(n)], starts[id(n)] = path, 0
                    if embedded in read_bytes_from(path, starts[id(n)]):
                        logged.add(id(n))
                        if not every:
                            n.proc.kill()
            time.sleep(0.001)
        for n in victims:
            n.proc.kill()
            n.state = "down"
    torn = [f"{n.label}: {tear_last_record(newest_segment(n), embedded, nem.rng)}" for n in victims]
    return restart_later(
        nem,
        "hostile-torn",
        victims,
        every,
        f"hostile value (record of op {seq}) logged by {len(logged)} of {len(victims)}; "
        f"crash {what}; " + "; ".join(torn),
    )


def embedded_record(seq: int) -> bytes:
    """Log records of op ``seq`` as well as a client can forge them (wal.py): one in
    the version 1 framing (a public CRC-32) and one in the version 2 framing under a
    guessed salt (a client never learns a segment's)."""
    forged = LogRecord(seq=seq, is_put=True, key=HOSTILE_KEY, data=b"forged")
    payload = Update(seq=seq, is_put=True, key=HOSTILE_KEY, data=b"forged").SerializeToString()
    v1 = wal.V1_RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload
    return v1 + wal.encode_records([forged], bytes(wal.SALT_SIZE))


def hostile_value(embedded: bytes) -> bytes:
    """A value holding ``embedded``, with room after it for a tear that leaves it whole."""
    return b"hostile:" + embedded + b"\x00" * 64


def newest_segment(node: Node) -> Path | None:
    """The node's newest log segment (the one it appends to), if any."""
    segments = sorted((node.proc.dir / "data" / "wal").glob("*.log"))
    return segments[-1] if segments else None


def tear_last_record(path: Path | None, embedded: bytes, rng: Random) -> str:
    """Cut the segment's last record short as a power cut would, if it is the hostile
    one; what was done.

    The cut falls after ``embedded``, so a valid-looking record follows the torn
    one.  Any other last record is left whole: it may be a client's write that
    every member had on disk before it was acknowledged, which no power cut can
    take back (tearing it on every member would lose an acknowledged write by
    the nemesis's hand, not the node's).  The hostile put is the campaign's own,
    and while it is the last record nothing after it can have committed.
    """
    if path is None:
        return "no log segment"
    data = path.read_bytes()
    try:
        scan = wal.scan_segment(data, str(path), last=True)
    except CorruptData as e:
        return f"left as the kill left it ({e})"
    if scan.torn is not None or not scan.records:
        return f"left as the kill left it ({scan.torn or 'no records'})"
    start, end = scan.records[-1][0], scan.end
    at = data.find(embedded, start, end)
    if at < 0:
        return "left whole (its last record is not the hostile one)"
    cut = rng.randint(at + len(embedded), end - 1)
    os.truncate(path, cut)
    return f"cut the hostile record at byte {cut - start} of {end - start}"
