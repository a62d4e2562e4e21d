"""Run the kvtwist benchmarks, check the floors, and write the report.

    .venv/bin/python benchmarks/run.py --quick    # everything small (a few minutes); a check
    .venv/bin/python benchmarks/run.py            # the full run (about half an hour)
    .venv/bin/python benchmarks/run.py --publish  # the full run, and docs/performance.md
    .venv/bin/python benchmarks/run.py --only node,breakdown --quick

Every run writes its report (``performance.md``) and raw numbers
(``results.json``) to ``--out-dir`` (``benchmarks/out/``, not tracked), prints
the floors (``benchmarks/floors.py``) as met or missed, and exits 1 when one
is missed.  Only ``--publish`` (a full run of every benchmark) rewrites
docs/performance.md.

The machine is shared and noisy, so every figure is set against a reference
measured in the same run (the trivial reference server, a standalone node, the
small tree, an empty chain, the session timeout), and throughput comparisons
alternate the sides (A B C, then C B A) in the full run.  Nodes are real
``twistd -n kvnode`` processes and ZooKeeper is a private server on a free
loopback port (``kvtwist.procs``, shared with the tests).  Where Redis is
installed, a private redis-server measured by its own redis-benchmark gives a
context row (no floor).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import floors  # noqa: E402
from benchmarks.cluster_bench import bench_cluster, render_cluster  # noqa: E402
from benchmarks.cluster_ops import bench_cluster_ops, render_cluster_ops  # noqa: E402
from benchmarks.resp_bench import bench_resp, render_resp  # noqa: E402
from kvtwist import wire  # noqa: E402
from kvtwist.bench.workload import encode_put, key_name  # noqa: E402
from kvtwist.procs import (  # noqa: E402
    NodeProcess,
    RawClient,
    ZooKeeperProcess,
    free_port,
    port_open,
    wait_for,
    zookeeper_available,
)

PY = sys.executable
BENCH = [PY, "-m", "kvtwist.bench.cli"]
ALL = (
    "tree", "node", "breakdown", "chain", "failover", "join", "memory", "durability", "resp",
    "cluster", "cluster-ops",
)
VALUE_SIZE = 32
ZK_SHOWN = (
    "java ... QuorumPeerMain zoo.cfg  # kvtwist.procs.ZooKeeperProcess: private, 127.0.0.1:ZK_PORT,"
    " tickTime 200 ms"
)


@dataclass
class Settings:
    quick: bool
    duration: float
    warmup: float
    reps: int  # A B C (1) or A B C C B A (2)
    keys: int  # key space of the throughput benchmarks
    tree_sizes: list[int]
    tree_min_ops: int
    big: int  # keys for join and memory
    session: float  # ZooKeeper session timeout for failover
    processes: int
    redis_requests: int = 200_000  # per redis-benchmark test, times the pipeline depth
    only: list[str] = field(default_factory=lambda: list(ALL))

    @classmethod
    def make(cls, quick: bool, only: list[str] | None = None) -> Settings:
        chosen = list(only or ALL)
        if quick:
            return cls(
                True,
                2.0,
                0.5,
                1,
                10_000,
                [1_000, 10_000, 100_000],
                20_000,
                100_000,
                2.0,
                2,
                50_000,
                chosen,
            )
        return cls(
            False,
            8.0,
            1.0,
            2,
            100_000,
            [1_000, 10_000, 100_000, 1_000_000],
            200_000,
            1_000_000,
            2.0,
            2,
            200_000,
            chosen,
        )

    @property
    def complete(self) -> bool:
        """A full run of every benchmark: the only kind docs/performance.md shows."""
        return not self.quick and set(self.only) >= set(ALL)


@dataclass
class Run:
    settings: Settings
    tmp: Path
    commands: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)  # every bench report
    started: float = field(default_factory=time.time)

    def log(self, text: str) -> None:
        print(f"[{time.time() - self.started:6.1f}s] {text}", flush=True)

    def command(self, argv: list[str], shown: str | None = None) -> None:
        self.commands.append(shown or " ".join(argv))


# ---- helpers --------------------------------------------------------------


def _bench_shown(args: list[str]) -> str:
    return "kvtwist-bench " + " ".join(args)


def bench(run: Run, label: str, args: list[str], check: bool = True) -> dict[str, Any]:
    """Run kvtwist-bench with ``args``; return its JSON report."""
    out = run.tmp / f"bench-{len(run.reports)}.json"
    argv = [*BENCH, *args, "--json", str(out), "--progress", "never", "--quiet"]
    run.command(argv, _bench_shown(args))
    p = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=_env())
    if p.returncode not in (0, 3) or not out.exists():
        raise RuntimeError(f"kvtwist-bench failed ({p.returncode}): {p.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(out.read_text())
    report["label"] = label
    run.reports.append(report)
    r = report["requests"]
    run.log(
        f"  {label}: {report['throughput']:,.0f} req/s  p50 {report['latency_us']['p50']:,.0f} us"
        f"  p99 {report['latency_us']['p99']:,.0f} us  errors {r['errors']}"
        f"  unanswered {r['unanswered']}  bench CPU {report['client_cpu_per_process']:.2f}"
    )
    if check and (r["errors"] or r["unanswered"]):
        run.log(f"  !! {label}: errors: {report['error_sample'] or report['connection_errors']}")
    return report


def _env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server process of the run, killing it if it does not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Reference:
    """benchmarks/reference_server.py in its own process."""

    def __init__(self, run: Run, value_size: int = VALUE_SIZE) -> None:
        self.port = free_port()
        argv = [
            PY,
            str(ROOT / "benchmarks" / "reference_server.py"),
            "--port",
            str(self.port),
            "--value-size",
            str(value_size),
        ]
        run.command(
            argv, f"python benchmarks/reference_server.py --port PORT --value-size {value_size}"
        )
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
        )
        wait_for(lambda: port_open(self.port), 15, "the reference server")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)


@contextlib.contextmanager
def processes() -> Iterator[list[Any]]:
    """Stop (and clean up) every node or server put in the list, whatever happens."""
    procs: list[Any] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            with contextlib.suppress(Exception):
                if isinstance(p, NodeProcess):
                    p.cleanup()
                else:
                    p.stop()


def start_node(run: Run, procs: list[Any], args: list[str] | None = None) -> NodeProcess:
    n = NodeProcess(args=args)
    shown = " ".join(["twistd -n kvnode --port PORT", *(args or [])])
    run.command(n.command(), shown)
    n.start(timeout=30)
    procs.append(n)
    return n


def local_size(port: int) -> int:
    c = RawClient(port, timeout=30)
    try:
        m = wire.req_size()
        m.local = True
        return int(c.one(m).op_n)
    finally:
        c.close()


def preload(run: Run, label: str, where: list[str], keys: int) -> dict[str, Any]:
    """Write every key once (sequential), pipelined."""
    return bench(
        run,
        label,
        [
            *where,
            "--workload",
            "put",
            "--key-dist",
            "sequential",
            "--keys",
            str(keys),
            "--requests",
            str(keys),
            "--connections",
            "4",
            "--pipeline",
            "32",
            "--value-size",
            str(VALUE_SIZE),
            "--processes",
            "2",
        ],
    )


def throughput_args(s: Settings, op: str, conns: int, pipeline: int) -> list[str]:
    return [
        "--workload",
        op,
        "--keys",
        str(s.keys),
        "--value-size",
        str(VALUE_SIZE),
        "--connections",
        str(conns),
        "--pipeline",
        str(pipeline),
        "--duration",
        str(s.duration),
        "--warmup",
        str(s.warmup),
        "--processes",
        str(min(s.processes, conns)),
    ]


def compare(
    run: Run,
    s: Settings,
    label: str,
    sides: list[tuple[str, list[str]]],
    args: list[str],
) -> dict[str, Any]:
    """Throughput and latency of each side with the same settings, the first the reference.

    Sides run in turn, A B C (quick) or A B C C B A (full); ``ratios`` holds each
    other side's throughput over the first's.  p50 is the mean over a side's
    runs, p99 and above the worst run's.
    """
    order = sides if s.reps == 1 else sides + sides[::-1]
    got: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in sides}
    for name, where in order:
        got[name].append(bench(run, f"{label} {name}", [*where, *args]))

    def summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(reports)
        return {
            "throughput": sum(r["throughput"] for r in reports) / n,
            "runs": [round(r["throughput"], 1) for r in reports],
            "p50_us": sum(r["latency_us"]["p50"] for r in reports) / n,
            "p99_us": max(r["latency_us"]["p99"] for r in reports),
            "p999_us": max(r["latency_us"]["p99.9"] for r in reports),
            "max_us": max(r["latency_us"]["max"] for r in reports),
            "errors": sum(r["requests"]["errors"] + r["requests"]["unanswered"] for r in reports),
            "bench_cpu": max(r["client_cpu_per_process"] for r in reports),
        }

    out: dict[str, Any] = {name: summary(got[name]) for name, _ in sides}
    base = out[sides[0][0]]["throughput"]
    out["ratios"] = {
        name: (out[name]["throughput"] / base if base else 0.0) for name, _ in sides[1:]
    }
    return out


# ---- 1. tree ---------------------------------------------------------------


def bench_tree(run: Run) -> None:
    s = run.settings
    run.log("1. tree: cost per op against size")
    out = run.tmp / "tree.json"
    sizes = ",".join(str(n) for n in s.tree_sizes)
    argv = [
        PY,
        str(ROOT / "benchmarks" / "tree_bench.py"),
        "--sizes",
        sizes,
        "--min-ops",
        str(s.tree_min_ops),
        "--memory",
        "--json",
        str(out),
    ]
    run.command(
        argv, f"python benchmarks/tree_bench.py --sizes {sizes} --min-ops {s.tree_min_ops} --memory"
    )
    subprocess.run(argv, check=True, cwd=ROOT)
    data = json.loads(out.read_text())
    rows = data["rows"]
    small, large = min(s.tree_sizes), max(s.tree_sizes)
    ratios = {}
    for order in ("random", "sequential"):
        a = next(r for r in rows if r["order"] == order and r["n"] == small)
        b = next(r for r in rows if r["order"] == order and r["n"] == large)
        for op in ("insert", "get", "replace"):
            ratios[f"{order} {op}"] = b[f"{op}_ns"] / a[f"{op}_ns"]
    seq_large = next(r for r in rows if r["order"] == "sequential" and r["n"] == large)
    run.results["tree"] = {
        "rows": rows,
        "ratios": ratios,
        "small": small,
        "large": large,
        "height_seq": seq_large["height"],
        "avl_bound": seq_large["avl_bound"],
        "memory": data.get("memory"),
    }


# ---- 2. node vs reference ------------------------------------------------------------


#: Connections × pipeline of the node and chain comparisons; 1×1 is for latency.
NODE_SETTINGS = (("32×1", 32, 1), ("4×32", 4, 32), ("1×1", 1, 1))
CHAIN_SETTINGS = NODE_SETTINGS[:2]
#: The storage modes a standalone node is run in (kvnode options).
STORAGE_MODES = (
    ("in-memory", ["--in-memory"]),
    ("fsync never", ["--fsync", "never"]),
    ("fsync interval", ["--fsync", "interval"]),
    ("fsync always", ["--fsync", "always"]),
)


def bench_node(run: Run) -> None:
    """The reference server, then a node in every storage mode: GET on the in-memory one,
    PUT on each, at every setting; and the bench's own ceiling."""
    s = run.settings
    run.log("2. standalone node vs the reference server")
    with processes() as procs:
        ref = Reference(run)
        procs.append(ref)
        nodes = {name: start_node(run, procs, args) for name, args in STORAGE_MODES}
        for name, node in nodes.items():
            preload(run, f"preload node {name}", ["--target", node.address], s.keys)
        ceiling = []
        for nproc in (1, 2):
            a = throughput_args(s, "get", 4, 32)
            a[a.index("--processes") + 1] = str(nproc)
            rep = bench(run, f"bench ceiling {nproc}", ["--target", ref.address, *a])
            ceiling.append(
                {
                    "processes": nproc,
                    "throughput": rep["throughput"],
                    "bench_cpu": rep["client_cpu_per_process"],
                }
            )
        run.results["ceiling"] = ceiling
        reference = ("reference", ["--target", ref.address])
        res: dict[str, Any] = {}
        for setting, conns, pipe in NODE_SETTINGS:
            for op in ("GET", "PUT"):
                modes = ["in-memory"] if op == "GET" else list(nodes)
                res[f"{op} {setting}"] = compare(
                    run,
                    s,
                    f"{op} {setting}",
                    [reference, *((m, ["--target", nodes[m].address]) for m in modes)],
                    throughput_args(s, op.lower(), conns, pipe),
                )
        run.results["node"] = res
    run.results["redis"] = bench_redis(run)


