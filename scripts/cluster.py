"""A local demo chain: ZooKeeper (etc/zoo.cfg) plus N kvtwist nodes, in the foreground.

    .venv/bin/python scripts/cluster.py --nodes 3      (or: make cluster N=3)

ZooKeeper listens on 127.0.0.1:2181 and the nodes on 127.0.0.1:9001..900N,
with a 2 s session timeout so that failover is quick to watch. Logs go to
run/. While it runs, ``kill -9`` a node's pid (printed below) to watch a
failover, and start a replacement with the printed command to watch a join.

Ctrl-C, SIGTERM, SIGHUP (the terminal closed) or a closed output pipe
(``make cluster | tee log``, then Ctrl-C) stop everything it started: the
nodes, then ZooKeeper. A node added by hand with the printed command writes
its pid into run/, and is stopped too; a node started otherwise is not.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvtwist.procs.demo import (  # noqa: E402
    DemoZooKeeper,
    Failed,
    LogWatch,
    alive,
    cmdline,
    run_foreground,
    say,
    shown,
    wait,
)

__all__ = ["Cluster", "LogWatch", "main", "node_command"]

TWISTD = str(Path(sys.executable).parent / "twistd")
JOINED = "joined the chain"


def _joined(p: subprocess.Popen[bytes], watch: LogWatch) -> Callable[[], bool]:
    """Whether the node has joined in this run; Failed if it exited instead."""

    def joined() -> bool:
        if p.poll() is not None:
            raise Failed(f"a node exited with status {p.returncode}; see {watch.path}")
        return watch.seen(JOINED)

    return joined


def node_command(
    port: int, zk_port: int, session: float, run: str, twistd: str = TWISTD, pidfile: bool = False
) -> list[str]:
    pid = f"--pidfile={run}/node-{port}.pid" if pidfile else "--pidfile="
    return [twistd, "-n", pid, f"--logfile={run}/node-{port}.log", "kvnode",
            "--port", str(port), "--zk", f"127.0.0.1:{zk_port}",
            "--zk-session-timeout", f"{session:g}"]


class Cluster:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run = Path(args.run_dir).resolve()
        self.zk = DemoZooKeeper(ROOT / "etc" / "zoo.cfg", self.run, args.zk_port)
        self.nodes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        args, run = self.args, self.run
        run.mkdir(parents=True, exist_ok=True)
        self.zk.start()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for i in range(args.nodes):
            port = args.base_port + i
            log = run / f"node-{port}.log"
            watch = LogWatch(log)
            p = subprocess.Popen(
                node_command(port, args.zk_port, args.session_timeout, str(run)),
                env=env, cwd=run, stdin=subprocess.DEVNULL, start_new_session=True,
            )
            self.nodes.append(p)
            wait(_joined(p, watch), 30, f"node {port} to join; see {log}")
            say(f"node 127.0.0.1:{port} joined (pid {p.pid}, log {shown(log)})")
        nxt = args.base_port + args.nodes
        by_hand = node_command(nxt, args.zk_port, args.session_timeout, shown(run),
                               shown(Path(TWISTD)), pidfile=True)
        say(f"\nchain of {args.nodes} up. Try:\n"
            f"  .venv/bin/kvtwist-client --zk 127.0.0.1:{args.zk_port}\n"
            f"  kill -9 <pid>        # a node fails; the chain heals\n"
            f"  {' '.join(by_hand)}\n"
            f"                       # a new node joins as tail (and is stopped with the rest)\n"
            f"Ctrl-C stops everything.")

    def stop(self) -> None:
        """Stop the nodes (ours and those added by hand with their pid in run/), then ZooKeeper."""
        say("\nstopping nodes")
        ours = {p.pid for p in self.nodes}
        for p in self.nodes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        added = self._added_by_hand(ours)
        for pid in added:
            say(f"stopping the node added by hand (pid {pid})")
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.nodes:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        deadline = time.monotonic() + 10
        for pid in added:
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.zk.stop()

    def _added_by_hand(self, ours: set[int]) -> list[int]:
        """Live kvnode processes of this ZooKeeper that left a pidfile in run/."""
        found = []
        for pidfile in sorted(self.run.glob("node-*.pid")):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            cmd = cmdline(pid)
            if pid not in ours and "kvnode" in cmd and f"127.0.0.1:{self.args.zk_port}" in cmd:
                found.append(pid)
        return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--base-port", type=int, default=9001)
    ap.add_argument("--session-timeout", type=float, default=2.0)
    ap.add_argument("--zk-port", type=int, default=2181)
    ap.add_argument("--run-dir", default=str(ROOT / "run"), help="logs and pid files (run/)")
    args = ap.parse_args(argv)
    why = DemoZooKeeper.unavailable()
    if why:
        print(f"cluster: {why}", file=sys.stderr)
        return 1
    cluster = Cluster(args)
    return run_foreground("cluster", cluster.start, cluster.stop)


if __name__ == "__main__":
    sys.exit(main())
