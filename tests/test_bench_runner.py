"""benchmarks/run.py without running a benchmark: the floors' verdicts on made-up
results, the exit status that follows them, and where the report is written."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from benchmarks import floors, run


def side(throughput: float, p50: float) -> dict[str, Any]:
    return {
        "throughput": throughput,
        "runs": [throughput],
        "p50_us": p50,
        "p99_us": p50 * 3,
        "p999_us": p50 * 5,
        "max_us": p50 * 9,
        "errors": 0,
        "bench_cpu": 0.3,
    }


def comparison(reference: float, others: dict[str, float]) -> dict[str, Any]:
    """A comparison row as ``run.compare`` makes it; every side with a p50 of 100 µs."""
    out: dict[str, Any] = {"reference": side(reference, 100.0)}
    for name, t in others.items():
        out[name] = side(t, 100.0)
    out["ratios"] = {name: t / reference for name, t in others.items()}
    return out


def node_results(unpipelined: float, pipelined: float) -> dict[str, Any]:
    """Section 2 results where every node side runs at the given fraction of the reference
    (in-memory and ``fsync interval`` alike), with the reference's latency."""
    res = {}
    for setting, frac in (("32×1", unpipelined), ("4×32", pipelined), ("1×1", unpipelined)):
        res[f"GET {setting}"] = comparison(1000.0, {"in-memory": 1000.0 * frac})
        res[f"PUT {setting}"] = comparison(
            1000.0,
            {
                "in-memory": 1000.0 * frac,
                "fsync never": 1000.0 * frac,
                "fsync interval": 1000.0 * frac,
                "fsync always": 100.0,
            },
        )
    return {"node": res}


def fake_run(results: dict[str, Any], quick: bool = True, only: list[str] | None = None) -> Any:
    """What ``run.run_all`` returns, around made-up results."""
    settings = run.Settings.make(quick, only or ["node"])
    return {
        "settings": vars(settings),
        "machine": {
            "cpu": "test",
            "cores": 2,
            "memory": "1 GiB",
            "os": "test",
            "python": "3",
            "twisted": "0",
            "protobuf": "0",
            "commit": "0000000",
            "load_start": [0.0, 0.0, 0.0],
            "load_end": [0.0, 0.0, 0.0],
            "elapsed_s": 1.0,
        },
        "started": 0.0,
        "results": results,
        "commands": ["kvtwist-bench --target 127.0.0.1:12345 --workload get"],
        "runs": [],
    }


def verdicts_by_id(results: dict[str, Any]) -> dict[str, floors.Verdict]:
    return floors.by_id(floors.check(results))


