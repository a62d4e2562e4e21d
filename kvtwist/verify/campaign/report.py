"""What a campaign leaves in its report directory: report.json (every verdict from
the checks, the measures, the settings, the events), the timeline, and the summary
line it prints."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kvtwist.verify.campaign.verdict import (
    IDENTICAL,
    Check,
    Findings,
    exit_status,
    failures,
    passed,
)
from kvtwist.verify.history import Op
from kvtwist.verify.timeline import write_timeline
from kvtwist.verify.workload import key_text, value_text

if TYPE_CHECKING:
    from kvtwist.verify.campaign.log import Log
    from kvtwist.verify.faults.base import Node
    from kvtwist.verify.nemesis import Nemesis


class Campaign(Protocol):
    """What the report reads of a campaign: a chain's (kvtwist.verify.torture) or a
    cluster's (kvtwist.verify.shardtorture)."""

    args: argparse.Namespace
    kinds: list[str]
    options: frozenset[str]
    report_dir: Path
    log: Log
    stranger_results: list[dict[str, Any]]

    @property
    def nemesis(self) -> Nemesis: ...
    @property
    def nodes(self) -> list[Node]: ...
    @property
    def sticky_clients(self) -> int: ...
    @property
    def unexpected_exits(self) -> list[str]: ...
    @property
    def stranded(self) -> list[str]: ...

    def report_extra(self) -> dict[str, Any]:
        """Fields of report.json only this kind of campaign has."""
        ...

#: What a campaign writes at the top of its report directory (besides stranger-*.log).
FILES = (
    "history.jsonl",
    "report.json",
    "timeline.html",
    "workload.log",
    "workload-sticky.log",
    "proxy.log",
    "zookeeper.log",
    "cluster.key",
)


def prepare_report_dir(report_dir: Path) -> None:
    """Remove what an earlier campaign left there (only the files a campaign writes)."""
    if report_dir.exists():
        paths = [report_dir / n for n in FILES]
        for path in [*paths, *report_dir.glob("stranger-*.log")]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        shutil.rmtree(report_dir / "nodes", ignore_errors=True)
    report_dir.mkdir(parents=True, exist_ok=True)


def write_report(c: Campaign, found: Findings, results: list[Check]) -> int:
    """Write report.json and the timeline, say PASS or FAIL with every failed check's reason."""
    ok = passed(results)
    r = report_fields(c, found, results)
    (c.report_dir / "report.json").write_text(json.dumps(r, indent=2) + "\n")
    summary = {
        k: r[k]
        for k in (
            "ok",
            "live",
            "linearizable",
            "operations",
            "faults",
            "lost_acknowledged_writes",
            "nodes_identical",
            "unavailable_max_s",
            "seed",
            "verdict",
        )
    }
    summary["faults by kind"] = ", ".join(f"{k} x{v}" for k, v in r["fault_counts"].items())
    summary["fault coverage"] = ", ".join(f"{k} x{v}" for k, v in r["fault_coverage"].items())
    write_timeline(
        c.report_dir / "timeline.html",
        found.client_ops + found.finals,
        c.log.events,
        summary,
        timeline_details(r),
        title=f"kvtwist torture, seed {c.args.seed}",
    )
    outcomes = r["outcomes"]
    c.log.say(
        f"{'PASS' if ok else 'FAIL'}: seed {r['seed']}: {r['operations']} operations "
        f"(ok {outcomes['ok']}, fail {outcomes['fail']}, unknown {outcomes['unknown']}), "
        f"{r['faults']} faults ({summary['faults by kind']}), {r['verdict']}; "
        f"lost acknowledged writes {r['lost_acknowledged_writes']}; "
        f"nodes identical {r['nodes_identical']}; "
        f"longest time without a write {r['unavailable_max_s']:.1f}s "
        f"at {r['unavailable_from']:.1f}s"
        + "".join(f"\n  {why}" for why in failures(results))
        + f"\n  report: {c.report_dir / 'report.json'}"
    )
    return exit_status(results)


