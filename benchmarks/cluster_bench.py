"""The cluster benchmark (``--only cluster``): how throughput grows with servers and shards.

Four comparisons, each side running at once on this machine, measured in turn
by the same load generator (``kvtwist-bench --zk --cluster``: every request
goes to its key's chain, writes to the head, reads to the tail):

- **scale R=1**: a cluster of 2 shards, R = 1, on 1 server, against the same
  on 2 servers (one shard each);
- **scale R=3**: one plain chain of 3 nodes against clusters of 3 servers with
  R = 3 and 3, then 6, shards (heads and tails spread over the servers);
- **routing**: a plain chain of one node against a cluster of one shard on one
  server (what the cluster client's routing costs).

The shards cut the bench's keys (``bench:k…``) evenly.  Each server's CPU time
over each measured run, divided by the requests the run made, is the node CPU
per request.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvtwist.bench.cli import DEFAULT_KEY_PREFIX
from kvtwist.bench.workload import key_name
from kvtwist.procs import NodeProcess

if TYPE_CHECKING:
    from benchmarks.run import Page, Run

ADMIN = str(Path(sys.executable).parent / "kvtwist-admin")
#: (setting, connections, pipeline depth)
CLUSTER_SETTINGS = (("32×1", 32, 1), ("4×32", 4, 32))


def cuts(keys: int, shards: int) -> list[str]:
    """Split keys that cut the bench's key space into ``shards`` even parts."""
    return [DEFAULT_KEY_PREFIX + key_name(keys * i // shards) for i in range(1, shards)]


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Side:
    """One system under test: its processes and how the bench reaches it."""

    def __init__(self, name: str, where: list[str], nodes: list[NodeProcess]) -> None:
        self.name = name
        self.where = where
        self.nodes = nodes


def cluster_side(
    run: Run, procs: list[Any], zk_hosts: str, kz: Any, servers: int, shards: int, r: int
) -> Side:
    """``servers`` cluster servers of a new cluster of ``shards`` shards, R = ``r``."""
    from benchmarks.run import _env, start_node
    from kvtwist.procs import wait_for

    name = f"b{uuid.uuid4().hex[:6]}"
    nodes = []
    for i in range(servers):
        nodes.append(start_node(run, procs, [
            "--zk", zk_hosts, "--cluster", name, "--server-id", f"s{i + 1}", "--in-memory",
        ]))
    wait_for(lambda: len(kz.get_children(f"/kvtwist/{name}/servers")) == servers
             if kz.exists(f"/kvtwist/{name}/servers") else False, 60, "servers registered")
    create = [ADMIN, "cluster", "create", name, "--zk", zk_hosts, "--replicas", str(r)]
    if shards > 1:
        create += ["--split-at", ",".join(cuts(run.settings.keys, shards))]
    else:
        create += ["--shards", "1"]
    run.command(create, " ".join(["kvtwist-admin", *create[1:]]).replace(zk_hosts, "ZK"))
    subprocess.run(create, check=True, capture_output=True, env=_env(), timeout=60)

    def formed() -> bool:
        roots = [f"/kvtwist/{name}/chains/c{i}" for i in range(shards)]
        return all(
            kz.exists(root) and sum(c.startswith("node") for c in kz.get_children(root)) == r
            for root in roots
        )

    wait_for(formed, 90, f"cluster {name} formed")
    label = f"{servers} server{'s' * (servers > 1)}, {shards} shard{'s' * (shards > 1)}, R={r}"
    return Side(label, ["--zk", zk_hosts, "--cluster", name], nodes)


def chain_side(run: Run, procs: list[Any], zk: Any, kz: Any, n: int) -> Side:
    from benchmarks.run import chain_nodes

    root = f"/bench-{uuid.uuid4().hex[:6]}"
    nodes = chain_nodes(run, procs, zk, kz, root, n, 10.0, ["--in-memory"])
    return Side(f"chain of {n}", ["--zk", zk.hosts, "--zk-root", root], nodes)


def measure(run: Run, label: str, sides: list[Side]) -> dict[str, Any]:
    """Every side preloaded, then PUT and GET at each setting (the first side the
    reference), with each side's node CPU per request."""
    from benchmarks.run import bench, preload, throughput_args

    s = run.settings
    for side in sides:
        preload(run, f"preload {label} {side.name}", side.where, s.keys)
    out: dict[str, Any] = {}
    order = sides if s.reps == 1 else sides + sides[::-1]
    for setting, conns, pipe in CLUSTER_SETTINGS:
        for op in ("PUT", "GET"):
            got: dict[str, list[tuple[dict[str, Any], float]]] = {x.name: [] for x in sides}
            for side in order:
                before = [cpu_seconds(n.pid) for n in side.nodes if n.pid]
                rep = bench(run, f"{label} {op} {setting} {side.name}",
                            [*side.where, *throughput_args(s, op.lower(), conns, pipe)])
                after = [cpu_seconds(n.pid) for n in side.nodes if n.pid]
                requests = rep["requests"]["ok"] or 1
                cpu = sum(b - a for a, b in zip(before, after, strict=True))
                got[side.name].append((rep, 1e6 * cpu / requests))
            row: dict[str, Any] = {}
            for name, reps in got.items():
                row[name] = {
                    "throughput": sum(r["throughput"] for r, _ in reps) / len(reps),
                    "p50_us": sum(r["latency_us"]["p50"] for r, _ in reps) / len(reps),
                    "p99_us": max(r["latency_us"]["p99"] for r, _ in reps),
                    "errors": sum(r["requests"]["errors"] + r["requests"]["unanswered"]
                                  for r, _ in reps),
                    "node_cpu_us": sum(c for _, c in reps) / len(reps),
                }
            base = row[sides[0].name]["throughput"]
            row["ratios"] = {x.name: row[x.name]["throughput"] / base if base else 0.0
                             for x in sides[1:]}
            out[f"{op} {setting}"] = row
    return out


def bench_cluster(run: Run) -> None:
    """The comparisons of the module's docstring, under ``results["cluster"]``."""
    from benchmarks.run import kazoo, processes, zk_start

    run.log("10. cluster: scaling with servers and shards")
    res: dict[str, Any] = {}
    with processes() as procs:
        zk = zk_start(run, procs)
        kz = kazoo(zk.hosts)
        try:
            plans: list[tuple[str, list[Any]]] = [
                ("scale R=1", [(1, 2, 1), (2, 2, 1)]),
                ("scale R=3", [("chain", 3), (3, 3, 3), (3, 6, 3)]),
                ("routing", [("chain", 1), (1, 1, 1)]),
            ]
            for label, specs in plans:
                with processes() as mine:
                    sides = [
                        chain_side(run, mine, zk, kz, spec[1]) if spec[0] == "chain"
                        else cluster_side(run, mine, zk.hosts, kz, *spec)
                        for spec in specs
                    ]
                    res[label] = measure(run, label, sides)
        finally:
            kz.stop()
            kz.close()
    run.results["cluster"] = res


def render_cluster(p: Page) -> None:
    """Section 10: the cluster's scaling."""
    add = p.add
    add("## 10. Cluster: scaling with servers and shards\n")
    add(
        "Every side runs at once on this machine and is measured in turn by one "
        "`kvtwist-bench --zk … --cluster NAME` (or `--zk-root` for a plain chain), which "
        "sends each request to its key's chain (writes to the head, reads to the tail); "
        "the shards cut the bench's keys evenly. *node CPU* is the servers' CPU time over "
        "a run per request answered: it grows with R, since each write is applied by "
        "every member.\n"
    )
    add("| comparison | workload | side | req/s | ratio | floor | | p50 / p99 µs "
        "| node CPU µs/req |")
    add("|---|---|---|---:|---:|---:|---|---|---:|")
    for label, rows in p.results["cluster"].items():
        for workload, row in rows.items():
            sides = [k for k in row if k != "ratios"]
            for i, side in enumerate(sides):
                x = row[side]
                ratio = "" if i == 0 else f"{row['ratios'][side]:.2f}×"
                cells = p.floor_cells("" if i == 0 else f"cluster:{label}:{workload}:{side}")
                errs = f" ({x['errors']} errors)" if x["errors"] else ""
                add(
                    f"| {label if i == 0 and workload.startswith('PUT 32') else ''} | "
                    f"{workload if i == 0 else ''} | {side} | {x['throughput']:,.0f}{errs} | "
                    f"{ratio} | {cells} | {x['p50_us']:,.0f} / {x['p99_us']:,.0f} | "
                    f"{x['node_cpu_us']:,.0f} |"
                )
    add("")