class FloorTests(SynchronousTestCase):
    def test_every_floor_id_is_unique(self) -> None:
        """Section tables find their floor by id, so no two floors share one."""
        ids = [f.id for f in floors.FLOORS]
        self.assertEqual(len(ids), len(set(ids)))

    def test_node_ratios_met_and_missed(self) -> None:
        """0.5× at 32×1 and 0.2× at 4×32 are met exactly at the limit, missed just below."""
        v = verdicts_by_id(node_results(0.5, 0.2))
        for fid in (
            "node:GET 32×1:in-memory",
            "node:PUT 32×1:in-memory",
            "node:PUT 32×1:fsync interval",
            "node:GET 4×32:in-memory",
            "node:PUT 4×32:fsync interval",
        ):
            self.assertIs(v[fid].met, True, fid)
        v = verdicts_by_id(node_results(0.49, 0.19))
        for fid in ("node:GET 32×1:in-memory", "node:PUT 4×32:in-memory"):
            self.assertIs(v[fid].met, False, fid)
            self.assertEqual(v[fid].word, "MISSED")

    def test_fsync_always_has_no_floor(self) -> None:
        """``--fsync always`` is reported beside the others but no floor judges it."""
        self.assertNotIn("node:PUT 32×1:fsync always", verdicts_by_id(node_results(0.5, 0.2)))
        self.assertTrue(any(f.id == "node:PUT 32×1:fsync interval" for f in floors.FLOORS))

    def test_latency_floor_is_an_upper_bound(self) -> None:
        """At 1×1 the node's p50 may be at most 1.5× the reference's."""
        results = node_results(0.5, 0.2)
        row = results["node"]["GET 1×1"]
        row["in-memory"]["p50_us"] = row["reference"]["p50_us"] * 1.4
        self.assertIs(verdicts_by_id(results)["node-p50:GET 1×1:in-memory"].met, True)
        row["in-memory"]["p50_us"] = row["reference"]["p50_us"] * 1.6
        self.assertIs(verdicts_by_id(results)["node-p50:GET 1×1:in-memory"].met, False)

    def test_tree_floors(self) -> None:
        """Random get within 3× from small to large, random insert within 10 µs."""
        rows = [
            {"order": "random", "n": 1000, "insert_ns": 3000.0},
            {"order": "random", "n": 10**6, "insert_ns": 12000.0},
        ]
        tree = {"rows": rows, "ratios": {"random get": 2.9}, "small": 1000, "large": 10**6}
        v = verdicts_by_id({"tree": tree})
        self.assertIs(v["tree:random get"].met, True)
        self.assertIs(v["tree:random insert:us"].met, False)
        self.assertEqual(v["tree:random insert:us"].value, 12.0)
        self.assertIn("1,000,000", v["tree:random get"].label)

    def test_limit_taken_from_the_run(self) -> None:
        """Failover's limit is the run's session timeout plus one second."""
        results = {"failover": {"session_timeout_s": 2.0, "head": {"failover_s": 2.9}}}
        v = verdicts_by_id(results)
        self.assertEqual(v["failover:head"].limit, 3.0)
        self.assertIs(v["failover:head"].met, True)
        self.assertIsNone(v["failover:tail"].met)

    def test_not_measured_misses_nothing(self) -> None:
        """Floors of sections a run left out are neither met nor missed: exit status 0."""
        verdicts = floors.check({})
        self.assertTrue(all(v.met is None for v in verdicts))
        self.assertEqual(floors.exit_status(verdicts), 0)

    def test_exit_status_follows_the_floors(self) -> None:
        """0 when every floor measured is met, 1 as soon as one is missed."""
        self.assertEqual(floors.exit_status(floors.check(node_results(0.6, 0.3))), 0)
        self.assertEqual(floors.exit_status(floors.check(node_results(0.6, 0.1))), 1)

    def test_terminal_table(self) -> None:
        """The printed table names each floor with its verdict."""
        lines = floors.terminal(floors.check(node_results(0.6, 0.1)))
        self.assertTrue(any(line.split()[0] == "MISSED" and "4×32" in line for line in lines))
        self.assertTrue(any(line.split()[0] == "met" and "32×1" in line for line in lines))


