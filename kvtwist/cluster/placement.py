"""Where chains go: the controller's placement rules, as pure functions.

No ZooKeeper, no reactor, no clock: every function takes what it decides from
and returns a plan, so the rules are tested alone and two controllers given
the same inputs decide the same thing.

* :func:`place` places a first map's chains: R distinct servers each, in
  distinct zones when there are enough, and roles spread so every server is
  head of about 1/N of the chains and tail of about 1/N.
* :func:`replacements` replaces servers gone longer than ``replace_after``:
  each chain that lost one gets a new member appended at the end (a joiner
  joins as the tail).
* :func:`fill` tops up chains that name fewer than R servers (a cluster
  created before its servers registered).
* :func:`drain` plans taking a server out of every chain: first a joiner is
  appended, then, once it has joined, the leaving server is removed.
* :func:`apply` turns any of these plans into the next map, bumping the map's
  version and each changed chain's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from kvtwist.cluster.shardmap import Server, ShardMap

__all__ = [
    "Change",
    "apply",
    "drain",
    "drain_done",
    "fill",
    "place",
    "replacements",
    "zone_of",
]


def zone_of(server: Server) -> str:
    """A server's zone; one without ``--zone`` is a zone of its own."""
    return server.zone if server.zone is not None else f"\x00{server.id}"


def _ring(servers: Iterable[Server]) -> list[Server]:
    """Servers by id, interleaved by zone (z1's first, z2's first, ..., z1's second, ...).

    Consecutive servers on this ring are in different zones as long as the
    zones are about the same size, so a chain taken as a run of the ring
    spans zones without search.
    """
    by_zone: dict[str, list[Server]] = {}
    for s in sorted(servers, key=lambda s: s.id):
        by_zone.setdefault(zone_of(s), []).append(s)
    zones = [by_zone[z] for z in sorted(by_zone)]
    out: list[Server] = []
    for i in range(max((len(z) for z in zones), default=0)):
        out.extend(z[i] for z in zones if i < len(z))
    return out


def place(chains: int, servers: Iterable[Server], replicas: int) -> list[tuple[str, ...]]:
    """Members, head first, for ``chains`` new chains: deterministic in its inputs.

    Greedy over the zone-interleaved ring: a chain's head is the server that
    heads fewest chains so far (so heads differ by at most one between
    servers), then its tail the one that tails fewest, then each member in
    between the one serving fewest chains; ties go to fewest chains overall,
    then to the ring position after the chain's index.  Tails and chains
    served differ by at most two (tests/test_placement.py checks all three).
    Every member but the head first avoids the zones the chain already
    holds, so members are in distinct zones whenever there are at least R.
    With fewer than R servers each chain gets every server.
    """
    ring = _ring(servers)
    counts: dict[str, Counter[str]] = {"head": Counter(), "tail": Counter(), "total": Counter()}
    out: list[tuple[str, ...]] = []
    for i in range(chains):
        members = _place_one(ring, i, min(replicas, len(ring)), counts)
        if members:
            counts["head"][members[0]] += 1
            counts["tail"][members[-1]] += 1
        counts["total"].update(members)
        out.append(members)
    return out


def _place_one(
    ring: Sequence[Server], i: int, size: int, counts: Mapping[str, Counter[str]]
) -> tuple[str, ...]:
    """Chain ``i``'s members: head, then tail, then the middle (the two roles
    that carry load pick first)."""
    n = len(ring)
    heads, tails, total = counts["head"], counts["tail"], counts["total"]
    chosen: dict[int, Server] = {}
    for position in [0, *([size - 1] if size > 1 else []), *range(1, size - 1)][:size]:
        taken = list(chosen.values())
        used = Counter(zone_of(s) for s in taken)
        best: tuple[tuple[int, ...], Server] | None = None
        for k in range(n):
            s = ring[(i + k) % n]
            if s in taken:
                continue
            if position == 0:
                key: tuple[int, ...] = (heads[s.id], total[s.id], k)
            elif position == size - 1:
                key = (used[zone_of(s)], tails[s.id], total[s.id], k)
            else:
                key = (used[zone_of(s)], total[s.id], k)
            if best is None or key < best[0]:
                best = (key, s)
        assert best is not None
        chosen[position] = best[1]
    return tuple(chosen[p].id for p in range(size))


@dataclass(frozen=True)
class Change:
    """One chain's step: ``joining`` appended at the end, ``leaving`` taken out.

    A replacement of a dead server does both at once; a drain's first step
    only appends (``leaving`` stays until the joiner has joined), its second
    only removes.
    """

    chain: str
    joining: str | None = None
    leaving: str | None = None


class _Load:
    """How many chains, heads and tails each live server has, kept up to date
    while a plan is made so that its picks spread."""

    def __init__(
        self, m: ShardMap, live: Mapping[str, Server], exclude: Collection[str] = ()
    ) -> None:
        self.exclude = frozenset(exclude)  # live, but to be given nothing (draining)
        self.total: Counter[str] = Counter()
        self.tails: Counter[str] = Counter()
        for plan in m.chains.values():
            self.total.update(plan.members)
            if plan.members:
                self.tails[plan.members[-1]] += 1
        self.live = live

    def pick(self, members: Sequence[str], avoid: Iterable[str] = ()) -> str | None:
        """The live server to append to a chain of ``members``: not in it, in a
        zone it holds fewest times, serving fewest chains, then fewest tails."""
        taken = set(members) | set(avoid) | self.exclude
        zones = Counter(zone_of(self.live[s]) for s in members if s in self.live)
        free = [s for s in self.live.values() if s.id not in taken]
        if not free:
            return None
        best = min(
            free,
            key=lambda s: (zones[zone_of(s)], self.total[s.id], self.tails[s.id], s.id),
        )
        self.total[best.id] += 1
        self.tails[best.id] += 1
        if members:
            self.tails[members[-1]] -= 1
        return best.id


