"""scripts/shards.py --tour (make shards): the demo cluster's scripted tour runs to the
end, shows a split and a killed server replaced, and leaves no process behind.

The script runs as a real subprocess with its own ZooKeeper and servers on free
loopback ports and a private run directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.nodes import ROOT, env, free_port, port_open, wait_for
from tests.test_cluster import alive, read_line
from tests.zkserver import zookeeper_available

SCRIPT = ROOT / "scripts" / "shards.py"
#: a shard's row in ``cluster status``: its range, chain, chain version, planned members
ROW = re.compile(r"^\[.*?\)\s+(c\d+)\s+\d+\s+(\S+)")


def statuses(transcript: str) -> list[dict[str, list[str]]]:
    """Each ``cluster status`` of the transcript: chain -> planned servers, head first."""
    out: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] | None = None
    for line in transcript.splitlines():
        if line.startswith("$ "):
            current = {} if " cluster status " in line else None
            if current is not None:
                out.append(current)
        elif current is not None and (m := ROW.match(line)):
            current[m.group(1)] = m.group(2).replace("*", "").split(",")
    return out


def with_run_dir(pid: int, run_dir: Path) -> bool:
    """Whether process ``pid`` runs with ``run_dir`` on its command line."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(run_dir).encode() in cmd and alive(pid)


def leftovers(run_dir: Path) -> list[int]:
    """Processes still running from the demo in ``run_dir`` (servers, ZooKeeper)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and with_run_dir(int(p), run_dir)]


class ShardsTourTests(SynchronousTestCase):
    def setUp(self) -> None:
        why = zookeeper_available()
        if why:
            raise SkipTest(why)
        self.run_dir = Path(tempfile.mkdtemp(prefix="kvtwist-shards-"))
        self.addCleanup(shutil.rmtree, self.run_dir, True)
        self.zk_port = free_port()
        self.base = free_port()

    def kill_leftovers(self) -> None:
        for pid in leftovers(self.run_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def test_tour(self) -> None:
        """The tour exits 0; its status after the split lists a chain the one before did
        not; the server it killed is planned in no chain of the last status, where
        every chain plans three live servers; every key reads back; and the
        ZooKeeper and servers it printed, and any process of its run directory, are
        gone, their ports closed."""
        self.addCleanup(self.kill_leftovers)
        run = subprocess.run(
            [sys.executable, str(SCRIPT), "--tour", "--servers", "4", "--shards", "4",
             "--replicas", "3", "--replace-after", "4", "--zk-port", str(self.zk_port),
             "--base-port", str(self.base), "--run-dir", str(self.run_dir)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=150,
            env=env(), cwd=ROOT,
        )
        out = run.stdout
        self.assertEqual(run.returncode, 0, out + run.stderr)
        seen = statuses(out)
        self.assertEqual(len(seen), 3, out)
        first, split, last = seen
        self.assertEqual(len(first), 4, out)
        self.assertIn(" cluster split demo ", out)
        self.assertEqual(len(set(split) - set(first)), 1, out)
        self.assertTrue(set(first) <= set(split), out)
        killed = re.search(r"^\$ kill -9 (\d+)\s+# (s\d)", out, re.M)
        assert killed is not None, out
        victim = killed.group(2)
        self.assertTrue(any(victim in plan for plan in split.values()), out)
        self.assertEqual(set(last), set(split), out)
        for chain, plan in last.items():
            self.assertNotIn(victim, plan, f"{chain} still plans {victim}:\n{out}")
            self.assertEqual(len(set(plan)), 3, out)
        self.assertIn("answer\nred\ngreen\norange\nstriped\n5\n", out)
        pids = [int(p) for p in re.findall(r"\(pid (\d+),", out)]
        self.assertEqual(len(pids), 5, out)  # ZooKeeper and four servers
        for pid in pids:
            wait_for(lambda pid=pid: not alive(pid), 15, f"pid {pid} to be gone")  # type: ignore[misc]
        self.assertEqual(leftovers(self.run_dir), [])
        for port in [self.zk_port, *range(self.base, self.base + 4)]:
            self.assertFalse(port_open(port), port)

    def test_foreground_stops_on_hangup_after_the_pipe_closed(self) -> None:
        """Without --tour it says what to try and stays up; with its output pipe closed
        (``make shards | tee log``, tee gone) a SIGHUP still stops every server and
        ZooKeeper, and it exits 0."""
        self.addCleanup(self.kill_leftovers)
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--servers", "3", "--shards", "2", "--replicas", "2",
             "--zk-port", str(self.zk_port), "--base-port", str(self.base),
             "--run-dir", str(self.run_dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env(), cwd=ROOT,
        )
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        assert proc.stdout is not None
        pending = bytearray()
        lines: list[str] = []
        while not lines or lines[-1] != "Ctrl-C stops everything.":
            lines.append(read_line(proc.stdout.fileno(), pending, 60))
        text = "\n".join(lines)
        self.assertIn(f"--zk 127.0.0.1:{self.zk_port} --cluster demo", text)
        self.assertIn(" cluster split demo ", text)
        self.assertIn(" cluster drain demo ", text)
        pids = [int(p) for p in re.findall(r"\(pid (\d+),", text)]
        self.assertEqual(len(pids), 4, text)  # ZooKeeper and three servers
        proc.stdout.close()
        proc.send_signal(signal.SIGHUP)
        self.assertEqual(proc.wait(60), 0)
        for pid in pids:
            wait_for(lambda pid=pid: not alive(pid), 15, f"pid {pid} to be gone")  # type: ignore[misc]
        self.assertEqual(leftovers(self.run_dir), [])
