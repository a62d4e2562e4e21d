"""Write-ahead log segments: encoding records and scanning them back.

A segment is a header (see ``SEGMENT_HEADER``) followed by records
``[u32 length][check][payload]``, big-endian, where the payload is a serialized
``kvtwist.Update``.  Serialization writes fields in number order and ``seq``
(field 1) is never 0, so every payload starts with the byte 0x08: the scanner
uses that to look past a bad record for a valid one behind it.

Version 2 (written): the header carries a random 16-byte salt, and a record's
check is an 8-byte BLAKE2b of its payload keyed with that salt.  The salt never
leaves the disk, so bytes a client writes inside a value cannot pass for a
record of the segment they sit in: looking past a torn record for a valid one
finds only records the log itself wrote.  Version 1 (read only): no salt, and
the check is a u32 crc32 of the payload.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.storage.records import CorruptData, Record

WAL_MAGIC = b"KVTWAL\r\n"
WAL_VERSION = 2
#: magic, version, log id, first seq, salt; then a u32 crc32 of those 44 bytes
SEGMENT_HEADER = struct.Struct(">8sIQQ16s")
HEADER_SIZE = SEGMENT_HEADER.size + 4
RECORD_HEADER = struct.Struct(">I8s")
SALT_SIZE = 16
#: version 1: magic, version, log id, first seq, crc32; records [u32 length][u32 crc32]
V1_HEADER = struct.Struct(">8sIQQ")
V1_HEADER_SIZE = V1_HEADER.size + 4
V1_RECORD_HEADER = struct.Struct(">II")
#: No single record is larger (a key and value are far below it); a longer
#: length field is corruption, not a big record.
MAX_RECORD = 1 << 30


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.log"


def parse_segment_name(name: str) -> int | None:
    if len(name) == 24 and name.endswith(".log") and name[:20].isdigit():
        return int(name[:20])
    return None


def new_salt() -> bytes:
    return os.urandom(SALT_SIZE)


def encode_header(log_id: int, first_seq: int, salt: bytes) -> bytes:
    head = SEGMENT_HEADER.pack(WAL_MAGIC, WAL_VERSION, log_id, first_seq, salt)
    return head + struct.pack(">I", zlib.crc32(head))


@dataclass(frozen=True)
class Header:
    """A segment's header as read back."""

    version: int
    log_id: int
    first_seq: int
    salt: bytes  # empty in version 1
    size: int  # bytes the header takes


def header_size(data: bytes) -> int:
    """How long the header at the start of ``data`` is, by the version it claims."""
    if len(data) >= 12 and struct.unpack_from(">I", data, 8)[0] == 1:
        return V1_HEADER_SIZE
    return HEADER_SIZE


def decode_header(data: bytes, path: str) -> Header:
    """The header of a segment whose header is whole; CorruptData otherwise."""
    size = header_size(data)
    if len(data) < size:
        raise CorruptData(path, len(data), f"short segment header ({len(data)} bytes)")
    magic, version = struct.unpack_from(">8sI", data)
    if magic != WAL_MAGIC:
        raise CorruptData(path, 0, f"not a log segment (magic {magic!r})")
    (crc,) = struct.unpack_from(">I", data, size - 4)
    if zlib.crc32(data[: size - 4]) != crc:
        raise CorruptData(path, 0, "segment header checksum mismatch")
    if version == 1:
        _, _, log_id, first_seq = V1_HEADER.unpack_from(data)
        return Header(1, log_id, first_seq, b"", size)
    if version != WAL_VERSION:
        raise CorruptData(
            path, 8, f"segment format version {version}, this build reads 1 and {WAL_VERSION}"
        )
    _, _, log_id, first_seq, salt = SEGMENT_HEADER.unpack_from(data)
    return Header(version, log_id, first_seq, salt, size)


def _keyed(salt: bytes) -> Callable[[bytes], bytes]:
    """The version 2 record check: BLAKE2b-64 of a payload, keyed with the segment's salt."""
    base = hashlib.blake2b(key=salt, digest_size=8)

    def check(payload: bytes) -> bytes:
        h = base.copy()
        h.update(payload)
        return h.digest()

    return check


def encode_records(records: Sequence[Record], salt: bytes) -> bytes:
    """Records framed for the version 2 segment whose header holds ``salt``."""
    parts: list[bytes] = []
    pack = RECORD_HEADER.pack
    check = _keyed(salt)
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
                ack_below=r.ack_below,
            ).SerializeToString()
        parts.append(pack(len(payload), check(payload)))
        parts.append(payload)
    return b"".join(parts)


@dataclass
class _Framing:
    record: struct.Struct
    check: Callable[[bytes], object]  # what a record's header must hold for its payload


def _framing(header: Header) -> _Framing:
    if header.version == 1:
        return _Framing(V1_RECORD_HEADER, zlib.crc32)
    return _Framing(RECORD_HEADER, _keyed(header.salt))


def _record_at(data: bytes, pos: int, framing: _Framing) -> bool:
    """Whether a whole record with a matching check starts at ``pos``."""
    hs = framing.record.size
    if pos + hs > len(data):
        return False
    length, check = framing.record.unpack_from(data, pos)
    end = pos + hs + length
    return (
        0 < length <= MAX_RECORD
        and end <= len(data)
        and framing.check(data[pos + hs : end]) == check
    )


def valid_record_after(data: bytes, pos: int, framing: _Framing) -> bool:
    """Whether any valid record starts after ``pos`` (payloads begin with 0x08)."""
    hs = framing.record.size
    i = data.find(b"\x08", pos + hs + 1)
    while i != -1:
        if _record_at(data, i - hs, framing):
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
    header = decode_header(data, path)
    framing = _framing(header)
    out: list[tuple[int, Update]] = []
    hs = framing.record.size
    pos = header.size
    n = len(data)
    unpack = framing.record.unpack_from
    check = framing.check
    parse = Update.FromString
    append = out.append
    while pos < n:
        problem = None
        if pos + hs > n:
            problem = f"short record header ({n - pos} of {hs} bytes)"
        else:
            length, want = unpack(data, pos)
            end = pos + hs + length
            if length == 0 or length > MAX_RECORD:
                problem = f"impossible record length {length}"
            elif end > n:
                problem = f"short record ({n - pos - hs} of {length} payload bytes)"
            elif check(data[pos + hs : end]) != want:
                problem = "record checksum mismatch"
        if problem is None:
            try:
                u = parse(data[pos + hs : end])
            except Exception as e:  # a checksummed payload that does not parse: not a tear
                raise CorruptData(path, pos, f"record does not decode: {e}") from e
            append((pos, u))
            pos = end
            continue
        if last and not valid_record_after(data, pos, framing):
            return Scan(out, pos, problem)
        raise CorruptData(path, pos, problem)
    return Scan(out, pos, None)


__all__ = [
    "HEADER_SIZE",
    "Header",
    "Scan",
    "decode_header",
    "encode_header",
    "encode_records",
    "header_size",
    "new_salt",
    "parse_segment_name",
    "scan_segment",
    "segment_name",
]
