"""``kvtwist-torture``: a Jepsen-style campaign against a real chain.

It starts a private ZooKeeper and ``--nodes`` kvtwist nodes, runs
``--clients`` concurrent clients (kvtwist.verify.workload, a separate
process) doing random get/put/del with unique values on a few keys, and
meanwhile a *nemesis* that at random moments SIGKILLs a node, or SIGSTOPs
one past its ZooKeeper session timeout and then SIGCONTs it, picking head,
middle and tail in turn, and starts replacement nodes that join.  It never
faults a node unless two healthy members would remain, so the chain always
has a survivor holding every acknowledged write.

At the end it heals (resumes everything, tops the chain up to ``--nodes``),
waits for the chain to settle, reads every key from the tail, and checks:

- the history, final reads included, is linearizable;
- no acknowledged write that a later acknowledged write did not overwrite
  is missing from the final state;
- every member holds an identical copy (each node's own copy, read locally).

Results go to ``--report DIR``: ``history.jsonl``, ``report.json``,
``timeline.html``, and every process's log (``nodes/``, ``zookeeper.log``,
``workload.log``) for diagnosis.  Exit status 0 only when everything holds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kvtwist.procs import (
    NodeProcess,
    RawClient,
    ZooKeeperProcess,
    dump,
    node_env,
    zookeeper_available,
)
from kvtwist.verify.durability import lost_writes
from kvtwist.verify.history import Op, read_history
from kvtwist.verify.linearizability import check
from kvtwist.verify.timeline import write_timeline

ROOT = "/torture"
#: Pauses last this many session timeouts (drawn uniformly), so sessions expire.
PAUSE_SESSIONS = (1.5, 2.5)
#: A replacement for a killed node starts this long after the kill (seconds).
REPLACE_DELAY = (0.5, 2.0)
ROLES = ("head", "middle", "tail")


@dataclass
class Node:
    """A node process and what the nemesis did to it."""

    label: str
    proc: NodeProcess
    state: str = "running"  # running | paused | dead
    resume_at: float = 0.0

    @property
    def port(self) -> int:
        return self.proc.port


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

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.report_dir = Path(args.report)
        self.zk: ZooKeeperProcess | None = None
        self.kazoo: Any = None
        self.nodes: list[Node] = []
        self.workload: subprocess.Popen[bytes] | None = None
        self.events: list[dict[str, Any]] = []
        self.faults = 0
        self.coverage: dict[str, int] = {}
        self.unexpected_exits: list[str] = []
        self.epoch = time.monotonic()
        self.next_fault = 0.0
        self.replace_at = 0.0
        self.last_event = ""
        self.history_path = self.report_dir / "history.jsonl"
        self.progress = Progress(self.history_path)
        self.tty = sys.stderr.isatty()
        self.last_progress = 0.0
        self.phase = "starting"

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
            f"  faults {self.faults}  chain {chain or '-'}  last: {self.last_event or '-'}"
        )
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line[:200])
            sys.stderr.flush()
        else:
            print(line, file=sys.stderr, flush=True)

    def label_of(self, port: int) -> str:
        for n in self.nodes:
            if n.port == port:
                return n.label
        return f":{port}"

    def node_of(self, port: int) -> Node | None:
        for n in self.nodes:
            if n.port == port:
                return n
        return None

    def members(self) -> list[tuple[str, int]]:
        """The chain in order, head first: (znode name, port)."""
        from kazoo.exceptions import KazooException, NoNodeError

        from kvtwist.zk import parse_address

        if self.kazoo is None:
            return []
        try:
            names = sorted(c for c in self.kazoo.get_children(ROOT) if c.startswith("node"))
        except (NoNodeError, KazooException):
            return []
        out = []
        for name in names:
            try:
                data, _ = self.kazoo.get(f"{ROOT}/{name}")
            except (NoNodeError, KazooException):
                continue
            address = parse_address(data)
            if address is not None:
                out.append((name, address[1]))
        return out

    # -- processes -----------------------------------------------------------------

    def start_node(self) -> Node:
        assert self.zk is not None
        label = f"n{len(self.nodes) + 1}"
        proc = NodeProcess.member(
            self.zk.hosts,
            ROOT,
            self.args.session_timeout,
            self.report_dir / "nodes" / label,
        )
        proc.start(wait=False)
        node = Node(label, proc)
        self.nodes.append(node)
        return node

    def start_chain(self) -> None:
        for _ in range(self.args.nodes):
            node = self.start_node()
            node.proc.wait_listening()
            self.wait(
                lambda n=node: n.port in [p for _, p in self.members()],  # type: ignore[misc]
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

    def start_workload(self) -> None:
        assert self.zk is not None
        a = self.args
        self.epoch = time.monotonic()
        command = [
            sys.executable,
            "-m",
            "kvtwist.verify.workload",
            "--zk",
            self.zk.hosts,
            "--root",
            ROOT,
            "--out",
            str(self.history_path),
            "--clients",
            str(a.clients),
            "--keys",
            str(a.keys),
            "--duration",
            str(a.duration),
            "--seed",
            str(a.seed),
            "--epoch",
            repr(self.epoch),
            "--deadline",
            str(a.deadline),
            "--op-timeout",
            str(a.op_timeout),
            "--think",
            str(a.think),
        ]
        with open(self.report_dir / "workload.log", "wb") as log:
            self.workload = subprocess.Popen(
                command,
                env=node_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log_path = self.report_dir / "workload.log"

        def ready() -> bool:
            assert self.workload is not None
            if self.workload.poll() is not None:
                raise RuntimeError(
                    f"the workload exited with {self.workload.returncode}:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            return "ready" in log_path.read_text(errors="replace")

        self.wait(ready, 60, "the clients to connect")

    def check_exits(self) -> None:
        """A node that ends without our signal crashed: a finding in itself."""
        for n in self.nodes:
            if n.state != "dead" and n.proc.exited is not None:
                n.state = "dead"
                self.unexpected_exits.append(f"{n.label} (port {n.port}) exit {n.proc.exited}")
                self.event("exit", f"{n.label} EXITED ({n.proc.exited})", node=n.label)
                self.replace_at = time.monotonic() + self.rng.uniform(*REPLACE_DELAY)

    # -- the nemesis -------------------------------------------------------------------

    def tick(self, inject: bool) -> None:
        wall = time.monotonic()
        self.check_exits()
        for n in self.nodes:
            if n.state == "paused" and wall >= n.resume_at:
                n.proc.resume()
                n.state = "running"
                self.event("resume", f"resume {n.label}", node=n.label)
        alive = [n for n in self.nodes if n.state != "dead"]
        if len(alive) < self.args.nodes and wall >= self.replace_at:
            n = self.start_node()
            self.event("start", f"start {n.label}", node=n.label)
        if inject and wall >= self.next_fault:
            if self.inject():
                mean = self.args.fault_interval
                self.next_fault = wall + self.rng.uniform(0.5 * mean, 1.5 * mean)

    def inject(self) -> bool:
        """Fault one healthy member if two healthy members remain; False if none was."""
        members = self.members()
        healthy: list[tuple[str, str, Node]] = []
        for i, (name, port) in enumerate(members):
            node = self.node_of(port)
            if any(h[2] is node for h in healthy):
                return False  # one node under two znodes: the chain is not sound, let it be
            if node is not None and node.state == "running" and node.proc.exited is None:
                role = "head" if i == 0 else "tail" if i == len(members) - 1 else "middle"
                healthy.append((role, name, node))
        if len(healthy) < 3:
            return False
        # every (kind, role) pair in turn, the least used first, ties at random
        choices = [(kind, role) for kind in ("kill", "pause") for role, _, _ in healthy]
        low = min(self.coverage.get(f"{k} {r}", 0) for k, r in choices)
        kind, role = self.rng.choice(
            [c for c in choices if self.coverage.get(f"{c[0]} {c[1]}", 0) == low]
        )
        _, name, node = self.rng.choice([h for h in healthy if h[0] == role])
        self.coverage[f"{kind} {role}"] = self.coverage.get(f"{kind} {role}", 0) + 1
        self.faults += 1
        if kind == "kill":
            node.proc.kill()
            node.state = "dead"
            self.replace_at = time.monotonic() + self.rng.uniform(*REPLACE_DELAY)
            self.event("kill", f"kill {role} {node.label}", node=node.label, role=role, znode=name)
        else:
            node.proc.pause()
            node.state = "paused"
            pause = self.args.session_timeout * self.rng.uniform(*PAUSE_SESSIONS)
            node.resume_at = time.monotonic() + pause
            self.event(
                "pause",
                f"pause {role} {node.label} {pause:.1f}s",
                node=node.label,
                role=role,
                znode=name,
                seconds=round(pause, 3),
            )
        return True

    # -- the end -------------------------------------------------------------------------

    def heal(self) -> None:
        self.event("heal", "heal")
        for n in self.nodes:
            if n.state == "paused":
                n.proc.resume()
                n.state = "running"
        while len([n for n in self.nodes if n.state != "dead"]) < self.args.nodes:
            self.start_node()

    def settled(self) -> list[tuple[str, bytes]] | None:
        """The common copy once the chain is whole and every member holds the same data."""
        self.check_exits()
        running = {n.port for n in self.nodes if n.state == "running"}
        members = [port for _, port in self.members()]
        if len(members) != self.args.nodes or set(members) != running:
            return None
        copies = [dump(port) for port in members]
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
                if not members:
                    time.sleep(0.5)
                    continue
                invoke = self.now()
                try:
                    with RawClient(members[-1][1], timeout=10) as c:
                        value = c.get(key)
                except (OSError, RuntimeError):
                    time.sleep(0.5)
                    continue
                text = None if value is None else value.decode("utf-8", "replace")
                ops.append(Op(-1, "get", key, text, invoke, self.now(), "ok"))
                break
        return ops

    def node_copies(self) -> dict[str, list[tuple[str, bytes]] | None]:
        return {self.label_of(port): dump(port) for _, port in self.members()}

    # -- the whole campaign --------------------------------------------------------------

    def run(self) -> int:
        a = self.args
        why = zookeeper_available()
        if why:
            self.say(f"kvtwist-torture: cannot start ZooKeeper: {why}")
            return 2
        if self.report_dir.exists():
            for name in ("history.jsonl", "report.json", "timeline.html", "workload.log"):
                with contextlib.suppress(FileNotFoundError):
                    (self.report_dir / name).unlink()
            shutil.rmtree(self.report_dir / "nodes", ignore_errors=True)
        self.report_dir.mkdir(parents=True, exist_ok=True)
        if a.nodes < 3:
            self.say("warning: the nemesis needs --nodes >= 3 to fault a node and keep two")
        from kazoo.client import KazooClient

        try:
            self.zk = ZooKeeperProcess()
            self.zk.start()
            self.kazoo = KazooClient(self.zk.hosts, timeout=10)
            self.kazoo.start(15)
            self.say(
                f"kvtwist-torture: seed {a.seed}, {a.nodes} nodes, {a.clients} clients, "
                f"{a.duration:g}s, session timeout {a.session_timeout:g}s, "
                f"ZooKeeper at {self.zk.hosts}, report in {self.report_dir}"
            )
            self.phase = "setup"
            self.start_chain()
            self.start_workload()
            self.phase = "run"
            self.next_fault = time.monotonic() + self.rng.uniform(0.5, 1.5)
            assert self.workload is not None
            stop_faults = time.monotonic() + a.duration
            give_up = stop_faults + a.op_timeout + 30
            while self.workload.poll() is None:
                wall = time.monotonic()
                if wall > give_up:
                    self.say("the workload overran its time; stopping it")
                    self.workload.terminate()
                    self.workload.wait(30)
                    break
                self.tick(inject=wall < stop_faults)
                self.show_progress()
                time.sleep(0.05)
            self.phase = "heal"
            self.heal()
            is_settled, settle_s = self.wait_settled()
            self.phase = "check"
            self.show_progress(force=True)
            finals = self.final_reads() if is_settled else []
            copies = self.node_copies()
            return self.finish(is_settled, settle_s, finals, copies)
        except KeyboardInterrupt:
            self.say("interrupted")
            return 130
        except (TimeoutError, RuntimeError) as e:
            # e.g. a chain that never forms: as much a finding as a failed check
            self.say(f"kvtwist-torture: the campaign could not run: {e}")
            error = {"ok": False, "error": str(e), "phase": self.phase, "seed": a.seed}
            error["events"] = self.events
            error["unexpected_node_exits"] = self.unexpected_exits
            (self.report_dir / "report.json").write_text(json.dumps(error, indent=2) + "\n")
            return 2
        finally:
            self.cleanup()

    def finish(
        self,
        is_settled: bool,
        settle_s: float,
        finals: list[Op],
        copies: dict[str, list[tuple[str, bytes]] | None],
    ) -> int:
        a = self.args
        if self.tty:
            sys.stderr.write("\n")
        self.progress.update()
        client_ops = read_history(self.history_path) if self.history_path.exists() else []
        with open(self.history_path, "a", encoding="utf-8") as f:
            from kvtwist.verify.history import dumps

            for op in finals:
                f.write(dumps(op) + "\n")
        ops = client_ops + finals
        started = time.monotonic()
        result = check(ops, timeout=a.check_timeout)
        check_s = time.monotonic() - started

        readable = [c for c in copies.values() if c is not None]
        identical = (
            is_settled
            and len(readable) == len(copies) == a.nodes
            and all(c == readable[0] for c in readable)
        )
        final_state: dict[str, str | None] = {}
        if readable:
            tail_copy = list(copies.values())[-1] or []
            final_state = {k: v.decode("utf-8", "replace") for k, v in tail_copy}
        lost = lost_writes(client_ops, final_state) if readable else []
        outcomes = {o: sum(1 for op in client_ops if op.outcome == o) for o in ("ok", "fail")}
        outcomes["unknown"] = sum(1 for op in client_ops if op.outcome == "unknown")
        workload_status = None if self.workload is None else self.workload.returncode
        stall, stall_at = longest_stall(client_ops)
        ok = (
            result.linearizable
            and not lost
            and identical
            and is_settled
            and len(finals) == a.keys
            and not self.unexpected_exits
            and workload_status == 0
            and len(client_ops) > 0
        )
        report: dict[str, Any] = {
            "ok": ok,
            "linearizable": result.linearizable,
            "check_decided": result.decided,
            "operations": len(client_ops),
            "faults": self.faults,
            "lost_acknowledged_writes": len(lost),
            "nodes_identical": identical,
            "seed": a.seed,
            "settled": is_settled,
            "settle_seconds": round(settle_s, 2),
            "verdict": result.verdict(),
            "check_seconds": round(check_s, 3),
            "outcomes": outcomes,
            "longest_stall_seconds": round(stall, 3),
            "longest_stall_from": round(stall_at, 3),
            "final_reads": len(finals),
            "unexpected_node_exits": self.unexpected_exits,
            "workload_exit_status": workload_status,
            "fault_coverage": dict(sorted(self.coverage.items())),
            "nodes": a.nodes,
            "clients": a.clients,
            "keys": a.keys,
            "duration": a.duration,
            "session_timeout": a.session_timeout,
            "nodes_started": len(self.nodes),
            "final_members": list(copies),
            "final_state_from": list(copies)[-1] if copies else None,
            "events": self.events,
        }
        if not result.linearizable:
            report["nonlinearizable"] = {"key": result.bad_key, **result.info}
        if lost:
            report["lost"] = [w.to_dict() for w in lost]
        if not identical:
            report["copies"] = {
                label: None if c is None else {k: v.decode("utf-8", "replace") for k, v in c}
                for label, c in copies.items()
            }
        (self.report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        details = ""
        if not result.linearizable:
            details = json.dumps(report["nonlinearizable"], indent=2)
        if lost:
            details += "\nlost acknowledged writes:\n" + json.dumps(report["lost"], indent=2)
        summary = {
            k: report[k]
            for k in (
                "ok",
                "linearizable",
                "operations",
                "faults",
                "lost_acknowledged_writes",
                "nodes_identical",
                "seed",
                "verdict",
            )
        }
        summary["fault coverage"] = ", ".join(f"{k} x{v}" for k, v in self.coverage.items())
        write_timeline(
            self.report_dir / "timeline.html",
            ops,
            self.events,
            summary,
            details,
            title=f"kvtwist torture, seed {a.seed}",
        )
        status = "PASS" if ok else "FAIL"
        problems = []
        if not result.linearizable:
            problems.append(result.verdict())
        if lost:
            where = "" if is_settled else " (at the tail of a chain that did not settle)"
            problems.append(f"{len(lost)} acknowledged writes missing{where}")
        if not identical:
            problems.append("nodes differ" if is_settled else "the chain did not settle")
        if self.unexpected_exits:
            problems.append(f"nodes exited by themselves: {', '.join(self.unexpected_exits)}")
        if workload_status != 0:
            problems.append(f"the workload exited with {workload_status}")
        self.say(
            f"{status}: seed {a.seed}: {len(client_ops)} operations "
            f"(ok {outcomes['ok']}, fail {outcomes['fail']}, unknown {outcomes['unknown']}), "
            f"{self.faults} faults, {result.verdict()}; lost acknowledged writes {len(lost)}; "
            f"nodes identical {identical}; longest stall {stall:.1f}s at {stall_at:.1f}s"
            + ("" if ok else "\n  " + "\n  ".join(problems))
            + f"\n  report: {self.report_dir / 'report.json'}"
        )
        return 0 if ok else 1

    def cleanup(self) -> None:
        self.progress.close()
        if self.workload is not None and self.workload.poll() is None:
            self.workload.terminate()
            try:
                self.workload.wait(20)
            except subprocess.TimeoutExpired:
                self.workload.kill()
                self.workload.wait()
        for n in self.nodes:
            n.proc.stop()
        if self.kazoo is not None:
            with contextlib.suppress(Exception):
                self.kazoo.stop()
                self.kazoo.close()
        if self.zk is not None:
            with contextlib.suppress(Exception):
                (self.report_dir / "zookeeper.log").write_text(self.zk.log_tail(100_000))
            self.zk.stop()


def longest_stall(ops: list[Op]) -> tuple[float, float]:
    """The longest time without any successful operation, and when it began.

    Not a verdict (availability may dip during a fault) but a measure: a chain
    that stays unavailable long after a fault is wedged.
    """
    times = sorted(op.complete for op in ops if op.outcome == "ok" and op.complete is not None)
    if not ops:
        return 0.0, 0.0
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
        description="Run clients against a real chain while a nemesis kills and pauses nodes; "
        "check linearizability, durability and convergence.",
    )
    p.add_argument("--nodes", type=int, default=3, help="chain length to keep (default 3)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of workload")
    p.add_argument("--seed", type=int, default=0, help="seed for the workload and the nemesis")
    p.add_argument("--report", required=True, help="directory for the report and logs")
    p.add_argument(
        "--session-timeout", type=float, default=2.0, help="nodes' ZooKeeper session timeout"
    )
    p.add_argument("--keys", type=int, default=8, help="keys the clients share (default 8)")
    p.add_argument("--fault-interval", type=float, default=3.0, help="mean seconds between faults")
    p.add_argument("--think", type=float, default=0.02, help="mean client pause between ops")
    p.add_argument("--deadline", type=float, default=8.0, help="client retry deadline")
    p.add_argument(
        "--op-timeout", type=float, default=12.0, help="give up on an operation (unknown)"
    )
    p.add_argument("--settle-timeout", type=float, default=90.0, help="seconds to converge")
    p.add_argument(
        "--check-timeout", type=float, default=600.0, help="linearizability search limit"
    )
    args = p.parse_args(argv)
    for name in ("nodes", "clients", "keys"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.duration <= 0 or args.session_timeout <= 0:
        p.error("--duration and --session-timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kvtwist-torture``; returns the exit status."""
    return Campaign(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
