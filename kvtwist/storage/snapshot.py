"""Snapshot files: the whole state at one seq, written once, read in large pieces.

Layout (all integers big-endian)::

    header   "KVTSNAP\\n" | u32 version | u64 log id | u64 seq | u32 crc32(previous 28 bytes)
    records  u32 length | u32 crc32(body) | body, where body[0] is the kind:
      1 entries  u32 n | u32 key-bytes | n x u32 key length (bytes)
                 | n x u32 value length | keys | values
      2 epochs   u32 n | n x (u64 first seq, u64 epoch)
      3 clients  u32 n | u32 id-bytes | n x u32 id length | n x u64 request id
                 | n x u64 seq | n x u8 found | client ids (UTF-8)
      255 trailer  u64 entries | u32 epochs | u32 clients | u32 crc32(every byte before this record)

Entries come in key order, in records of about ``BATCH_BYTES``; then one epochs
record, then client records, then the trailer, which must end the file.  The
columnar layout lets a reader cut a million keys out of a few records with
slices instead of parsing a million messages.

Version 2 is written.  Version 1, from when keys were text, differs only in the
entries record: key lengths count code points and the keys are one UTF-8
string.  It is still read (its keys come back as their UTF-8 bytes), so a data
directory written before keys were bytes recovers unchanged.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from kvtwist.storage.disk import DiskFile
from kvtwist.storage.records import ClientRow, CorruptData
from kvtwist.tree import BTree

SNAP_MAGIC = b"KVTSNAP\n"
SNAP_VERSION = 2
#: Keys as text: lengths in code points, one UTF-8 string (read, never written).
SNAP_VERSION_TEXT_KEYS = 1
SNAP_HEADER = struct.Struct(">8sIQQ")
HEADER_SIZE = SNAP_HEADER.size + 4
RECORD_HEADER = struct.Struct(">II")
TRAILER = struct.Struct(">BQIII")
BATCH_BYTES = 1 << 20
ENTRIES, EPOCHS, CLIENTS, END = 1, 2, 3, 255
_ENC = "surrogatepass"  # a client id is any str; never fail to write one back


def snapshot_name(seq: int) -> str:
    return f"{seq:020d}.snap"


def parse_snapshot_name(name: str) -> int | None:
    if len(name) == 25 and name.endswith(".snap") and name[:20].isdigit():
        return int(name[:20])
    return None


class _Writer:
    def __init__(self, f: DiskFile) -> None:
        self.f = f
        self.crc = 0

    def raw(self, data: bytes) -> None:
        self.f.write(data)
        self.crc = zlib.crc32(data, self.crc)

    def record(self, body: bytes) -> None:
        self.raw(RECORD_HEADER.pack(len(body), zlib.crc32(body)) + body)


def _entries_body(keys: list[bytes], values: list[bytes]) -> bytes:
    n = len(keys)
    kb = b"".join(keys)
    return b"".join(
        (
            struct.pack(">BII", ENTRIES, n, len(kb)),
            struct.pack(f">{n}I", *map(len, keys)),
            struct.pack(f">{n}I", *map(len, values)),
            kb,
            *values,
        )
    )


def _clients_body(rows: Sequence[ClientRow]) -> bytes:
    n = len(rows)
    ids = [r.client_id for r in rows]
    ib = "".join(ids).encode("utf-8", _ENC)
    return b"".join(
        (
            struct.pack(">BII", CLIENTS, n, len(ib)),
            struct.pack(f">{n}I", *map(len, ids)),
            struct.pack(f">{n}Q", *(r.request_id for r in rows)),
            struct.pack(f">{n}Q", *(r.seq for r in rows)),
            bytes(1 if r.found else 0 for r in rows),
            ib,
        )
    )


def write_snapshot_file(
    f: DiskFile,
    log_id: int,
    seq: int,
    tree: BTree,
    epochs: Iterable[tuple[int, int]],
    clients: Sequence[ClientRow],
) -> None:
    """Stream a snapshot to an open, empty file (the caller syncs and renames it)."""
    w = _Writer(f)
    head = SNAP_HEADER.pack(SNAP_MAGIC, SNAP_VERSION, log_id, seq)
    w.raw(head + struct.pack(">I", zlib.crc32(head)))
    keys: list[bytes] = []
    values: list[bytes] = []
    size = 0
    count = 0
    for k, v in tree.iter_items():
        keys.append(k)
        values.append(v)
        size += len(k) + len(v) + 8
        if size >= BATCH_BYTES:
            w.record(_entries_body(keys, values))
            count += len(keys)
            keys, values, size = [], [], 0
    if keys:
        w.record(_entries_body(keys, values))
        count += len(keys)
    ep = list(epochs)
    w.record(
        struct.pack(">BI", EPOCHS, len(ep)) + b"".join(struct.pack(">QQ", s, e) for s, e in ep)
    )
    for i in range(0, len(clients), 20_000):
        w.record(_clients_body(clients[i : i + 20_000]))
    w.record(TRAILER.pack(END, count, len(ep), len(clients), w.crc))


@dataclass
class Snapshot:
    log_id: int
    seq: int
    keys: list[bytes]
    values: list[bytes]
    epochs: list[tuple[int, int]]
    clients: list[ClientRow]


def read_header(data: bytes, path: str) -> tuple[int, int]:
    """(log id, seq) from a snapshot's header; CorruptData if it is not whole and sound."""
    log_id, seq, _ = _header(data, path)
    return log_id, seq


