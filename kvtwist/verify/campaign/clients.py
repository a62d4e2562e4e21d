"""The campaign's clients: workload processes (kvtwist.verify.workload) appending to
one history, and with ``isolate`` a third of them sticky (readers whose ZooKeeper
session passes a proxy route of their own, which the nemesis cuts)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from kvtwist.procs import node_env
from kvtwist.verify.campaign.cluster import ROOT, Cluster, Wait
from kvtwist.verify.faults.base import STICKY, STICKY_ZK
from kvtwist.verify.proxy import ProxyControl


class Clients:
    """Every workload process started, and the one or two the campaign waits for."""

    def __init__(
        self, args: argparse.Namespace, kinds: list[str], history_path: Path, report_dir: Path
    ) -> None:
        self.args = args
        self.history_path = history_path
        self.report_dir = report_dir
        # with isolate: a third of the clients, whose ZooKeeper connection the nemesis can cut
        self.sticky = int(args.clients) // 3 if "isolate" in kinds else 0
        self.workload: subprocess.Popen[bytes] | None = None
        self.sticky_workload: subprocess.Popen[bytes] | None = None
        # every workload process started, ready or not yet: stop() stops each
        self.launched: list[subprocess.Popen[bytes]] = []
        #: with --cluster: the cluster's name, and the clients are its cluster clients
        self.cluster_name: str | None = None

    def start_cluster(self, name: str, zk_hosts: str, epoch: float, wait: Wait) -> None:
        """Every client a cluster client of cluster ``name``."""
        self.cluster_name = name
        self.workload = self.launch(self.args.clients, 0, zk_hosts, "workload.log", epoch, wait)

    def start(self, cluster: Cluster, epoch: float, wait: Wait) -> None:
        """Every client, connected; their history's times count from ``epoch``."""
        assert cluster.zk is not None
        clients = self.args.clients - self.sticky
        resp = ["--protocol", "resp", "--resp-ports", ",".join(map(str, cluster.resp_ports))]
        resp += ["--resp-ports-file", str(self.report_dir / "resp-ports")]
        first = resp if getattr(self.args, "workload", "kv") == "resp" else None
        self.workload = self.launch(
            clients, 0, cluster.zk.hosts, "workload.log", epoch, wait, extra=first
        )
        if self.sticky:
            assert cluster.proxy is not None and cluster.zk.port is not None
            hosts = f"127.0.0.1:{cluster.proxy.route(STICKY_ZK, cluster.zk.port)}"
            # readers only: a write would wait out its deadline at a head it cannot reach
            self.sticky_workload = self.launch(
                self.sticky,
                clients,
                hosts,
                "workload-sticky.log",
                epoch,
                wait,
                (cluster.proxy, STICKY),
                ["--get-share", "1"],
            )

    def launch(
        self,
        clients: int,
        first: int,
        zk_hosts: str,
        log_name: str,
        epoch: float,
        wait: Wait,
        owner: tuple[ProxyControl, str] | None = None,
        extra: list[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """A workload process appending to the history; returns once its clients are ready.

        ``owner``: the proxy names its connections so, from the first one on.
        """
        a = self.args
        command = [
            sys.executable,
            "-m",
            "kvtwist.verify.workload",
            "--zk",
            zk_hosts,
            "--root",
            ROOT,
            "--out",
            str(self.history_path),
            "--clients",
            str(clients),
            "--first-client",
            str(first),
            "--keys",
            str(a.keys),
            "--duration",
            str(a.duration),
            "--seed",
            str(a.seed if not first else a.seed * 1000 + first),
            "--epoch",
            repr(epoch),
            "--deadline",
            str(a.deadline),
            "--op-timeout",
            str(a.op_timeout),
            "--think",
            str(a.think),
            "--big-values",
            str(a.big_values),
            "--max-big-value",
            str(a.max_big_value),
            *(extra or []),
            *(["--cluster", self.cluster_name] if self.cluster_name else []),
        ]
        log_path = self.report_dir / log_name
        with open(log_path, "wb") as log:
            workload = subprocess.Popen(
                command,
                env=node_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.launched.append(workload)
        if owner is not None:
            proxy, name = owner
            proxy.owner(workload.pid, name)

        def ready() -> bool:
            if workload.poll() is not None:
                raise RuntimeError(
                    f"the workload exited with {workload.returncode}:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            return "ready" in log_path.read_text(errors="replace")

        wait(ready, 60, "the clients to connect")
        return workload

    def running(self) -> list[subprocess.Popen[bytes]]:
        """The workloads the campaign waits for (started and ready)."""
        return [w for w in (self.workload, self.sticky_workload) if w is not None]

    def stop(self) -> None:
        """Every workload process still running, ready or not."""
        for workload in self.launched:
            if workload.poll() is not None:
                continue
            workload.terminate()
            try:
                workload.wait(20)
            except subprocess.TimeoutExpired:
                workload.kill()
                workload.wait()
