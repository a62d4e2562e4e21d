"""A fault campaign against a real cluster of chains: ``kvtwist-torture --cluster``.

Four cluster servers on their own data directories serve four shards of three
members each; for about a minute the nemesis crashes, pauses and replaces
servers, pauses and restarts ZooKeeper, and splits and moves shards with
``kvtwist-admin``, while cluster clients write and read.  Longer campaigns are
for people to run, e.g.::

    kvtwist-torture --cluster --servers 5 --shards 8 --duration 300 --seed 7 --report /tmp/c7

On failure the report directory is kept and named in the assertion message.
(tests/test_shard_checks.py proves the cluster checks fail on a lost write,
divergent copies and the rest.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from kvtwist.cluster.shardmap import ShardMap
from kvtwist.procs import node_env
from kvtwist.verify.history import read_history
from tests.zkserver import zookeeper_available

SEED = 3
DURATION = 75


class ClusterTortureCampaign(SynchronousTestCase):
    def test_short_cluster_campaign(self) -> None:
        """75 s of 4 clients on 4 servers, 4 shards, R = 3, every cluster fault: PASS
        (live, linearizable, nothing lost, every chain's members alike, the map covering
        the key space with R members per chain); splits, moves and crash-restarts were
        injected and their admin commands completed."""
        why = zookeeper_available()
        if why:
            raise SkipTest(why)
        report = Path(tempfile.mkdtemp(prefix=f"kvtwist-torture-cluster-seed{SEED}-"))
        run = subprocess.run(
            [
                sys.executable, "-m", "kvtwist.verify.torture", "--cluster",
                "--servers", "4", "--shards", "4", "--replicas", "3", "--clients", "4",
                "--duration", str(DURATION), "--seed", str(SEED), "--report", str(report),
            ],
            env=node_env(),
            capture_output=True,
            text=True,
            timeout=DURATION + 400,
        )
        where = f"seed {SEED}, report kept in {report}\n{run.stderr[-4000:]}"
        self.assertEqual(run.returncode, 0, where)
        self.assertIn("PASS: seed", run.stderr, where)
        result = json.loads((report / "report.json").read_text())
        self.assertTrue(result["ok"], where)
        self.assertEqual(result["failed_checks"], {}, where)
        self.assertTrue(result["linearizable"], where)
        self.assertEqual(result["lost_acknowledged_writes"], 0, where)
        self.assertTrue(result["nodes_identical"], where)
        counts = result["fault_counts"]
        for kind in ("split", "move"):
            self.assertGreaterEqual(counts[kind], 1, f"no {kind}; {where}")
        # the rotation reaches some server fault in a short run, not always each kind
        server_faults = ("crash-restart", "pause", "short-pause", "replace")
        struck = sum(counts[k] for k in server_faults)
        self.assertGreaterEqual(struck, 1, f"no server fault; {where}")
        done = [a for a in result["admin"] if a["status"] == 0]
        self.assertTrue({"split", "move"} <= {a["kind"] for a in done}, where)
        m = ShardMap.decode(json.dumps(result["map"]).encode())
        self.assertGreater(len(m.shards), 4, where)  # the splits show in the final map
        for cid, members in result["chains"].items():
            self.assertEqual(len(members), 3, f"{cid}; {where}")
        ops = read_history(report / "history.jsonl")
        self.assertGreater(len([o for o in ops if o.process >= 0]), 100, where)
        shutil.rmtree(report, ignore_errors=True)
