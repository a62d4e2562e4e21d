"""Durable storage for a node: a write-ahead log, snapshots, and recovery.

Pure Python and the standard library (plus the generated protobuf module); no
Twisted.  ``DataDir`` is the whole interface; ``FakeDisk`` (fakedisk.py) lets
tests crash it and make its disk fail.

Directory layout
================

``<dir>/LOCK``
    ``flock``-ed while a process has the directory open; a second opener fails.
``<dir>/node_id``
    32 hex digits, created on first open: the node's stable identity.
``<dir>/meta.json``
    A small JSON object for the chain code, replaced atomically and durably.
``<dir>/wal/<first seq, 20 digits>.log``
    Log segments.
``<dir>/snap/<seq, 20 digits>.snap``
    Snapshots (``.tmp``: unfinished, removed on open; ``.corrupt``: set aside).

Every file that is replaced is written to a temporary name, fsynced, renamed,
and its directory fsynced.

Log segments (format version 2)
===============================

Header, 48 bytes: ``"KVTWAL\\r\\n"``, u32 version, u64 log id, u64 first seq,
16 random bytes (the segment's salt), u32 crc32 of the 44 bytes before it.
Then records, each ``[u32 length][8-byte check][payload]``, big-endian, where
the check is BLAKE2b-64 of the payload keyed with the salt and the payload is
a serialized ``kvtwist.Update`` (seq, epoch, is_put, key, data, client_id,
request_id, ack_below).  The salt never leaves the disk, so no value a client
writes can hold bytes that pass for a record of the segment (see Recovery, 3).
The records of a log are contiguous in seq across segments.

Version 1 segments (a 32-byte header without the salt; records
``[u32 length][u32 crc32 of payload][payload]``) are still read, and never
appended to: the first append after opening one starts a version 2 segment
(an empty one is rewritten in place).
A segment is started when the current one has reached ``segment_bytes`` (at
a batch boundary, so a batch never spans two segments) and whenever a snapshot
begins; the segment left behind is fsynced first, under every fsync policy.

The log id names a history: it is drawn at random when a directory is created
and again when ``reset`` installs a transferred state.  Segments carry the log
id of the snapshot they continue; a segment with another id is left over from
a replaced history and is removed on open.

Snapshots (format version 2)
============================

Header, 32 bytes: ``"KVTSNAP\\n"``, u32 version, u64 log id, u64 seq, u32 crc32.
Then checksummed records ``[u32 length][u32 crc32][body]`` whose first body
byte is a kind: entries in key order (about 1 MiB per record, columnar: the
key and value lengths in bytes, then the keys, then the values), then the
epoch boundaries, then the client rows (kvtwist.chain.dedup: a row with seq 0
holds a client's floor, or, without a client id, the eviction count), then a
trailer holding the counts of each and a crc32 of every byte before it, which
must end the file.  Version 1
snapshots (keys as text: lengths in code points, keys as one UTF-8 string)
are still read.  See snapshot.py for the exact layout.

Retention: the newest two snapshots and the log from the older one on.  A
freshly created directory holds an empty snapshot at 0, so there is always a
base to replay onto.

Recovery
========

(recovery.py, one step each; ``DataDir`` continues the log from what it returns.)

1. Load the newest snapshot that passes every check.  A newest snapshot that
   fails is set aside (``.corrupt``, with a warning) only if its header is sound,
   names the same history as an older valid snapshot, and the log from that one
   reaches at least the failed snapshot's seq; otherwise CorruptData.
2. Replay the log after the snapshot's seq, from the segment holding seq + 1:
   each segment must begin where the previous ended and each record must carry
   the next seq.  DELs recompute whether the key was there, and the client rows
   (duplicate suppression, newest last, at most ``max_clients``) are rebuilt.
3. A bad record (short header, short payload, bad checksum, impossible length)
   in the last segment with no valid record anywhere after it is a torn write:
   the file is cut there and a warning names the file and offset.  Only
   records the log wrote count as valid here (their check is keyed with the
   segment's salt), so a torn value that embeds records or segment headers
   is still a torn write.  The last
   segment is also removed if it is no longer than a header that does not
   check out (its creation was cut short).  Anything else - a bad record
   followed by valid ones, a bad record in an earlier segment, a seq gap, a
   segment that does not continue its predecessor, log segments without any
   snapshot - raises CorruptData naming the file and byte offset.

Durability by policy: ALWAYS fsyncs each appended batch before ``append``
returns; INTERVAL leaves that to ``sync()`` on a timer; NEVER to the OS.
``close()`` fsyncs under every policy, so a clean stop keeps everything.
Because segments are synced before the next one starts, a crash under any
policy leaves a prefix of what was appended.  A failed fsync in ``sync`` or
at rotation leaves it unknown what survives: the directory
refuses further writes until it is reopened.
"""

from kvtwist.storage.datadir import DataDir
from kvtwist.storage.disk import Disk, DiskFile, DiskLock, RealDisk
from kvtwist.storage.records import (
    CannotTruncate,
    ClientRow,
    ClientTable,
    CorruptData,
    DiskError,
    FsyncPolicy,
    LogRecord,
    Record,
    Recovered,
)

__all__ = [
    "CannotTruncate",
    "ClientRow",
    "ClientTable",
    "CorruptData",
    "DataDir",
    "Disk",
    "DiskError",
    "DiskFile",
    "DiskLock",
    "FsyncPolicy",
    "LogRecord",
    "Record",
    "Recovered",
    "RealDisk",
]
