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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from kvtwist import __version__, wire
from kvtwist.procs import (
    NodeProcess,
    RawClient,
    ZooKeeperProcess,
    dump,
    free_port,
    kvnode_options,
    node_env,
    zookeeper_available,
)
from kvtwist.verify.durability import LostWrite, lost_writes
from kvtwist.verify.history import Op, read_history
from kvtwist.verify.linearizability import Result, check
from kvtwist.verify.nemesis import (
    KINDS,
    PROXY_KINDS,
    STICKY,
    STICKY_ZK,
    Nemesis,
    Node,
    parse_kinds,
)
from kvtwist.verify.proxy import ProxyControl
from kvtwist.verify.timeline import write_timeline
from kvtwist.verify.wallclock import WallClock
from kvtwist.verify.workload import BIG_MIN, key_text, value_text

ROOT = "/torture"
#: A replacement for a killed node starts this long after the kill (seconds).
REPLACE_DELAY = (0.5, 2.0)
#: The liveness probe writes this key (not one of the clients' keys).
PROBE_KEY = b"liveness-probe"
#: With join-fault, the store gets this much filler first, so a state transfer
#: through the slowed proxy lasts seconds (kvtwist.verify.nemesis.JOIN_RATE).
FILL_KEYS, FILL_SIZE = 64, 64 * 1024
#: A running node no fault holds that the chain has not listed for this long (seconds)
#: is stranded: a rejoin after any fault takes a few seconds, a slowed state transfer
#: about five.
STRANDED_AFTER = 20.0


