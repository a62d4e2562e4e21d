"""The end of a cluster campaign: every fault healed, a write to every chain, the
cluster left to settle, the final reads at each key's chain's tail, every member's
copy of its chain's shard; the findings, and the checks they must pass.

The checks are the chain campaign's (kvtwist.verify.campaign.verdict), with
"copies identical" judged per chain, and four of a cluster's own: the final map
covers the key space once, every chain has R members in the map and in its
ZooKeeper membership, no move or split is left pending, and every server kept
down was replaced.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvtwist import wire
from kvtwist.cluster.shardmap import ShardMap
from kvtwist.procs import RawClient
from kvtwist.verify.campaign.shards import Copy, Snapshot, keys_in
from kvtwist.verify.campaign.verdict import IDENTICAL, Check, Findings, checks
from kvtwist.verify.durability import LostWrite, lost_writes
from kvtwist.verify.history import Op
from kvtwist.verify.workload import key_text, value_text

if TYPE_CHECKING:
    from kvtwist.verify.shardtorture import ClusterCampaign

#: The liveness probe writes, in each shard, its first key followed by this.
PROBE_SUFFIX = b"\x00liveness-probe"

#: chain -> server -> that server's copy of the chain's shard (None: unreadable)
ChainCopies = dict[str, dict[str, Copy | None]]


@dataclass
class ClusterFindings:
    """What only a cluster campaign finds at the end."""

    replicas: int
    settled: bool
    map: ShardMap | None = None
    map_error: str | None = None
    listed: dict[str, list[str]] = field(default_factory=dict)
    copies: ChainCopies = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # moves and splits never carried out
    not_replaced: list[str] = field(default_factory=list)


def heal(c: ClusterCampaign) -> None:
    """End every fault; resume and restart every server held; ZooKeeper up."""
    c.log.event("heal", "heal")
    c.nemesis.heal()
    for n in c.nodes:
        if n.state == "paused":
            n.proc.resume()
            n.state = "running"
        elif n.state == "down":
            c.cluster.restart_node(n)
            n.state = "running"
    zk = c.cluster.zk
    if zk is not None and not zk.running:
        zk.restart()


def request(port: int, msg: wire.Message, timeout: float) -> wire.Message:
    with RawClient(port, timeout=timeout) as client:
        reply: wire.Message = client.one(msg)
        return reply


def probe(c: ClusterCampaign) -> tuple[bool, float, str]:
    """Liveness: in every shard, a new write acknowledged by its chain's head and then
    read at its tail.  Returns (live, seconds taken, the last obstacle seen)."""
    started = time.monotonic()
    deadline = started + c.args.liveness_timeout
    value = f"probe-{c.seed}-{secrets.token_hex(4)}".encode()
    acked: set[str] = set()
    seen: set[str] = set()
    last = "no shard map in ZooKeeper"
    while time.monotonic() < deadline:
        c.check_exits()
        s = c.cluster.snapshot()
        if s.map is None:
            time.sleep(0.2)
            continue
        todo = [sh for sh in s.map.shards if sh.chain not in seen]
        if not todo:
            return True, time.monotonic() - started, ""
        for shard in todo:
            members = [c.cluster.server(sid) for sid in s.listed.get(shard.chain, [])]
            if not members or None in members:
                last = f"chain {shard.chain} lists {s.listed.get(shard.chain)}"
                continue
            head, tail = members[0], members[-1]
            assert head is not None and tail is not None
            key = shard.start + PROBE_SUFFIX
            timeout = max(0.5, min(5.0, deadline - time.monotonic()))
            try:
                if shard.chain not in acked:
                    put = wire.req_put(key, value)
                    put.chain = shard.chain
                    reply = request(head.port, put, timeout)
                    if reply.opcode != wire.OP_PUT + 1:
                        last = f"{shard.chain} head {head.label}: {reply.error}"
                        continue
                    acked.add(shard.chain)
                get = wire.req_get(key)
                get.chain = shard.chain
                reply = request(tail.port, get, timeout)
                if reply.opcode == wire.OP_GET + 1 and list(reply.values) == [value]:
                    seen.add(shard.chain)
                else:
                    last = f"{shard.chain} tail {tail.label} does not show the write yet"
            except (OSError, RuntimeError, ValueError) as e:
                last = f"{shard.chain}: {type(e).__name__}: {e}"
        time.sleep(0.2)
    return False, time.monotonic() - started, f"not every chain took a new write: {last}"


def chain_copies(c: ClusterCampaign, s: Snapshot) -> ChainCopies:
    """Each listed member's own copy of its chain's shard."""
    out: ChainCopies = {}
    if s.map is None:
        return out
    for shard in s.map.shards:
        out[shard.chain] = {}
        for sid in s.listed.get(shard.chain, []):
            node = c.cluster.server(sid)
            got = c.cluster.copy(node, shard.chain, shard) if node is not None else None
            out[shard.chain][sid] = got
    return out


def same(copies: ChainCopies) -> bool:
    return all(
        None not in by.values() and len({repr(v) for v in by.values()}) == 1
        for by in copies.values()
    )


def wait_settled(c: ClusterCampaign) -> tuple[bool, float, Snapshot, ChainCopies]:
    """Every chain its plan, its members' copies alike, the same twice running."""
    started = time.monotonic()
    deadline = started + c.args.settle_timeout
    previous: tuple[int, ChainCopies] | None = None
    s, copies = Snapshot(), {}
    while time.monotonic() < deadline:
        c.check_exits()
        c.show_progress()
        s = c.cluster.snapshot()
        if c.cluster.settled(s) and s.map is not None:
            copies = chain_copies(c, s)
            now = (s.map.version, copies)
            if same(copies) and now == previous:
                return True, time.monotonic() - started, s, copies
            previous = now
        time.sleep(0.5)
    if s.map is not None:
        copies = chain_copies(c, s)
    return False, time.monotonic() - started, s, copies


