"""The end of a campaign as data (``Findings``) and the checks it must pass.

The exit status, report.json's ``ok`` and ``failed_checks`` and the reasons a
failing run prints all come from the one list ``checks()`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvtwist.verify.durability import LostWrite
from kvtwist.verify.history import Op
from kvtwist.verify.linearizability import Result


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