class OutsideWatch:
    """Which running nodes have stayed outside the chain for too long.

    Without it a node that never rejoins holds the nemesis back for the rest of
    the campaign (member faults need three healthy members): it is reported,
    stopped and replaced instead, so the other kinds keep coming.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.since: dict[str, float] = {}

    def update(self, now: float, running: list[str], members: set[str]) -> list[str]:
        """The labels outside for longer than the limit (each reported once)."""
        for label in list(self.since):
            if label not in running or label in members:
                del self.since[label]
        out = []
        for label in running:
            if label not in members and now - self.since.setdefault(label, now) > self.limit:
                out.append(label)
                del self.since[label]
        return out

    def reset(self) -> None:
        """Everyone starts afresh (after a fault of the whole cluster)."""
        self.since.clear()


@dataclass
class Progress:
    """Outcome counts, read incrementally from the growing history file."""

    path: Path
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "fail": 0, "unknown": 0})
    _handle: TextIO | None = None
    _partial: str = ""

    def update(self) -> None:
        if self._handle is None:
            if not self.path.exists():
                return
            self._handle = open(self.path, encoding="utf-8")  # noqa: SIM115 (closed by close())
        text = self._partial + self._handle.read()
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            with contextlib.suppress(ValueError, KeyError):
                self.counts[json.loads(line)["outcome"]] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class Campaign:
    """One campaign: processes, nemesis, final checks, report."""

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
        self.zk: ZooKeeperProcess | None = None
        self.proxy: ProxyControl | None = None
        self.kazoo: Any = None
        self.nodes: list[Node] = []
        self.workload: subprocess.Popen[bytes] | None = None
        # with isolate: a third of the clients, whose ZooKeeper connection the nemesis can cut
        self.sticky_clients = int(args.clients) // 3 if "isolate" in kinds else 0
        self.sticky_workload: subprocess.Popen[bytes] | None = None
        # every workload process started, ready or not yet: cleanup() stops each
        self.launched: list[subprocess.Popen[bytes]] = []
        self.events: list[dict[str, Any]] = []
        self.stranger_results: list[dict[str, Any]] = []
        self.unexpected_exits: list[str] = []
        self.stranded: list[str] = []
        self.outside = OutsideWatch(STRANDED_AFTER)
        self.last_outside_check = 0.0
        self.epoch = time.monotonic()
        self.epoch_wall = time.time()
        self.replace_at = 0.0
        self.last_event = ""
        self.history_path = self.report_dir / "history.jsonl"
        self.progress = Progress(self.history_path)
        self.tty = sys.stderr.isatty()
        self.last_progress = 0.0
        self.phase = "starting"
        self.key_file: Path | None = None
        self.nemesis = Nemesis(self, kinds, args.fault_interval)

    # -- plumbing ----------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.epoch

    def say(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
        print(text, file=sys.stderr, flush=True)

    def event(self, kind: str, label: str, **extra: Any) -> None:
        e = {"t": round(self.now(), 6), "kind": kind, "label": label, **extra}
        self.events.append(e)
        self.last_event = label
        if not self.tty:
            self.say(f"[{e['t']:7.2f}s] {label}")

    def show_progress(self, force: bool = False) -> None:
        wall = time.monotonic()
        if not force and wall - self.last_progress < (0.25 if self.tty else 5.0):
            return
        self.last_progress = wall
        self.progress.update()
        c = self.progress.counts
        chain = ">".join(self.label_of(port) for _, port in self.members())
        line = (
            f"[{self.phase} {self.now():5.1f}/{self.args.duration:g}s] ops {self.progress.total}"
            f" (ok {c['ok']} fail {c['fail']} unknown {c['unknown']})"
            f"  faults {self.nemesis.total}  chain {chain or '-'}  last: {self.last_event or '-'}"
        )
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line[:200])
            sys.stderr.flush()
        else:
            print(line, file=sys.stderr, flush=True)

    def label_of(self, port: int) -> str:
        node = self.node_of(port)
        return node.label if node is not None else f":{port}"

    def node_of(self, port: int) -> Node | None:
        """The node advertised at ``port`` (its own port, or its proxy's)."""
        for n in self.nodes:
            if n.address_port == port:
                return n
        return None

    def target_nodes(self) -> int:
        return int(self.args.nodes)

    def replace_later(self) -> None:
        self.replace_at = time.monotonic() + self.rng.uniform(*REPLACE_DELAY)

    def members(self) -> list[tuple[str, int]]:
        """The chain in order, head first: (znode name, advertised port); [] if unknown now.

        Every ZooKeeper call has a short deadline: ZooKeeper may be paused or
        down, and the nemesis must keep its own clock meanwhile.
        """
        from kvtwist.membership import parse_address

        if self.kazoo is None:
            return []
        try:
            children = self.kazoo.get_children_async(ROOT).get(timeout=1.0)
            names = sorted(c for c in children if c.startswith("node"))
            replies = [(name, self.kazoo.get_async(f"{ROOT}/{name}")) for name in names]
            out = []
            for name, reply in replies:
                try:
                    data, _ = reply.get(timeout=1.0)
                except Exception:  # vanished meanwhile
                    continue
                address = parse_address(data)
                if address is not None:
                    out.append((name, address[1]))
            return out
        except Exception:  # no connection, no root yet, a timeout: nothing known now
            return []

    def config(self) -> int:
        """The chain's configuration number (the root's child version), 0 if unknown."""
        try:
            stat = self.kazoo.exists_async(ROOT).get(timeout=1.0)
            return int(stat.cversion) if stat is not None else 0
        except Exception:
            return 0

    # -- processes -----------------------------------------------------------------

    def start_node(self) -> Node:
        assert self.zk is not None and self.zk.port is not None
        label = f"n{len(self.nodes) + 1}"
        port = free_port()
        zk_hosts = self.zk.hosts
        extra: list[str] = []
        advertised = 0
        if self.proxy is not None:
            advertised = self.proxy.route(label, port)
            zk_hosts = f"127.0.0.1:{self.proxy.route(f'{label}-zk', self.zk.port)}"
            extra += ["--advertise", f"127.0.0.1:{advertised}"]
        directory = self.report_dir / "nodes" / label
        extra += storage_and_key_args(directory, self.options, self.key_file)
        if self.args.link_timeout is not None and "link-timeout" in self.options:
            extra += ["--link-timeout", f"{self.args.link_timeout:g}"]
        env = None
        if "clock-step" in self.kinds:  # its wall clock follows this file, stepped by the nemesis
            directory.mkdir(parents=True, exist_ok=True)
            env = WallClock(directory / "clock").environ()
        proc = NodeProcess.member(
            zk_hosts, ROOT, self.session_timeout, directory, port=port, extra_args=extra, env=env
        )
        proc.start(wait=False)
        node = Node(label, proc, advertised=advertised)
        self.nodes.append(node)
        self.own(node)
        return node

    def own(self, node: Node) -> None:
        """Tell the proxy which connections this node makes."""
        if self.proxy is not None and node.proc.pid is not None:
            self.proxy.owner(node.proc.pid, node.label)

    def restart_node(self, node: Node) -> None:
        """Start a crashed node again: same port, same data directory, same proxy routes."""
        if self.proxy is not None and node.proc.pid is not None:
            self.proxy.owner(node.proc.pid, None)
        node.proc.start(wait=False)
        self.own(node)

    def start_chain(self) -> None:
        for _ in range(self.args.nodes):
            node = self.start_node()
            node.proc.wait_listening()
            self.wait(
                lambda n=node: n.address_port in [p for _, p in self.members()],  # type: ignore[misc]
                60,
                f"{node.label} to join",
            )

    def wait(self, cond: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
            self.check_exits()
            time.sleep(0.1)

    def fill(self) -> None:
        """Give the store some bulk, so a state transfer lasts long enough to be faulted."""
        members = self.members()
        head = self.node_of(members[0][1]) if members else None
        if head is None:
            raise RuntimeError("no head to fill the store through")
        with RawClient(head.port, timeout=30) as c:
            replies = c.call(
                *(
                    wire.req_put(f"fill-{i:03d}".encode(), bytes([i]) * FILL_SIZE)
                    for i in range(FILL_KEYS)
                )
            )
        bad = [r.error for r in replies if r.opcode != wire.OP_PUT + 1]
        if bad:
            raise RuntimeError(f"filling the store failed: {bad[0]}")

    def start_workload(self) -> None:
        assert self.zk is not None
        self.epoch = time.monotonic()
        self.epoch_wall = time.time()
        clients = self.args.clients - self.sticky_clients
        self.workload = self.launch_workload(clients, 0, self.zk.hosts, "workload.log")
        if self.sticky_clients:
            assert self.proxy is not None and self.zk.port is not None
            hosts = f"127.0.0.1:{self.proxy.route(STICKY_ZK, self.zk.port)}"
            # readers only: a write would wait out its deadline at a head it cannot reach
            self.sticky_workload = self.launch_workload(
                self.sticky_clients,
                clients,
                hosts,
                "workload-sticky.log",
                STICKY,
                ["--get-share", "1"],
            )

    def launch_workload(
        self,
        clients: int,
        first: int,
        zk_hosts: str,
        log_name: str,
        owner: str | None = None,
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
            repr(self.epoch),
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
            assert self.proxy is not None
            self.proxy.owner(workload.pid, owner)

        def ready() -> bool:
            if workload.poll() is not None:
                raise RuntimeError(
                    f"the workload exited with {workload.returncode}:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            return "ready" in log_path.read_text(errors="replace")

        self.wait(ready, 60, "the clients to connect")
        return workload

    def workloads(self) -> list[subprocess.Popen[bytes]]:
        return [w for w in (self.workload, self.sticky_workload) if w is not None]

    def check_exits(self) -> None:
        """A node that ends without our signal crashed: a finding in itself."""
        for n in self.nodes:
            if n.state in ("running", "paused") and n.proc.exited is not None:
                n.state = "dead"
                self.unexpected_exits.append(f"{n.label} (port {n.port}) exit {n.proc.exited}")
                self.event("exit", f"{n.label} EXITED ({n.proc.exited})", node=n.label)
                self.replace_later()

    def tick(self, inject: bool) -> None:
        self.check_exits()
        self.nemesis.tick(inject)
        self.check_stranded()
        alive = [n for n in self.nodes if n.state != "dead"]
        if len(alive) < self.args.nodes and time.monotonic() >= self.replace_at:
            n = self.start_node()
            self.event("start", f"start {n.label}", node=n.label)

    def check_stranded(self) -> None:
        """Stop and replace a running node the chain has left out for too long (a finding)."""
        wall = time.monotonic()
        if wall - self.last_outside_check < 1.0:
            return
        self.last_outside_check = wall
        if any(a.whole for a in self.nemesis.active):
            self.outside.reset()  # ZooKeeper may be down, and everyone rejoins afterwards
            return
        members = self.members()
        if not members:
            return  # unknown now, or empty for a moment: no verdict
        listed = {self.label_of(port) for _, port in members}
        # a node a fault holds (a cut link, a pause) is not untouched: it has the
        # whole limit again once the fault is over
        touched = {n.label for a in self.nemesis.active for n in a.targets}
        running = [n.label for n in self.nodes if n.state == "running" and n.label not in touched]
        for label in self.outside.update(wall, running, listed):
            node = next(n for n in self.nodes if n.label == label)
            self.stranded.append(f"{label} (port {node.port}) at {self.now():.1f}s")
            self.event(
                "stranded",
                f"{label} STRANDED: running but outside the chain for {STRANDED_AFTER:g}s; "
                "stopped, a replacement joins",
                node=label,
            )
            node.proc.stop()
            node.state = "dead"
            self.replace_later()

    # -- the end -------------------------------------------------------------------------

    def heal(self) -> None:
        self.event("heal", "heal")
        self.nemesis.heal()
        for n in self.nodes:
            if n.state == "paused":
                n.proc.resume()
                n.state = "running"
            elif n.state == "down":
                self.restart_node(n)
                n.state = "running"
        if self.zk is not None and not self.zk.running:
            self.zk.restart()
        while len([n for n in self.nodes if n.state != "dead"]) < self.args.nodes:
            self.start_node()

    def probe(self) -> tuple[bool, float, str]:
        """Liveness: a new write acknowledged by the head and then read at the tail.

        Returns (live, seconds taken, the last obstacle seen).
        """
        started = time.monotonic()
        deadline = started + self.args.liveness_timeout
        value = f"probe-{self.seed}-{secrets.token_hex(4)}".encode()
        acked, last = False, "no chain in ZooKeeper"
        while time.monotonic() < deadline:
            self.check_exits()
            nodes = [self.node_of(port) for _, port in self.members()]
            if not nodes or None in nodes:
                time.sleep(0.2)
                continue
            head, tail = nodes[0], nodes[-1]
            assert head is not None and tail is not None
            timeout = max(0.5, min(5.0, deadline - time.monotonic()))
            try:
                if not acked:
                    with RawClient(head.port, timeout=timeout) as c:
                        reply = c.one(wire.req_put(PROBE_KEY, value))
                    if reply.opcode != wire.OP_PUT + 1:
                        last = f"head {head.label}: {reply.error}"
                        time.sleep(0.2)
                        continue
                    acked = True
                with RawClient(tail.port, timeout=timeout) as c:
                    got = c.get(PROBE_KEY)
                if got == value:
                    return True, time.monotonic() - started, ""
                last = f"tail {tail.label} does not show the acknowledged write yet"
            except (OSError, RuntimeError) as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.2)
        what = "acknowledged but not visible at the tail" if acked else "never acknowledged"
        return False, time.monotonic() - started, f"a new write was {what}: {last}"

    def settled(self) -> list[tuple[bytes, bytes]] | None:
        """The common copy once the chain is whole and every member holds the same data."""
        self.check_exits()
        running = {n.address_port for n in self.nodes if n.state == "running"}
        members = [port for _, port in self.members()]
        if len(members) < self.args.nodes or set(members) != running:
            return None
        nodes = [self.node_of(port) for port in members]
        copies = [dump(n.port) if n is not None else None for n in nodes]
        first = copies[0]
        if first is None or any(c != first for c in copies):
            return None
        return first

    def wait_settled(self) -> tuple[bool, float]:
        started = time.monotonic()
        deadline = started + self.args.settle_timeout
        previous = None
        while time.monotonic() < deadline:
            self.show_progress()
            state = self.settled()
            if state is not None and state == previous:
                return True, time.monotonic() - started
            previous = state
            time.sleep(0.5)
        return False, time.monotonic() - started

    def final_reads(self) -> list[Op]:
        """Read every key at the tail, as one more client (process -1)."""
        ops = []
        for i in range(self.args.keys):
            key = f"k{i}"
            for _attempt in range(20):
                members = self.members()
                tail = self.node_of(members[-1][1]) if members else None
                if tail is None:
                    time.sleep(0.5)
                    continue
                invoke = self.now()
                try:
                    with RawClient(tail.port, timeout=10) as c:
                        value = c.get(key.encode())
                except (OSError, RuntimeError):
                    time.sleep(0.5)
                    continue
                text = None if value is None else value_text(value)
                ops.append(Op(-1, "get", key, text, invoke, self.now(), "ok"))
                break
        return ops

    def node_copies(self) -> dict[str, list[tuple[bytes, bytes]] | None]:
        out = {}
        for _, port in self.members():
            node = self.node_of(port)
            out[self.label_of(port)] = dump(node.port) if node is not None else None
        return out

    # -- the whole campaign --------------------------------------------------------------

    def prepare_report_dir(self) -> None:
        """Remove what an earlier campaign left there (only the files a campaign writes)."""
        if self.report_dir.exists():
            names = [
                "history.jsonl",
                "report.json",
                "timeline.html",
                "workload.log",
                "workload-sticky.log",
                "proxy.log",
                "zookeeper.log",
                "cluster.key",
            ]
            paths = [self.report_dir / n for n in names]
            for path in [*paths, *self.report_dir.glob("stranger-*.log")]:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            shutil.rmtree(self.report_dir / "nodes", ignore_errors=True)
        self.report_dir.mkdir(parents=True, exist_ok=True)

    def run(self) -> int:
        a = self.args
        why = zookeeper_available()
        if why:
            self.say(f"kvtwist-torture: cannot start ZooKeeper: {why}")
            return 2
        self.prepare_report_dir()
        if a.nodes < 3:
            self.say("warning: the nemesis needs --nodes >= 3 to fault a node and keep two")
        from kazoo.client import KazooClient

        # our own ZooKeeper session reconnects through the ZooKeeper faults: not news
        logging.getLogger("kazoo").setLevel(logging.CRITICAL)
        try:
            self.zk = ZooKeeperProcess(port=free_port())
            self.zk.start()
            if any(k in PROXY_KINDS for k in self.kinds):
                self.proxy = ProxyControl(self.report_dir / "proxy.log")
            if "cluster-key-file" in self.options:
                self.key_file = write_key(self.report_dir / "cluster.key")
            self.kazoo = KazooClient(self.zk.hosts, timeout=10)
            self.kazoo.start(15)
            self.say(
                f"kvtwist-torture: seed {a.seed}, {a.nodes} nodes, {a.clients} clients, "
                f"{a.duration:g}s, session timeout {a.session_timeout:g}s, "
                + (f"link timeout {a.link_timeout:g}s, " if a.link_timeout else "")
                + (f"{self.sticky_clients} of them sticky, " if self.sticky_clients else "")
                + f"nemesis {','.join(self.kinds) or 'none'}"
                + (f", big values {a.big_values:g} up to {a.max_big_value}" if a.big_values else "")
                + f", ZooKeeper at {self.zk.hosts}, report in {self.report_dir}"
            )
            self.phase = "setup"
            self.start_chain()
            if "join-fault" in self.kinds:
                self.fill()
            self.start_workload()
            self.phase = "run"
            assert self.workload is not None
            stop_faults = time.monotonic() + a.duration
            give_up = stop_faults + a.op_timeout + 30
            self.nemesis.next_fault = time.monotonic() + self.rng.uniform(0.5, 1.5)
            while any(w.poll() is None for w in self.workloads()):
                wall = time.monotonic()
                if wall > give_up:
                    self.say("the workload overran its time; stopping it")
                    for w in self.workloads():
                        w.terminate()
                        w.wait(30)
                    break
                self.tick(inject=wall < stop_faults)
                self.show_progress()
                time.sleep(0.05)
            self.phase = "heal"
            self.heal()
            live, probe_s, stuck_why = self.probe()
            self.event("probe", f"liveness probe {'ok' if live else 'STUCK'} in {probe_s:.1f}s")
            is_settled, settle_s = self.wait_settled()
            self.phase = "check"
            self.show_progress(force=True)
            finals = self.final_reads() if is_settled else []
            copies = self.node_copies()
            liveness = {"live": live, "seconds": round(probe_s, 2), "why": stuck_why}
            found = self.gather(is_settled, settle_s, finals, copies, liveness)
            return self.report(found, checks(found))
        except KeyboardInterrupt:
            self.say("interrupted")
            return 130
        except (TimeoutError, RuntimeError) as e:
            # e.g. a chain that never forms: as much a finding as a failed check
            self.say(f"kvtwist-torture: the campaign could not run: {e}")
            error = {"ok": False, "error": str(e), "phase": self.phase, "seed": a.seed}
            error["events"] = self.events
            error["unexpected_node_exits"] = self.unexpected_exits
            error["stranded_nodes"] = self.stranded
            (self.report_dir / "report.json").write_text(json.dumps(error, indent=2) + "\n")
            return 2
        finally:
            self.cleanup()

    def gather(
        self,
        is_settled: bool,
        settle_s: float,
        finals: list[Op],
        copies: dict[str, list[tuple[bytes, bytes]] | None],
        liveness: dict[str, Any],
    ) -> Findings:
        """Everything the checks and the report read: the history checked, the copies compared."""
        if self.tty:
            sys.stderr.write("\n")
        self.progress.update()
        client_ops = read_history(self.history_path) if self.history_path.exists() else []
        with open(self.history_path, "a", encoding="utf-8") as f:
            from kvtwist.verify.history import dumps

            for op in finals:
                f.write(dumps(op) + "\n")
        started = time.monotonic()
        result = check(client_ops + finals, timeout=self.args.check_timeout)
        check_s = time.monotonic() - started
        readable = [c for c in copies.values() if c is not None]
        final_state: dict[str, str | None] = {}
        if readable:
            tail_copy = list(copies.values())[-1] or []
            final_state = {key_text(k): value_text(v) for k, v in tail_copy}
        statuses = [w.returncode for w in self.workloads()]
        return Findings(
            nodes=self.args.nodes,
            keys=self.args.keys,
            client_ops=client_ops,
            finals=finals,
            result=result,
            check_s=check_s,
            liveness=liveness,
            settled=is_settled,
            settle_s=settle_s,
            copies=copies,
            lost=lost_writes(client_ops, final_state) if readable else [],
            # a node we left running that the chain does not list never came back
            outside=[n.label for n in self.nodes if n.state == "running" and n.label not in copies],
            stranded=list(self.stranded),
            unexpected_exits=list(self.unexpected_exits),
            stranger_accepted=sum(int(r.get("accepted", 0)) for r in self.stranger_results),
            workload_status=next((s for s in statuses if s != 0), None if not statuses else 0),
        )

    def report(self, found: Findings, results: list[Check]) -> int:
        """Write report.json and the timeline, say PASS or FAIL with every failed check's reason."""
        ok = passed(results)
        r = self.report_fields(found, results)
        (self.report_dir / "report.json").write_text(json.dumps(r, indent=2) + "\n")
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
            self.report_dir / "timeline.html",
            found.client_ops + found.finals,
            self.events,
            summary,
            timeline_details(r),
            title=f"kvtwist torture, seed {self.args.seed}",
        )
        outcomes = r["outcomes"]
        self.say(
            f"{'PASS' if ok else 'FAIL'}: seed {r['seed']}: {r['operations']} operations "
            f"(ok {outcomes['ok']}, fail {outcomes['fail']}, unknown {outcomes['unknown']}), "
            f"{r['faults']} faults ({summary['faults by kind']}), {r['verdict']}; "
            f"lost acknowledged writes {r['lost_acknowledged_writes']}; "
            f"nodes identical {r['nodes_identical']}; "
            f"longest time without a write {r['unavailable_max_s']:.1f}s "
            f"at {r['unavailable_from']:.1f}s"
            + "".join(f"\n  {why}" for why in failures(results))
            + f"\n  report: {self.report_dir / 'report.json'}"
        )
        return exit_status(results)

    def report_fields(self, found: Findings, results: list[Check]) -> dict[str, Any]:
        """report.json: the verdicts (from ``results``), the measures, the settings, the events."""
        a = self.args
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
            "faults": self.nemesis.total,
            "fault_counts": {k: self.nemesis.counts.get(k, 0) for k in self.kinds},
            "nemesis": self.kinds,
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
            "fault_coverage": dict(sorted(self.nemesis.coverage.items())),
            "nodes": a.nodes,
            "clients": a.clients,
            "keys": a.keys,
            "big_values": a.big_values,
            "max_big_value": a.max_big_value,
            "duration": a.duration,
            "session_timeout": a.session_timeout,
            "link_timeout": a.link_timeout,
            "sticky_clients": self.sticky_clients,
            "node_options": sorted(
                o for o in ("data-dir", "cluster-key-file") if o in self.options
            ),
            "nodes_started": len(self.nodes),
            "final_members": list(copies),
            "running_outside_chain": found.outside,
            "stranded_nodes": found.stranded,
            "time_zero_utc": datetime.fromtimestamp(self.epoch_wall, UTC).isoformat(),
            "final_state_from": list(copies)[-1] if copies else None,
            "failed_checks": {c.name: c.why for c in results if not c.passed},
            "events": self.events,
        }
        if not result.linearizable:
            report["nonlinearizable"] = {"key": result.bad_key, **result.info}
        if found.lost:
            report["lost"] = [w.to_dict() for w in found.lost]
        if found.stranger_accepted:
            report["stranger_heard"] = [
                t
                for r in self.stranger_results
                for t in r["attempts"]
                if t["verdict"] == "accepted"
            ]
        if not identical:
            report["copies"] = {
                label: None if c is None else {key_text(k): value_text(v)[:80] for k, v in c}
                for label, c in copies.items()
            }
        return report

    def cleanup(self) -> None:
        self.progress.close()
        for workload in self.launched:
            if workload.poll() is not None:
                continue
            workload.terminate()
            try:
                workload.wait(20)
            except subprocess.TimeoutExpired:
                workload.kill()
                workload.wait()
        with contextlib.suppress(Exception):
            self.nemesis.heal()
        for n in self.nodes:
            n.proc.stop()
        if self.proxy is not None:
            self.proxy.close()
        if self.kazoo is not None:
            with contextlib.suppress(Exception):
                self.kazoo.stop()
                self.kazoo.close()
        if self.zk is not None:
            with contextlib.suppress(Exception):
                (self.report_dir / "zookeeper.log").write_text(self.zk.log_tail(100_000))
            self.zk.stop()


@dataclass
class Findings:
    """What the campaign found at the end: the input of its checks and of its report."""

    nodes: int  # the chain length asked for
    keys: int
    client_ops: list[Op]
    finals: list[Op]  # the reads of every key at the tail, after settling
    result: Result  # the linearizability check of client_ops + finals
    check_s: float
    liveness: dict[str, Any]  # {"live", "seconds", "why"}
    settled: bool
    settle_s: float
    copies: dict[str, list[tuple[bytes, bytes]] | None]  # each member's own copy, head first
    lost: list[LostWrite]
    outside: list[str]  # running at the end, but not in the chain
    stranded: list[str]
    unexpected_exits: list[str]
    stranger_accepted: int
    workload_status: int | None  # the first non-zero exit status of a workload; None: none ran

    @property
    def live(self) -> bool:
        return bool(self.liveness["live"])


@dataclass(frozen=True)
class Check:
    """One promise checked at the end: its name, and why it failed (None: it held)."""

    name: str
    why: str | None = None

    @property
    def passed(self) -> bool:
        return self.why is None


#: The check whose outcome report.json calls ``nodes_identical``.
IDENTICAL = "copies identical"


def checks(f: Findings) -> list[Check]:
    """Every check of a campaign, in the order their failures are told.

    The exit status, report.json's ``ok`` and the printed reasons all come
    from this list, so a failing run always says why.
    """
    settled = "" if f.settled else " (at the tail of a chain that did not settle)"
    return [
        Check("live", None if f.live else f"stuck: {f.liveness['why']}"),
        Check("linearizable", None if f.result.linearizable else f.result.verdict()),
        Check(
            "no lost acknowledged writes",
            f"{len(f.lost)} acknowledged writes missing{settled}" if f.lost else None,
        ),
        Check(IDENTICAL, not_identical(f)),
        Check("final reads", final_reads_missing(f)),
        Check("no running outside the chain", _listed("running but not in the chain", f.outside)),
        Check("no stranded nodes", _listed("nodes that never rejoined (stopped)", f.stranded)),
        Check("no unexpected exits", _listed("nodes exited by themselves", f.unexpected_exits)),
        Check(
            "no stranger accepted",
            f"{f.stranger_accepted} stranger messages were taken for a peer's"
            if f.stranger_accepted
            else None,
        ),
        Check(
            "workload",
            None
            if f.workload_status == 0
            else "no workload ran"
            if f.workload_status is None
            else f"the workload exited with {f.workload_status}",
        ),
        Check("operations", None if f.client_ops else "the clients recorded no operation"),
    ]


def not_identical(f: Findings) -> str | None:
    """Why the members' copies do not show one settled chain of ``f.nodes`` (None: they do)."""
    if not f.settled:
        return "the chain did not settle"
    unread = [label for label, c in f.copies.items() if c is None]
    if unread:
        return f"copies not read: {', '.join(unread)}"
    if len(f.copies) < f.nodes:
        return f"{len(f.copies)} members at the end, not {f.nodes}"
    copies = list(f.copies.values())
    return None if all(c == copies[0] for c in copies) else "nodes differ"


def final_reads_missing(f: Findings) -> str | None:
    """Why not every key was read at the tail at the end (None: each was)."""
    if len(f.finals) == f.keys:
        return None
    if not f.settled:
        return "no final reads: the chain did not settle"
    return f"only {len(f.finals)} of {f.keys} keys could be read at the tail at the end"


def _listed(what: str, labels: list[str]) -> str | None:
    return f"{what}: {', '.join(labels)}" if labels else None


def passed(results: list[Check]) -> bool:
    return all(c.passed for c in results)


def failures(results: list[Check]) -> list[str]:
    """The reason of every failed check, in order."""
    return [c.why for c in results if c.why is not None]


def exit_status(results: list[Check]) -> int:
    """0 only if every check passed."""
    return 0 if passed(results) else 1


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


def storage_and_key_args(
    directory: Path, options: frozenset[str], key_file: Path | None
) -> list[str]:
    """A node's own data directory (kept across its crash-restarts) and the cluster key.

    Only what this node build takes: an older one runs without either.
    """
    args: list[str] = []
    if "data-dir" in options:
        args += ["--data-dir", str(directory / "data")]
    if key_file is not None and "cluster-key-file" in options:
        args += ["--cluster-key-file", str(key_file)]
    return args


def write_key(path: Path) -> Path:
    """A fresh cluster key, readable by its owner only from the moment the file exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


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
        "--session-timeout", type=float, default=2.0, help="nodes' ZooKeeper session timeout"
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
    args = p.parse_args(argv)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kvtwist-torture``; returns the exit status."""
    args = parse_args(argv)
    options = kvnode_options()
    try:
        kinds = parse_kinds(args.nemesis, options)
    except ValueError as e:
        print(f"kvtwist-torture: {e}", file=sys.stderr)
        return 2
    # SIGTERM (and a closed terminal) end a campaign as ^C does: its nodes,
    # clients, proxy and ZooKeeper are stopped, not left running
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)
    return Campaign(args, kinds, options).run()


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
