"""A cluster's shard map as values: ranges of the key order, the chain serving each.

Pure: no ZooKeeper client, no reactor.  Shards are ranges ``[start, end)`` of
the bytewise key order, so a scan stays ordered across shards; together they
cover every key exactly once (the first starts at ``b""``, the last has no
end).  Each shard is served by one chain; a chain's placement names the
servers meant to be its members, head first.  The map is one JSON record in
ZooKeeper, written only by the cluster's controller; ``version`` grows with
every change, so a client or server that holds an older map knows it.

ZooKeeper layout of cluster NAME (under :data:`CLUSTER_BASE`)::

    /kvtwist/NAME/map              the shard map (this module's encoding)
    /kvtwist/NAME/requests         moves and drains asked of the controller
    /kvtwist/NAME/servers/ID       ephemeral: a live server, :class:`Server` encoded
    /kvtwist/NAME/chains/CHAIN     a chain's root, laid out as a lone chain's root
    /kvtwist/NAME/controller       the controller election
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "CLUSTER_BASE",
    "BadMap",
    "ChainPlan",
    "ClusterPaths",
    "Server",
    "Shard",
    "ShardMap",
]

CLUSTER_BASE = "/kvtwist"
#: names of clusters, servers and chains: one path component, readable in a log line
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
#: the encoding's version; a reader refuses a map it does not know
FORMAT = 1


class BadMap(ValueError):
    """A record that is not a shard map this code can trust (junk, a gap, an unknown chain)."""


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise BadMap(f"bad {kind} name {name!r}: letters, digits, '.', '_', '-', at most 64")
    return name


@dataclass(frozen=True)
class ClusterPaths:
    """Where cluster ``name`` lives in ZooKeeper."""

    name: str

    def __post_init__(self) -> None:
        check_name("cluster", self.name)

    @property
    def root(self) -> str:
        return f"{CLUSTER_BASE}/{self.name}"

    @property
    def map(self) -> str:
        return f"{self.root}/map"

    @property
    def requests(self) -> str:
        """The moves and drains asked of the controller (kvtwist.cluster.requests)."""
        return f"{self.root}/requests"

    @property
    def loads(self) -> str:
        """Each server's measure of the shards it is the tail of (kvtwist.cluster.load)."""
        return f"{self.root}/load"

    def load(self, server_id: str) -> str:
        return f"{self.loads}/{check_name('server', server_id)}"

    @property
    def servers(self) -> str:
        return f"{self.root}/servers"

    def server(self, server_id: str) -> str:
        return f"{self.servers}/{check_name('server', server_id)}"

    @property
    def chains(self) -> str:
        return f"{self.root}/chains"

    def chain(self, chain_id: str) -> str:
        """The root of one chain: members, record and locks as under a lone chain's root."""
        return f"{self.chains}/{check_name('chain', chain_id)}"

    @property
    def controller(self) -> str:
        return f"{self.root}/controller"


@dataclass(frozen=True)
class Server:
    """A live server of the cluster, as it registers itself."""

    id: str
    address: str  # host:port of its one listener, shared by every chain it serves
    zone: str | None = None

    def encode(self) -> bytes:
        return json.dumps({"address": self.address, "zone": self.zone}).encode()

    @classmethod
    def decode(cls, server_id: str, data: bytes) -> Server:
        try:
            raw = json.loads(data)
            address = raw["address"]
            zone = raw.get("zone")
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise BadMap(f"server {server_id!r}: not a server record ({e})") from None
        if not isinstance(address, str) or not (zone is None or isinstance(zone, str)):
            raise BadMap(f"server {server_id!r}: not a server record")
        return cls(check_name("server", server_id), address, zone)


@dataclass(frozen=True)
class Shard:
    """Keys in ``[start, end)``, ``end`` None for the last shard."""

    start: bytes
    end: bytes | None
    chain: str

    def holds(self, key: bytes) -> bool:
        return self.start <= key and (self.end is None or key < self.end)


@dataclass(frozen=True)
class ChainPlan:
    """The servers meant to serve a chain, head first, and the chain's own version
    (grows when its members change; a server checks it at every hop)."""

    id: str
    members: tuple[str, ...]
    version: int = 1
    #: the chain this one was split off (docs/cluster.md, "Splitting a shard"): its
    #: members start from that chain's state at its split marker, never from nothing
    parent: str | None = None


