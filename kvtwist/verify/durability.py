"""Did every acknowledged write survive?  Judged against the final state.

The linearizability check already covers the final reads when they are part
of the history; this check says the same thing in the terms an operator asks
about ("which acknowledged writes are gone?") and names them.

For each key, the acknowledged writes (puts and deletes) that no later
acknowledged write overwrote -- no other acknowledged write of the key began
after they completed -- are the ones that may legitimately be last.  Writes
with an unknown outcome may also be last (they may take effect at any time,
even after everything else).  A key whose final value is none of those has
lost an acknowledged write.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kvtwist.verify.history import Op

__all__ = ["LostWrite", "lost_writes"]


@dataclass(frozen=True)
class LostWrite:
    """A key whose final value contradicts its last acknowledged write(s)."""

    key: str
    final: str | None
    expected: tuple[Op, ...]  # the acknowledged writes, one of which should be visible

    def to_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "final": self.final,
            "expected_one_of": [str(op) for op in self.expected],
        }


def lost_writes(ops: Iterable[Op], final: Mapping[str, str | None]) -> list[LostWrite]:
    """The keys where an acknowledged, not overwritten write is missing from ``final``.

    ``final`` maps keys to their final value; a key it lacks is absent (None).
    """
    acked: dict[str, list[Op]] = defaultdict(list)
    maybe: dict[str, set[str | None]] = defaultdict(set)
    increments: dict[str, int] = defaultdict(int)  # INCRs of unknown outcome, per key
    for op in ops:
        if op.op in ("get", "setnx_refused"):
            continue  # wrote nothing
        if op.outcome == "ok":
            acked[op.key].append(op)
        elif op.outcome == "unknown" and op.op == "incr":
            increments[op.key] += 1
        elif op.outcome == "unknown":
            maybe[op.key].add(op.value)
    lost = []
    for key in sorted(acked):
        writes = acked[key]
        latest_invoke = max(w.invoke for w in writes)
        last = tuple(w for w in writes if w.complete is not None and not latest_invoke > w.complete)
        allowed = {w.value for w in last} | maybe[key]
        for w in last:  # each unknown INCR may have counted after it
            if w.op == "incr" and w.value is not None:
                allowed |= {str(int(w.value) + j) for j in range(1, increments[key] + 1)}
        value = final.get(key)
        if value not in allowed:
            lost.append(LostWrite(key, value, last))
    return lost