# ---- 2b. Redis, for context ----------------------------------------------------------


class RedisServer:
    """A private redis-server on a free loopback port: no persistence, nothing on disk."""

    ARGS = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]

    def __init__(self, run: Run, binary: str) -> None:
        self.port = free_port()
        argv = [binary, "--port", str(self.port), *self.ARGS, "--dir", str(run.tmp)]
        run.command(argv, "redis-server --port PORT --bind 127.0.0.1 --save '' --appendonly no")
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=run.tmp
        )
        wait_for(lambda: port_open(self.port), 15, "redis-server")

    def stop(self) -> None:
        stop_process(self.proc)


def parse_redis_csv(text: str) -> dict[str, dict[str, float]]:
    """redis-benchmark --csv: requests per second and p50 by test (GET, SET)."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        cells = [c.strip('"') for c in line.strip().split(",")]
        if len(cells) < 5 or cells[0] == "test":
            continue
        try:
            out[cells[0]] = {"throughput": float(cells[1]), "p50_us": float(cells[4]) * 1000}
        except ValueError:
            continue
    return out


def bench_redis(run: Run) -> dict[str, Any]:
    """redis-benchmark against a private redis-server at the node rows' settings, if installed."""
    import shutil

    server, tool = shutil.which("redis-server"), shutil.which("redis-benchmark")
    if server is None or tool is None:
        run.log("  redis: not installed (Debian packages redis-server, redis-tools)")
        return {"installed": False}
    s = run.settings
    version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    rows: dict[str, Any] = {}
    with processes() as procs:
        redis = RedisServer(run, server)
        procs.append(redis)
        for setting, conns, pipe in NODE_SETTINGS:
            n = s.redis_requests * pipe
            args = ["-t", "get,set", "-d", str(VALUE_SIZE), "-r", "10000"]
            args += ["-c", str(conns), "-P", str(pipe), "-n", str(n)]
            argv = [tool, "-h", "127.0.0.1", "-p", str(redis.port), *args, "--csv"]
            run.command(argv, "redis-benchmark -h 127.0.0.1 -p PORT " + " ".join(args) + " --csv")
            p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            parsed = parse_redis_csv(p.stdout)
            got: dict[str, Any] = dict(parsed)
            if p.returncode or not parsed:
                got = {"error": (p.stderr or p.stdout)[-500:]}
            rows[setting] = got
            run.log(f"  redis {setting}: {got}")
    return {
        "installed": True,
        "version": version.strip(),
        "requests": s.redis_requests,
        "rows": rows,
    }


