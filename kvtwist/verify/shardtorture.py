"""``kvtwist-torture --cluster``: the campaign against a cluster of chains.

A private ZooKeeper, a cluster made by ``kvtwist-admin cluster create`` with
``--shards`` shards cut at the workload's keys (so they spread over all of
them), ``--servers`` cluster servers on their own data directories (so a kill
and a restart is a crash-restart) with a short ``--replace-after``, and the
workload's clients as cluster clients.  The nemesis
(kvtwist.verify.shardnemesis) crashes, pauses and replaces servers, pauses and
restarts ZooKeeper, and splits and moves shards with ``kvtwist-admin``.

At the end it heals, writes to every chain (liveness), waits until every chain
lists exactly its planned R members with identical copies, reads every key at
its chain's tail, and checks (kvtwist.verify.campaign.shardend): linearizable
per key (the checker's per-key verdicts compose across shards, each key living
in one shard at a time), no acknowledged write lost, every chain's members
alike, the map covering the key space once, R members per chain, nothing
pending, every server kept down replaced.  The report is the chain campaign's
(report.json, timeline.html, history.jsonl, every server's log under nodes/),
with ``map``, ``chains`` and ``admin`` besides.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvtwist.procs import ZooKeeperProcess, zookeeper_available
from kvtwist.verify.campaign import report, shardend
from kvtwist.verify.campaign.clients import Clients
from kvtwist.verify.campaign.log import Log
from kvtwist.verify.campaign.shardend import ClusterFindings
from kvtwist.verify.campaign.shards import NAME, ShardCluster
from kvtwist.verify.campaign.verdict import Findings
from kvtwist.verify.faults.base import Node
from kvtwist.verify.history import dumps, read_history
from kvtwist.verify.linearizability import check
from kvtwist.verify.proxy import ProxyControl
from kvtwist.verify.shardnemesis import ClusterNemesis


class ClusterCampaign:
    """One cluster campaign; also the nemesis's ``World`` (kvtwist.verify.faults.base)."""

    def __init__(self, args: argparse.Namespace, kinds: list[str], options: frozenset[str]):
        self.args = args
        self.kinds = kinds
        self.options = options
        self.rng = random.Random(args.seed)
        self.report_dir = Path(args.report).resolve()
        self.session_timeout = float(args.session_timeout)
        self.keys = int(args.keys)
        self.seed = int(args.seed)
        self.history_path = self.report_dir / "history.jsonl"
        self.stranger_results: list[dict[str, Any]] = []
        self.log = Log(self.history_path, args.duration)
        self.cluster = ShardCluster(args, options, self.report_dir)
        self.clients = Clients(args, [], self.history_path, self.report_dir)
        self.nemesis = ClusterNemesis(self, self.cluster, kinds, args.fault_interval)
        self.exits: list[str] = []
        self.extra: dict[str, Any] = {}

    # -- the World and the report's Campaign --------------------------------------------------

    @property
    def nodes(self) -> list[Node]:
        return self.cluster.nodes

    @property
    def zk(self) -> ZooKeeperProcess | None:
        return self.cluster.zk

    @property
    def proxy(self) -> ProxyControl | None:
        return None

    @property
    def sticky_clients(self) -> int:
        return 0

    @property
    def unexpected_exits(self) -> list[str]:
        return self.exits

    @property
    def stranded(self) -> list[str]:
        return []

    def members(self) -> list[tuple[str, int]]:
        return [(n.label, n.port) for n in self.nodes if n.state == "running"]

    def node_of(self, port: int) -> Node | None:
        return self.cluster.node_of(port)

    def start_node(self) -> Node:
        raise RuntimeError("a cluster campaign restarts its servers; it starts no new ones")

    def restart_node(self, node: Node) -> None:
        self.cluster.restart_node(node)

    def event(self, kind: str, label: str, **extra: Any) -> None:
        self.log.event(kind, label, **extra)

    def config(self) -> int:
        m = self.nemesis.last.map
        return m.version if m is not None else 0

    def replace_later(self) -> None:
        """Servers come back by restart (or by ``replace``), never by a new one."""

    def target_nodes(self) -> int:
        return int(self.args.servers)

    def report_extra(self) -> dict[str, Any]:
        return self.extra

    # -- running ------------------------------------------------------------------------------

    def check_exits(self) -> None:
        """A server that ends without our signal crashed: a finding; it is restarted."""
        for n in self.nodes:
            if n.state in ("running", "paused") and n.proc.exited is not None:
                self.exits.append(f"{n.label} (port {n.port}) exit {n.proc.exited}")
                self.log.event("exit", f"{n.label} EXITED ({n.proc.exited}); restart it")
                n.state = "running"
                self.cluster.restart_node(n)

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
            self.check_exits()
            time.sleep(0.2)

    def show_progress(self, force: bool = False) -> None:
        self.log.show_progress(self.cluster.chain_text, lambda: self.nemesis.total, force)

    def run(self) -> int:
        why = zookeeper_available()
        if why:
            self.log.say(f"kvtwist-torture: cannot start ZooKeeper: {why}")
            return 2
        report.prepare_report_dir(self.report_dir)
        logging.getLogger("kazoo").setLevel(logging.CRITICAL)
        try:
            self.cluster.start()
            self.say_settings()
            self.log.phase = "setup"
            self.cluster.create()
            self.cluster.start_servers(self.wait)
            self.log.restart_clock()
            assert self.zk is not None
            self.clients.start_cluster(NAME, self.zk.hosts, self.log.epoch, self.wait)
            self.log.phase = "run"
            self.run_workload()
            self.log.phase = "heal"
            found, more = self.finish()
            results = shardend.cluster_checks(found, more)
            return report.write_report(self, found, results)
        except KeyboardInterrupt:
            self.log.say("interrupted")
            return 130
        except (TimeoutError, RuntimeError) as e:
            self.log.say(f"kvtwist-torture: the campaign could not run: {e}")
            error = {"ok": False, "error": str(e), "phase": self.log.phase, "seed": self.seed,
                     "events": self.log.events, "unexpected_node_exits": self.exits}
            (self.report_dir / "report.json").write_text(json.dumps(error, indent=2) + "\n")
            return 2
        finally:
            self.cleanup()

    def say_settings(self) -> None:
        a = self.args
        assert self.zk is not None
        self.log.say(
            f"kvtwist-torture --cluster: seed {a.seed}, {a.servers} servers, {a.shards} shards, "
            f"R = {a.replicas}, {a.keys} keys, {a.clients} clients, {a.duration:g}s, "
            f"session timeout {a.session_timeout:g}s, replace after {a.replace_after:g}s, "
            f"nemesis {','.join(self.kinds) or 'none'}, ZooKeeper at {self.zk.hosts}, "
            f"report in {self.report_dir}"
        )

    def run_workload(self) -> None:
        """Faults until ``--duration`` is over, then until the clients are done."""
        stop_faults = time.monotonic() + self.args.duration
        give_up = stop_faults + self.args.op_timeout + 30
        self.nemesis.next_fault = time.monotonic() + self.rng.uniform(0.5, 1.5)
        while any(w.poll() is None for w in self.clients.running()):
            wall = time.monotonic()
            if wall > give_up:
                self.log.say("the workload overran its time; stopping it")
                for w in self.clients.running():
                    w.terminate()
                    w.wait(30)
                break
            self.check_exits()
            self.nemesis.tick(inject=wall < stop_faults)
            self.show_progress()
            time.sleep(0.05)

    def finish(self) -> tuple[Findings, ClusterFindings]:
        """Heal, probe every chain, let the cluster settle, read it."""
        shardend.heal(self)
        live, probe_s, stuck_why = shardend.probe(self)
        self.log.event("probe", f"liveness probe {'ok' if live else 'STUCK'} in {probe_s:.1f}s")
        is_settled, settle_s, s, copies = shardend.wait_settled(self)
        self.log.phase = "check"
        self.show_progress(force=True)
        finals = shardend.final_reads(self) if is_settled else []
        r = s.requests
        pending = [] if r is None else [f"move of {m.chain} to {m.target}" for m in r.moves]
        pending += [] if r is None else [f"split of {sp.chain} at {sp.at!r}" for sp in r.splits]
        more = ClusterFindings(
            replicas=int(self.args.replicas),
            settled=is_settled,
            map=s.map,
            map_error=s.map_error,
            listed=s.listed,
            copies=copies,
            pending=pending,
            not_replaced=list(self.nemesis.not_replaced),
        )
        liveness = {"live": live, "seconds": round(probe_s, 2), "why": stuck_why}
        return self.gather(is_settled, settle_s, finals, more, liveness), more

    def gather(
        self,
        is_settled: bool,
        settle_s: float,
        finals: list[Any],
        more: ClusterFindings,
        liveness: dict[str, Any],
    ) -> Findings:
        """The history checked, the final state taken from each shard's tail."""
        if self.log.tty:
            sys.stderr.write("\n")
        self.log.progress.update()
        client_ops = read_history(self.history_path) if self.history_path.exists() else []
        with open(self.history_path, "a", encoding="utf-8") as f:
            for op in finals:
                f.write(dumps(op) + "\n")
        started = time.monotonic()
        result = check(client_ops + finals, timeout=self.args.check_timeout)
        check_s = time.monotonic() - started
        statuses = [w.returncode for w in self.clients.running()]
        self.extra = {
            "cluster": {"servers": self.args.servers, "shards": self.args.shards,
                        "replicas": self.args.replicas, "replace_after": self.args.replace_after},
            "map": json.loads(more.map.encode()) if more.map is not None else None,
            "map_error": more.map_error,
            "chains": more.listed,
            "admin": self.nemesis.admin_results,
        }
        registered = self.cluster.snapshot().live
        return Findings(
            nodes=int(self.args.replicas),
            keys=self.keys,
            client_ops=client_ops,
            finals=finals,
            result=result,
            check_s=check_s,
            liveness=liveness,
            settled=is_settled,
            settle_s=settle_s,
            copies=shardend.flat_copies(more),
            lost=shardend.lost_in(more, self.keys, client_ops),
            outside=[n.label for n in self.nodes if n.state == "running"
                     and n.label not in registered],
            stranded=[],
            unexpected_exits=list(self.exits),
            stranger_accepted=0,
            workload_status=next((s for s in statuses if s != 0), None if not statuses else 0),
        )

    def cleanup(self) -> None:
        self.log.progress.close()
        self.clients.stop()
        with contextlib.suppress(Exception):
            self.nemesis.heal()
        self.cluster.stop()
