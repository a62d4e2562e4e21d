"""Evening out the replicas the servers hold: the controller's balancing moves (no I/O).

A server added to a cluster gets no chain by itself (placement fills chains
short of R members, and replaces gone servers, but moves nothing), and one
that comes back after it was replaced holds nothing.  Once the cluster has
been quiet for ``--balance-after`` seconds (no map change, every chain at R
members, no move, split or drain in the request record, no server gone),
:func:`balance_move` picks one move: a replica from the server holding most
to the one holding fewest, when they differ by two or more.  The controller
writes it into the request record, so it is carried out (and resumed by a
new controller) exactly as an operator's ``cluster move``; the next one is
considered after the next quiet period.

Replicas are counted, not bytes: every chain is one replica per member
whatever it holds, and splits keep shards' sizes near each other.  Of the
chains on the fullest server, a chain whose tail it is moves first, then a
middle member, then a head: the joiner becomes the tail, so moving a tail
keeps every other member's role.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvtwist.cluster.requests import Move, Refused, Requests, check_move
from kvtwist.cluster.shardmap import Server, ShardMap

__all__ = ["DEFAULT_BALANCE_AFTER", "balance_move", "replicas_per_server"]

#: Seconds the cluster must be quiet before a balancing move (0: never balance).
DEFAULT_BALANCE_AFTER = 300.0


def replicas_per_server(m: ShardMap, servers: list[str]) -> dict[str, int]:
    """How many chains each of ``servers`` is a member of."""
    count = dict.fromkeys(servers, 0)
    for plan in m.chains.values():
        for sid in plan.members:
            if sid in count:
                count[sid] += 1
    return count


def balance_move(
    m: ShardMap, live: Mapping[str, Server], requests: Requests, gone: bool
) -> Move | None:
    """The next balancing move, or None when the cluster is even or busy (``gone``: a
    server the map names is not live)."""
    if gone or requests.moves or requests.splits:
        return None
    draining = set(requests.draining)
    if any(m.chains_of(sid) for sid in draining):
        return None  # a drain under way
    plans = m.chains.values()
    if any(len(p.members) != m.replicas or p.parent is not None for p in plans):
        return None  # a chain is changing, filling or settling a split: that first
    count = replicas_per_server(m, sorted(set(live) - draining))
    fullest = sorted(count, key=lambda s: (-count[s], s))
    emptiest = sorted(count, key=lambda s: (count[s], s))
    for source in fullest:
        for target in emptiest:
            if count[source] - count[target] < 2:
                break
            move = _move_between(m, live, requests, source, target)
            if move is not None:
                return move
    return None


def _move_between(
    m: ShardMap, live: Mapping[str, Server], requests: Requests, source: str, target: str
) -> Move | None:
    """A move of one of ``source``'s chains to ``target``: tails first, then middles, then
    heads; None if no chain may go (``target`` in all of them, or its zone taken)."""

    def role(cid: str) -> tuple[int, str]:
        members = m.chains[cid].members
        at = members.index(source)
        return (0 if at == len(members) - 1 else 2 if at == 0 else 1, cid)

    chains = sorted((p.id for p in m.chains_of(source)), key=role)
    for cid in chains:
        try:
            return check_move(m, live, requests, cid, target, source)
        except Refused:
            continue
    return None
