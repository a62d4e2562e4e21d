"""When a chain may delete the keys a split gave away, and which (no I/O).

A split leaves the old chain's tree holding the keys from the cut on: the new
chain's first members take their state from those keys (docs/cluster.md,
"Splitting a shard"), so they must stay until no server will ever do that
again.  The controller says when: once every server planned for the new
chain is its member, it writes the map with the new chain no longer split off
the old one (``ShardMap.settled``), and from that map on a server placed on
the new chain joins it by state transfer, never from its copy of the parent.

So a range of keys outside a chain's own may be swept when the map the
server has read gives every shard overlapping it to *another* chain, none of
which is still split off this one.  A server whose map is older than the
split sees its own chain there and sweeps nothing; the head's log is the
other half of the rule: the chain's range counts its split markers, so a
head whose map lags still never deletes a key the chain serves (and
``ChainState`` drops such a key from a sweep all the same).
"""

from __future__ import annotations

from kvtwist.chain.bounds import KeyBounds
from kvtwist.cluster.shardmap import ShardMap
from kvtwist.tree import BTree

__all__ = ["SWEEP_BYTES", "SWEEP_KEYS", "given_away", "next_sweep"]

#: The most keys, and key bytes, one sweep op deletes: each member applies it as one
#: write, so a big stray range goes in many small steps, between client writes.
SWEEP_KEYS = 500
SWEEP_BYTES = 64 * 1024

Range = tuple[bytes, bytes | None]


def given_away(m: ShardMap, chain: str, start: bytes, end: bytes | None) -> list[Range]:
    """The ranges outside ``[start, end)`` whose keys ``chain`` may delete, by map ``m``."""
    outside: list[Range] = []
    if start:
        outside.append((b"", start))
    if end is not None:
        outside.append((end, None))
    return [r for r in outside if _elsewhere(m, chain, *r)]


def _elsewhere(m: ShardMap, chain: str, lo: bytes, hi: bytes | None) -> bool:
    """Every shard overlapping ``[lo, hi)`` is another chain's, none split off ``chain``."""
    for shard in m.shards_between(lo, hi):
        if shard.chain == chain or m.chains[shard.chain].parent == chain:
            return False
    return True


def next_sweep(
    m: ShardMap | None,
    chain: str,
    bounds: KeyBounds,
    tree: BTree,
    max_keys: int = SWEEP_KEYS,
    max_bytes: int = SWEEP_BYTES,
) -> list[bytes]:
    """The keys of the next sweep of ``chain`` from ``tree`` (its committed state, at
    the head): at most ``max_keys`` and about ``max_bytes``; none when nothing is due."""
    if m is None or not bounds.limited:
        return []
    keys: list[bytes] = []
    size = 0
    for lo, hi in given_away(m, chain, bounds.start, bounds.end()):
        for k, _ in tree.range(lo, hi, max_keys - len(keys)):
            keys.append(k)
            size += len(k)
            if size >= max_bytes:
                return keys
        if len(keys) >= max_keys:
            break
    return keys
