"""The cluster operations benchmark (``--only cluster-ops``): a move, a split and the
replacement of a lost server, each of a shard holding ``Settings.big`` keys.

Four in-memory servers, R = 3, two shards: ``c0`` below ``bench:l`` holds every
preloaded key, ``c1`` the rest (empty).  A probe, one cluster client writing one
key at a time to keys of the upper half of ``c0`` (the range the split gives
away), runs through all three steps:

1. **move**: ``cluster move NAME c0 --to S --wait``, S the server not in ``c0``:
   S joins by a state transfer of the whole shard;
2. **split**: ``cluster split NAME c0 AT --wait`` at the middle key: the new
   chain starts from the split marker on ``c0``'s own servers;
3. **replace**: ``kill -9`` of a server of both chains; timed until every chain
   lists three members again, none of them the dead server (the controller waits
   ``--replace-after`` first, then the new members copy their shards).

For each step: its duration, and the probe's writes meanwhile (how many, how
many failed, p50, p99 and longest).  At the end every key is still there
(SIZE of the whole cluster) and the probe's last acknowledged value reads back.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvtwist.bench.cli import DEFAULT_KEY_PREFIX
from kvtwist.bench.workload import key_name

if TYPE_CHECKING:
    from benchmarks.run import Page, Run

ADMIN = str(Path(sys.executable).parent / "kvtwist-admin")
SERVERS = ("s1", "s2", "s3", "s4")
#: seconds a server may be gone before its chains get a new member (the default is 60)
REPLACE_AFTER = 10.0
#: c0 serves every bench key (``bench:k…``), c1 what sorts after
CUT = "bench:l"


class Probe:
    """One cluster client writing unique values to keys of the moving range, one at a
    time; every write's (start, end, ok), and the last value acknowledged per key."""

    def __init__(self, zk_hosts: str, name: str, keys: list[bytes]) -> None:
        from twisted.internet import selectreactor

        from kvtwist.client.blocking import BlockingClient

        self.keys = keys
        self.writes: list[tuple[float, float, bool]] = []
        self.acked: dict[bytes, int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.kv = BlockingClient.cluster(
            zk_hosts, name, 30.0, reactor=selectreactor.SelectReactor()
        )
        self._thread = threading.Thread(target=self._run, daemon=True, name="probe")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            key = self.keys[n % len(self.keys)]
            n += 1
            began = time.monotonic()
            try:
                self.kv.put(key, b"probe %d" % n)
            except Exception as e:  # past the client's deadline, retries included
                self.writes.append((began, time.monotonic(), False))
                self.errors.append(f"put {key!r}: {e}")
                continue
            self.writes.append((began, time.monotonic(), True))
            self.acked[key] = n

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def window(self, start: float, end: float) -> dict[str, Any]:
        """The probe's writes that overlap ``[start, end]``."""
        inside = [w for w in self.writes if w[1] >= start and w[0] <= end]
        lat = sorted(1000 * (b - a) for a, b, _ in inside)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0.0

        return {
            "writes": len(inside),
            "failed": sum(1 for w in inside if not w[2]),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "max_ms": lat[-1] if lat else 0.0,
        }


def bench_cluster_ops(run: Run) -> None:
    """The steps of the module's docstring, under ``results["cluster-ops"]``."""
    import subprocess

    from benchmarks.run import _env, kazoo, preload, processes, start_node, zk_start
    from kvtwist.cluster.shardmap import ClusterPaths, ShardMap
    from kvtwist.membership import MEMBER_PREFIX
    from kvtwist.procs import wait_for

    n = run.settings.big
    run.log(f"11. cluster operations on a shard of {n:,d} keys")
    name = f"ops{uuid.uuid4().hex[:6]}"
    paths = ClusterPaths(name)
    res: dict[str, Any] = {"keys": n, "replace_after_s": REPLACE_AFTER}
    with processes() as procs:
        zk = zk_start(run, procs)
        kz = kazoo(zk.hosts)
        try:
            nodes = {}
            for sid in SERVERS:
                nodes[sid] = start_node(run, procs, [
                    "--zk", zk.hosts, "--cluster", name, "--server-id", sid, "--in-memory",
                    "--replace-after", f"{REPLACE_AFTER:g}", "--zk-session-timeout", "4",
                ])

            def admin(*args: str) -> float:
                argv = [ADMIN, "cluster", args[0], name, *args[1:], "--zk", zk.hosts]
                run.command(argv, " ".join(["kvtwist-admin", *argv[1:]]).replace(zk.hosts, "ZK"))
                began = time.monotonic()
                done = subprocess.run(argv, capture_output=True, text=True, env=_env(),
                                      timeout=900)
                if done.returncode != 0:
                    raise RuntimeError(f"{' '.join(args)}: {done.stdout}{done.stderr}")
                return time.monotonic() - began

            def plans() -> dict[str, tuple[str, ...]]:
                m = ShardMap.decode(kz.get(paths.map)[0])
                return {c: p.members for c, p in m.chains.items()}

            def listed(chain: str) -> int:
                root = paths.chain(chain)
                if kz.exists(root) is None:
                    return 0
                return sum(c.startswith(MEMBER_PREFIX) for c in kz.get_children(root))

            def whole(dead: str | None = None) -> bool:
                ps = plans()
                return all(len(m) == 3 and dead not in m and listed(c) == 3
                           for c, m in ps.items())

            wait_for(lambda: kz.exists(paths.servers) is not None
                     and len(kz.get_children(paths.servers)) == len(SERVERS), 60, "servers up")
            admin("create", "--replicas", "3", "--split-at", CUT)
            wait_for(whole, 90, "both chains formed")
            load = preload(run, f"preload {n:,d} keys into c0",
                           ["--zk", zk.hosts, "--cluster", name], n)
            res["preload_rps"] = load["throughput"]
            middle = DEFAULT_KEY_PREFIX + key_name(n // 2)
            probe_keys = [(DEFAULT_KEY_PREFIX + key_name(n // 2 + i)).encode() for i in range(100)]
            probe = Probe(zk.hosts, name, probe_keys)
            probe.start()
            try:
                wait_for(lambda: len(probe.acked) >= 10, 60, "the probe writing")
                time.sleep(2)
                res["quiet"] = probe.window(time.monotonic() - 2, time.monotonic())

                spare = next(s for s in SERVERS if s not in plans()["c0"])
                t0 = time.monotonic()
                res["move_s"] = admin("move", "c0", "--to", spare, "--wait",
                                      "--wait-timeout", "900")
                res["move"] = probe.window(t0, time.monotonic())
                run.log(f"  move of c0 to {spare}: {res['move_s']:.1f} s, probe {res['move']}")

                t0 = time.monotonic()
                res["split_s"] = admin("split", "c0", middle, "--wait", "--wait-timeout", "900")
                res["split"] = probe.window(t0, time.monotonic())
                run.log(f"  split of c0 at {middle}: {res['split_s']:.1f} s, "
                        f"probe {res['split']}")

                shared = [s for s in SERVERS if all(s in m for m in plans().values())]
                victim = shared[-1] if shared else plans()["c0"][-1]
                t0 = time.monotonic()
                nodes[victim].kill()
                wait_for(lambda: whole(victim), 900, f"every chain whole again without {victim}")
                res["replace_s"] = time.monotonic() - t0
                res["replace"] = probe.window(t0, time.monotonic())
                res["replaced"] = victim
                run.log(f"  kill -9 of {victim} until every chain has 3 members again: "
                        f"{res['replace_s']:.1f} s, probe {res['replace']}")
            finally:
                probe.stop()
            size = probe.kv.size()
            last_ok = all(
                probe.kv.get(k) == b"probe %d" % v for k, v in probe.acked.items()
            )
            probe.kv.close()
            res["size"] = size
            res["probe_reads_back"] = last_ok
            res["probe_errors"] = probe.errors[:5]
            run.log(f"  at the end: SIZE {size:,d} (preloaded {n:,d}), "
                    f"probe's last writes read back: {last_ok}")
        finally:
            kz.stop()
            kz.close()
    run.results["cluster-ops"] = res


def render_cluster_ops(p: Page) -> None:
    """Section 11: a move, a split and a replacement of a big shard."""
    r = p.results["cluster-ops"]
    add = p.add
    add(f"## 11. Cluster operations on a shard of {r['keys']:,d} keys\n")
    add(
        "Four in-memory servers, R = 3; shard `c0` holds every preloaded key "
        f"({r['keys']:,d} keys of {32} bytes, written at {r['preload_rps']:,.0f} req/s). "
        "A probe client writes, one at a time, to keys of the upper half of `c0` (the "
        "range the split gives away) through every step; its writes that overlap a "
        "step are counted in it. *replace* is from `kill -9` of a server of both chains "
        "until every chain lists three members again; the controller waits "
        f"`--replace-after {r['replace_after_s']:g}` s of it first.\n"
    )
    add("| step | duration s | probe writes | failed | p50 ms | p99 ms | longest ms |")
    add("|---|---:|---:|---:|---:|---:|---:|")
    q = r["quiet"]
    add(f"| (before, 2 s quiet) | | {q['writes']} | {q['failed']} | {q['p50_ms']:.1f} | "
        f"{q['p99_ms']:.1f} | {q['max_ms']:.1f} |")
    for step, label in (("move", "move of `c0` to the fourth server"),
                        ("split", "split of `c0` at its middle key"),
                        ("replace", f"replace `{r.get('replaced', '?')}` after `kill -9`")):
        w = r[step]
        add(f"| {label} | {r[step + '_s']:.1f} | {w['writes']} | {w['failed']} | "
            f"{w['p50_ms']:.1f} | {w['p99_ms']:.1f} | {w['max_ms']:.1f} |")
    add("")
    add(f"At the end the cluster's SIZE is {r['size']:,d} (of {r['keys']:,d} preloaded) and "
        f"the probe's last acknowledged writes {'all' if r['probe_reads_back'] else 'do NOT all'}"
        " read back.\n")
