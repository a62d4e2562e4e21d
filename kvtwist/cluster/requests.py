"""What operators ask of the controller: moves of chains between servers, and drains.

Pure: no ZooKeeper client, no reactor.  The admin never edits the shard map;
it writes this record (``/kvtwist/NAME/requests``, :class:`Requests`) with
compare-and-set, and the controller, the map's only writer, carries it out
(:mod:`kvtwist.cluster.moves`).  The record says what is wanted, never how
far it got: how far a move got is read from the map and from the chains'
own ZooKeeper membership, so a newly elected controller resumes a move half
done from what it finds.

::

    {"format": 1,
     "moves": [{"chain": "c1", "from": "s2", "to": "s4"}],
     "draining": ["s3"]}

A move leaves the record once the map no longer names its source in its
chain (the controller removes it); a server stays draining, receiving no new
placements, until ``cluster undrain``.

:func:`check_move` and :func:`check_drain` are the admin's checks of a new
request against the map and the live servers, with the errors it prints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from kvtwist.cluster.placement import zone_of
from kvtwist.cluster.shardmap import BadMap, Server, ShardMap, check_name

__all__ = [
    "FORMAT",
    "BadRequests",
    "Move",
    "Refused",
    "Requests",
    "ShardSplit",
    "check_cancel",
    "check_drain",
    "check_split",
    "check_move",
    "check_undrain",
]

#: the record's encoding; a reader refuses a record of another format
FORMAT = 1


class BadRequests(ValueError):
    """A record that is not a request record this code can read."""


class Refused(ValueError):
    """A request the admin will not write: it names an unknown shard, or cannot be met."""


@dataclass(frozen=True)
class Move:
    """Chain ``chain`` is to be served by ``target`` instead of ``source``."""

    chain: str
    source: str
    target: str


@dataclass(frozen=True)
class ShardSplit:
    """Chain ``chain``'s shard is to be cut at ``at``: the keys from ``at`` on go to a new
    chain on the same servers (:meth:`kvtwist.cluster.shardmap.ShardMap.split`)."""

    chain: str
    at: bytes


@dataclass(frozen=True)
class Requests:
    """The pending moves (at most one per chain), the draining servers (sorted), and
    the pending splits (at most one per chain)."""

    moves: tuple[Move, ...] = ()
    draining: tuple[str, ...] = ()
    splits: tuple[ShardSplit, ...] = ()

    def __post_init__(self) -> None:
        try:
            for move in self.moves:
                check_name("chain", move.chain)
                check_name("server", move.source)
                check_name("server", move.target)
                if move.source == move.target:
                    raise BadRequests(f"chain {move.chain}: a move from {move.source} to itself")
            for sid in self.draining:
                check_name("server", sid)
        except BadMap as e:
            raise BadRequests(str(e)) from None
        chains = [move.chain for move in self.moves]
        if len(set(chains)) != len(chains):
            raise BadRequests("two moves of one chain")
        split = [sp.chain for sp in self.splits]
        if len(set(split)) != len(split) or any(not sp.at for sp in self.splits):
            raise BadRequests("two splits of one chain, or a split at the empty key")
        for sp in self.splits:
            try:
                check_name("chain", sp.chain)
            except BadMap as e:
                raise BadRequests(str(e)) from None
        if list(self.draining) != sorted(set(self.draining)):
            raise BadRequests("draining servers must be sorted and distinct")

    @property
    def empty(self) -> bool:
        return not self.moves and not self.draining and not self.splits

    def split_of(self, chain: str) -> ShardSplit | None:
        return next((sp for sp in self.splits if sp.chain == chain), None)

    def with_split(self, split: ShardSplit) -> Requests:
        return replace(self, splits=(*self.splits, split))

    def without_splits(self, done: set[ShardSplit]) -> Requests:
        return replace(self, splits=tuple(sp for sp in self.splits if sp not in done))

    def move_of(self, chain: str) -> Move | None:
        return next((mv for mv in self.moves if mv.chain == chain), None)

    def with_move(self, move: Move) -> Requests:
        return replace(self, moves=(*self.moves, move))

    def without_moves(self, done: set[Move]) -> Requests:
        return replace(self, moves=tuple(mv for mv in self.moves if mv not in done))

    def with_draining(self, server: str, on: bool) -> Requests:
        rest = set(self.draining) - {server}
        return replace(self, draining=tuple(sorted(rest | ({server} if on else set()))))

    def encode(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "moves": [
                    {"chain": mv.chain, "from": mv.source, "to": mv.target} for mv in self.moves
                ],
                "draining": list(self.draining),
            }
            | (
                {"splits": [{"chain": sp.chain, "at": sp.at.hex()} for sp in self.splits]}
                if self.splits
                else {}
            ),
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> Requests:
        """The record; no record at all (``None``) is no request."""
        if data is None:
            return cls()
        try:
            raw: Any = json.loads(data)
            if raw.get("format") != FORMAT:
                raise BadRequests(f"request record format {raw.get('format')!r}, not {FORMAT}")
            moves = tuple(
                Move(_text(mv["chain"]), _text(mv["from"]), _text(mv["to"])) for mv in raw["moves"]
            )
            splits = tuple(
                ShardSplit(_text(sp["chain"]), bytes.fromhex(_text(sp["at"])))
                for sp in raw.get("splits", ())
            )
            return cls(moves, tuple(_text(s) for s in raw["draining"]), splits)
        except BadRequests:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise BadRequests(f"not a request record ({type(e).__name__}: {e})") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequests(f"not a name: {value!r}")
    return value


# -- the admin's checks ----------------------------------------------------------


def check_move(
    m: ShardMap,
    live: Mapping[str, Server],
    requests: Requests,
    chain: str,
    target: str,
    source: str | None = None,
) -> Move:
    """The move of ``chain`` to ``target`` (from ``source``, else the member chosen by
    :func:`pick_source`), or :class:`Refused` saying why it cannot be asked."""
    plan = m.chains.get(chain)
    if plan is None:
        raise Refused(f"unknown shard {chain!r}: the chains are {', '.join(sorted(m.chains))}")
    if target not in live:
        raise Refused(f"server {target!r} is not live (not registered under servers)")
    if target in requests.draining:
        raise Refused(f"server {target!r} is draining: it takes no new chains")
    if target in plan.members:
        raise Refused(f"server {target!r} is already a member of {chain}")
    pending = requests.move_of(chain)
    if pending is not None:
        raise Refused(
            f"{chain} has a move pending already ({pending.source} -> {pending.target})"
        )
    if requests.split_of(chain) is not None:
        raise Refused(f"{chain} has a split pending: ask again once it is done")
    if len(plan.members) > m.replicas:
        raise Refused(
            f"{chain} is changing already ({len(plan.members)} members for R = {m.replicas}); "
            "ask again once it settles"
        )
    if source is None:
        source = pick_source(m, live, chain, live[target])
        if source is None:
            raise Refused(f"{chain} has no member to move")
    elif source not in plan.members:
        raise Refused(f"server {source!r} is not a member of {chain}: {','.join(plan.members)}")
    zone = live[target].zone
    if zone is not None:
        for sid in plan.members:
            if sid != source and sid in live and live[sid].zone == zone:
                raise Refused(
                    f"{chain} has {sid} in zone {zone} already: moving {source} to "
                    f"{target} would put two of its members in one zone"
                )
    return Move(chain, source, target)


def pick_source(
    m: ShardMap, live: Mapping[str, Server], chain: str, target: Server
) -> str | None:
    """The member a move to ``target`` takes out when none is named: the one in the
    target's zone (so zones stay distinct), else the one serving most chains, then
    the last in chain order (the tail hands over reads without a new head epoch)."""
    members = m.chains[chain].members
    if not members:
        return None
    same = [s for s in members if s in live and zone_of(live[s]) == zone_of(target)]
    if same:
        return same[0]
    load = {s: len(m.chains_of(s)) for s in members}
    return max(reversed(members), key=lambda s: load[s])


def check_cancel(requests: Requests, chain: str) -> tuple[Requests, Move]:
    """The record without ``chain``'s pending move, and that move; or :class:`Refused`."""
    pending = requests.move_of(chain)
    if pending is None:
        raise Refused(f"no move of {chain} is pending (it may be over already)")
    return requests.without_moves({pending}), pending