# ---- 2c. the cost of one request, piece by piece ------------------------------------


def bench_breakdown(run: Run) -> None:
    s = run.settings
    run.log("8. per-request cost breakdown (in-process)")
    out = run.tmp / "breakdown.json"
    argv = [
        PY,
        str(ROOT / "benchmarks" / "breakdown.py"),
        "--keys",
        str(s.keys),
        "--json",
        str(out),
    ]
    run.command(argv, f"python benchmarks/breakdown.py --keys {s.keys}")
    p = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=_env())
    if p.returncode or not out.exists():
        run.log(f"  !! breakdown failed ({p.returncode}): {p.stderr[-1000:]}")
        run.results["breakdown"] = {"error": f"exit {p.returncode}: {p.stderr[-1000:]}"}
        return
    run.results["breakdown"] = json.loads(out.read_text())


# ---- 3. chain vs standalone ------------------------------------------------------------


def zk_start(run: Run, procs: list[Any]) -> ZooKeeperProcess:
    why = zookeeper_available()
    if why:
        raise RuntimeError(f"ZooKeeper unavailable: {why}")
    zk = ZooKeeperProcess()
    run.command([], ZK_SHOWN)
    zk.start()
    procs.append(zk)
    return zk


def members(zk: Any, root: str) -> list[tuple[str, int]]:
    """Member ports in chain order, via an open kazoo client."""
    from kvtwist.membership import parse_address

    out = []
    try:
        names = zk.get_children(root)
    except Exception:
        return []
    for name in sorted(names):
        if not name.startswith("node"):
            continue
        try:
            data, _ = zk.get(f"{root}/{name}")
        except Exception:
            continue
        a = parse_address(data)
        if a:
            out.append(a)
    return out


def kazoo(hosts: str) -> Any:
    from kazoo.client import KazooClient

    k = KazooClient(hosts=hosts, timeout=10)
    k.start(15)
    return k


def chain_nodes(
    run: Run,
    procs: list[Any],
    zk: ZooKeeperProcess,
    kz: Any,
    root: str,
    n: int,
    session: float,
    extra: list[str] | None = None,
) -> list[NodeProcess]:
    nodes = []
    for _ in range(n):
        node = start_node(
            run,
            procs,
            ["--zk", zk.hosts, "--zk-root", root, "--zk-session-timeout", str(session)]
            + list(extra or []),
        )
        _wait_member_at(kz, root, node.port, 60)
        nodes.append(node)
    return nodes


def bench_chain(run: Run) -> None:
    s = run.settings
    run.log("3. chain of 3 vs a standalone node")
    with processes() as procs:
        zk = zk_start(run, procs)
        kz = kazoo(zk.hosts)
        try:
            root = "/bench-chain"
            chain_nodes(run, procs, zk, kz, root, 3, 10.0)
            solo = start_node(run, procs)
            chain = ["--zk", zk.hosts, "--zk-root", root]
            preload(run, "preload chain", chain, s.keys)
            preload(run, "preload standalone", ["--target", solo.address], s.keys)
            res: dict[str, Any] = {}
            for setting, conns, pipe in CHAIN_SETTINGS:
                for op in ("PUT", "GET"):
                    res[f"{op} {setting}"] = compare(
                        run,
                        s,
                        f"{op} {setting}",
                        [("standalone", ["--target", solo.address]), ("chain", chain)],
                        throughput_args(s, op.lower(), conns, pipe),
                    )
            run.results["chain"] = res
        finally:
            kz.stop()
            kz.close()


# ---- 4. failover ------------------------------------------------------------


class Writer(threading.Thread):
    """Writes one key at a time to the head named in ZooKeeper, retrying on any failure.

    Keeps (sent, acked) monotonic times of every acknowledged write.
    """

    def __init__(self, kz: Any, root: str) -> None:
        super().__init__(daemon=True)
        self.kz = kz
        self.root = root
        self.acks: list[tuple[float, float]] = []
        self.stopping = False
        self.failures = 0
        self.lock = threading.Lock()

    def run(self) -> None:
        i = 0
        sock: socket.socket | None = None
        buf = bytearray()
        while not self.stopping:
            try:
                if sock is None:
                    ms = members(self.kz, self.root)
                    if not ms:
                        raise OSError("no members")
                    sock = socket.create_connection(ms[0], timeout=1.0)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.settimeout(30.0)
                    buf.clear()
                frame = encode_put(key_name(i).encode(), b"x" * VALUE_SIZE)
                sent = time.monotonic()
                sock.sendall(frame)
                while True:
                    if len(buf) >= 4:
                        n = int.from_bytes(buf[:4], "big")
                        if len(buf) >= 4 + n:
                            payload = bytes(buf[4 : 4 + n])
                            del buf[: 4 + n]
                            break
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed")
                    buf += data
                if payload[:2] == b"\x08\x63":
                    raise OSError(wire.decode(payload).error)
                with self.lock:
                    self.acks.append((sent, time.monotonic()))
                i += 1
            except OSError:
                self.failures += 1
                if sock is not None:
                    sock.close()
                    sock = None
                time.sleep(0.01)
        if sock is not None:
            sock.close()

    def first_ack_sent_after(self, t: float) -> tuple[float, float] | None:
        with self.lock:
            for sent, acked in self.acks:
                if sent >= t:
                    return sent, acked
        return None


def bench_failover(run: Run) -> None:
    s = run.settings
    run.log(f"4. failover (session timeout {s.session} s)")
    res: dict[str, Any] = {"session_timeout_s": s.session}
    with processes() as procs:
        zk = zk_start(run, procs)
        kz = kazoo(zk.hosts)
        try:
            for victim in ("head", "tail"):
                root = f"/bench-failover-{victim}"
                nodes = chain_nodes(run, procs, zk, kz, root, 3, s.session)
                w = Writer(kz, root)
                w.start()
                acks = w.acks
                wait_for(lambda: len(acks) >= 200, 30, "writes to flow")  # noqa: B023
                target = nodes[0] if victim == "head" else nodes[2]
                t_kill = time.monotonic()
                target.kill()
                run.command([], f"kill -KILL <{victim} pid>")
                gone = None
                deadline = t_kill + s.session + 30
                first = None
                while time.monotonic() < deadline:
                    if gone is None and ("127.0.0.1", target.port) not in members(kz, root):
                        gone = time.monotonic() - t_kill
                    first = w.first_ack_sent_after(t_kill)
                    if first is not None and gone is not None:
                        break
                    time.sleep(0.005)
                w.stopping = True
                w.join(35)
                if first is None:
                    res[victim] = {"failover_s": None, "znode_gone_s": gone}
                else:
                    res[victim] = {
                        "failover_s": first[1] - t_kill,
                        "znode_gone_s": gone,
                        "acks_before": sum(1 for a in w.acks if a[1] < t_kill),
                        "acks_after": sum(1 for a in w.acks if a[0] >= t_kill),
                        "retries": w.failures,
                    }
                run.log(
                    f"  kill {victim}: first write acknowledged "
                    f"{res[victim]['failover_s']} s after SIGKILL "
                    f"(znode gone after {gone} s)"
                )
                for n in nodes:
                    n.stop()
        finally:
            kz.stop()
            kz.close()
    run.results["failover"] = res


