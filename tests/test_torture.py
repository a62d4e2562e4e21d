"""A fault-injection campaign against real nodes: the chain's promises, checked.

``kvtwist-torture`` runs as a subprocess (it starts its own ZooKeeper, proxy,
nodes and clients) for a minute and a half on a fixed seed, with every nemesis
kind.  Longer campaigns are for people to run, e.g.::

    kvtwist-torture --nodes 3 --clients 8 --duration 600 --seed 7 --report /tmp/t7

On failure the report directory (history, timeline, every process's log) is
kept and named in the assertion message.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from kvtwist.procs import node_env, wait_for
from kvtwist.verify import read_history
from kvtwist.verify.nemesis import KINDS
from tests.zkserver import zookeeper_available

SEED = 2
#: Long enough for every kind to come at least once (they rotate).
DURATION = 120
#: Every kind: the durable node's crash-restarts, the stranger at keyed links, and the
#: partitions, clock steps and hostile torn writes that found issue 17's bugs.
NEMESIS = ",".join(KINDS)


class TortureCampaign(SynchronousTestCase):
    def test_short_campaign(self) -> None:
        """Two minutes of 4 clients on 3 nodes under every kind of fault, some big
        values: live, linearizable, nothing lost, copies identical, every kind injected,
        no stranger heard, nodes started with their own data directory and the key."""
        why = zookeeper_available()
        if why:
            raise SkipTest(why)
        report = Path(tempfile.mkdtemp(prefix=f"kvtwist-torture-seed{SEED}-"))
        keep = os.environ.get("KVTWIST_KEEP_LOGS")
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "kvtwist.verify.torture",
                "--nodes",
                "3",
                "--clients",
                "4",
                "--duration",
                str(DURATION),
                "--seed",
                str(SEED),
                "--session-timeout",
                "2",
                "--nemesis",
                NEMESIS,
                "--big-values",
                "0.05",
                "--max-big-value",
                str(256 * 1024),
                "--report",
                str(report),
            ],
            env=node_env(),
            capture_output=True,
            text=True,
            timeout=DURATION + 400,
        )
        where = f"seed {SEED}, report kept in {report}\n{run.stderr[-4000:]}"
        self.assertEqual(run.returncode, 0, where)
        result = json.loads((report / "report.json").read_text())
        self.assertTrue(result["linearizable"], where)
        self.assertEqual(result["lost_acknowledged_writes"], 0, where)
        self.assertTrue(result["nodes_identical"], where)
        self.assertEqual(result["seed"], SEED)
        self.assertGreater(result["operations"], 100)
        self.assertTrue(result["live"], where)
        self.assertEqual(set(result["fault_counts"]), set(NEMESIS.split(",")), where)
        for kind, count in result["fault_counts"].items():
            self.assertGreaterEqual(count, 1, f"{kind} never injected; {where}")
        self.assertIn("unavailable_max_s", result)
        self.assertEqual(result["stranger_accepted"], 0, where)
        self.assertEqual(result["node_options"], ["cluster-key-file", "data-dir"], where)
        self.assertEqual(result["running_outside_chain"], [], where)
        self.assertEqual(result["stranded_nodes"], [], where)
        self.assertTrue(any("#" in (o.value or "") for o in read_history(report / "history.jsonl")))
        ops = read_history(report / "history.jsonl")
        self.assertEqual(len([o for o in ops if o.process >= 0]), result["operations"])
        self.assertIn("<canvas", (report / "timeline.html").read_text())
        if keep:
            shutil.copytree(report, Path(keep) / "torture", dirs_exist_ok=True)
        shutil.rmtree(report, ignore_errors=True)


class TortureRespCampaign(SynchronousTestCase):
    def test_resp_workload(self) -> None:
        """Clients speaking RESP (GET, SET, SET NX, DEL, INCR) to the nodes' RESP ports
        while nodes are killed, paused and crash-restarted: linearizable as registers and
        counters, nothing acknowledged lost, copies identical."""
        why = zookeeper_available()
        if why:
            raise SkipTest(why)
        report = Path(tempfile.mkdtemp(prefix="kvtwist-torture-resp-"))
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "kvtwist.verify.torture",
                "--nodes",
                "3",
                "--clients",
                "4",
                "--duration",
                "30",
                "--seed",
                "5",
                "--session-timeout",
                "2",
                "--nemesis",
                "kill,pause,crash-restart",
                "--workload",
                "resp",
                "--report",
                str(report),
            ],
            env=node_env(),
            capture_output=True,
            text=True,
            timeout=400,
        )
        where = f"report kept in {report}\n{run.stderr[-4000:]}"
        self.assertEqual(run.returncode, 0, where)
        result = json.loads((report / "report.json").read_text())
        self.assertTrue(result["linearizable"], where)
        self.assertEqual(result["lost_acknowledged_writes"], 0, where)
        self.assertTrue(result["nodes_identical"], where)
        ops = read_history(report / "history.jsonl")
        kinds = {o.op for o in ops if o.outcome == "ok"}
        self.assertLessEqual({"incr", "setnx", "setnx_refused", "get", "put"}, kinds, where)
        counted = [o for o in ops if o.op == "incr" and o.outcome == "ok"]
        self.assertGreater(len(counted), 20, where)
        shutil.rmtree(report, ignore_errors=True)


def processes_naming(text: str) -> list[int]:
    """Pids of the processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


class TortureInterrupted(SynchronousTestCase):
    def test_sigterm_stops_everything_it_started(self) -> None:
        """SIGTERM ends a campaign as ^C does: no node or client process of it is left."""
        why = zookeeper_available()
        if why:
            raise SkipTest(why)
        report = Path(tempfile.mkdtemp(prefix="kvtwist-torture-term-"))
        self.addCleanup(shutil.rmtree, report, True)
        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvtwist.verify.torture",
                "--duration",
                "60",
                "--nemesis",
                "kill",
                "--report",
                str(report),
            ],
            env=node_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(lambda: run.poll() is None and run.kill())
        wait_for(lambda: (report / "history.jsonl").exists(), 60, "the campaign's clients")
        self.assertTrue(processes_naming(str(report)), "nothing of the campaign is running")
        run.send_signal(signal.SIGTERM)
        self.assertEqual(run.wait(60), 130)
        self.assertEqual(processes_naming(str(report)), [])