def replacements(
    m: ShardMap,
    live: Mapping[str, Server],
    gone_for: Mapping[str, float],
    replace_after: float,
    exclude: Collection[str] = (),
) -> list[Change]:
    """For every chain naming a server gone longer than ``replace_after``
    seconds (``gone_for``: server id to seconds gone), a new member in its place
    (never one of ``exclude``, the draining servers).

    A chain gets a replacement only when a live server is free for it; until
    then the gone server stays named (its disk may hold the only copy).
    """
    dead = {s for s, t in gone_for.items() if t > replace_after and s not in live}
    load = _Load(m, live, exclude)
    out: list[Change] = []
    for shard in m.shards:
        plan = m.chains[shard.chain]
        members = list(plan.members)
        for sid in plan.members:
            if sid not in dead:
                continue
            joining = load.pick(members, avoid=dead)
            if joining is None:
                break
            members = [s for s in members if s != sid] + [joining]
            out.append(Change(plan.id, joining=joining, leaving=sid))
    return out


def fill(
    m: ShardMap, live: Mapping[str, Server], exclude: Collection[str] = ()
) -> list[Change]:
    """New members for chains naming fewer than ``m.replicas`` servers (never one
    of ``exclude``, the draining servers).

    Chains naming none are placed together by :func:`place` (roles spread),
    once at least R servers are live: placing them as servers trickle in
    would make the first one head of every chain.  The others get members
    appended one at a time, least loaded first.
    """
    empty = [s.chain for s in m.shards if not m.chains[s.chain].members]
    out: list[Change] = []
    eligible = [s for s in live.values() if s.id not in exclude]
    if empty and len(eligible) >= m.replicas:
        placed = place(len(empty), eligible, m.replicas)
        for cid, placement in zip(empty, placed, strict=True):
            out.extend(Change(cid, joining=sid) for sid in placement)
    load = _Load(m, live, exclude)
    for shard in m.shards:
        plan = m.chains[shard.chain]
        if not plan.members:
            continue
        members = list(plan.members)
        while len(members) < m.replicas:
            joining = load.pick(members)
            if joining is None:
                break
            members.append(joining)
            out.append(Change(plan.id, joining=joining))
    return out


def drain(
    m: ShardMap,
    server: str,
    live: Mapping[str, Server],
    exclude: Collection[str] = (),
    skip: Collection[str] = (),
) -> list[Change]:
    """The first step of taking ``server`` away: a joiner appended to each of its
    chains (but those in ``skip``) whose other members number fewer than R; never
    one of ``exclude`` (the draining servers).

    ``server`` stays a member until its joiner has joined (:func:`drain_done`),
    so the chain never runs short while the new member copies its state.  A
    chain with R other members already (its joiner was appended before) gets
    none, so the step is the same when decided again from the map it wrote.
    """
    others = {sid: s for sid, s in live.items() if sid != server}
    load = _Load(m, others, exclude)
    out = []
    for plan in m.chains_of(server):
        if plan.id in skip or len(plan.members) - 1 >= m.replicas:
            continue
        joining = load.pick(plan.members)
        if joining is not None:
            out.append(Change(plan.id, joining=joining))
    return out


def drain_done(
    m: ShardMap,
    server: str,
    joined: Mapping[str, Iterable[str]],
    skip: Collection[str] = (),
) -> list[Change]:
    """The second step: ``server`` out of each of its chains (but those in ``skip``)
    that has R other planned members, all of them joined (``joined``: chain id to
    the servers that are its members now, as the chain's own membership lists
    them), so taking it out never leaves a chain shorter than planned."""
    out = []
    for plan in m.chains_of(server):
        if plan.id in skip:
            continue
        others = [s for s in plan.members if s != server]
        now = set(joined.get(plan.id, ()))
        if len(others) >= m.replicas and all(s in now for s in others):
            out.append(Change(plan.id, leaving=server))
    return out


def apply(m: ShardMap, changes: Sequence[Change]) -> ShardMap:
    """The map after ``changes``: same map if there are none, else the next version,
    with every changed chain's version bumped once."""
    if not changes:
        return m
    chains = dict(m.chains)
    touched: set[str] = set()
    for c in changes:
        plan = chains[c.chain]
        kept = [s for s in plan.members if s != c.leaving]
        if c.joining is not None and c.joining not in kept:
            kept.append(c.joining)
        chains[c.chain] = replace(plan, members=tuple(kept))
        touched.add(c.chain)
    for cid in touched:
        if chains[cid] != m.chains[cid]:
            chains[cid] = replace(chains[cid], version=m.chains[cid].version + 1)
        else:
            chains[cid] = m.chains[cid]
    if chains == dict(m.chains):
        return m
    return ShardMap(m.version + 1, m.replicas, m.shards, chains)