# ---- 5. join, 6. memory ------------------------------------------------------


def _wait_member_at(kz: Any, root: str, port: int, timeout: float) -> float:
    t0 = time.monotonic()
    wait_for(lambda: ("127.0.0.1", port) in members(kz, root), timeout, f"node {port} to join")
    return time.monotonic() - t0


def bench_join_memory(run: Run, do_join: bool, do_memory: bool) -> None:
    s = run.settings
    n = s.big
    run.log(f"5./6. join and memory with {n:,d} keys")
    with processes() as procs:
        zk = zk_start(run, procs)
        kz = kazoo(zk.hosts)
        try:
            # reference: the same node joining an empty chain (start-up + registration)
            t0 = time.monotonic()
            empty = start_node(run, procs, ["--zk", zk.hosts, "--zk-root", "/bench-empty"])
            _wait_member_at(kz, "/bench-empty", empty.port, 60)
            join_empty = time.monotonic() - t0
            rss_empty = rss_bytes(empty.proc.pid)  # type: ignore[union-attr]
            empty.stop()
            run.log(
                f"  join of an empty chain: {join_empty:.2f} s; empty node RSS "
                f"{rss_empty / 2**20:.1f} MiB"
            )
            root = "/bench-join"
            (loaded,) = chain_nodes(run, procs, zk, kz, root, 1, 10.0)
            rss_before = rss_bytes(loaded.proc.pid)  # type: ignore[union-attr]
            t0 = time.monotonic()
            load = preload(run, f"load {n:,d} keys", ["--zk", zk.hosts, "--zk-root", root], n)
            load_s = time.monotonic() - t0
            held = local_size(loaded.port)
            time.sleep(1.0)
            rss_after = rss_bytes(loaded.proc.pid)  # type: ignore[union-attr]
            res: dict[str, Any] = {
                "keys": n,
                "held": held,
                "load_s": load_s,
                "load_throughput": load["throughput"],
                "join_empty_s": join_empty,
            }
            mem = {
                "keys": held,
                "rss_empty_node": rss_before,
                "rss_loaded": rss_after,
                "per_key": (rss_after - rss_before) / max(1, held),
                "raw_per_key": 16 + VALUE_SIZE,
            }
            mem["overhead_per_key"] = mem["per_key"] - mem["raw_per_key"]
            run.log(
                f"  node holding {held:,d} keys: RSS {rss_after / 2**20:.1f} MiB "
                f"(+{(rss_after - rss_before) / 2**20:.1f}), "
                f"{mem['overhead_per_key']:.0f} B/key over the raw bytes"
            )
            if do_join:
                t0 = time.monotonic()
                joiner = start_node(
                    run,
                    procs,
                    ["--zk", zk.hosts, "--zk-root", root, "--zk-session-timeout", "10.0"],
                )
                _wait_member_at(kz, root, joiner.port, 600)
                res["join_s"] = time.monotonic() - t0
                res["joiner_held"] = local_size(joiner.port)
                time.sleep(1.0)
                mem["rss_joiner"] = rss_bytes(joiner.proc.pid)  # type: ignore[union-attr]
                mem["joiner_per_key"] = (mem["rss_joiner"] - rss_before) / max(1, held)
                res["transfer_log"] = [
                    line.split(" ", 2)[-1]
                    for line in loaded.log().splitlines()
                    if "state transfer to" in line and "sent in" in line
                ][-1:]
                run.log(
                    f"  join of a chain holding {held:,d} keys: {res['join_s']:.2f} s "
                    f"(joiner holds {res['joiner_held']:,d})"
                )
            if do_join:
                run.results["join"] = res
            if do_memory:
                run.results["memory"] = mem
        finally:
            kz.stop()
            kz.close()


# ---- 7. durability -------------------------------------------------------------


