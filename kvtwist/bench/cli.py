"""``kvtwist-bench``: drive a kvtwist node or chain and report throughput and latency.

Examples::

    kvtwist-bench --target 127.0.0.1:9000 --workload get --connections 4 --pipeline 32
    kvtwist-bench --zk 127.0.0.1:2181 --zk-root /chain --workload mixed --read-fraction 0.9
    kvtwist-bench --zk 127.0.0.1:2181 --cluster prod --workload put
    kvtwist-bench --target 127.0.0.1:9000 --workload put --key-dist sequential \\
        --keys 1000000 --requests 1000000 --json load.json

It writes into the store it drives: the put and mixed workloads store up to
--keys keys named ``bench:k000000000000000`` and so on (``--key-prefix``
changes ``bench:``), overwriting keys of that name.  Point it at a node or
chain whose data may change, or pick a prefix no one else uses.

Exit status: 0 when every request got a non-ERROR reply, 1 when the bench
could not run, 3 when some request got an ERROR reply or none at all.

The load runs in ``--processes`` processes (connections are dealt out among
them), which connect first, then start together; their histograms are merged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import queue
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

from kvtwist import __version__
from kvtwist.bench.hist import Histogram
from kvtwist.bench.loadgen import WorkerSpec, worker_process
from kvtwist.bench.workload import KEY_DISTS, WORKLOADS, Route

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
DEFAULT_KEY_PREFIX = "bench:"
REPORT_VERSION = 1


class BenchError(Exception):
    """The bench could not run (bad target, no connection, a worker died)."""


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    n = int(port)
    if not 1 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, n


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _nonneg_int(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def _fraction(text: str) -> float:
    x = float(text)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {x}")
    return x


def _positive_float(text: str) -> float:
    x = float(text)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {x}")
    return x


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvtwist-bench",
        description="Load generator for kvtwist: speaks the wire protocol to a node or a chain. "
        "It WRITES into the target: the put and mixed workloads store up to --keys keys "
        f"named {DEFAULT_KEY_PREFIX}k000000000000000 ... (see --key-prefix), overwriting "
        "any keys of those names. It speaks plain TCP without a client token: run the "
        "target without --tls-cert and --auth-token-file.",
        epilog="Exit status: 0 all replies fine, 1 could not run, 3 ERROR replies or "
        "requests left unanswered.",
    )
    p.add_argument("--version", action="version", version=f"kvtwist-bench {__version__}")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", type=parse_hostport, help="a node's host:port")
    where.add_argument(
        "--zk",
        metavar="HOSTS",
        help="ZooKeeper hosts: writes go to the head, reads to the tail",
    )
    p.add_argument("--zk-root", default="/chain", help="the chain's ZooKeeper path (/chain)")
    p.add_argument(
        "--cluster", metavar="NAME",
        help="with --zk: a cluster of many chains; each request goes to its key's chain",
    )
    p.add_argument("--workload", choices=WORKLOADS, default="get", help="get, put or mixed")
    p.add_argument(
        "--read-fraction", type=_fraction, default=0.5, help="share of GETs in mixed (0.5)"
    )
    p.add_argument("--keys", type=_positive_int, default=10_000, help="key space size (10000)")
    p.add_argument("--value-size", type=_nonneg_int, default=32, help="PUT value bytes (32)")
    p.add_argument("--key-dist", choices=KEY_DISTS, default="uniform", help="key choice")
    p.add_argument(
        "--key-prefix", default=DEFAULT_KEY_PREFIX, metavar="TEXT",
        help=f"put before every key name ({DEFAULT_KEY_PREFIX!r}; '' for none)",
    )
    p.add_argument("--connections", type=_positive_int, default=4, help="connections (4)")
    p.add_argument(
        "--pipeline", type=_positive_int, default=1, help="requests in flight per connection (1)"
    )
    amount = p.add_mutually_exclusive_group()
    amount.add_argument(
        "--duration", type=_positive_float, default=None, help="seconds to run (default 10)"
    )
    amount.add_argument("--requests", type=_positive_int, default=None, help="total requests")
    p.add_argument(
        "--warmup", type=float, default=0.0, help="seconds of load not measured (duration mode)"
    )
    p.add_argument(
        "--processes",
        type=_positive_int,
        default=None,
        help="load processes (default: min(connections, CPU count))",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (1)")
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON ('-': stdout)")
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr (auto: when it is a terminal)",
    )
    p.add_argument("--quiet", action="store_true", help="no summary on stdout")
    p.add_argument(
        "--drain-timeout",
        type=_positive_float,
        default=10.0,
        help="seconds to wait for in-flight replies at the end (10)",
    )
    return p


# ---- targets -------------------------------------------------------------


_MEMBER = re.compile(r"node([0-9]+)\Z")


def chain_ends(hosts: str, root: str, timeout: float = 10.0) -> tuple[tuple[str, int], ...]:
    """(head, tail) addresses read from ZooKeeper: lowest and highest ``node<seq>``."""
    with _kazoo(hosts, timeout) as zk:
        return _ends(zk, root)


@contextlib.contextmanager
def _kazoo(hosts: str, timeout: float) -> Iterator[Any]:
    from kazoo.client import KazooClient

    zk = KazooClient(hosts=hosts, timeout=timeout)
    try:
        zk.start(timeout=timeout)
    except Exception as e:
        raise BenchError(f"cannot reach ZooKeeper at {hosts}: {e}") from None
    try:
        yield zk
    finally:
        zk.stop()
        zk.close()


def _ends(zk: Any, root: str) -> tuple[tuple[str, int], tuple[str, int]]:
    from kvtwist.membership import parse_address

    if not zk.exists(root):
        raise BenchError(f"no chain at {root} in ZooKeeper")
    members = []
    for name in zk.get_children(root):
        m = _MEMBER.match(name)
        if not m:
            continue
        try:
            data, _ = zk.get(f"{root}/{name}")
        except Exception:
            continue
        addr = parse_address(data)
        if addr is not None:
            members.append((int(m.group(1)), addr))
    if not members:
        raise BenchError(f"the chain at {root} has no members")
    members.sort()
    return members[0][1], members[-1][1]


def cluster_routes(hosts: str, name: str, timeout: float = 10.0) -> list[Route]:
    """Each shard of cluster ``name`` in key order: its start, chain, head and tail."""
    from kvtwist.cluster.shardmap import BadMap, ClusterPaths, ShardMap
    from kvtwist.zk.cluster import read_map_sync

    try:
        paths = ClusterPaths(name)
    except BadMap as e:
        raise BenchError(str(e)) from None
    with _kazoo(hosts, timeout) as zk:
        data, _ = read_map_sync(zk, paths)
        if data is None:
            raise BenchError(f"no cluster {name} in ZooKeeper (no {paths.map})")
        try:
            m = ShardMap.decode(data)
        except BadMap as e:
            raise BenchError(f"the map of cluster {name} is unreadable: {e}") from None
        return [(s.start, s.chain, *_ends(zk, paths.chain(s.chain))) for s in m.shards]


# ---- running -------------------------------------------------------------


def _deal(n: int, parts: int) -> list[int]:
    """n split into ``parts`` near-equal shares."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def make_specs(
    args: argparse.Namespace,
    head: tuple[str, int],
    tail: tuple[str, int],
    routes: list[Route] | None = None,
) -> list[WorkerSpec]:
    nproc = args.processes or min(args.connections, os.cpu_count() or 1)
    nproc = max(1, min(nproc, args.connections))
    per_slot = _deal(args.requests, args.connections) if args.requests else None
    duration = None if args.requests else (args.duration or 10.0)
    specs = []
    for w in range(nproc):
        slots = list(range(w, args.connections, nproc))
        specs.append(
            WorkerSpec(
                head=head,
                tail=tail,
                slots=slots,
                total_slots=args.connections,
                pipeline=args.pipeline,
                workload=args.workload,
                read_fraction=args.read_fraction,
                keys=args.keys,
                value_size=args.value_size,
                key_dist=args.key_dist,
                key_prefix=args.key_prefix,
                duration=duration,
                requests=[per_slot[g] for g in slots] if per_slot else None,
                warmup=args.warmup if not args.requests else 0.0,
                seed=args.seed,
                drain_timeout=args.drain_timeout,
                routes=routes,
            )
        )
    return specs


