"""The RESP benchmark: redis-benchmark against a private redis-server and against a
kvtwist node's RESP port, the same load generator for both (``--only resp``).

``redis-benchmark -t ping,set,get,incr,mset`` at 50 connections without
pipelining and at 4 connections with 32 requests pipelined, against a
standalone in-memory node (``--resp-port``) and, when Debian's redis-server
is installed (``sh scripts/setup.sh --bench``), a redis-server with no
persistence on a free loopback port.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.run import Page, Run

#: (setting, connections, pipeline depth)
RESP_SETTINGS = (("50x1", 50, 1), ("4x32", 4, 32))
TESTS = "ping,set,get,incr,mset"
#: redis-benchmark's names for the tests, in the order it runs them
SHOWN = ("PING_INLINE", "PING_MBULK", "SET", "GET", "INCR", "MSET (10 keys)")


def _requests(run: Run, pipe: int) -> int:
    base = 10_000 if run.settings.quick else 50_000
    return base * (4 if pipe > 1 else 1)


def _rows(run: Run, tool: str, port: int, who: str) -> dict[str, Any]:
    from benchmarks.run import VALUE_SIZE, parse_redis_csv

    rows: dict[str, Any] = {}
    for setting, conns, pipe in RESP_SETTINGS:
        n = _requests(run, pipe)
        args = ["-t", TESTS, "-d", str(VALUE_SIZE), "-r", "10000"]
        args += ["-c", str(conns), "-P", str(pipe), "-n", str(n)]
        argv = [tool, "-h", "127.0.0.1", "-p", str(port), *args, "--csv"]
        run.command(
            argv, f"redis-benchmark -h 127.0.0.1 -p {who.upper()}_PORT " + " ".join(args) + " --csv"
        )
        p = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
        parsed = parse_redis_csv(p.stdout)
        rows[setting] = (
            dict(parsed)
            if parsed and not p.returncode
            else {"error": (p.stderr or p.stdout)[-500:]}
        )
        run.log(
            f"  {who} {setting}: "
            + ", ".join(f"{k} {v['throughput']:.0f}/s" for k, v in parsed.items())
        )
    return rows


def bench_resp(run: Run) -> None:
    """Both servers at both settings; the results under ``resp``."""
    from benchmarks.run import RedisServer, processes
    from kvtwist.procs import NodeProcess, free_port

    run.log("RESP: redis-benchmark against redis-server and a node's RESP port")
    tool, server = shutil.which("redis-benchmark"), shutil.which("redis-server")
    if tool is None:
        run.log("  redis-benchmark: not installed (Debian package redis-tools)")
        run.results["resp"] = {"installed": False}
        return
    out: dict[str, Any] = {"installed": True, "tests": TESTS}
    with processes() as procs:
        resp_port = free_port()
        node = NodeProcess(args=["--in-memory", "--resp-port", str(resp_port)])
        run.command(
            node.command(), "twistd -n kvnode --port PORT --in-memory --resp-port NODE_PORT"
        )
        node.start(timeout=30)
        procs.append(node)
        out["node"] = _rows(run, tool, resp_port, "node")
    if server is not None:
        version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
        out["redis_version"] = version.strip()
        with processes() as procs:
            redis = RedisServer(run, server)
            procs.append(redis)
            out["redis"] = _rows(run, tool, redis.port, "redis")
    else:
        run.log("  redis-server: not installed (sh scripts/setup.sh --bench)")
    run.results["resp"] = out


def render_resp(page: Page) -> None:
    """The table: requests per second of each test, Redis and the node, and their ratio."""
    r = page.results["resp"]
    add = page.lines.append
    add("## 9. RESP: redis-benchmark, Redis and a kvtwist node")
    add("")
    if not r.get("installed"):
        add("redis-benchmark was not installed (Debian package redis-tools).")
        add("")
        return
    add(
        "The same load generator, `redis-benchmark -t ping,set,get,incr,mset -d 32 -r 10000`,"
        " at 50 connections without pipelining (50x1) and at 4 connections with 32 requests"
        " pipelined (4x32), against a standalone in-memory kvtwist node's RESP port and"
        + (
            f" a private {r['redis_version'].split(' sha')[0]} with no persistence."
            if "redis" in r
            else " (no redis-server was installed)."
        )
    )
    add("")
    add("| test | setting | Redis req/s | kvtwist RESP req/s | kvtwist / Redis |")
    add("|---|---|---:|---:|---:|")
    for setting, _, _ in RESP_SETTINGS:
        node = r["node"].get(setting, {})
        redis = r.get("redis", {}).get(setting, {})
        for test in SHOWN:
            n = node.get(test, {}).get("throughput")
            s = redis.get(test, {}).get("throughput")
            ratio = f"{n / s:.2f}" if n and s else "—"
            add(
                f"| {test} | {setting} | {f'{s:,.0f}' if s else '—'} | "
                f"{f'{n:,.0f}' if n else '—'} | {ratio} |"
            )
    add("")