def fsync_latency_us(where: Path, n: int = 200) -> float:
    """Median time of a 4 KiB append plus fsync on the disk the nodes write to."""
    path = where / "fsync-probe"
    times = []
    with open(path, "wb") as f:
        for _ in range(n):
            t0 = time.perf_counter()
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t0)
    path.unlink()
    return sorted(times)[len(times) // 2] * 1e6


def _put_summary(rep: dict[str, Any]) -> dict[str, float]:
    return {
        "throughput": rep["throughput"],
        "p50_us": rep["latency_us"]["p50"],
        "p99_us": rep["latency_us"]["p99"],
    }


def _rejoin(
    procs: list[Any], kz: Any, root: str, victim: NodeProcess, wipe: bool, outage: float
) -> tuple[float, NodeProcess]:
    """Kill ``victim``, wait ``outage`` seconds, restart it (its data wiped or not):
    seconds from the restart to its znode in the chain, and the new process."""
    victim.kill()
    time.sleep(outage)
    if wipe:
        import shutil

        shutil.rmtree(victim.dir / "kvtwist-data", ignore_errors=True)
    again = NodeProcess(port=victim.port, args=victim.args, directory=victim.dir)
    t0 = time.monotonic()
    again.start(timeout=60)
    procs.append(again)
    _wait_member_at(kz, root, again.port, 600)
    return time.monotonic() - t0, again


def bench_durability(run: Run) -> None:
    from benchmarks.recovery_bench import measure

    s = run.settings
    run.log("7. durability: chain PUT by fsync policy, recovery, rejoin by delta and in full")
    res: dict[str, Any] = {"fsync_latency_us": fsync_latency_us(run.tmp)}
    run.log(f"  fsync of 4 KiB: {res['fsync_latency_us']:,.0f} us (median)")
    chain: dict[str, Any] = {}
    with processes() as procs:
        zk = zk_start(run, procs)
        kz = kazoo(zk.hosts)
        try:
            for i, (name, args) in enumerate(STORAGE_MODES):
                if name == "fsync never":
                    continue
                root = f"/bench-durable-{i}"
                nodes = chain_nodes(run, procs, zk, kz, root, 3, 10.0, args)
                rep = bench(
                    run,
                    f"PUT 4×32 chain {name}",
                    ["--zk", zk.hosts, "--zk-root", root, *throughput_args(s, "put", 4, 32)],
                )
                chain[name] = _put_summary(rep)
                for n in nodes:
                    n.stop()
            res["chain"] = chain
            # rejoin after an outage: by delta (its data kept) and in full (its data lost)
            root = "/bench-rejoin"
            nodes = chain_nodes(run, procs, zk, kz, root, 3, 2.0)
            keys = s.big // 10
            preload(run, f"preload {keys:,d} keys", ["--zk", zk.hosts, "--zk-root", root], keys)
            w = Writer(kz, root)
            w.start()
            outage = 10.0
            res["rejoin"] = {"keys": keys, "outage_s": outage}
            delta_s, back = _rejoin(procs, kz, root, nodes[1], False, outage)
            res["rejoin"]["delta_s"] = delta_s
            res["rejoin"]["delta_logged"] = "by delta" in nodes[2].log()
            res["rejoin"]["full_s"], _ = _rejoin(procs, kz, root, back, True, outage)
            res["rejoin"]["writes_during"] = len(w.acks)
            w.stopping = True
            w.join(35)
            run.log(
                f"  rejoin after {outage:g} s: by delta {res['rejoin']['delta_s']:.2f} s, "
                f"in full {res['rejoin']['full_s']:.2f} s ({keys:,d} keys)"
            )
        finally:
            kz.stop()
            kz.close()
    rec = measure(s.big, s.big // 10, 1 if s.quick else 3, str(run.tmp))
    res["recovery"] = rec
    run.log(
        f"  recovery of {s.big:,d} keys + {s.big // 10:,d} logged writes: "
        f"{rec['recovery_s']:.2f} s; {rec['snapshot_bytes_per_key']:.1f} B/key in a snapshot"
    )
    run.results["durability"] = res


# ---- the report ---------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"
    from google.protobuf import __version__ as pbv
    from google.protobuf.internal import api_implementation

    from twisted import __version__ as tv

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "kvtwist"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "twisted": tv,
        "protobuf": f"{pbv} ({api_implementation.Type()})",
        "commit": commit + (" + uncommitted changes" if dirty else ""),
    }


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**MISSED**")


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return "—" if x is None else format(x, spec)


@dataclass
class Page:
    """The report being written, and what its sections read: one renderer per section
    (``SECTIONS``) adds its lines here."""

    data: dict[str, Any]
    notes: str
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.settings = Settings(**self.data["settings"])
        self.results: dict[str, Any] = self.data["results"]
        self.verdicts = floors.check(self.results)
        self.vid = floors.by_id(self.verdicts)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def floor_cells(self, fid: str) -> str:
        """The floor and verdict columns of a section table row."""
        v = self.vid.get(fid)
        if v is None:
            return "— | "
        return f"{v.bound} | {verdict(v.met)}"

    def ratio_table(self, res: dict[str, Any], section: str) -> None:
        """One row per side of each comparison; the first side is the reference."""
        add, floor_cells = self.add, self.floor_cells
        add(
            "| workload | side | req/s | ratio | floor | | p50 / p99 / p99.9 µs "
            "| p50 ratio | floor | | bench CPU |"
        )
        add("|---|---|---:|---:|---:|---|---|---:|---:|---|---:|")
        for name, v in res.items():
            sides = [k for k in v if k != "ratios"]
            ref = v[sides[0]]
            for side in sides:
                x = v[side]
                is_ref = side == sides[0]
                p50r = x["p50_us"] / ref["p50_us"] if ref["p50_us"] else None
                errs = f" ({x['errors']} errors)" if x["errors"] else ""
                add(
                    f"| {name if is_ref else ''} | {side} | {x['throughput']:,.0f} | "
                    + ("" if is_ref else f"{v['ratios'][side]:.2f}×")
                    + f" | {floor_cells('' if is_ref else f'{section}:{name}:{side}')} | "
                    f"{x['p50_us']:,.0f} / {x['p99_us']:,.0f} / {x['p999_us']:,.0f} | "
                    + ("" if is_ref else fmt(p50r, ".2f") + "×")
                    + f" | {floor_cells('' if is_ref else f'{section}-p50:{name}:{side}')} | "
                    f"{x['bench_cpu']:.0%}{errs} |"
                )
        add("")


def render_intro(p: Page) -> None:
    """What wrote the report, and how far its figures can be trusted."""
    add, s = p.add, p.settings
    started = p.data["started"]

    add("# kvtwist performance\n")
    when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started))
    add(
        f"Written by `benchmarks/run.py` on {when}; "
        + (
            "a full run of every benchmark."
            if s.complete
            else (
                "**a quick run** (`--quick`: smaller sizes and shorter runs than the floors "
                "are set at; see below)."
                if s.quick
                else "a full run of " + ", ".join(s.only) + "."
            )
        )
        + " `.venv/bin/python benchmarks/run.py` writes this report and `results.json` to "
        "`benchmarks/out/` (not tracked) and checks the floors (exit status 1 when one is "
        "missed; `--quick` for a short run); only `--publish`, on a full run of every "
        "benchmark, rewrites docs/performance.md. Every figure stands next to its floor "
        "and the reference measured in the same run: the machine is shared, so only ratios "
        "within one run mean much.\n"
    )


def render_machine(p: Page) -> None:
    """The machine and the load generator's settings."""
    add, s, info = p.add, p.settings, p.data["machine"]
    add("## Machine\n")
    add("| | |\n|---|---|")
    for k in ("cpu", "cores", "memory", "os", "python", "twisted", "protobuf", "commit"):
        add(f"| {k} | {info[k]} |")
    add(f"| load average (1, 5, 15 min) at start | {info['load_start']} |")
    add(f"| load average at end | {info['load_end']} |")
    add(f"| run time | {info['elapsed_s']:.0f} s |")
    add("")
    add(
        "Load generator: `kvtwist-bench` with up to 2 load processes, value size 32 B, "
        f"{s.keys:,d} keys (uniform), {s.duration:g} s per run after {s.warmup:g} s of "
        "warm-up, sides run in turn "
        + ("A B C" if s.reps == 1 else "A B C C B A (throughput: the mean of a side's runs)")
        + ". Nodes are `twistd -n kvnode` processes with default options unless a storage "
        "mode is named.\n"
    )


def render_floors(p: Page) -> None:
    """Every floor and its verdict, in one table."""
    add, s, verdicts = p.add, p.settings, p.verdicts
    add("## Floors\n")
    if s.quick:
        smaller = []
        if "tree" in s.only:
            smaller.append(f"the tree's largest size is {max(s.tree_sizes):,d} keys")
        if "join" in s.only or "memory" in s.only:
            smaller.append(f"join and memory use {s.big:,d} keys")
        if "durability" in s.only:
            smaller.append(f"recovery uses {s.big:,d} keys")
        add(
            "Quick run: "
            + "".join(f"{x}; " for x in smaller)
            + ("the floors are set at 1,000,000 keys; " if smaller else "")
            + f"{s.duration:g} s per bench run, each side once. A figure missed here may "
            "be met in a full run, and the other way round.\n"
        )
    add("\n".join(floors.table(verdicts)))
    add("")


