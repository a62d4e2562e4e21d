"""How big each shard is, as its tail measures it, and when the controller splits it.

Pure: no ZooKeeper client, no reactor.  Every ``LOAD_PERIOD`` seconds a
cluster server measures each chain it is the tail of (the committed state,
only the keys of the chain's shard) and writes one record per server,
``/kvtwist/NAME/load/ID``::

    {"format": 1, "chains": {"c0": {"keys": 1200, "bytes": 98304,
                                    "middle": "6b3031", "op": 5521, "stray": 0}}}

``middle`` is the key halfway through the shard's keys (hex), measured only
when the shard is past half of a split threshold.  The controller reads the
records while elected and splits a shard at its middle key once its keys pass
``--split-keys`` or its bytes ``--split-bytes`` (:func:`split_due`).
``stray`` counts the keys the chain's tree holds outside its shard: what a
split gave away and no sweep has deleted yet (kvtwist.cluster.sweep).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kvtwist.chain.outcomes import ReadView
from kvtwist.cluster.shardmap import BadMap, Shard

__all__ = ["LOAD_PERIOD", "ChainLoad", "Thresholds", "decode", "encode", "measure", "split_due"]

#: Seconds between a server's measurements of its shards.
LOAD_PERIOD = 5.0
#: The record's encoding.
FORMAT = 1


@dataclass(frozen=True)
class Thresholds:
    """When a shard is split on its own (0: never, by that measure)."""

    keys: int = 0
    size: int = 0  # bytes of keys and values

    @property
    def off(self) -> bool:
        return not self.keys and not self.size


@dataclass(frozen=True)
class ChainLoad:
    """One chain's shard as its tail measured it at committed op ``op``."""

    keys: int
    size: int | None = None  # bytes of keys and values; None: not measured
    middle: bytes | None = None
    op: int = 0
    stray: int = 0  # keys held outside the shard (given away, not swept yet)


def measure(view: ReadView, limits: Thresholds) -> ChainLoad:
    """The shard's size in a committed view (on a reader thread: it walks the keys).

    Bytes are counted only under a byte threshold, and the middle key found
    only once the shard is past half of a threshold (it may be split soon).
    """
    start, end = view.start, view.end
    tree = view.tree
    keys = tree.count(start, end) if not view.whole else len(tree)
    size = None
    items = None
    if limits.size:
        items = tree.range(start, end)
        size = sum(len(k) + len(v) for k, v in items)
    near = (limits.keys and 2 * keys > limits.keys) or (
        limits.size and size is not None and 2 * size > limits.size
    )
    middle = None
    if near and keys >= 2:
        if items is None:
            items = tree.range(start, end, keys // 2 + 1)
        middle = items[keys // 2][0]
    stray = 0 if view.whole else len(tree) - keys
    return ChainLoad(keys, size, middle, view.seq, stray)


def encode(loads: Mapping[str, ChainLoad]) -> bytes:
    return json.dumps(
        {
            "format": FORMAT,
            "chains": {
                cid: {"keys": c.keys, "bytes": c.size, "op": c.op, "stray": c.stray}
                | ({"middle": c.middle.hex()} if c.middle is not None else {})
                for cid, c in sorted(loads.items())
            },
        },
        sort_keys=True,
    ).encode()


def decode(data: bytes) -> dict[str, ChainLoad]:
    """A server's record; BadMap for one this code cannot read."""
    try:
        raw: Any = json.loads(data)
        if raw.get("format") != FORMAT:
            raise BadMap(f"load record format {raw.get('format')!r}, not {FORMAT}")
        out = {}
        for cid, c in raw["chains"].items():
            middle = c.get("middle")
            size = c.get("bytes")
            out[str(cid)] = ChainLoad(
                int(c["keys"]),
                None if size is None else int(size),
                None if middle is None else bytes.fromhex(middle),
                int(c.get("op", 0)),
                int(c.get("stray", 0)),
            )
        return out
    except BadMap:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise BadMap(f"not a load record ({type(e).__name__}: {e})") from None


def split_due(shard: Shard, reports: Iterable[ChainLoad], limits: Thresholds) -> bytes | None:
    """Where to split ``shard``, if its latest report passes a threshold: its middle key,
    when that lies strictly inside the shard (a shard of one key is never split)."""
    if limits.off:
        return None
    latest = max(reports, key=lambda c: c.op, default=None)
    if latest is None or latest.middle is None:
        return None
    over = (limits.keys and latest.keys > limits.keys) or (
        limits.size and latest.size is not None and latest.size > limits.size
    )
    at = latest.middle
    if over and shard.start < at and (shard.end is None or at < shard.end):
        return at
    return None
