"""``kvtwist-torture``: a Jepsen-style campaign against a real chain.

It starts a private ZooKeeper and ``--nodes`` kvtwist nodes, runs
``--clients`` concurrent clients (kvtwist.verify.workload, a separate
process) doing random get/put/del with unique values on a few keys, and
meanwhile a *nemesis* (kvtwist.verify.nemesis) injecting the ``--nemesis``
kinds of fault -- crashes, pauses, ZooKeeper outages, partitions through a
proxy (kvtwist.verify.proxy), faults in the middle of a join, whole-chain
crash-restarts, strangers speaking the chain protocol, two faults at once,
a member isolated with the clients on its side, ZooKeeper connections
flapping, wall-clock steps, torn writes of hostile values -- and starting
replacement nodes that join.

At the end it heals (ends every fault, tops the chain up to ``--nodes``),
then checks:

- liveness: a new write is acknowledged and visible at the tail within
  ``--liveness-timeout`` seconds, else the verdict is "stuck";
- the history, final reads at the tail included, is linearizable;
- no acknowledged write that a later acknowledged write did not overwrite
  is missing from the final state (across crash-restarts too);
- every member holds an identical copy (each node's own copy, read locally);
- no node exited by itself, was stranded or is running outside the chain,
  and no stranger was taken for a peer.

Each is one entry of ``checks()``: the exit status, ``ok`` and
``failed_checks`` in report.json, and the reasons a failing run prints all
come from that list.  Results go to ``--report DIR``: ``history.jsonl``,
``report.json`` (with ``fault_counts`` by kind and ``unavailable_max_s``, the
longest time without an acknowledged write), ``timeline.html``, and every
process's log (``nodes/``, ``zookeeper.log``, ``workload.log``,
``proxy.log``, ``stranger-*.log``).  Exit status 0 only when everything holds.

With ``--cluster`` the campaign is kvtwist.verify.shardtorture's: ``--servers``
cluster servers, ``--shards`` shards of R = ``--replicas``, cluster clients, and
a nemesis that also splits, moves and replaces (kvtwist.verify.shardnemesis).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvtwist import __version__
from kvtwist.procs import ZooKeeperProcess, kvnode_options, zookeeper_available
from kvtwist.verify.campaign import ending, report
from kvtwist.verify.campaign.clients import Clients
from kvtwist.verify.campaign.cluster import Cluster
from kvtwist.verify.campaign.log import Log
from kvtwist.verify.campaign.verdict import Check, Findings, checks
from kvtwist.verify.campaign.watch import Watch
from kvtwist.verify.faults.base import Node
from kvtwist.verify.nemesis import KINDS, Nemesis, parse_kinds
from kvtwist.verify.proxy import ProxyControl
from kvtwist.verify.shardnemesis import CLUSTER_KINDS, parse_cluster_kinds
from kvtwist.verify.shardtorture import ClusterCampaign
from kvtwist.verify.workload import BIG_MIN


class Campaign:
    """One campaign: the parts of kvtwist.verify.campaign, run in order.

    It is also the nemesis's ``World``: what the faults need of the cluster,
    the clients and the log, in one place.
    """

    def __init__(self, args: argparse.Namespace, kinds: list[str], options: frozenset[str]) -> None:
        self.args = args
        self.kinds = kinds
        self.options = options
        self.rng = random.Random(args.seed)
        # absolute: every node runs in its own directory, and its paths must still resolve
        self.report_dir = Path(args.report).resolve()
        self.session_timeout = float(args.session_timeout)
        self.keys = int(args.keys)
        self.seed = int(args.seed)
        self.history_path = self.report_dir / "history.jsonl"
        self.stranger_results: list[dict[str, Any]] = []
        self.log = Log(self.history_path, args.duration)
        self.cluster = Cluster(args, kinds, options, self.report_dir)
        self.clients = Clients(args, kinds, self.history_path, self.report_dir)
        self.watch = Watch(self.cluster, self.log, self.rng)
        self.nemesis = Nemesis(self, kinds, args.fault_interval)

    # -- what the nemesis needs (kvtwist.verify.faults.base.World) --------------------------

    @property
    def nodes(self) -> list[Node]:
        return self.cluster.nodes

    @property
    def zk(self) -> ZooKeeperProcess | None:
        return self.cluster.zk

    @property
    def proxy(self) -> ProxyControl | None:
        return self.cluster.proxy

    @property
    def sticky_clients(self) -> int:
        return self.clients.sticky

    def members(self) -> list[tuple[str, int]]:
        return self.cluster.members()

    def node_of(self, port: int) -> Node | None:
        return self.cluster.node_of(port)

    def start_node(self) -> Node:
        return self.cluster.start_node()

    def restart_node(self, node: Node) -> None:
        self.cluster.restart_node(node)

    def event(self, kind: str, label: str, **extra: Any) -> None:
        self.log.event(kind, label, **extra)

    def config(self) -> int:
        return self.cluster.config()

    def replace_later(self) -> None:
        self.watch.replace_later()

    # -- what the report needs (kvtwist.verify.campaign.report.Campaign) --------------------

    @property
    def unexpected_exits(self) -> list[str]:
        return self.watch.unexpected_exits

    @property
    def stranded(self) -> list[str]:
        return self.watch.stranded

    def report_extra(self) -> dict[str, Any]:
        return {}

    def target_nodes(self) -> int:
        return int(self.args.nodes)

    # -- running ---------------------------------------------------------------------------

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
            self.watch.check_exits()
            time.sleep(0.1)

    def show_progress(self, force: bool = False) -> None:
        self.log.show_progress(self.cluster.chain_text, lambda: self.nemesis.total, force)

    def tick(self, inject: bool) -> None:
        self.watch.check_exits()
        self.nemesis.tick(inject)
        self.watch.check_stranded(self.nemesis.active)
        self.watch.replace(self.args.nodes)

    def run(self) -> int:
        why = zookeeper_available()
        if why:
            self.log.say(f"kvtwist-torture: cannot start ZooKeeper: {why}")
            return 2
        report.prepare_report_dir(self.report_dir)
        if self.args.nodes < 3:
            self.log.say("warning: the nemesis needs --nodes >= 3 to fault a node and keep two")
        # our own ZooKeeper session reconnects through the ZooKeeper faults: not news
        logging.getLogger("kazoo").setLevel(logging.CRITICAL)
        try:
            self.cluster.start()
            self.say_settings()
            self.log.phase = "setup"
            self.cluster.start_chain(self.wait)
            if "join-fault" in self.kinds:
                self.cluster.fill()
            self.log.restart_clock()
            self.clients.start(self.cluster, self.log.epoch, self.wait)
            self.log.phase = "run"
            self.run_workload()
            self.log.phase = "heal"
            found = self.finish()
            return self.report(found, checks(found))
        except KeyboardInterrupt:
            self.log.say("interrupted")
            return 130
        except (TimeoutError, RuntimeError) as e:
            # e.g. a chain that never forms: as much a finding as a failed check
            self.log.say(f"kvtwist-torture: the campaign could not run: {e}")
            report.write_error(self, e)
            return 2
        finally:
            self.cleanup()

    def say_settings(self) -> None:
        a = self.args
        assert self.cluster.zk is not None
        self.log.say(
            f"kvtwist-torture: seed {a.seed}, {a.nodes} nodes, {a.clients} clients, "
            f"{a.duration:g}s, session timeout {a.session_timeout:g}s, "
            + (f"link timeout {a.link_timeout:g}s, " if a.link_timeout else "")
            + (f"{self.sticky_clients} of them sticky, " if self.sticky_clients else "")
            + f"nemesis {','.join(self.kinds) or 'none'}"
            + (", RESP workload" if a.workload == "resp" else "")
            + (f", big values {a.big_values:g} up to {a.max_big_value}" if a.big_values else "")
            + f", ZooKeeper at {self.cluster.zk.hosts}, report in {self.report_dir}"
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
            self.tick(inject=wall < stop_faults)
            self.show_progress()
            time.sleep(0.05)

    def finish(self) -> Findings:
        """Heal, probe, let the chain settle, read it; what the checks are made of."""
        ending.heal(self)
        live, probe_s, stuck_why = ending.probe(self)
        self.log.event("probe", f"liveness probe {'ok' if live else 'STUCK'} in {probe_s:.1f}s")
        is_settled, settle_s = ending.wait_settled(self)
        self.log.phase = "check"
        self.show_progress(force=True)
        finals = ending.final_reads(self) if is_settled else []
        copies = ending.node_copies(self)
        liveness = {"live": live, "seconds": round(probe_s, 2), "why": stuck_why}
        return ending.gather(self, is_settled, settle_s, finals, copies, liveness)

    def report(self, found: Findings, results: list[Check]) -> int:
        """Write report.json and the timeline; say PASS or FAIL; the exit status."""
        return report.write_report(self, found, results)

    def cleanup(self) -> None:
        self.log.progress.close()
        self.clients.stop()
        with contextlib.suppress(Exception):
            self.nemesis.heal()
        self.cluster.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="kvtwist-torture",
        description="Run clients against a real chain while a nemesis injects faults; "
        "check liveness, linearizability, durability and convergence.",
    )
    p.add_argument("--version", action="version", version=f"kvtwist-torture {__version__}")
    p.add_argument("--nodes", type=int, default=3, help="chain length to keep (default 3)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of workload")
    p.add_argument("--seed", type=int, default=0, help="seed for the workload and the nemesis")
    p.add_argument("--report", required=True, help="directory for the report and logs")
    p.add_argument(
        "--nemesis",
        default=None,
        metavar="KIND[,KIND...]",
        help=f"fault kinds ({', '.join(KINDS)}); default: every kind this node build supports",
    )
    p.add_argument(
        "--session-timeout",
        type=float,
        default=None,
        help="nodes' ZooKeeper session timeout (default 2; 4 with --cluster)",
    )
    p.add_argument(
        "--link-timeout",
        type=float,
        default=None,
        help="nodes' --link-timeout (default: the node's own, 3 s)",
    )
    p.add_argument("--keys", type=int, default=8, help="keys the clients share (default 8)")
    p.add_argument("--fault-interval", type=float, default=3.0, help="mean seconds between faults")
    p.add_argument("--think", type=float, default=0.02, help="mean client pause between ops")
    p.add_argument(
        "--big-values",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="share of puts writing 64 KiB up to --max-big-value bytes (default 0)",
    )
    p.add_argument(
        "--max-big-value",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="largest big value (default 1 MiB; the node takes up to its --max-value)",
    )
    p.add_argument("--deadline", type=float, default=8.0, help="client retry deadline")
    p.add_argument(
        "--op-timeout", type=float, default=12.0, help="give up on an operation (unknown)"
    )
    p.add_argument(
        "--workload",
        choices=("kv", "resp"),
        default="kv",
        help="kv: the native chain client (default); resp: Redis commands (GET, SET, SET NX,"
        " DEL, INCR) on the nodes' RESP ports, checked against a register and counter model",
    )
    p.add_argument("--settle-timeout", type=float, default=90.0, help="seconds to converge")
    p.add_argument(
        "--liveness-timeout",
        type=float,
        default=30.0,
        help="after healing, a new write must be visible at the tail within this (default 30)",
    )
    p.add_argument(
        "--check-timeout", type=float, default=600.0, help="linearizability search limit"
    )
    add_cluster_options(p)
    args = p.parse_args(argv)
    if args.session_timeout is None:
        args.session_timeout = 4.0 if args.cluster else 2.0
    if args.cluster:
        check_cluster_options(p, args)
    for name in ("nodes", "clients", "keys"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.duration <= 0 or args.session_timeout <= 0:
        p.error("--duration and --session-timeout must be positive")
    if args.link_timeout is not None and args.link_timeout <= 0:
        p.error("--link-timeout must be positive")
    if not 0 <= args.big_values <= 1:
        p.error("--big-values is a fraction between 0 and 1")
    if args.max_big_value < BIG_MIN:
        p.error(f"--max-big-value must be at least {BIG_MIN}")
    return args


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    """The options of ``--cluster`` (kvtwist.verify.shardtorture)."""
    cluster = p.add_argument_group(
        "a cluster of chains (--cluster)",
        "servers of one cluster, shards cut at the workload's keys, cluster clients; "
        f"nemesis kinds {', '.join(CLUSTER_KINDS)}",
    )
    cluster.add_argument("--cluster", action="store_true", help="torture a cluster of chains")
    cluster.add_argument("--servers", type=int, default=4, help="cluster servers (default 4)")
    cluster.add_argument("--shards", type=int, default=4, help="shards at the start (default 4)")
    cluster.add_argument("--replicas", type=int, default=3, help="members per chain (default 3)")
    cluster.add_argument(
        "--replace-after",
        type=float,
        default=8.0,
        help="servers' --replace-after: a server gone this long is replaced (default 8)",
    )


def check_cluster_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors of ``--cluster``; 16 keys unless told (room for splits between keys)."""
    if args.keys == p.get_default("keys"):
        args.keys = 16
    if args.servers < args.replicas or args.replicas < 1:
        p.error("--servers must be at least --replicas, and --replicas at least 1")
    if not 1 <= args.shards <= args.keys:
        p.error("--shards must be between 1 and --keys")
    if args.replace_after <= 0:
        p.error("--replace-after must be positive")
    args.nodes = args.servers


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kvtwist-torture``; returns the exit status."""
    args = parse_args(argv)
    options = kvnode_options()
    try:
        if args.cluster:
            kinds = parse_cluster_kinds(args.nemesis)
        else:
            kinds = parse_kinds(args.nemesis, options)
    except ValueError as e:
        print(f"kvtwist-torture: {e}", file=sys.stderr)
        return 2
    # SIGTERM (and a closed terminal) end a campaign as ^C does: its nodes,
    # clients, proxy and ZooKeeper are stopped, not left running
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)
    if args.cluster:
        return ClusterCampaign(args, kinds, options).run()
    return Campaign(args, kinds, options).run()


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