def render_tree(p: Page) -> None:
    """Section 1: the tree's cost per operation as it grows (floors: large over small)."""
    add, r, floor_cells = p.add, p.results, p.floor_cells
    t = r["tree"]
    add("## 1. Tree: cost per operation against size\n")
    add(
        "`kvtwist/tree.py` alone, in one process. *insert*: the inserts taking the tree "
        "from n/2 to n keys; *get*: lookups of every key; *replace*: puts over existing "
        "keys. Random: keys inserted and used in shuffled order; sequential: ascending. "
        "Garbage collection on, as in a node. Nanoseconds per operation.\n"
    )
    add("| order | n | insert ns | get ns | replace ns | height | AVL bound |")
    add("|---|---:|---:|---:|---:|---:|---:|")
    for row in t["rows"]:
        add(
            f"| {row['order']} | {row['n']:,d} | {row['insert_ns']:,.0f} | "
            f"{row['get_ns']:,.0f} | {row['replace_ns']:,.0f} | {row['height']} | "
            f"{row['avl_bound']:.1f} |"
        )
    add("")
    add(f"| operation | ratio {t['large']:,d} / {t['small']:,d} | floor | |")
    add("|---|---:|---:|---|")
    for k, v in t["ratios"].items():
        add(f"| {k} | {v:.2f}× | {floor_cells(f'tree:{k}')} |")
    add("")


def render_node(p: Page) -> None:
    """Section 2: a standalone node in each storage mode against the reference server."""
    add, r, ratio_table = p.add, p.results, p.ratio_table
    add("## 2. Standalone node vs the reference server\n")
    add(
        "The reference (`benchmarks/reference_server.py`) answers every frame with a canned "
        "reply (asyncio, one process): its throughput is the bench's own ceiling on this "
        "machine. One node per storage mode (`--in-memory`, `--fsync never`, "
        "`--fsync interval`, `--fsync always`), each preloaded with every key; GET goes "
        "to the in-memory node, PUT to each. Same bench settings for all sides; ratios "
        "are against the reference of the same row group. `--fsync never` and "
        "`--fsync always` are shown without a floor. *bench CPU* is the busiest load "
        "process's share of a core: below 100 % the generator was not what limited the "
        "run.\n"
    )
    ratio_table(r["node"], "node")


def render_redis(p: Page) -> None:
    """Redis beside section 2: context from another load generator, without a floor."""
    add, r = p.add, p.results
    rd = r["redis"]
    add(
        "**Context, no floor: Redis.** A private `redis-server` (no persistence, "
        "127.0.0.1) measured by its own load generator, `redis-benchmark` (C, "
        "`-d 32 -r 10000`), at the same connections × pipeline. A different load "
        "generator from the rows above, so compare with care.\n"
    )
    if not rd.get("installed"):
        add(
            "| setting | Redis |\n|---|---|\n"
            "| all | not installed (Debian packages redis-server, redis-tools) |\n"
        )
    else:
        add(f"`{rd['version']}`\n")
        add("| setting | GET req/s | GET p50 µs | SET req/s | SET p50 µs |")
        add("|---|---:|---:|---:|---:|")
        for setting, row in rd["rows"].items():
            if "error" in row:
                add(f"| {setting} | redis-benchmark failed: {row['error'][:80]} | | | |")
                continue
            g, st = row.get("GET", {}), row.get("SET", {})
            add(
                f"| {setting} | {fmt(g.get('throughput'))} | {fmt(g.get('p50_us'))} | "
                f"{fmt(st.get('throughput'))} | {fmt(st.get('p50_us'))} |"
            )
        add("")


def render_ceiling(p: Page) -> None:
    """The load generator's own ceiling: below it, the node is what limits section 2."""
    add, r = p.add, p.results
    add(
        "The bench's own ceiling: GET, 4 connections × 32 in flight, against the reference "
        "server, with one and with two load processes. While *bench CPU* stays well below "
        "100 % the reference server (one process) and not the generator is the limit, so "
        "everything the node does below this throughput is the node's.\n"
    )
    add("| load processes | reference req/s | bench CPU |")
    add("|---:|---:|---:|")
    for c in r["ceiling"]:
        add(f"| {c['processes']} | {c['throughput']:,.0f} | {c['bench_cpu']:.0%} |")
    add("")


def render_chain(p: Page) -> None:
    """Section 3: a chain of three against a standalone node."""
    add, r, ratio_table = p.add, p.results, p.ratio_table
    add("## 3. Chain of 3 vs a standalone node\n")
    add(
        "Three chain nodes and one standalone node on the same machine; the bench reads "
        "the chain's head and tail from ZooKeeper (`--zk`): PUTs go to the head, GETs to "
        "the tail. Both preloaded with every key.\n"
    )
    ratio_table(r["chain"], "chain")


def render_failover(p: Page) -> None:
    """Section 4: how long writes stop when the head or the tail is killed."""
    add, r, floor_cells = p.add, p.results, p.floor_cells
    f = r["failover"]
    st = f["session_timeout_s"]
    add("## 4. Failover\n")
    add(
        f"A chain of 3 with `--zk-session-timeout {st:g}` (ZooKeeper tickTime 200 ms); one "
        "client writes one key at a time to the head it reads from ZooKeeper, retrying "
        "every 10 ms on any failure. Figure: time from SIGKILL to the acknowledgement of "
        "the first write sent after it. Reference: the session timeout, and when "
        "ZooKeeper dropped the dead node's znode.\n"
    )
    add("| killed | failover s | znode gone after s | session timeout s | floor | |")
    add("|---|---:|---:|---:|---:|---|")
    for victim in ("head", "tail"):
        v = f.get(victim, {})
        add(
            f"| {victim} | {fmt(v.get('failover_s'), '.2f')} | "
            f"{fmt(v.get('znode_gone_s'), '.2f')} | {st:g} | "
            f"{floor_cells(f'failover:{victim}')} |"
        )
    add("")


def render_join(p: Page) -> None:
    """Section 5: how long a loaded chain takes to take in a new node."""
    add, r, floor_cells = p.add, p.results, p.floor_cells
    j = r["join"]
    add("## 5. Join\n")
    add(
        f"A chain of one node is loaded with {j['keys']:,d} keys (16-byte keys, 32-byte "
        f"values; sequential PUTs, 4×32 pipelined: {j['load_s']:.1f} s, "
        f"{j['load_throughput']:,.0f} req/s), then a new node is started. Figure: from "
        "starting its process to its znode appearing as the tail, state copied. "
        "Reference: the same for a chain holding nothing (process start-up and "
        "registration).\n"
    )
    add("| | seconds | floor | |")
    add("|---|---:|---:|---|")
    add(f"| join, {j['keys']:,d} keys | {fmt(j.get('join_s'), '.2f')} | {floor_cells('join')} |")
    add(f"| join, empty chain (reference) | {j['join_empty_s']:.2f} | | |")
    add("")
    held = j.get("joiner_held")
    if held is not None:
        add(
            f"The joiner held {held:,d} keys afterwards. "
            + (f"Tail's log: `{j['transfer_log'][0]}`." if j.get("transfer_log") else "")
        )
        add("")


def render_memory(p: Page) -> None:
    """Section 6: the memory a key costs a node, over its raw bytes."""
    add, r, floor_cells = p.add, p.results, p.floor_cells
    m = r["memory"]
    add("## 6. Memory\n")
    tm = r.get("tree", {}).get("memory")
    add(
        f"Resident memory (VmRSS) of the loaded node from benchmark 5, minus the same "
        f"node's RSS before loading, per key, minus the raw {m['raw_per_key']} bytes "
        "(16-byte key + 32-byte value).\n"
    )
    add("| | bytes per key | floor | |")
    add("|---|---:|---:|---|")
    add(
        f"| node, {m['keys']:,d} keys written by clients, over raw | "
        f"{m['overhead_per_key']:,.0f} | {floor_cells('memory:node')} |"
    )
    if "joiner_per_key" in m:
        over = m["joiner_per_key"] - m["raw_per_key"]
        add(
            f"| joined node (built from the state transfer), over raw | "
            f"{over:,.0f} | {floor_cells('memory:joined')} |"
        )
    if tm:
        add(
            f"| bare BTree in one process, {tm['n']:,d} keys, over raw (reference) | "
            f"{tm['overhead_per_key_bytes']:,.0f} | | |"
        )
    add("")
    add(
        f"RSS: empty node {m['rss_empty_node'] / 2**20:.1f} MiB, loaded "
        f"{m['rss_loaded'] / 2**20:.1f} MiB"
        + (f", joiner {m['rss_joiner'] / 2**20:.1f} MiB" if "rss_joiner" in m else "")
        + ".\n"
    )


