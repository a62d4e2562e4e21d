"""A local demo chain: ZooKeeper (etc/zoo.cfg) plus N kvtwist nodes, in the foreground.

    .venv/bin/python scripts/cluster.py --nodes 3      (or: make cluster N=3)

ZooKeeper listens on 127.0.0.1:2181 and the nodes on 127.0.0.1:9001..900N,
with a 2 s session timeout so that failover is quick to watch. Logs go to
run/. Ctrl-C (or SIGTERM) stops the nodes, then ZooKeeper, cleanly. While it
runs, ``kill -9`` a node's pid (printed below) to watch a failover, and start
a replacement with the printed command to watch a join.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvtwist.procs import (  # noqa: E402
    four_letter_word,
    java_binary,
    zookeeper_available,
    zookeeper_classpath,
)

RUN = ROOT / "run"
ZK_PORT = 2181
TWISTD = str(Path(sys.executable).parent / "twistd")


def wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            sys.exit(f"cluster: timed out waiting for {what}; see {RUN}/")
        time.sleep(0.1)


def _joined(log: Path):  # type: ignore[no-untyped-def]
    return lambda: log.exists() and "joined the chain" in log.read_text()


def zk_ok() -> bool:
    try:
        return four_letter_word(ZK_PORT, "ruok", 1.0) == "imok"
    except OSError:
        return False


def node_command(port: int, session: float, twistd: str = TWISTD, run: str = str(RUN)) -> list[str]:
    return [twistd, "-n", "--pidfile=", f"--logfile={run}/node-{port}.log", "kvnode",
            "--port", str(port), "--zk", f"127.0.0.1:{ZK_PORT}",
            "--zk-session-timeout", f"{session:g}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--base-port", type=int, default=9001)
    ap.add_argument("--session-timeout", type=float, default=2.0)
    args = ap.parse_args()
    why = zookeeper_available()
    if why:
        sys.exit(f"cluster: {why}")
    RUN.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    zk = None
    if zk_ok():
        print(f"ZooKeeper already running on 127.0.0.1:{ZK_PORT}; using it")
    else:
        java = java_binary()
        assert java is not None
        zk = subprocess.Popen(
            [java, "-Xmx256m", "-cp", zookeeper_classpath(),
             "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(ROOT / "etc" / "zoo.cfg")],
            cwd=RUN, stdout=open(RUN / "zookeeper.log", "wb"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        wait(zk_ok, 30, "ZooKeeper")
        print(f"ZooKeeper on 127.0.0.1:{ZK_PORT} (pid {zk.pid}, log run/zookeeper.log)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for i in range(args.nodes):
        port = args.base_port + i
        p = subprocess.Popen(node_command(port, args.session_timeout), env=env, cwd=RUN,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(p)
        wait(_joined(RUN / f"node-{port}.log"), 30, f"node {port}")
        print(f"node 127.0.0.1:{port} joined (pid {p.pid}, log run/node-{port}.log)")
    nxt = args.base_port + args.nodes
    print(f"\nchain of {args.nodes} up. Try:\n"
          f"  .venv/bin/kvtwist-client --zk 127.0.0.1:{ZK_PORT}\n"
          f"  kill -9 <pid>        # a node fails; the chain heals\n"
          f"  {' '.join(node_command(nxt, args.session_timeout, '.venv/bin/twistd', 'run'))}\n"
          f"                       # a new node joins as tail\n"
          f"Ctrl-C stops everything.", flush=True)

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping:
        time.sleep(0.2)
    print("\nstopping nodes", flush=True)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    if zk is not None:
        print("stopping ZooKeeper", flush=True)
        zk.terminate()
        try:
            zk.wait(10)
        except subprocess.TimeoutExpired:
            zk.kill()


if __name__ == "__main__":
    main()
