"""Write-ahead log segments: encoding records and scanning them back.

A segment is a 32-byte header (see ``SEGMENT_HEADER``) followed by records
``[u32 length][u32 crc32(payload)][payload]``, big-endian, where the payload is
a serialized ``kvtwist.Update``.  Serialization writes fields in number order
and ``seq`` (field 1) is never 0, so every payload starts with the byte 0x08:
the scanner uses that to look past a bad record for a valid one behind it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.storage.records import CorruptData, Record

WAL_MAGIC = b"KVTWAL\r\n"
WAL_VERSION = 1
#: magic, version, log id, first seq; then a u32 crc32 of those 28 bytes
SEGMENT_HEADER = struct.Struct(">8sIQQ")
HEADER_SIZE = SEGMENT_HEADER.size + 4
RECORD_HEADER = struct.Struct(">II")
#: No single record is larger (a key and value are far below it); a longer
#: length field is corruption, not a big record.
MAX_RECORD = 1 << 30


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.log"


def parse_segment_name(name: str) -> int | None:
    if len(name) == 24 and name.endswith(".log") and name[:20].isdigit():
        return int(name[:20])
    return None


def encode_header(log_id: int, first_seq: int) -> bytes:
    head = SEGMENT_HEADER.pack(WAL_MAGIC, WAL_VERSION, log_id, first_seq)
    return head + struct.pack(">I", zlib.crc32(head))


def decode_header(data: bytes, path: str) -> tuple[int, int]:
    """(log id, first seq) of a segment whose header is whole; CorruptData otherwise."""
    magic, version, log_id, first_seq = SEGMENT_HEADER.unpack_from(data)
    if magic != WAL_MAGIC:
        raise CorruptData(path, 0, f"not a log segment (magic {magic!r})")
    (crc,) = struct.unpack_from(">I", data, HEADER_SIZE - 4)
    if zlib.crc32(data[: HEADER_SIZE - 4]) != crc:
        raise CorruptData(path, 0, "segment header checksum mismatch")
    if version != WAL_VERSION:
        raise CorruptData(
            path, 8, f"segment format version {version}, this build reads {WAL_VERSION}"
        )
    return log_id, first_seq


def encode_records(records: Sequence[Record]) -> bytes:
    parts: list[bytes] = []
    pack = RECORD_HEADER.pack
    crc32 = zlib.crc32
    for r in records:
        if isinstance(r, Update):
            payload = r.SerializeToString()
        else:
            payload = Update(
                seq=r.seq,
                epoch=r.epoch,
                is_put=r.is_put,
                key=r.key,
                data=r.data,
                client_id=r.client_id,
                request_id=r.request_id,
            ).SerializeToString()
        parts.append(pack(len(payload), crc32(payload)))
        parts.append(payload)
    return b"".join(parts)


def _record_at(data: bytes, pos: int) -> bool:
    """Whether a whole record with a matching checksum starts at ``pos``."""
    if pos + 8 > len(data):
        return False
    length, crc = RECORD_HEADER.unpack_from(data, pos)
    end = pos + 8 + length
    return 0 < length <= MAX_RECORD and end <= len(data) and zlib.crc32(data[pos + 8 : end]) == crc


def valid_record_after(data: bytes, pos: int) -> bool:
    """Whether any valid record starts after ``pos`` (payloads begin with 0x08)."""
    i = data.find(b"\x08", pos + 9)
    while i != -1:
        if _record_at(data, i - 8):
            return True
        i = data.find(b"\x08", i + 1)
    return False


@dataclass
class Scan:
    """A segment read back: its records and where the valid part ends."""

    records: list[tuple[int, Update]]  # (offset, record)
    end: int  # offset just past the last valid record
    torn: str | None  # why the tail after ``end`` is a torn write, if it is one


def scan_segment(data: bytes, path: str, last: bool) -> Scan:
    """Parse every record after the header.

    A bad record is a torn write only in the last segment and only when no
    valid record follows it; anywhere else it is CorruptData.
    """
    out: list[tuple[int, Update]] = []
    pos = HEADER_SIZE
    n = len(data)
    unpack = RECORD_HEADER.unpack_from
    crc32 = zlib.crc32
    parse = Update.FromString
    append = out.append
    while pos < n:
        problem = None
        if pos + 8 > n:
            problem = f"short record header ({n - pos} of 8 bytes)"
        else:
            length, crc = unpack(data, pos)
            end = pos + 8 + length
            if length == 0 or length > MAX_RECORD:
                problem = f"impossible record length {length}"
            elif end > n:
                problem = f"short record ({n - pos - 8} of {length} payload bytes)"
            elif crc32(data[pos + 8 : end]) != crc:
                problem = "record checksum mismatch"
        if problem is None:
            try:
                u = parse(data[pos + 8 : end])
            except Exception as e:  # a checksummed payload that does not parse: not a tear
                raise CorruptData(path, pos, f"record does not decode: {e}") from e
            append((pos, u))
            pos = end
            continue
        if last and not valid_record_after(data, pos):
            return Scan(out, pos, problem)
        raise CorruptData(path, pos, problem)
    return Scan(out, pos, None)


__all__ = [
    "HEADER_SIZE",
    "Scan",
    "decode_header",
    "encode_header",
    "encode_records",
    "parse_segment_name",
    "scan_segment",
    "segment_name",
]
