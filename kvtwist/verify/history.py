"""Operation histories as JSON lines: what clients saw, one completed operation a line.

A history is the only evidence a linearizability check has, so the format is
deliberately plain (one JSON object per line, appendable while a campaign
runs, readable by other tools) and validated on the way in: a malformed
record would otherwise surface as a baffling verdict.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "OPS",
    "OUTCOMES",
    "HistoryError",
    "Op",
    "op_from_dict",
    "read_history",
    "write_history",
]

#: incr: an increment, ``value`` the number it answered; setnx: a put made only
#: if the key was absent (``value`` written), setnx_refused: one that found it there
OPS = ("get", "put", "del", "incr", "setnx", "setnx_refused")
OUTCOMES = ("ok", "fail", "unknown")

OpName = Literal["get", "put", "del", "incr", "setnx", "setnx_refused"]
Outcome = Literal["ok", "fail", "unknown"]


class HistoryError(ValueError):
    """A history record is malformed."""


@dataclass(frozen=True, slots=True)
class Op:
    """One operation as a client saw it.

    ``value`` is what a get read (None: absent) or what a put wrote; a del has
    none.  ``complete`` is None when the client never learned the outcome.
    Outcomes: ``ok`` (it happened, and for a get this is what it read),
    ``fail`` (it definitely did not happen), ``unknown`` (it may or may not
    have happened, e.g. a timeout).
    """

    process: int
    op: OpName
    key: str
    value: str | None
    invoke: float
    complete: float | None
    outcome: Outcome

    def to_dict(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "op": self.op,
            "key": self.key,
            "value": self.value,
            "invoke": self.invoke,
            "complete": self.complete,
            "outcome": self.outcome,
        }

    def __str__(self) -> str:
        value = "" if self.op == "del" else f" {self.value!r}"
        end = "?" if self.complete is None else f"{self.complete:.6f}"
        return (
            f"p{self.process} {self.op} {self.key!r}{value} [{self.invoke:.6f}, {end}]"
            f" {self.outcome}"
        )


def _number(record: dict[str, Any], name: str, where: str) -> float:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HistoryError(f"{where}: {name!r} must be a finite number, got {value!r}")
    return float(value)


def op_from_dict(record: Any, where: str = "record") -> Op:
    """Validate one decoded record and build its Op."""
    if not isinstance(record, dict):
        raise HistoryError(f"{where}: expected a JSON object, got {type(record).__name__}")
    process = record.get("process")
    if isinstance(process, bool) or not isinstance(process, int):
        raise HistoryError(f"{where}: 'process' must be an integer, got {process!r}")
    op = record.get("op")
    if op not in OPS:
        raise HistoryError(f"{where}: 'op' must be one of {OPS}, got {op!r}")
    key = record.get("key")
    if not isinstance(key, str):
        raise HistoryError(f"{where}: 'key' must be a string, got {key!r}")
    value = record.get("value")
    if value is not None and not isinstance(value, str):
        raise HistoryError(f"{where}: 'value' must be a string or null, got {value!r}")
    outcome = record.get("outcome")
    if outcome not in OUTCOMES:
        raise HistoryError(f"{where}: 'outcome' must be one of {OUTCOMES}, got {outcome!r}")
    invoke = _number(record, "invoke", where)
    complete: float | None = None
    if record.get("complete") is not None:
        complete = _number(record, "complete", where)
        if complete < invoke:
            raise HistoryError(f"{where}: completes ({complete}) before it is invoked ({invoke})")
    if op in ("put", "setnx", "setnx_refused") and value is None and outcome != "fail":
        raise HistoryError(f"{where}: a {op} needs a value")
    if op == "del":
        value = None
    if outcome == "ok" and complete is None:
        raise HistoryError(f"{where}: an 'ok' operation needs a completion time")
    return Op(process, op, key, value, invoke, complete, outcome)


def read_history(path: str | Path) -> list[Op]:
    """Read a JSON-lines history; blank lines are skipped, anything else must be an op."""
    ops = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise HistoryError(f"{where}: not JSON: {e}") from None
            ops.append(op_from_dict(record, where))
    return ops


def dumps(op: Op) -> str:
    """One history line (without the newline)."""
    return json.dumps(op.to_dict(), separators=(",", ":"))


def write_history(path: str | Path, ops: Iterable[Op]) -> None:
    """Write ``ops`` as JSON lines, replacing the file."""
    with open(path, "w", encoding="utf-8") as f:
        for op in ops:
            f.write(dumps(op))
            f.write("\n")