def _header(data: bytes, path: str) -> tuple[int, int, int]:
    """(log id, seq, format version), checked."""
    if len(data) < HEADER_SIZE:
        raise CorruptData(path, len(data), f"short snapshot header ({len(data)} bytes)")
    magic, version, log_id, seq = SNAP_HEADER.unpack_from(data)
    if magic != SNAP_MAGIC:
        raise CorruptData(path, 0, f"not a snapshot (magic {magic!r})")
    (crc,) = struct.unpack_from(">I", data, HEADER_SIZE - 4)
    if zlib.crc32(data[: HEADER_SIZE - 4]) != crc:
        raise CorruptData(path, 0, "snapshot header checksum mismatch")
    if version not in (SNAP_VERSION, SNAP_VERSION_TEXT_KEYS):
        raise CorruptData(
            path,
            8,
            f"snapshot format version {version}, this build reads "
            f"{SNAP_VERSION_TEXT_KEYS} and {SNAP_VERSION}",
        )
    return log_id, seq, version


def _split(s: str | bytes, lengths: tuple[int, ...]) -> list:  # type: ignore[type-arg]
    offs = list(accumulate(lengths, initial=0))
    if offs[-1] != len(s):
        raise ValueError(f"lengths add up to {offs[-1]}, not {len(s)}")
    return [s[a:b] for a, b in zip(offs, offs[1:], strict=False)]


def read_snapshot(data: bytes, path: str) -> Snapshot:
    """Decode and check a whole snapshot file."""
    log_id, seq, version = _header(data, path)
    text_keys = version == SNAP_VERSION_TEXT_KEYS
    snap = Snapshot(log_id, seq, [], [], [], [])
    pos = HEADER_SIZE
    n = len(data)
    stage = ENTRIES
    while True:
        if pos + 8 > n:
            raise CorruptData(path, pos, "snapshot ends before its trailer")
        length, crc = RECORD_HEADER.unpack_from(data, pos)
        start, end = pos + 8, pos + 8 + length
        if length == 0 or end > n:
            raise CorruptData(path, pos, f"record length {length} runs past the end ({n})")
        body = data[start:end]
        if zlib.crc32(body) != crc:
            raise CorruptData(path, pos, "snapshot record checksum mismatch")
        kind = body[0]
        if kind < stage:
            raise CorruptData(path, pos, f"record kind {kind} out of order")
        stage = kind
        try:
            if kind == ENTRIES:
                cnt, kbytes = struct.unpack_from(">II", body, 1)
                o = 9 + 8 * cnt
                klens = struct.unpack_from(f">{cnt}I", body, 9)
                vlens = struct.unpack_from(f">{cnt}I", body, 9 + 4 * cnt)
                if text_keys:
                    text = body[o : o + kbytes].decode("utf-8", _ENC)
                    snap.keys += [k.encode("utf-8", _ENC) for k in _split(text, klens)]
                else:
                    snap.keys += _split(body[o : o + kbytes], klens)
                snap.values += _split(body[o + kbytes :], vlens)
            elif kind == EPOCHS:
                (cnt,) = struct.unpack_from(">I", body, 1)
                if len(body) != 5 + 16 * cnt:
                    raise ValueError(f"{len(body)} bytes for {cnt} epochs")
                flat = struct.unpack_from(f">{2 * cnt}Q", body, 5)
                snap.epochs = list(zip(flat[::2], flat[1::2], strict=True))
            elif kind == CLIENTS:
                cnt, ibytes = struct.unpack_from(">II", body, 1)
                ilens = struct.unpack_from(f">{cnt}I", body, 9)
                o = 9 + 4 * cnt
                rids = struct.unpack_from(f">{cnt}Q", body, o)
                seqs = struct.unpack_from(f">{cnt}Q", body, o + 8 * cnt)
                o += 16 * cnt
                found = body[o : o + cnt]
                ids = _split(body[o + cnt :].decode("utf-8", _ENC), ilens)
                if len(found) != cnt or len(ids) != cnt:
                    raise ValueError("client record too short")
                snap.clients += map(ClientRow, ids, rids, seqs, map(bool, found))
            elif kind == END:
                _, entries, epochs, clients, file_crc = TRAILER.unpack(body)
                if end != n:
                    raise CorruptData(path, end, f"{n - end} bytes after the trailer")
                if zlib.crc32(data[:pos]) != file_crc:
                    raise CorruptData(path, pos, "snapshot file checksum mismatch")
                counts = (len(snap.keys), len(snap.epochs), len(snap.clients))
                if counts != (entries, epochs, clients):
                    raise CorruptData(
                        path, pos, f"trailer counts {(entries, epochs, clients)}, found {counts}"
                    )
                return snap
            else:
                raise ValueError(f"unknown record kind {kind}")
        except CorruptData:
            raise
        except (ValueError, struct.error, UnicodeDecodeError) as e:
            raise CorruptData(path, pos, f"bad snapshot record: {e}") from e
        pos = end


__all__ = [
    "Snapshot",
    "parse_snapshot_name",
    "read_header",
    "read_snapshot",
    "snapshot_name",
    "write_snapshot_file",
]
