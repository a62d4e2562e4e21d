"""The end of a campaign: every fault healed, the liveness probe, the chain left to
settle, the final reads at the tail, each member's copy; then the findings the checks
and the report read."""

from __future__ import annotations

import secrets
import sys
import time
from typing import TYPE_CHECKING, Any

from kvtwist import wire
from kvtwist.procs import RawClient, dump
from kvtwist.verify.campaign.verdict import Findings
from kvtwist.verify.durability import lost_writes
from kvtwist.verify.history import Op, dumps, read_history
from kvtwist.verify.linearizability import check
from kvtwist.verify.workload import key_text, value_text

if TYPE_CHECKING:
    from kvtwist.verify.torture import Campaign

#: The liveness probe writes this key (not one of the clients' keys).
PROBE_KEY = b"liveness-probe"

#: Each member's own copy, head first (None: it could not be read).
Copies = dict[str, list[tuple[bytes, bytes]] | None]


def heal(c: Campaign) -> None:
    """End every fault, resume and restart every node held, top the chain up."""
    cluster = c.cluster
    c.log.event("heal", "heal")
    c.nemesis.heal()
    for n in cluster.nodes:
        if n.state == "paused":
            n.proc.resume()
            n.state = "running"
        elif n.state == "down":
            cluster.restart_node(n)
            n.state = "running"
    if cluster.zk is not None and not cluster.zk.running:
        cluster.zk.restart()
    while len([n for n in cluster.nodes if n.state != "dead"]) < c.args.nodes:
        cluster.start_node()


def probe(c: Campaign) -> tuple[bool, float, str]:
    """Liveness: a new write acknowledged by the head and then read at the tail.

    Returns (live, seconds taken, the last obstacle seen).
    """
    started = time.monotonic()
    deadline = started + c.args.liveness_timeout
    value = f"probe-{c.seed}-{secrets.token_hex(4)}".encode()
    acked, last = False, "no chain in ZooKeeper"
    while time.monotonic() < deadline:
        c.watch.check_exits()
        nodes = [c.cluster.node_of(port) for _, port in c.cluster.members()]
        if not nodes or None in nodes:
            time.sleep(0.2)
            continue
        head, tail = nodes[0], nodes[-1]
        assert head is not None and tail is not None
        timeout = max(0.5, min(5.0, deadline - time.monotonic()))
        try:
            if not acked:
                with RawClient(head.port, timeout=timeout) as client:
                    reply = client.one(wire.req_put(PROBE_KEY, value))
                if reply.opcode != wire.OP_PUT + 1:
                    last = f"head {head.label}: {reply.error}"
                    time.sleep(0.2)
                    continue
                acked = True
            with RawClient(tail.port, timeout=timeout) as client:
                got = client.get(PROBE_KEY)
            if got == value:
                return True, time.monotonic() - started, ""
            last = f"tail {tail.label} does not show the acknowledged write yet"
        except (OSError, RuntimeError) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    what = "acknowledged but not visible at the tail" if acked else "never acknowledged"
    return False, time.monotonic() - started, f"a new write was {what}: {last}"


def settled(c: Campaign) -> list[tuple[bytes, bytes]] | None:
    """The common copy once the chain is whole and every member holds the same data."""
    c.watch.check_exits()
    cluster = c.cluster
    running = {n.address_port for n in cluster.nodes if n.state == "running"}
    members = [port for _, port in cluster.members()]
    if len(members) < c.args.nodes or set(members) != running:
        return None
    nodes = [cluster.node_of(port) for port in members]
    copies = [dump(n.port) if n is not None else None for n in nodes]
    first = copies[0]
    if first is None or any(copy != first for copy in copies):
        return None
    return first


def wait_settled(c: Campaign) -> tuple[bool, float]:
    """Whether the chain settled (the same common copy twice running), and how long it took."""
    started = time.monotonic()
    deadline = started + c.args.settle_timeout
    previous = None
    while time.monotonic() < deadline:
        c.show_progress()
        state = settled(c)
        if state is not None and state == previous:
            return True, time.monotonic() - started
        previous = state
        time.sleep(0.5)
    return False, time.monotonic() - started


def final_reads(c: Campaign) -> list[Op]:
    """Read every key at the tail, as one more client (process -1)."""
    ops = []
    for i in range(c.args.keys):
        key = f"k{i}"
        for _attempt in range(20):
            members = c.cluster.members()
            tail = c.cluster.node_of(members[-1][1]) if members else None
            if tail is None:
                time.sleep(0.5)
                continue
            invoke = c.log.now()
            try:
                with RawClient(tail.port, timeout=10) as client:
                    value = client.get(key.encode())
            except (OSError, RuntimeError):
                time.sleep(0.5)
                continue
            text = None if value is None else value_text(value)
            ops.append(Op(-1, "get", key, text, invoke, c.log.now(), "ok"))
            break
    return ops


def node_copies(c: Campaign) -> Copies:
    out = {}
    for _, port in c.cluster.members():
        node = c.cluster.node_of(port)
        out[c.cluster.label_of(port)] = dump(node.port) if node is not None else None
    return out


def gather(
    c: Campaign,
    is_settled: bool,
    settle_s: float,
    finals: list[Op],
    copies: Copies,
    liveness: dict[str, Any],
) -> Findings:
    """Everything the checks and the report read: the history checked, the copies compared."""
    if c.log.tty:
        sys.stderr.write("\n")
    c.log.progress.update()
    history_path = c.history_path
    client_ops = read_history(history_path) if history_path.exists() else []
    with open(history_path, "a", encoding="utf-8") as f:
        for op in finals:
            f.write(dumps(op) + "\n")
    started = time.monotonic()
    result = check(client_ops + finals, timeout=c.args.check_timeout)
    check_s = time.monotonic() - started
    readable = [copy for copy in copies.values() if copy is not None]
    final_state: dict[str, str | None] = {}
    if readable:
        tail_copy = list(copies.values())[-1] or []
        final_state = {key_text(k): value_text(v) for k, v in tail_copy}
    statuses = [w.returncode for w in c.clients.running()]
    nodes = c.cluster.nodes
    return Findings(
        nodes=c.args.nodes,
        keys=c.args.keys,
        client_ops=client_ops,
        finals=finals,
        result=result,
        check_s=check_s,
        liveness=liveness,
        settled=is_settled,
        settle_s=settle_s,
        copies=copies,
        lost=lost_writes(client_ops, final_state) if readable else [],
        # a node we left running that the chain does not list never came back
        outside=[n.label for n in nodes if n.state == "running" and n.label not in copies],
        stranded=list(c.watch.stranded),
        unexpected_exits=list(c.watch.unexpected_exits),
        stranger_accepted=sum(int(r.get("accepted", 0)) for r in c.stranger_results),
        workload_status=next((s for s in statuses if s != 0), None if not statuses else 0),
    )
