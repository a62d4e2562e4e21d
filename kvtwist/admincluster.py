"""``kvtwist-admin cluster create`` and ``cluster status``: make a cluster's shard map,
and show it with its live servers, what each chain's members say of themselves
and the moves and drains pending (``move``, ``drain`` and ``undrain`` are
:mod:`kvtwist.adminmove`'s).

``create`` cuts the key space into shards (``--shards N`` evenly over the
first bytes, or ``--split-at`` given keys) and writes the first map, only if
the cluster has none.  When at least R
servers are registered already it places the chains on them
(:func:`kvtwist.cluster.placement.place`); otherwise it leaves every
placement empty and the controller fills them once R servers are live.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from kazoo.client import KazooClient

from kvtwist import adminmove
from kvtwist.adminstatus import AskStats, MemberRow, align, member_rows, position
from kvtwist.client.shell_syntax import escape
from kvtwist.cluster import load, moves
from kvtwist.cluster.placement import place
from kvtwist.cluster.requests import BadRequests, Requests
from kvtwist.cluster.shardmap import BadMap, ClusterPaths, Server, ShardMap
from kvtwist.zk.cluster import (
    create_cluster_sync,
    loads_sync,
    read_map_sync,
    read_requests_sync,
    servers_sync,
)

__all__ = ["add_commands", "even_cuts", "parse_keys", "run"]

#: most shards ``--shards`` cuts (two bytes of key prefix)
MAX_SHARDS = 65536


def even_cuts(shards: int) -> list[bytes]:
    """``shards - 1`` cut keys spread evenly over the first byte of a key (the first
    two above 256 shards), so uniformly spread keys land evenly."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"--shards must be between 1 and {MAX_SHARDS}, not {shards}")
    width = 1 if shards <= 256 else 2
    space = 256**width
    cuts = [(i * space // shards).to_bytes(width, "big").rstrip(b"\x00") for i in range(1, shards)]
    return cuts


_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|\\|,)")


def parse_keys(text: str) -> list[bytes]:
    """``KEY,KEY,...``: UTF-8 text where ``\\xHH`` is one byte, ``\\,`` a comma and
    ``\\\\`` a backslash."""
    out = []
    for piece in re.split(r"(?<!\\),", text):
        raw = b""
        last = 0
        for m in _ESCAPE.finditer(piece):
            raw += piece[last : m.start()].encode()
            code = m.group(1)
            raw += bytes([int(code[1:], 16)]) if code[0] == "x" else code.encode()
            last = m.end()
        raw += piece[last:].encode()
        if not raw:
            raise ValueError("--split-at: a split key must not be empty")
        out.append(raw)
    if len(set(out)) != len(out):
        raise ValueError("--split-at: a split key is given twice")
    return out


def add_commands(
    sub: Any, common: Any, member_options: Any
) -> None:
    """``cluster create``, ``status``, ``move``, ``drain`` and ``undrain`` under ``sub``;
    ``common`` adds the options every command takes, ``member_options`` how status
    reaches members."""
    help = "make a cluster of many chains, show one, or move its shards between servers"
    cluster = sub.add_parser("cluster", help=help, description=help)
    common(cluster, top=False)
    verbs = cluster.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser(
        "create", help="write a new cluster's shard map (only if the cluster does not exist)"
    )
    common(create, top=False)
    create.add_argument("name", help="the cluster's name (ZooKeeper /kvtwist/NAME)")
    create.add_argument(
        "--replicas", type=int, required=True, metavar="R", help="members per chain"
    )
    cuts = create.add_mutually_exclusive_group(required=True)
    cuts.add_argument("--shards", type=int, metavar="N", help="N shards cut evenly by first byte")
    cuts.add_argument(
        "--split-at", metavar="KEY,KEY,...",
        help="shards cut at these keys (\\xHH a byte, \\, a comma)",
    )
    status = verbs.add_parser(
        "status", help="the shard map, the live servers and each chain's members"
    )
    common(status, top=False)
    member_options(status)
    status.add_argument("name", help="the cluster's name")
    adminmove.add_commands(verbs, common)


def run(zk: KazooClient, args: argparse.Namespace, ask: AskStats | None) -> int:
    """The ``cluster`` command, on a started client; the exit status."""
    paths = ClusterPaths(args.name)
    if args.verb == "create":
        return create(zk, paths, args.replicas, args.cuts, args.output)
    if args.verb in adminmove.VERBS:
        return adminmove.run(zk, paths, args)
    assert ask is not None
    return status(zk, paths, ask, args.output)


def check_args(args: argparse.Namespace) -> str | None:
    """A usage error of ``cluster``'s arguments, or None; puts the cut keys in ``args.cuts``."""
    try:
        ClusterPaths(args.name)
        if args.verb == "create":
            if args.replicas < 1:
                return "--replicas must be at least 1"
            args.cuts = (
                even_cuts(args.shards) if args.shards is not None else parse_keys(args.split_at)
            )
        if args.verb in adminmove.VERBS:
            adminmove.check_args(args)
    except (BadMap, ValueError) as e:
        return str(e)
    return None


def create(zk: KazooClient, paths: ClusterPaths, replicas: int, cuts: list[bytes],
           output: str = "table") -> int:
    live = servers_sync(zk, paths)
    shards = len(set(cuts)) + 1
    placed = place(shards, live.values(), replicas) if len(live) >= replicas else [()] * shards
    m = ShardMap.initial(replicas, cuts, placed)
    if not create_cluster_sync(zk, paths, m.encode()):
        print(f"kvtwist-admin: cluster {paths.name} exists already", file=sys.stderr)
        return 1
    if output == "json":
        print(json.dumps(cluster_json(ClusterStatus(paths.name, m, live, [])), sort_keys=True))
    else:
        placed_on = "placed on the registered servers" if any(placed) else (
            f"placements empty until {replicas} servers are live (the controller fills them)"
        )
        print(f"cluster {paths.name} created: {len(m.shards)} shards, R = {replicas}, {placed_on}")
    return 0


@dataclass
class ChainRows:
    """One shard: its range, its chain's plan and what the chain's members say."""

    start: bytes
    end: bytes | None
    chain: str
    version: int
    planned: tuple[str, ...]
    members: list[MemberRow] = field(default_factory=list)


@dataclass
class ClusterStatus:
    name: str
    map: ShardMap | None
    servers: dict[str, Server]
    shards: list[ChainRows]
    requests: Requests = field(default_factory=Requests)
    #: why the request record could not be read, if it could not
    requests_error: str | None = None
    #: chain id -> what its move or drain is doing or waiting for
    progress: dict[str, str] = field(default_factory=dict)
    #: chain id -> keys its tail last reported holding outside its shard (not swept yet)
    stray: dict[str, int] = field(default_factory=dict)


def gather(zk: KazooClient, paths: ClusterPaths, ask_chain: Any) -> ClusterStatus:
    """The map, the live servers and each chain's member rows (``ask_chain(cid)``
    is the STATS asker for chain ``cid``)."""
    from kvtwist.admin import _members

    data, _version = read_map_sync(zk, paths)
    live = servers_sync(zk, paths)
    if data is None:
        return ClusterStatus(paths.name, None, live, [])
    m = ShardMap.decode(data)
    rows = []
    for shard in m.shards:
        plan = m.chains[shard.chain]
        members = _members(zk, paths.chain(shard.chain))
        rows.append(ChainRows(shard.start, shard.end, shard.chain, plan.version, plan.members,
                              member_rows(members, ask_chain(shard.chain))))
    st = ClusterStatus(paths.name, m, live, rows)
    try:
        st.requests = Requests.decode(read_requests_sync(zk, paths)[0])
    except BadRequests as e:
        st.requests_error = str(e)
    listed = {r.chain: [row.address for row in r.members if row.address] for r in rows}
    joined = moves.joined_servers(live, listed)
    st.progress = moves.plan(m, st.requests, live, joined).progress
    st.stray = stray_keys(loads_sync(zk, paths))
    return st


def stray_keys(records: dict[str, bytes]) -> dict[str, int]:
    """Per chain, the stray keys of its latest load report (the highest op); a record
    this code cannot read is left out."""
    latest: dict[str, tuple[int, int]] = {}
    for data in records.values():
        try:
            loads = load.decode(data)
        except BadMap:
            continue
        for cid, c in loads.items():
            if cid not in latest or c.op > latest[cid][0]:
                latest[cid] = (c.op, c.stray)
    return {cid: stray for cid, (_, stray) in latest.items() if stray}


def status(zk: KazooClient, paths: ClusterPaths, ask: Any, output: str = "table") -> int:
    """``ask`` is ``stats_asker``'s maker: called with a chain id, an AskStats."""
    try:
        st = gather(zk, paths, ask)
    except BadMap as e:
        print(f"kvtwist-admin: the map of cluster {paths.name} is unreadable: {e}",
              file=sys.stderr)
        return 1
    if st.map is None:
        print(f"kvtwist-admin: no cluster {paths.name} (no {paths.map})", file=sys.stderr)
        return 1
    if output == "json":
        print(json.dumps(cluster_json(st), indent=2, sort_keys=True))
    else:
        print(cluster_table(st))
    return 0


def _roles(members: tuple[str, ...]) -> list[dict[str, str]]:
    return [{"server": s, "role": position(i, len(members))} for i, s in enumerate(members)]


def cluster_json(st: ClusterStatus) -> dict[str, Any]:
    """The machine-readable form: keys as hex and as escaped text."""
    m = st.map
    shards = []
    rows = {r.chain: r for r in st.shards}
    for shard in m.shards if m is not None else ():
        plan = m.chains[shard.chain] if m is not None else None
        row = rows.get(shard.chain)
        shards.append({
            "start": shard.start.hex(),
            "end": None if shard.end is None else shard.end.hex(),
            "start_text": escape(shard.start),
            "end_text": None if shard.end is None else escape(shard.end),
            "chain": shard.chain,
            "chain_version": plan.version if plan else None,
            "split_from": plan.parent if plan else None,
            "stray_keys": st.stray.get(shard.chain, 0),
            "planned": _roles(plan.members) if plan else [],
            "members": [asdict(r) for r in row.members] if row else [],
        })
    return {
        "cluster": st.name,
        "moves": [
            {"chain": mv.chain, "from": mv.source, "to": mv.target,
             "state": st.progress.get(mv.chain)}
            for mv in st.requests.moves
        ],
        "draining": [
            {"server": sid, "chains": [p.id for p in m.chains_of(sid)] if m else []}
            for sid in st.requests.draining
        ],
        "splits": [
            {"chain": sp.chain, "at": sp.at.hex(), "at_text": escape(sp.at)}
            for sp in st.requests.splits
        ],
        "requests_error": st.requests_error,
        "map_version": m.version if m else None,
        "replicas": m.replicas if m else None,
        "shards": shards,
        "servers": [
            {"id": s.id, "address": s.address, "zone": s.zone}
            for s in sorted(st.servers.values(), key=lambda s: s.id)
        ],
    }


def cluster_table(st: ClusterStatus) -> str:
    m = st.map
    assert m is not None
    lines = [f"cluster     {st.name}", f"map         version {m.version}, R = {m.replicas}"]
    zones = {s.zone for s in st.servers.values()} - {None}
    in_zones = f" in {len(zones)} zones" if zones else ""
    lines.append(f"servers     {len(st.servers)} live{in_zones}")
    for s in sorted(st.servers.values(), key=lambda s: s.id):
        lines.append(f"  {s.id:<10} {s.address}" + (f"  zone {s.zone}" if s.zone else ""))
    lines.append("")
    table = [["SHARD", "CHAIN", "VERSION", "PLANNED (head first)", "MEMBER", "ROLE", "ADDRESS",
              "COMMITTED", "LAG"]]
    for r in st.shards:
        end = escape(r.end) if r.end is not None else "∞"
        span = f"[{escape(r.start) or repr('')}, {end})"
        planned = ",".join(f"{s}{'*' if s not in st.servers else ''}" for s in r.planned) or "-"
        first = [span, r.chain, str(r.version), planned]
        if not r.members:
            table.append([*first, "-", "-", "-", "-", "-"])
        for i, row in enumerate(r.members):
            lead = first if i == 0 else ["", "", "", ""]
            if not row.answered:
                table.append([*lead, row.name, row.position, row.address or "-",
                              f"does not answer: {row.error}"])
                continue
            table.append([*lead, row.name, row.role or row.position, row.address or "-",
                          "-" if row.committed is None else str(row.committed),
                          "-" if row.lag is None else str(row.lag)])
    lines += align(table)
    if any(s not in st.servers for r in st.shards for s in r.planned):
        lines.append("")
        lines.append("* planned on a server that is not live")
    return "\n".join(lines + requests_lines(st))


def requests_lines(st: ClusterStatus) -> list[str]:
    """The pending moves, drains and splits, and what each waits for."""
    m = st.map
    assert m is not None
    out: list[str] = []
    if st.requests_error is not None:
        out.append(f"requests    unreadable, none carried out: {st.requests_error}")
    for mv in st.requests.moves:
        state = st.progress.get(mv.chain, "")
        out.append(f"move        {mv.chain} {mv.source} -> {mv.target}: {state or 'pending'}")
    for sid in st.requests.draining:
        left = [p.id for p in m.chains_of(sid)]
        where = f"still in {','.join(left)}" if left else "in no chain (drained)"
        out.append(f"draining    {sid}: {where}")
        out += [f"  {cid}: {st.progress[cid]}" for cid in left if cid in st.progress]
    for sp in st.requests.splits:
        out.append(f"split       {sp.chain} at {escape(sp.at)}: pending")
    for cid, plan in sorted(m.chains.items()):
        if plan.parent is not None:
            out.append(f"settling    {cid} split off {plan.parent}: until every server "
                       f"planned for it is its member; then {plan.parent} sweeps")
    for cid, n in sorted(st.stray.items()):
        out.append(f"sweeping    {cid}: {n} keys given away by splits, not deleted yet")
    return ["", *out] if out else []
