"""scripts/cluster.py (make cluster): it stops everything it started, however it is stopped.

The cluster runs as a real subprocess with its own ZooKeeper and nodes on free
loopback ports and a private run directory.
"""

from __future__ import annotations

import importlib.util
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.nodes import ROOT, env, free_port, port_open, wait_for
from tests.zkserver import zookeeper_available

SCRIPT = ROOT / "scripts" / "cluster.py"


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("kvtwist_cluster_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def read_line(fd: int, pending: bytearray, timeout: float) -> str:
    """The next line from ``fd`` within ``timeout`` (no reader thread, so the test can
    close the pipe under the cluster at any moment)."""
    deadline = time.monotonic() + timeout
    while b"\n" not in pending:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no line within {timeout}s; got {bytes(pending)!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"end of output; got {bytes(pending)!r}")
        pending += chunk
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line.decode()


class LogWatchTests(SynchronousTestCase):
    def test_earlier_runs_do_not_count(self) -> None:
        """A 'joined' line left in the log by an earlier run is not taken as this run's."""
        watch_cls = load_script().LogWatch
        log = Path(tempfile.mkdtemp(prefix="kvtwist-cluster-")) / "node.log"
        self.addCleanup(shutil.rmtree, log.parent, True)
        log.write_text("... joined the chain as node0000000001 at op 0\n")
        watch = watch_cls(log)
        self.assertFalse(watch.seen("joined the chain"))
        with open(log, "a") as f:
            f.write("... joined the chain as node0000000004 at op 2\n")
        self.assertTrue(watch.seen("joined the chain"))

    def test_rotated_log_read_from_the_start(self) -> None:
        """If the log was replaced by a shorter one, all of it is this run's."""
        watch_cls = load_script().LogWatch
        log = Path(tempfile.mkdtemp(prefix="kvtwist-cluster-")) / "node.log"
        self.addCleanup(shutil.rmtree, log.parent, True)
        log.write_text("x" * 1000)
        watch = watch_cls(log)
        log.write_text("joined the chain\n")
        self.assertTrue(watch.seen("joined the chain"))


class ClusterTests(SynchronousTestCase):
    def setUp(self) -> None:
        why = zookeeper_available()
        if why:
            raise SkipTest(why)
        self.run_dir = Path(tempfile.mkdtemp(prefix="kvtwist-cluster-"))
        self.addCleanup(shutil.rmtree, self.run_dir, True)
        self.zk_port = free_port()
        self.base = free_port()

    def start(self) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
        """The cluster with one node, once it says it is up; the pids it printed."""
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--nodes", "1", "--zk-port", str(self.zk_port),
             "--base-port", str(self.base), "--run-dir", str(self.run_dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env(), cwd=ROOT,
        )
        self.addCleanup(self.kill_leftovers, proc)
        assert proc.stdout is not None
        pending = bytearray()
        pids: dict[str, int] = {}
        while True:
            line = read_line(proc.stdout.fileno(), pending, 60)
            if line.startswith("ZooKeeper on"):
                pids["zk"] = int(line.split("pid ")[1].split(",")[0])
            elif line.startswith("node 127.0.0.1:"):
                pids["node"] = int(line.split("pid ")[1].split(",")[0])
            elif line.startswith("chain of 1 up"):
                return proc, pids

    def kill_leftovers(self, proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        proc.wait()
        for pidfile in self.run_dir.glob("*.pid"):
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def assert_all_stopped(self, proc: subprocess.Popen[bytes], pids: dict[str, int]) -> None:
        self.assertEqual(proc.wait(60), 0)
        for name, pid in pids.items():
            wait_for(lambda pid=pid: not alive(pid), 15, f"{name} (pid {pid}) to stop")  # type: ignore[misc]
        self.assertFalse(port_open(self.zk_port))
        self.assertFalse(port_open(self.base))

    def test_ctrl_c_after_the_output_pipe_closed(self) -> None:
        """Like `make cluster | tee log` and Ctrl-C: tee is gone, yet every process stops."""
        proc, pids = self.start()
        self.assertEqual(set(pids), {"zk", "node"})
        assert proc.stdout is not None
        proc.stdout.close()  # the reader (tee) is gone: every later print meets a broken pipe
        proc.send_signal(signal.SIGINT)
        self.assert_all_stopped(proc, pids)

    def test_hangup_stops_a_node_added_by_hand(self) -> None:
        """SIGHUP stops the cluster, and a node started with the printed command with it."""
        proc, pids = self.start()
        port = self.base + 1
        hand = subprocess.Popen(
            [str(Path(sys.executable).parent / "twistd"), "-n",
             f"--pidfile={self.run_dir}/node-{port}.pid", f"--logfile={self.run_dir}/hand.log",
             "kvnode", "--port", str(port), "--zk", f"127.0.0.1:{self.zk_port}",
             "--zk-session-timeout", "2"],
            stdin=subprocess.DEVNULL, env=env(), cwd=self.run_dir, start_new_session=True,
        )
        self.addCleanup(hand.kill)
        wait_for(lambda: port_open(port), 30, "the node added by hand to listen")
        # the port is bound before the reactor runs: a signal before then ends
        # twistd without its shutdown; a node in the chain has the reactor running
        log = self.run_dir / "hand.log"
        wait_for(
            lambda: log.exists() and "joined the chain" in log.read_text(),
            30,
            "the node added by hand to join the chain",
        )
        self.assertTrue((self.run_dir / f"node-{port}.pid").exists())
        proc.send_signal(signal.SIGHUP)
        # twistd ends by re-raising the signal it stopped on
        self.assertIn(hand.wait(30), (0, -signal.SIGTERM))
        self.assertIn("Server Shut Down", (self.run_dir / "hand.log").read_text())
        self.assert_all_stopped(proc, pids)