def check_drain(
    m: ShardMap, live: Mapping[str, Server], requests: Requests, server: str
) -> Requests:
    """The record with ``server`` draining, or :class:`Refused`: an unknown server, the
    target of a pending move, or one whose drain would leave fewer than R servers
    to place its chains on."""
    if server not in live and not m.chains_of(server):
        raise Refused(f"unknown server {server!r}: not live and in no chain")
    if server in requests.draining:
        return requests
    for mv in requests.moves:
        if mv.target == server:
            raise Refused(f"a move of {mv.chain} to {server} is pending: it would never end")
    staying = [s for s in live if s != server and s not in requests.draining]
    if m.chains_of(server) and len(staying) < m.replicas:
        raise Refused(
            f"draining {server} would leave {len(staying)} servers for chains of "
            f"R = {m.replicas}"
        )
    return requests.with_draining(server, True)


def check_split(m: ShardMap, requests: Requests, chain: str, at: bytes | None) -> ShardSplit:
    """The split of ``chain``'s shard at ``at`` (None: the middle of its key range), or
    :class:`Refused`: an unknown shard, a key outside it, or a chain changing already."""
    plan = m.chains.get(chain)
    shard = m.shard_of_chain(chain)
    if plan is None or shard is None:
        raise Refused(f"unknown shard {chain!r}: the chains are {', '.join(sorted(m.chains))}")
    if at is None:
        at = middle_key(shard.start, shard.end)
    if not (shard.start < at and (shard.end is None or at < shard.end)):
        raise Refused(f"{at!r} is not inside {chain}'s shard [{shard.start!r}, {shard.end!r})")
    pending = requests.split_of(chain)
    if pending is not None:
        if pending.at == at:
            return pending
        raise Refused(f"{chain} has a split pending already (at {pending.at!r})")
    if requests.move_of(chain) is not None or len(plan.members) > m.replicas:
        raise Refused(f"{chain} is changing (a move is under way): ask again once it is done")
    if plan.parent is not None and plan.parent in m.chains and not plan.members:
        raise Refused(f"{chain} has no members yet")
    return ShardSplit(chain, at)


def middle_key(start: bytes, end: bytes | None) -> bytes:
    """A key halfway between ``start`` and ``end`` in the bytewise order, read as numbers
    of as many bytes as the longer of the two (plus one, so that a key exists between)."""
    width = max(len(start), len(end) if end is not None else 1) + 1
    low = int.from_bytes(start.ljust(width, b"\0"), "big")
    high = int.from_bytes(end.ljust(width, b"\0"), "big") if end is not None else 256**width
    mid = (low + high) // 2
    return mid.to_bytes(width, "big").rstrip(b"\0") or b"\0"


def check_undrain(requests: Requests, server: str) -> Requests:
    if server not in requests.draining:
        raise Refused(f"server {server!r} is not draining")
    return requests.with_draining(server, False)