class Progress:
    """A one-line progress bar on a terminal."""

    def __init__(self, stream: Any, total: float, by_time: bool) -> None:
        self.stream = stream
        self.total = total
        self.by_time = by_time
        self.last = 0.0

    def update(self, done: int, elapsed: float) -> None:
        frac = elapsed / self.total if self.by_time else done / max(1, self.total)
        frac = max(0.0, min(1.0, frac))
        width = 30
        fill = int(frac * width)
        rate = done / elapsed if elapsed > 0 else 0.0
        self.stream.write(
            f"\r[{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}%  "
            f"{done:>10,d} replies  {rate:>10,.0f}/s  {elapsed:6.1f}s "
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def run(args: argparse.Namespace, stderr: Any = None) -> dict[str, Any]:
    """Run the benchmark described by parsed ``args``; return the report."""
    stderr = stderr or sys.stderr
    routes = None
    if args.zk and args.cluster:
        routes = cluster_routes(args.zk, args.cluster)
        head, tail = routes[0][2], routes[0][3]
    elif args.zk:
        head, tail = chain_ends(args.zk, args.zk_root)
    else:
        head = tail = args.target
    specs = make_specs(args, head, tail, routes)
    ctx = multiprocessing.get_context("spawn")
    progress = ctx.RawArray("q", len(specs))
    start = ctx.Event()
    ready = ctx.Queue()
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=worker_process,
            args=(spec, i, progress, start, ready, results),
            name=f"kvtwist-bench-{i}",
            daemon=True,
        )
        for i, spec in enumerate(specs)
    ]
    load_before = os.getloadavg()
    for pr in procs:
        pr.start()
    got: list[dict[str, Any]] = []
    try:
        failures = []
        for _ in procs:
            try:
                idx, why = ready.get(timeout=60)
            except queue.Empty:
                raise BenchError("load processes did not connect within 60 s") from None
            if why:
                failures.append(why)
        if failures:
            start.set()
            raise BenchError(f"{failures[0]} ({head[0]}:{head[1]})")
        t0 = time.monotonic()
        start.set()
        show = args.progress == "always" or (args.progress == "auto" and stderr.isatty())
        bar = None
        if show:
            if args.requests:
                bar = Progress(stderr, args.requests, by_time=False)
            else:
                bar = Progress(stderr, (args.duration or 10.0) + max(0.0, args.warmup), True)
        while len(got) < len(procs):
            try:
                got.append(results.get(timeout=0.2))
            except queue.Empty:
                if not any(pr.is_alive() for pr in procs):
                    try:
                        got.append(results.get(timeout=1.0))
                        continue
                    except queue.Empty:
                        raise BenchError("a load process died without a result") from None
            if bar is not None:
                bar.update(sum(progress), time.monotonic() - t0)
        if bar is not None:
            bar.update(sum(progress), time.monotonic() - t0)
            bar.close()
    finally:
        start.set()
        for pr in procs:
            pr.join(timeout=15)
            if pr.is_alive():
                pr.terminate()
                pr.join(5)
    fatal = [g["fatal"] for g in got if "fatal" in g]
    if fatal:
        raise BenchError(f"a load process failed: {fatal[0]}")
    got.sort(key=lambda g: g["worker"])
    report = build_report(args, head, tail, got)
    if routes:
        report["shards"] = len(routes)
    report["machine"]["load_before"] = [round(x, 2) for x in load_before]
    report["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def _lat(h: Histogram) -> dict[str, float]:
    out = {f"p{p:g}": h.percentile(p) / 1000.0 for p in PERCENTILES}
    out["max"] = h.max / 1000.0
    out["min"] = h.min / 1000.0
    out["mean"] = round(h.mean / 1000.0, 3)
    return out


def build_report(
    args: argparse.Namespace,
    head: tuple[str, int],
    tail: tuple[str, int],
    workers: list[dict[str, Any]],
) -> dict[str, Any]:
    """Merge the workers' results into the report (latencies in microseconds)."""
    hg, hp, total = Histogram(), Histogram(), Histogram()
    for w in workers:
        hg.merge(Histogram.from_dict(w["hist_get"]))
        hp.merge(Histogram.from_dict(w["hist_put"]))
    total.merge(hg)
    total.merge(hp)
    sent = sum(w["sent"] for w in workers)
    ok = sum(w["ok"] for w in workers)
    errors = sum(w["errors"] for w in workers)
    unanswered = sum(w["unanswered"] for w in workers)
    starts = [w["start_ns"] for w in workers if w["start_ns"]]
    ends = [w["end_ns"] for w in workers if w["end_ns"]]
    elapsed = (max(ends) - min(starts)) / 1e9 if starts and ends else 0.0
    completed = ok + errors
    cpu = sum(w["cpu_s"] for w in workers)
    config = {
        k: v for k, v in vars(args).items() if k not in ("json", "progress", "quiet", "target")
    }
    config["target"] = f"{args.target[0]}:{args.target[1]}" if args.target else None
    ops: dict[str, Any] = {}
    for name, h, err_key in (("GET", hg, "errors_get"), ("PUT", hp, "errors_put")):
        if h.count:
            ops[name] = {
                "count": h.count,
                "errors": sum(w[err_key] for w in workers),
                "throughput": h.count / elapsed if elapsed else 0.0,
                "latency_us": _lat(h),
            }
    return {
        "version": REPORT_VERSION,
        "tool": "kvtwist-bench",
        "config": config,
        "head": f"{head[0]}:{head[1]}",
        "tail": f"{tail[0]}:{tail[1]}",
        "processes": len(workers),
        "elapsed_s": round(elapsed, 6),
        "requests": {
            "sent": sent,
            "completed": completed,
            "ok": ok,
            "errors": errors,
            "unanswered": unanswered,
            "unsolicited": sum(w.get("unsolicited", 0) for w in workers),
        },
        "throughput": completed / elapsed if elapsed else 0.0,
        "latency_us": _lat(total),
        "ops": ops,
        "histogram_ns": total.to_dict(),
        "client_cpu_s": round(cpu, 3),
        "client_cpu_per_process": round(cpu / elapsed / len(workers), 3)
        if elapsed and workers
        else 0.0,
        "error_sample": next((w["error_sample"] for w in workers if w["error_sample"]), ""),
        "connection_errors": [e for w in workers for e in w["connection_errors"]][:10],
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def summary(report: dict[str, Any]) -> str:
    r = report["requests"]
    lat = report["latency_us"]
    c = report["config"]
    lines = [
        f"{c['workload']} x{c['connections']} conn x{c['pipeline']} pipeline, "
        f"{report['processes']} process(es), {c['keys']} keys "
        f"{c.get('key_prefix', '')}k... ({c['key_dist']}), "
        f"value {c['value_size']} B -> "
        + (f"cluster {c['cluster']}, {report['shards']} shards" if c.get("cluster")
           else f"head {report['head']}, tail {report['tail']}"),
        f"{r['completed']:,d} replies in {report['elapsed_s']:.2f}s: "
        f"{report['throughput']:,.0f} req/s; errors {r['errors']}, unanswered {r['unanswered']}",
        "latency (us): "
        + "  ".join(f"{k} {lat[k]:,.0f}" for k in ("p50", "p90", "p99", "p99.9", "max")),
    ]
    for name, op in report["ops"].items():
        lo = op["latency_us"]
        lines.append(
            f"  {name}: {op['count']:,d} ({op['throughput']:,.0f}/s, {op['errors']} errors)  "
            f"p50 {lo['p50']:,.0f}  p99 {lo['p99']:,.0f}  max {lo['max']:,.0f}"
        )
    lines.append(
        f"bench CPU: {report['client_cpu_per_process'] * 100:.0f}% of a core per load process"
    )
    if report["error_sample"]:
        lines.append(f"first error: {report['error_sample']}")
    for e in report["connection_errors"][:3]:
        lines.append(f"connection: {e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cluster is not None and args.zk is None:
        parser.error("--cluster NAME needs --zk HOSTS")
    if args.zk is not None:
        from kvtwist.zkhosts import USAGE, BadHosts, check_hosts

        try:
            check_hosts(args.zk)
        except BadHosts as e:  # one line, before anything connects
            print(f"kvtwist-bench: {e}", file=sys.stderr)
            return USAGE
    try:
        report = run(args)
    except BenchError as e:
        print(f"kvtwist-bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    if not args.quiet and args.json != "-":
        print(summary(report))
    r = report["requests"]
    if r["errors"] or r["unanswered"] or r["unsolicited"]:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