def render_errors(p: Page) -> None:
    """Every bench run that got an ERROR reply or none."""
    add, data = p.add, p.data
    errors = [
        (rep["label"], rep["requests"])
        for rep in data["runs"]
        if rep["requests"]["errors"] or rep["requests"]["unanswered"]
    ]
    add("## Errors\n")
    if errors:
        for label, req in errors:
            add(f"- {label}: {req['errors']} ERROR replies, {req['unanswered']} unanswered")
    else:
        add(f"None: all {len(data['runs'])} bench runs got a non-ERROR reply to every request.")
    add("")


def render_notes(p: Page) -> None:
    """The notes file, as given (``--notes``)."""
    add, notes = p.add, p.notes
    if notes:
        add(notes.rstrip() + "\n")


def render_commands(p: Page) -> None:
    """Every command the run ran, once, ports and paths made general."""
    add, data = p.add, p.data
    add("## Commands\n")
    add(
        "Ports and pids are chosen at run time (PORT, ZK_PORT: a private ZooKeeper); "
        "`kvtwist-bench` is `python -m kvtwist.bench.cli`. Each distinct command once, "
        "in the order first run.\n"
    )
    add("```")
    seen = set()
    for c in data["commands"]:
        c = c.replace(str(ROOT) + "/", "")
        c = re.sub(r"--target 127\.0\.0\.1:\d+", "--target 127.0.0.1:PORT", c)
        c = re.sub(r"--zk 127\.0\.0\.1:\d+", "--zk 127.0.0.1:ZK_PORT", c)
        if c not in seen:
            seen.add(c)
            add(c)
    add("```")


