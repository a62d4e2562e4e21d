"""A short fault-injection campaign against real nodes: the chain's promises, checked.

``kvtwist-torture`` runs as a subprocess (it starts its own ZooKeeper, nodes
and clients).  Longer campaigns are for people to run, e.g.::

    kvtwist-torture --nodes 3 --clients 8 --duration 600 --seed 7 --report /tmp/t7

On failure the report directory (history, timeline, every node's log) is kept
and named in the assertion message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from kvtwist.procs import node_env
from kvtwist.verify import read_history
from tests.zkserver import zookeeper_available

SEED = 2
DURATION = 30


class TortureCampaign(SynchronousTestCase):
    def test_short_campaign(self) -> None:
        """30 s of 4 clients on 3 nodes under kills and pauses: linearizable, nothing lost."""
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
                "--report",
                str(report),
            ],
            env=node_env(),
            capture_output=True,
            text=True,
            timeout=DURATION + 300,
        )
        where = f"seed {SEED}, report kept in {report}\n{run.stderr[-4000:]}"
        self.assertEqual(run.returncode, 0, where)
        result = json.loads((report / "report.json").read_text())
        self.assertTrue(result["linearizable"], where)
        self.assertEqual(result["lost_acknowledged_writes"], 0, where)
        self.assertTrue(result["nodes_identical"], where)
        self.assertEqual(result["seed"], SEED)
        self.assertGreater(result["operations"], 100)
        self.assertGreaterEqual(result["faults"], 3)
        ops = read_history(report / "history.jsonl")
        self.assertEqual(len([o for o in ops if o.process >= 0]), result["operations"])
        self.assertIn("<canvas", (report / "timeline.html").read_text())
        if keep:
            shutil.copytree(report, Path(keep) / "torture", dirs_exist_ok=True)
        shutil.rmtree(report, ignore_errors=True)
