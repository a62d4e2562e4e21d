"""What the bench sends: keys, their distribution, and ready-made request frames.

Frames are encoded by hand (a GET or PUT is a few fixed bytes around the key
and value) so that building one costs well under a microsecond; the encoding is
byte-for-byte what ``kvtwist.wire.frame(wire.req_get(...))`` produces (the
tests check that).  Random workloads draw from a precomputed ring of frames.
"""

from __future__ import annotations

import bisect
import random
import struct
from collections.abc import Callable

KEY_DISTS = ("uniform", "zipfian", "sequential")
WORKLOADS = ("get", "put", "mixed")
KEY_WIDTH = 16  # bytes: "k" and 15 digits, as in the 16-byte keys
RING = 1 << 16  # precomputed requests per connection for random workloads

_HEADER = struct.Struct(">I")
OP_GET = 40
OP_PUT = 50
OP_ERROR = 99
CT_KEY = 10
CT_ENTRY = 30


def key_name(i: int) -> str:
    """The i-th key: ``k`` and 15 zero-padded digits (16 bytes)."""
    return f"k{i:015d}"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def encode_get(key: bytes) -> bytes:
    """A framed GET request (opcode 40, c_type KEY, keys=[key])."""
    body = b"\x08\x28\x10\x0a" + _ld(0x2A, key)
    return _HEADER.pack(len(body)) + body


def encode_put(key: bytes, value: bytes) -> bytes:
    """A framed PUT request (opcode 50, c_type ENTRY, entry={key, data})."""
    entry = _ld(0x0A, key) + (_ld(0x12, value) if value else b"")
    body = b"\x08\x32\x10\x1e" + _ld(0x22, entry)
    return _HEADER.pack(len(body)) + body


#: ``Message.chain`` (field 33, length-delimited): its tag as a varint
_CHAIN_TAG = _varint(33 << 3 | 2)

#: A shard of a cluster as the bench routes to it: its first key, its chain,
#: the chain's head and tail.
Route = tuple[bytes, str, tuple[str, int], tuple[str, int]]


def with_chain(frame: bytes, chain: str) -> bytes:
    """``frame`` with ``Message.chain`` set, for a server hosting many chains."""
    raw = chain.encode("ascii")
    body = frame[4:] + _CHAIN_TAG + _varint(len(raw)) + raw
    return _HEADER.pack(len(body)) + body


def shard_router(routes: list[Route]) -> Callable[[bytes], int]:
    """A key to the index of its route (``routes`` in key order, the first at b"")."""
    starts = [r[0] for r in routes]
    return lambda key: bisect.bisect_right(starts, key) - 1


def is_error_reply(payload: bytes | bytearray) -> bool:
    """True for an ERROR reply payload (opcode field first, value 99)."""
    return len(payload) >= 2 and payload[0] == 0x08 and payload[1] == OP_ERROR


class Zipfian:
    """Zipf-distributed integers in [0, n), item 0 the most popular (YCSB's theta 0.99).

    Sampling is a binary search in a cumulative table (exact for any n); the
    table costs 8 bytes per item, built once per process.
    """

    def __init__(self, n: int, theta: float = 0.99, rng: random.Random | None = None) -> None:
        if n < 1:
            raise ValueError("zipfian needs at least one item")
        self.n = n
        self.rng = rng or random.Random()
        total = 0.0
        cdf = []
        for i in range(1, n + 1):
            total += 1.0 / (i**theta)
            cdf.append(total)
        self.total = total
        self.cdf = cdf

    def __call__(self) -> int:
        i = bisect.bisect_left(self.cdf, self.rng.random() * self.total)
        return i if i < self.n else self.n - 1


class Requests:
    """Produces request frames for one connection.

    ``next(n)`` returns ``n`` (frame, is_write) pairs.  Sequential keys are
    ``start, start + stride, ...`` modulo ``keys``, so connections with
    different starts and a stride of the connection count cover every key
    exactly once between them.

    With ``routes`` (a cluster's shards) each frame names its key's chain and
    the second item is ``route << 1 | is_write``: the index of the key's
    route, and whether the request is a write.
    """

    def __init__(
        self,
        workload: str,
        keys: int,
        value_size: int,
        key_dist: str = "uniform",
        read_fraction: float = 0.5,
        seed: int = 0,
        start: int = 0,
        stride: int = 1,
        zipf: Zipfian | None = None,
        key_prefix: bytes = b"",
        routes: list[Route] | None = None,
    ) -> None:
        if workload not in WORKLOADS:
            raise ValueError(f"unknown workload {workload!r}")
        if key_dist not in KEY_DISTS:
            raise ValueError(f"unknown key distribution {key_dist!r}")
        if keys < 1:
            raise ValueError("need at least one key")
        if not 0.0 <= read_fraction <= 1.0:
            raise ValueError("read fraction must be in [0, 1]")
        self.workload = workload
        self.keys = keys
        self.key_prefix = key_prefix
        self.routes = routes
        self._route = shard_router(routes) if routes else None
        self.value = bytes((ord("a") + i % 26) for i in range(value_size))
        self.key_dist = key_dist
        self.read_fraction = {"get": 1.0, "put": 0.0}.get(workload, read_fraction)
        self.rng = random.Random(seed)
        self.next_seq = start % keys
        self.stride = max(1, stride)
        self._pick: Callable[[], int]
        if key_dist == "uniform":
            self._pick = lambda: self.rng.randrange(keys)
        elif key_dist == "zipfian":
            z = zipf if zipf is not None else Zipfian(keys, rng=self.rng)
            z.rng = self.rng
            self._pick = z
        else:
            self._pick = self._sequential
        self._ring: list[tuple[bytes, int]] | None = None
        self._pos = 0
        if key_dist != "sequential":
            self._ring = [self._make() for _ in range(min(RING, max(keys * 4, 1024)))]

    def _sequential(self) -> int:
        i = self.next_seq
        self.next_seq = (i + self.stride) % self.keys
        return i

    def _make(self) -> tuple[bytes, int]:
        key = self.key_prefix + key_name(self._pick()).encode("ascii")
        rf = self.read_fraction
        if rf >= 1.0 or (rf > 0.0 and self.rng.random() < rf):
            frame, write = encode_get(key), 0
        else:
            frame, write = encode_put(key, self.value), 1
        if self._route is None or self.routes is None:
            return frame, write
        r = self._route(key)
        return with_chain(frame, self.routes[r][1]), r << 1 | write

    def next(self, n: int) -> list[tuple[bytes, int]]:
        ring = self._ring
        if ring is None:
            make = self._make
            return [make() for _ in range(n)]
        pos = self._pos
        size = len(ring)
        if pos + n <= size:
            out = ring[pos : pos + n]
            self._pos = (pos + n) % size
            return out
        out = []
        for _ in range(n):
            out.append(ring[pos])
            pos += 1
            if pos == size:
                pos = 0
        self._pos = pos
        return out