def report_fields(c: Campaign, found: Findings, results: list[Check]) -> dict[str, Any]:
    """report.json: the verdicts (from ``results``), the measures, the settings, the events."""
    a = c.args
    result, copies, client_ops = found.result, found.copies, found.client_ops
    outcomes = {o: sum(1 for op in client_ops if op.outcome == o) for o in ("ok", "fail")}
    outcomes["unknown"] = sum(1 for op in client_ops if op.outcome == "unknown")
    stall, stall_at = longest_stall(client_ops)
    unavailable, unavailable_at = longest_stall(client_ops, writes_only=True)
    verdict = result.verdict() if found.live else f"stuck: {found.liveness['why']}"
    identical = next(c.passed for c in results if c.name == IDENTICAL)
    report: dict[str, Any] = {
        "ok": passed(results),
        "verdict": verdict,
        "live": found.live,
        "liveness": found.liveness,
        "linearizable": result.linearizable,
        "check_decided": result.decided,
        "operations": len(client_ops),
        "faults": c.nemesis.total,
        "fault_counts": {k: c.nemesis.counts.get(k, 0) for k in c.kinds},
        "nemesis": c.kinds,
        "lost_acknowledged_writes": len(found.lost),
        "nodes_identical": identical,
        "seed": a.seed,
        "settled": found.settled,
        "settle_seconds": round(found.settle_s, 2),
        "linearizability": result.verdict(),
        "check_seconds": round(found.check_s, 3),
        "outcomes": outcomes,
        "unavailable_max_s": round(unavailable, 3),
        "unavailable_from": round(unavailable_at, 3),
        "longest_stall_seconds": round(stall, 3),
        "longest_stall_from": round(stall_at, 3),
        "final_reads": len(found.finals),
        "unexpected_node_exits": found.unexpected_exits,
        "stranger_accepted": found.stranger_accepted,
        "workload_exit_status": found.workload_status,
        "fault_coverage": dict(sorted(c.nemesis.coverage.items())),
        "nodes": a.nodes,
        "clients": a.clients,
        "keys": a.keys,
        "big_values": a.big_values,
        "max_big_value": a.max_big_value,
        "duration": a.duration,
        "session_timeout": a.session_timeout,
        "link_timeout": a.link_timeout,
        "sticky_clients": c.sticky_clients,
        "node_options": sorted(o for o in ("data-dir", "cluster-key-file") if o in c.options),
        "nodes_started": len(c.nodes),
        "final_members": list(copies),
        "running_outside_chain": found.outside,
        "stranded_nodes": found.stranded,
        "time_zero_utc": datetime.fromtimestamp(c.log.epoch_wall, UTC).isoformat(),
        "final_state_from": list(copies)[-1] if copies else None,
        "failed_checks": {c.name: c.why for c in results if not c.passed},
        "events": c.log.events,
    }
    if not result.linearizable:
        report["nonlinearizable"] = {"key": result.bad_key, **result.info}
    if found.lost:
        report["lost"] = [w.to_dict() for w in found.lost]
    if found.stranger_accepted:
        report["stranger_heard"] = [
            t for r in c.stranger_results for t in r["attempts"] if t["verdict"] == "accepted"
        ]
    if not identical:
        report["copies"] = {
            label: None if c is None else {key_text(k): value_text(v)[:80] for k, v in c}
            for label, c in copies.items()
        }
    report.update(c.report_extra())
    return report


def write_error(c: Campaign, error: Exception) -> None:
    """report.json of a campaign that could not run (e.g. a chain that never formed)."""
    report = {
        "ok": False,
        "error": str(error),
        "phase": c.log.phase,
        "seed": c.args.seed,
        "events": c.log.events,
        "unexpected_node_exits": c.unexpected_exits,
        "stranded_nodes": c.stranded,
    }
    (c.report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def timeline_details(report: dict[str, Any]) -> str:
    """What the timeline page shows under its summary: the evidence of the gravest failures."""
    details = "" if report["live"] else f"liveness: {report['verdict']}\n"
    if "nonlinearizable" in report:
        details += json.dumps(report["nonlinearizable"], indent=2)
    if "lost" in report:
        details += "\nlost acknowledged writes:\n" + json.dumps(report["lost"], indent=2)
    if "stranger_heard" in report:
        details += "\nstranger heard:\n" + json.dumps(report["stranger_heard"], indent=2)
    return details


def longest_stall(ops: list[Op], writes_only: bool = False) -> tuple[float, float]:
    """The longest time without a successful operation (or write), and when it began.

    Not a verdict (availability may dip during a fault) but a measure: a chain
    that stays unavailable long after a fault is wedged.
    """
    if not ops:
        return 0.0, 0.0
    done = [op for op in ops if op.outcome == "ok" and op.complete is not None]
    if writes_only:
        done = [op for op in done if op.op != "get"]
    times = sorted(op.complete for op in done if op.complete is not None)
    start = min(op.invoke for op in ops)
    end = max(max(op.invoke for op in ops), times[-1] if times else start)
    best, at, previous = 0.0, start, start
    for t in [*times, end]:
        if t - previous > best:
            best, at = t - previous, previous
        previous = t
    return best, at