def render_durability(p: Page) -> None:
    """Section 7: what each storage mode costs, and how fast a node comes back."""
    add, r, floor_cells = p.add, p.results, p.floor_cells
    d = r["durability"]
    node = r.get("node", {})
    add("## 7. Durability\n")
    add(
        "PUT throughput and latency by storage mode: standalone from section 2's runs, and "
        "as a chain of 3 (32-byte values; `kvtwist-bench --workload put`). Under `always` "
        "every batch of writes is fsynced before it is applied and passed on; the disk's "
        "own fsync latency (median 4 KiB append + fsync): "
        f"{d['fsync_latency_us']:,.0f} µs.\n"
    )
    add(
        "| mode | standalone 32×1 req/s | p50 µs | p99 µs | standalone 4×32 req/s "
        "| p50 µs | p99 µs | chain of 3, 4×32 req/s | p50 µs | p99 µs |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, _ in STORAGE_MODES:
        cells = []
        for setting in ("32×1", "4×32"):
            x = node.get(f"PUT {setting}", {}).get(name, {})
            cells += [fmt(x.get("throughput")), fmt(x.get("p50_us")), fmt(x.get("p99_us"))]
        c = d.get("chain", {}).get(name, {})
        cells += [fmt(c.get("throughput")), fmt(c.get("p50_us")), fmt(c.get("p99_us"))]
        add(f"| {name} | " + " | ".join(cells) + " |")
    add("")
    if not node:
        add("(Standalone figures come from section 2, which this run left out.)\n")
    add("| | ratio | floor | |")
    add("|---|---:|---:|---|")
    for setting in ("32×1", "4×32"):
        fid = f"durability:interval:{setting}"
        v = p.vid.get(fid)
        add(
            f"| PUT {setting}, `--fsync interval` / `--in-memory` | "
            f"{v.measured if v else '—'} | {floor_cells(fid)} |"
        )
    add("")
    rec = d["recovery"]
    add(
        f"Recovery (`python -m benchmarks.recovery_bench`): a snapshot of "
        f"{int(rec['keys']):,d} keys (16-byte keys, 32-byte values) plus "
        f"{int(rec['log']):,d} logged writes opens in {rec['recovery_s']:.2f} s "
        f"(floor: {floor_cells('durability:recovery').replace(' |', ',')}). Disk: "
        f"{rec['snapshot_bytes_per_key']:.1f} B/key in a snapshot, "
        f"{rec['dir_bytes_per_key']:.1f} B/key for the whole directory (the log since "
        "the previous snapshot is kept).\n"
    )
    rj = d["rejoin"]
    add(
        f"Rejoin of a middle node killed for {rj['outage_s']:g} s while a client writes "
        f"({rj['keys']:,d} keys preloaded, session timeout 2 s): from its restart to its "
        f"znode back in the chain, **{rj['delta_s']:.2f} s by delta** (its data kept; "
        f"the tail logged a delta catch-up: {rj['delta_logged']}) against "
        f"**{rj['full_s']:.2f} s in full** (its data directory deleted first).\n"
    )


#: Breakdown columns: (op, requests per call/turn/hop, the section 2 row it models).
BREAKDOWN_COLUMNS = (
    ("GET", 1, "GET 32×1"),
    ("GET", 32, "GET 4×32"),
    ("PUT", 1, "PUT 32×1"),
    ("PUT", 32, "PUT 4×32"),
)


def render_breakdown(p: Page) -> None:
    """Section 8: where a request's time goes, set against section 2's measured cost."""
    add, r = p.add, p.results
    b = r["breakdown"]
    add("## 8. The cost of one request, piece by piece\n")
    if "error" in b:
        add(f"Not measured: `benchmarks/breakdown.py` failed: `{b['error'][-300:]}`\n")
        return
    add(
        "`benchmarks/breakdown.py`: the node's request path timed in one process, each "
        "piece the project's own code in a loop (best of 5 repeats), in µs per request, "
        f"against a tree of {b['keys']:,d} keys. *×1*: one request per read, per reactor "
        "turn and per thread hop, as a node serving 32 connections × 1 sees them; *×32*: "
        "32 at a time, as under pipelining. The sum is set against the node's measured "
        "cost per request in section 2 (1 / throughput: the node's wall time per request "
        "with the load generator beside it on the same cores). Rows marked *of which* are "
        "inside *completion* and not added again; the *check* row is the in-process path "
        "in one piece, to compare with frame parse + decode + dispatch + completion.\n"
    )
    head = " | ".join(f"{op} ×{n} µs" for op, n, _ in BREAKDOWN_COLUMNS)
    add(f"| piece | {head} | code timed |")
    add("|---|" + "---:|" * len(BREAKDOWN_COLUMNS) + "---|")
    rows: dict[str, dict[tuple[str, int], Any]] = {}
    calls: dict[str, str] = {}
    errors: list[str] = []
    for p in b["pieces"]:
        rows.setdefault(p["name"], {})[(p["op"], p["batch"])] = p["us"]
        calls[p["name"]] = p["calls"]
        if p["error"] and p["error"] not in errors:
            errors.append(p["error"])
    for name, cells in rows.items():
        vals = " | ".join(fmt(cells.get((op, n)), ".2f") for op, n, _ in BREAKDOWN_COLUMNS)
        add(f"| {name} | {vals} | {calls[name]} |")
    sums = [b["sums"][f"{op} {n}"] for op, n, _ in BREAKDOWN_COLUMNS]
    add("| **sum** | " + " | ".join(f"**{x['us']:.2f}**" for x in sums) + " | |")
    node = r.get("node", {})
    measured = []
    for _, _, row in BREAKDOWN_COLUMNS:
        t = node.get(row, {}).get("in-memory", {}).get("throughput")
        measured.append(1e6 / t if t else None)
    add(
        "| node, measured: 1 / throughput (in-memory node, section 2) | "
        + " | ".join(
            f"{fmt(m, '.2f')} ({row})" if m else f"— ({row} not run)"
            for m, (_, _, row) in zip(measured, BREAKDOWN_COLUMNS, strict=True)
        )
        + " | |"
    )
    add(
        "| sum / measured | "
        + " | ".join(
            fmt(x["us"] / m, ".2f") if m else "—" for x, m in zip(sums, measured, strict=True)
        )
        + " | |"
    )
    add("")
    if errors:
        add("Not measured (the code these pieces call could not be used):\n")
        for e in errors:
            add(f"- `{e}`")
        add("")


#: The report's sections in order: (the results they need, None: always; the renderer).
SECTIONS: tuple[tuple[str | None, Callable[[Page], None]], ...] = (
    (None, render_intro),
    (None, render_machine),
    (None, render_floors),
    ("tree", render_tree),
    ("node", render_node),
    ("redis", render_redis),
    ("ceiling", render_ceiling),
    ("chain", render_chain),
    ("failover", render_failover),
    ("join", render_join),
    ("memory", render_memory),
    ("durability", render_durability),
    ("breakdown", render_breakdown),
    ("resp", render_resp),
    ("cluster", render_cluster),
    ("cluster-ops", render_cluster_ops),
    (None, render_errors),
    (None, render_notes),
    (None, render_commands),
)


def render(data: dict[str, Any], notes: str) -> tuple[str, list[floors.Verdict]]:
    """The markdown report from the saved results (see ``--from-json``), and the verdicts."""
    page = Page(data, notes)
    for needs, section in SECTIONS:
        if needs is None or needs in page.results:
            section(page)
    return "\n".join(page.lines) + "\n", page.verdicts


def run_all(s: Settings) -> dict[str, Any]:
    """Run the chosen benchmarks; return everything the report is made from."""
    only = s.only
    with tempfile.TemporaryDirectory(prefix="kvtwist-bench-") as tmp:
        run = Run(s, Path(tmp))
        info = machine()
        info["load_start"] = load_avg()
        run.log(f"kvtwist benchmarks ({'quick' if s.quick else 'full'}); load {info['load_start']}")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        if "tree" in only:
            bench_tree(run)
        if "node" in only:
            bench_node(run)
        if "breakdown" in only:
            bench_breakdown(run)
        if "chain" in only:
            bench_chain(run)
        if "failover" in only:
            bench_failover(run)
        if "join" in only or "memory" in only:
            bench_join_memory(run, "join" in only, "memory" in only)
        if "durability" in only:
            bench_durability(run)
        if "resp" in only:
            bench_resp(run)
        if "cluster" in only:
            bench_cluster(run)
        if "cluster-ops" in only:
            bench_cluster_ops(run)
        info["load_end"] = load_avg()
        info["elapsed_s"] = time.time() - run.started
        return {
            "settings": vars(s),
            "machine": info,
            "started": run.started,
            "results": run.results,
            "commands": run.commands,
            "runs": [
                {
                    "label": r["label"],
                    "requests": r["requests"],
                    "throughput": r["throughput"],
                    "latency_us": r["latency_us"],
                    "bench_cpu": r["client_cpu_per_process"],
                }
                for r in run.reports
            ],
        }


#: Where a run's report and raw numbers go unless --out-dir says otherwise (not tracked).
OUT_DIR = ROOT / "benchmarks" / "out"
#: The published report, written only with --publish.
PUBLISHED = ROOT / "docs" / "performance.md"


class NotPublishable(Exception):
    """Only a full run of every benchmark may replace the published report."""


def write_report(
    data: dict[str, Any],
    notes: str,
    out_dir: Path,
    publish: bool = False,
    published: Path | None = None,
) -> tuple[list[Path], list[floors.Verdict]]:
    """Write performance.md and results.json to ``out_dir``; with ``publish``, also
    ``published`` (docs/performance.md).  Returns the files written and the verdicts."""
    if publish and not Settings(**data["settings"]).complete:
        raise NotPublishable(
            "--publish needs a full run of every benchmark (no --quick, no --only)"
        )
    text, verdicts = render(data, notes)
    data["floors"] = [
        {
            "id": v.floor.id,
            "floor": v.label,
            "value": v.value,
            "limit": v.limit,
            "at_most": v.floor.at_most,
            "met": v.met,
        }
        for v in verdicts
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    report, raw = out_dir / "performance.md", out_dir / "results.json"
    report.write_text(text)
    raw.write_text(json.dumps(data, indent=2) + "\n")
    written = [report, raw]
    if publish:
        published = published or PUBLISHED
        published.parent.mkdir(parents=True, exist_ok=True)
        published.write_text(text)
        written.append(published)
    return written, verdicts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 every floor measured was met, 1 one was missed (or the run "
        "failed), 2 bad options.",
    )
    p.add_argument(
        "--quick", action="store_true", help="everything small and short: a check, not figures"
    )
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {ALL}")
    p.add_argument(
        "--out-dir",
        default=str(OUT_DIR),
        help="where performance.md and results.json go (benchmarks/out, not tracked)",
    )
    p.add_argument(
        "--publish",
        action="store_true",
        help="also rewrite docs/performance.md (a full run of every benchmark only)",
    )
    p.add_argument(
        "--notes",
        default=str(ROOT / "benchmarks" / "notes.md"),
        help="analysis appended to the report (kept across runs)",
    )
    p.add_argument(
        "--from-json",
        metavar="FILE",
        help="re-render the report from a saved results.json instead of running",
    )
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = [x for x in only if x not in ALL]
    if bad:
        p.error(f"unknown benchmark(s) {bad}; choose from {ALL}")
    if args.publish and (args.quick or set(only) < set(ALL)) and not args.from_json:
        p.error("--publish needs a full run of every benchmark (no --quick, no --only)")
    notes_path = Path(args.notes)
    notes = notes_path.read_text() if notes_path.exists() else ""
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        data = run_all(Settings.make(args.quick, only))
    try:
        written, verdicts = write_report(data, notes, Path(args.out_dir), args.publish)
    except NotPublishable as e:
        p.error(str(e))
    print("floors:")
    print("\n".join(floors.terminal(verdicts)))
    for path in written:
        print(f"wrote {path}")
    status = floors.exit_status(verdicts)
    if status:
        print("a floor was missed: exit status 1")
    return status


if __name__ == "__main__":
    sys.exit(main())