class MainTests(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)
        self.published = self.tmp / "docs" / "performance.md"
        self.patch(run, "PUBLISHED", self.published)
        self.notes = self.tmp / "notes.md"
        self.notes.write_text("## Notes\n\nkept across runs\n")

    def main(self, results: dict[str, Any], *args: str) -> int:
        """``run.main`` with made-up results in place of the benchmarks."""
        ran: list[run.Settings] = []

        def run_all(s: run.Settings) -> Any:
            ran.append(s)
            return fake_run(results, s.quick, s.only)

        self.patch(run, "run_all", run_all)
        out = self.tmp / "out"
        status = run.main(["--out-dir", str(out), "--notes", str(self.notes), *args])
        self.assertEqual(len(ran), 1)
        return status

    def test_quick_exit_status_follows_the_floors(self) -> None:
        """``--quick`` exits 1 when a floor is missed and 0 when all are met."""
        self.assertEqual(self.main(node_results(0.1, 0.1), "--quick", "--only", "node"), 1)
        self.assertEqual(self.main(node_results(0.6, 0.3), "--quick", "--only", "node"), 0)

    def test_report_goes_to_the_output_directory_only(self) -> None:
        """Without --publish the report and results.json go to --out-dir, docs untouched."""
        self.main(node_results(0.6, 0.3), "--quick", "--only", "node")
        report = (self.tmp / "out" / "performance.md").read_text()
        self.assertIn("## Floors", report)
        self.assertIn("a quick run", report)
        self.assertIn("kept across runs", report)
        self.assertIn("--target 127.0.0.1:PORT", report)
        saved = json.loads((self.tmp / "out" / "results.json").read_text())
        self.assertTrue(all(f["met"] in (True, None) for f in saved["floors"]))
        self.assertFalse(self.published.exists())

    def test_publish_refused_for_a_quick_run(self) -> None:
        """--publish with --quick is a usage error and writes nothing."""
        self.patch(run, "run_all", lambda s: self.fail("ran"))
        with self.assertRaises(SystemExit) as e:
            run.main(["--quick", "--publish", "--out-dir", str(self.tmp / "out")])
        self.assertEqual(e.exception.code, 2)
        self.assertFalse(self.published.exists())
        self.assertFalse((self.tmp / "out").exists())

    def test_publish_writes_the_docs(self) -> None:
        """A full run of every benchmark with --publish also writes the published report."""
        self.main(node_results(0.6, 0.3), "--publish")
        self.assertEqual(
            self.published.read_text(), (self.tmp / "out" / "performance.md").read_text()
        )

    def test_from_json_rerenders_without_running(self) -> None:
        """--from-json renders a saved results.json again, with the same verdicts."""
        self.main(node_results(0.1, 0.1), "--quick", "--only", "node")
        saved = self.tmp / "saved.json"
        (self.tmp / "out" / "results.json").rename(saved)
        self.patch(run, "run_all", lambda s: self.fail("ran"))
        status = run.main(
            [
                "--from-json",
                str(saved),
                "--out-dir",
                str(self.tmp / "again"),
                "--notes",
                str(self.notes),
            ]
        )
        self.assertEqual(status, 1)
        self.assertTrue((self.tmp / "again" / "performance.md").exists())
        self.assertFalse(self.published.exists())


class RedisOutputTests(SynchronousTestCase):
    def test_csv(self) -> None:
        """redis-benchmark --csv: requests per second and p50 (ms → µs) for each test."""
        text = (
            '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",'
            '"p95_latency_ms","p99_latency_ms","max_latency_ms"\n'
            '"SET","696864.12","0.170","0.048","0.159","0.239","0.783","3.079"\n'
            '"GET","803212.88","0.148","0.032","0.143","0.199","0.287","4.423"\n'
        )
        got = run.parse_redis_csv(text)
        self.assertEqual(set(got), {"GET", "SET"})
        self.assertAlmostEqual(got["GET"]["throughput"], 803212.88)
        self.assertAlmostEqual(got["SET"]["p50_us"], 159.0)

    def test_not_installed_row(self) -> None:
        """Without Redis the report still has the context row, saying it is not installed."""
        data = fake_run({"redis": {"installed": False}})
        text, _ = run.render(data, "")
        self.assertIn("not installed", text)


class BreakdownTests(SynchronousTestCase):
    def test_a_missing_piece_is_named_and_the_rest_measured(self) -> None:
        """A piece whose code is gone becomes a row with its reason; the others still run."""
        from benchmarks import breakdown
        from kvtwist import wire

        chosen = [p for p in breakdown.PIECES if p[0] in ("frame parse", "protobuf decode")]
        self.patch(breakdown, "PIECES", chosen)
        self.patch(breakdown, "MIN_REQUESTS", 64)
        self.patch(breakdown, "REPEATS", 1)
        self.patch(wire, "FrameDecoder", None)
        logged: list[str] = []
        data = breakdown.measure_all(100, log=logged.append)
        parse = [p for p in data["pieces"] if p["name"] == "frame parse"]
        decode = [p for p in data["pieces"] if p["name"] == "protobuf decode"]
        self.assertEqual(len(parse), len(breakdown.OPS) * len(breakdown.BATCHES))
        for p in parse:
            self.assertIsNone(p["us"])
            self.assertIn("kvtwist.wire.FrameDecoder.feed", p["error"])
        for p in decode:
            self.assertIsNone(p["error"])
            self.assertGreater(p["us"], 0)
        self.assertEqual(data["sums"]["GET 1"]["missing"], ["frame parse"])
        self.assertTrue(any("frame parse" in line for line in logged))