@dataclass(frozen=True)
class ShardMap:
    version: int
    replicas: int
    shards: tuple[Shard, ...]
    chains: Mapping[str, ChainPlan] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """The invariants every reader relies on; raises :class:`BadMap`."""
        if self.version < 1 or self.replicas < 1:
            raise BadMap("version and replicas must be positive")
        if not self.shards:
            raise BadMap("a map has at least one shard")
        if self.shards[0].start != b"":
            raise BadMap("the first shard must start at the first key")
        if self.shards[-1].end is not None:
            raise BadMap("the last shard must reach the last key")
        for a, b in zip(self.shards, self.shards[1:], strict=False):
            if a.end is None or a.end != b.start or not a.start < a.end:
                raise BadMap(f"shards must be contiguous and ordered at {a.end!r}")
        seen: set[str] = set()
        for shard in self.shards:
            if shard.chain not in self.chains:
                raise BadMap(f"shard at {shard.start!r}: unknown chain {shard.chain!r}")
            if shard.chain in seen:
                raise BadMap(f"chain {shard.chain!r} serves two shards")
            seen.add(shard.chain)
        for cid, plan in self.chains.items():
            check_name("chain", cid)
            if plan.id != cid:
                raise BadMap(f"chain {cid!r} is filed under another name")
            if len(set(plan.members)) != len(plan.members):
                raise BadMap(f"chain {cid!r} names a server twice")
            for sid in plan.members:
                check_name("server", sid)
            if plan.parent is not None and plan.parent not in self.chains:
                raise BadMap(f"chain {cid!r} was split off an unknown chain {plan.parent!r}")

    # -- lookups --------------------------------------------------------------

    def shard_for(self, key: bytes) -> Shard:
        """The shard holding ``key``."""
        starts = [s.start for s in self.shards]
        return self.shards[bisect.bisect_right(starts, key) - 1]

    def shard_of_chain(self, chain_id: str) -> Shard | None:
        for shard in self.shards:
            if shard.chain == chain_id:
                return shard
        return None

    def chains_of(self, server_id: str) -> list[ChainPlan]:
        """The chains ``server_id`` is meant to serve, in shard order."""
        plans = (self.chains[s.chain] for s in self.shards)
        return [p for p in plans if server_id in p.members]

    def shards_between(self, start: bytes | None, stop: bytes | None) -> list[Shard]:
        """The shards a scan of ``[start, stop)`` visits, in key order."""
        out = []
        for shard in self.shards:
            if stop is not None and shard.start >= stop:
                break
            if start is not None and shard.end is not None and shard.end <= start:
                continue
            out.append(shard)
        return out

    # -- the record -----------------------------------------------------------

    def encode(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "version": self.version,
                "replicas": self.replicas,
                "shards": [
                    {
                        "start": s.start.hex(),
                        "end": None if s.end is None else s.end.hex(),
                        "chain": s.chain,
                    }
                    for s in self.shards
                ],
                "chains": {
                    cid: {"members": list(p.members), "version": p.version}
                    | ({"from": p.parent} if p.parent is not None else {})
                    for cid, p in sorted(self.chains.items())
                },
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> ShardMap:
        try:
            raw: Any = json.loads(data)
            if raw.get("format") != FORMAT:
                raise BadMap(f"shard map format {raw.get('format')!r}, not {FORMAT}")
            shards = tuple(
                Shard(
                    bytes.fromhex(s["start"]),
                    None if s["end"] is None else bytes.fromhex(s["end"]),
                    str(s["chain"]),
                )
                for s in raw["shards"]
            )
            chains = {
                str(cid): ChainPlan(
                    str(cid),
                    tuple(map(str, p["members"])),
                    int(p["version"]),
                    None if p.get("from") is None else str(p["from"]),
                )
                for cid, p in raw["chains"].items()
            }
            return cls(int(raw["version"]), int(raw["replicas"]), shards, chains)
        except BadMap:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise BadMap(f"not a shard map ({type(e).__name__}: {e})") from None

    # -- making new maps (the controller's and the admin's edits) -------------

    @classmethod
    def initial(
        cls, replicas: int, split_at: Iterable[bytes], placements: Iterable[tuple[str, ...]]
    ) -> ShardMap:
        """A first map: shards cut at ``split_at``, chains ``c0``, ``c1``, ... placed as given."""
        cuts = sorted(set(split_at))
        if b"" in cuts:
            raise BadMap("a split key must not be empty")
        starts = [b"", *cuts]
        ends: list[bytes | None] = [*cuts, None]
        members = list(placements)
        if len(members) != len(starts):
            raise BadMap(f"{len(starts)} shards but {len(members)} placements")
        chains = {f"c{i}": ChainPlan(f"c{i}", tuple(m)) for i, m in enumerate(members)}
        pairs = enumerate(zip(starts, ends, strict=True))
        shards = tuple(Shard(s, e, f"c{i}") for i, (s, e) in pairs)
        return cls(1, replicas, shards, chains)

    def split(self, chain: str, at: bytes, new_chain: str) -> ShardMap:
        """The next map, with ``chain``'s shard cut at ``at``: the keys below stay, those
        from ``at`` on go to ``new_chain``, placed on the same servers in the same order
        and split off ``chain`` (its members start from ``chain``'s state)."""
        shard = self.shard_of_chain(chain)
        if shard is None:
            raise BadMap(f"no shard is served by chain {chain!r}")
        if not (shard.start < at and (shard.end is None or at < shard.end)):
            raise BadMap(f"{at!r} is not inside chain {chain!r}'s shard")
        if new_chain in self.chains:
            raise BadMap(f"chain {new_chain!r} exists already")
        shards: list[Shard] = []
        for s in self.shards:
            if s.chain == chain:
                shards += [Shard(s.start, at, chain), Shard(at, s.end, new_chain)]
            else:
                shards.append(s)
        plan = self.chains[chain]
        chains = dict(self.chains)
        chains[new_chain] = ChainPlan(new_chain, plan.members, 1, chain)
        return ShardMap(self.version + 1, self.replicas, tuple(shards), chains)

    def settled(self, *chains: str) -> ShardMap:
        """The next map, with ``chains`` no longer split off their parents: every server
        planned for one is its member, so none starts from the parent's copy any more,
        and the parent may delete the keys it gave away (kvtwist.cluster.sweep)."""
        plans = dict(self.chains)
        for cid in chains:
            plans[cid] = replace(plans[cid], parent=None)
        return ShardMap(self.version + 1, self.replicas, self.shards, plans)

    def free_chain_id(self) -> str:
        """The next chain name of the ``c0``, ``c1``, ... series not taken yet."""
        taken = {int(cid[1:]) for cid in self.chains if re.fullmatch(r"c\d{1,9}", cid)}
        return f"c{max(taken, default=-1) + 1}"
