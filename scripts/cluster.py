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
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvtwist.procs import (  # noqa: E402
    four_letter_word,
    java_binary,
    zookeeper_available,
    zookeeper_classpath,
)

TWISTD = str(Path(sys.executable).parent / "twistd")
JOINED = "joined the chain"


class Stop(Exception):
    """A signal asked the cluster to stop."""


class Failed(Exception):
    """Starting the cluster went wrong; the message says how."""


_quiet = False


def say(text: str) -> None:
    """Print, unless the reader of our output has gone (then print nothing more)."""
    global _quiet
    if _quiet:
        return
    try:
        print(text, flush=True)
    except OSError:  # BrokenPipeError, or a terminal that went away
        _quiet = True
        try:  # so that the interpreter's last flush cannot fail either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise Failed(f"timed out waiting for {what}")
        time.sleep(0.1)


class LogWatch:
    """Watches a log for a line written after it was created, not by an earlier run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def seen(self, text: str) -> bool:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(self.offset if size >= self.offset else 0)  # rotated: a new file
                return text.encode() in f.read()
        except FileNotFoundError:
            return False


def _joined(p: subprocess.Popen[bytes], watch: LogWatch) -> Callable[[], bool]:
    """Whether the node has joined in this run; Failed if it exited instead."""

    def joined() -> bool:
        if p.poll() is not None:
            raise Failed(f"a node exited with status {p.returncode}; see {watch.path}")
        return watch.seen(JOINED)

    return joined


def zk_ok(port: int) -> bool:
    try:
        return four_letter_word(port, "ruok", 1.0) == "imok"
    except OSError:
        return False


def node_command(
    port: int, zk_port: int, session: float, run: str, twistd: str = TWISTD, pidfile: bool = False
) -> list[str]:
    pid = f"--pidfile={run}/node-{port}.pid" if pidfile else "--pidfile="
    return [twistd, "-n", pid, f"--logfile={run}/node-{port}.log", "kvnode",
            "--port", str(port), "--zk", f"127.0.0.1:{zk_port}",
            "--zk-session-timeout", f"{session:g}"]


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when that is shorter."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


class Cluster:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run = Path(args.run_dir).resolve()
        self.zk: subprocess.Popen[bytes] | None = None
        self.nodes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        args, run = self.args, self.run
        run.mkdir(parents=True, exist_ok=True)
        if zk_ok(args.zk_port):
            say(f"ZooKeeper already running on 127.0.0.1:{args.zk_port}; "
                "using it (and leaving it running)")
        else:
            java = java_binary()
            assert java is not None
            config = (ROOT / "etc" / "zoo.cfg").read_text()
            config = config.replace("clientPort=2181", f"clientPort={args.zk_port}")
            (run / "zoo.cfg").write_text(config)
            with open(run / "zookeeper.log", "ab") as zk_log:
                self.zk = subprocess.Popen(
                    [java, "-Xmx256m", "-cp", zookeeper_classpath(),
                     "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(run / "zoo.cfg")],
                    cwd=run, stdout=zk_log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
            zk = self.zk
            wait(lambda: zk.poll() is None and zk_ok(args.zk_port), 30, "ZooKeeper")
            say(f"ZooKeeper on 127.0.0.1:{args.zk_port} (pid {zk.pid}, "
                f"log {_shown(run / 'zookeeper.log')})")
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
            say(f"node 127.0.0.1:{port} joined (pid {p.pid}, log {_shown(log)})")
        nxt = args.base_port + args.nodes
        by_hand = node_command(nxt, args.zk_port, args.session_timeout, _shown(run),
                               _shown(Path(TWISTD)), pidfile=True)
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
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.zk is not None:
            say("stopping ZooKeeper")
            self.zk.terminate()
            try:
                self.zk.wait(10)
            except subprocess.TimeoutExpired:
                self.zk.kill()
                self.zk.wait()

    def _added_by_hand(self, ours: set[int]) -> list[int]:
        """Live kvnode processes of this ZooKeeper that left a pidfile in run/."""
        found = []
        for pidfile in sorted(self.run.glob("node-*.pid")):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            cmd = _cmdline(pid)
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
    why = zookeeper_available()
    if why:
        print(f"cluster: {why}", file=sys.stderr)
        return 1
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stop)
    cluster = Cluster(args)
    status = 0
    try:
        cluster.start()
        while True:
            time.sleep(3600)
    except Stop:
        pass
    except Failed as e:
        status = 1
        try:
            print(f"cluster: {e}", file=sys.stderr, flush=True)
        except OSError:
            pass
    finally:
        _shield()
        cluster.stop()
    return status


def _shield() -> None:
    """From here on nothing may interrupt stopping: not a second Ctrl-C, nor SIGHUP."""
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
    except Stop:  # one more arrived while we were at it
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