def final_reads(c: ClusterCampaign) -> list[Op]:
    """Read every workload key at its chain's tail, as one more client (process -1)."""
    ops = []
    for i in range(c.args.keys):
        key = f"k{i}"
        for _attempt in range(20):
            s = c.cluster.snapshot()
            if s.map is None:
                time.sleep(0.5)
                continue
            chain = s.map.shard_for(key.encode()).chain
            listed = s.listed.get(chain, [])
            tail = c.cluster.server(listed[-1]) if listed else None
            if tail is None:
                time.sleep(0.5)
                continue
            invoke = c.log.now()
            get = wire.req_get(key.encode())
            get.chain = chain
            try:
                reply = request(tail.port, get, 10.0)
            except (OSError, RuntimeError, ValueError):
                time.sleep(0.5)
                continue
            if reply.opcode != wire.OP_GET + 1:
                time.sleep(0.5)
                continue
            text = value_text(bytes(reply.values[0])) if reply.values else None
            ops.append(Op(-1, "get", key, text, invoke, c.log.now(), "ok"))
            break
    return ops


def final_state(x: ClusterFindings, keys: int) -> tuple[dict[str, str | None], set[str]]:
    """The workload's keys as each shard's tail holds them, and the keys whose shard's
    tail could be read (only those can be judged)."""
    out: dict[str, str | None] = {}
    judged: set[str] = set()
    if x.map is None:
        return out, judged
    for shard in x.map.shards:
        listed = x.listed.get(shard.chain, [])
        tail = x.copies.get(shard.chain, {}).get(listed[-1]) if listed else None
        if tail is None:
            continue
        judged |= {key_text(k) for k in keys_in(shard, keys)}
        for k, v in tail:
            out[key_text(k)] = value_text(v)
    return out, judged


def lost_in(x: ClusterFindings, keys: int, ops: list[Op]) -> list[LostWrite]:
    """The acknowledged writes missing from the shards' tails, of the keys they hold."""
    state, judged = final_state(x, keys)
    return lost_writes([op for op in ops if op.key in judged], state)


def flat_copies(x: ClusterFindings) -> dict[str, Copy | None]:
    """Every copy under ``CHAIN@SERVER``, for the report."""
    return {f"{chain}@{sid}": copy for chain, by in x.copies.items() for sid, copy in by.items()}


def chains_not_identical(x: ClusterFindings) -> str | None:
    """Why some chain's members do not hold one copy of its shard (None: each does)."""
    if not x.settled:
        return "the cluster did not settle"
    why = []
    for chain, by in sorted(x.copies.items()):
        unread = sorted(sid for sid, copy in by.items() if copy is None)
        if unread:
            why.append(f"{chain}: copies not read at {', '.join(unread)}")
        elif len({repr(v) for v in by.values()}) > 1:
            sizes = ", ".join(f"{sid} {len(copy or [])} keys" for sid, copy in by.items())
            why.append(f"{chain}: members differ ({sizes})")
    return "; ".join(why) or None


def members_short(x: ClusterFindings) -> str | None:
    """Why some chain lacks R members, in the map or in its ZooKeeper membership."""
    if x.map is None:
        return "no shard map to read"
    why = []
    for cid, plan in sorted(x.map.chains.items()):
        listed = x.listed.get(cid, [])
        if len(plan.members) != x.replicas or len(listed) != x.replicas:
            why.append(f"{cid}: planned {list(plan.members)}, listed {listed}")
    return "; ".join(why) or None


def cluster_checks(f: Findings, x: ClusterFindings) -> list[Check]:
    """Every check of a cluster campaign, in the order their failures are told."""
    base = [Check(IDENTICAL, chains_not_identical(x)) if k.name == IDENTICAL else k
            for k in checks(f)]
    return [
        *base,
        Check("map covers the key space", x.map_error or (None if x.map else "no shard map")),
        Check("R members per chain", members_short(x)),
        Check(
            "requests carried out",
            f"moves and splits still pending: {', '.join(x.pending)}" if x.pending else None,
        ),
        Check(
            "servers replaced",
            f"servers kept down that were never replaced: {', '.join(x.not_replaced)}"
            if x.not_replaced
            else None,
        ),
    ]
