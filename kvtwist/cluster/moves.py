"""Carrying out moves and drains: the controller's next step for each, as a pure plan.

A move of chain C from F to T goes through the chain's own membership, the
way chain replication reconfigures safely:

1. T is appended to C's placement.  T's server then joins the chain as any
   joiner does: at the tail, by state transfer from the current tail, and
   registers its member znode only once it holds everything the tail had
   committed and the backlog that followed.
2. Only once every other planned member of C, T among them, is a *joined
   member*, listed by the chain's own ZooKeeper membership (not merely named
   by the map), does the map drop F; F's server then stops its replica and
   deletes its member znode, and the chain closes over the gap by its
   removal rules.

Nothing of this is kept beyond the request record and the map: the step is
read from them again at every decision (F and T in C: step 2 waits; F in C,
T not: step 1; F gone from C: the move is over), so a controller elected in
the middle of a move completes it.  A drain of server D is a move of each of
D's chains to a joiner :func:`kvtwist.cluster.placement.drain` picks, and
D leaves a chain by :func:`kvtwist.cluster.placement.drain_done`'s rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kvtwist.cluster import placement
from kvtwist.cluster.placement import Change
from kvtwist.cluster.requests import Move, Requests
from kvtwist.cluster.shardmap import Server, ShardMap

__all__ = ["Plan", "joined_servers", "plan"]


@dataclass
class Plan:
    """The changes to make now, the moves that are over, and what each request waits for."""

    changes: list[Change] = field(default_factory=list)
    finished: set[Move] = field(default_factory=set)
    #: chain id -> what its move or drain is doing or waiting for, for ``cluster status``
    progress: dict[str, str] = field(default_factory=dict)


def joined_servers(
    live: Mapping[str, Server], addresses: Mapping[str, Iterable[str]]
) -> dict[str, set[str]]:
    """Chain id -> the live servers among its members (``addresses``: chain id to its
    member znodes' ``host:port``, as the chain's ZooKeeper membership lists them)."""
    by_address = {s.address: sid for sid, s in live.items()}
    return {
        cid: {by_address[a] for a in listed if a in by_address}
        for cid, listed in addresses.items()
    }


def plan(
    m: ShardMap,
    requests: Requests,
    live: Mapping[str, Server],
    joined: Mapping[str, Iterable[str]],
) -> Plan:
    """The next step of every move and drain in ``requests`` on map ``m`` (at most one
    change per chain: the next step is decided on the map that step writes), and the
    trimming of a chain with more members than R that none of them wants."""
    out = Plan()
    draining = set(requests.draining)
    touched: set[str] = set()
    for move in requests.moves:
        change = _move_step(m, move, live, draining, joined, out)
        if change is not None:
            out.changes.append(change)
            touched.add(move.chain)
    moved = {mv.chain for mv in requests.moves} | touched
    draining_in = {p.id for sid in draining for p in m.chains_of(sid)}
    for cid, chain in sorted(m.chains.items()):
        if len(chain.members) > m.replicas and cid not in moved | draining_in:
            out.changes.append(_trim(cid, chain.members, joined, out))
            touched.add(cid)
    for server in requests.draining:
        skip = moved | touched
        leaving = placement.drain_done(m, server, joined, skip)
        touched |= {c.chain for c in leaving}
        appending = placement.drain(m, server, live, draining, skip | touched)
        touched |= {c.chain for c in appending}
        out.changes += leaving + appending
        for c in leaving:
            out.progress[c.chain] = f"drain of {server}: {server} leaving"
        for c in appending:
            out.progress[c.chain] = f"drain of {server}: appending {c.joining}"
        for p in m.chains_of(server):
            if p.id not in skip and p.id not in out.progress:
                out.progress[p.id] = f"drain of {server}: " + _waiting(m, p.id, server, joined)
    return out


def _move_step(
    m: ShardMap,
    move: Move,
    live: Mapping[str, Server],
    draining: set[str],
    joined: Mapping[str, Iterable[str]],
    out: Plan,
) -> Change | None:
    what = f"move {move.source} -> {move.target}"
    chain = m.chains.get(move.chain)
    if chain is None or move.source not in chain.members:
        out.finished.add(move)  # done, or the source left otherwise (replaced when gone)
        return None
    members = chain.members
    others = [s for s in members if s != move.source]
    if move.target not in members and len(others) < m.replicas:
        if move.target in live and move.target not in draining:
            out.progress[move.chain] = f"{what}: appending {move.target}"
            return Change(move.chain, joining=move.target)
        why = "draining" if move.target in draining else "not live"
        out.progress[move.chain] = f"{what}: waiting, {move.target} is {why}"
        return None
    now = set(joined.get(move.chain, ()))
    enough = move.target in others or len(others) >= m.replicas
    if others and enough and all(s in now for s in others):
        out.progress[move.chain] = f"{what}: {move.source} leaving"
        return Change(move.chain, leaving=move.source)
    out.progress[move.chain] = f"{what}: " + _waiting(m, move.chain, move.source, joined)
    return None


def _trim(
    cid: str, members: tuple[str, ...], joined: Mapping[str, Iterable[str]], out: Plan
) -> Change:
    """A chain with more members than R and no move or drain that wants them (a move
    cancelled after its target was appended): the newest member that has not joined
    leaves, else the newest."""
    now = set(joined.get(cid, ()))
    leaving = next((s for s in reversed(members) if s not in now), members[-1])
    out.progress[cid] = f"{leaving} leaving: no move wants {len(members)} members"
    return Change(cid, leaving=leaving)


def _waiting(m: ShardMap, chain: str, source: str, joined: Mapping[str, Iterable[str]]) -> str:
    """What a chain's step 2 waits for: the planned members not joined yet."""
    now = set(joined.get(chain, ()))
    others = [s for s in m.chains[chain].members if s != source]
    missing = [s for s in others if s not in now]
    if missing:
        return f"waiting for {','.join(missing)} to join"
    if len(others) < m.replicas:
        return "waiting for a server free to take its place"
    return "ready"
