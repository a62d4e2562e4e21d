"""Linearizability of a key-value history (Wing & Gong, with Lowe's memoization).

This is the algorithm Porcupine uses.  A key-value store is linearizable
exactly when each key on its own is a linearizable register (linearizability
is *local*: Herlihy & Wing), so the history is split per key and each key is
checked alone -- the split turns one hopeless search into many small ones.

For one key, the call and return events of its operations form a doubly
linked list in time order.  A depth-first search repeatedly picks a call
that may take effect now (it comes before the first return still in the
list), applies it to the register, and removes ("lifts") the call and its
return from the list; meeting a return whose call was not linearized means
backtracking.  The search remembers every (set of linearized operations,
register value) it has reached: from equal configurations the future is the
same, so each is explored once, which is what makes the search fast.

Operations whose outcome is unknown (a timeout, a lost connection) return at
+infinity: they may take effect at any moment after their invocation, or
never (linearizing last is the same as never, as nothing observes it).  An
unknown read says nothing and is dropped, as is any ``fail`` operation.
Because campaign writes carry unique values, an unknown put is tightened:
if no read saw its value it is dropped (it cannot matter), otherwise it must
take effect before the first such read completes.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvtwist.verify.history import Op

__all__ = ["KeyResult", "Result", "check", "check_key"]

_GET, _PUT, _DEL, _INCR, _SETNX, _REFUSED = 0, 1, 2, 3, 4, 5
_KINDS = {
    "get": _GET,
    "put": _PUT,
    "del": _DEL,
    "incr": _INCR,
    "setnx": _SETNX,
    "setnx_refused": _REFUSED,
}
_INF = math.inf
#: The value of a write nobody read: all such writes of a key leave the same state.
_UNREAD = "\x00unread"
# How many diagnostic operations to show around a failure.
_SHOW = 8


@dataclass
class KeyResult:
    """The verdict for one key.  ``linearizable`` is None when the search timed out."""

    key: str
    linearizable: bool | None
    operations: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """The verdict for a whole history.

    ``linearizable`` is True only when every key was shown linearizable;
    ``decided`` is False when a search ran out of time before finding a
    linearization or proving there is none (then ``linearizable`` is False
    but nothing was proved).
    """

    linearizable: bool
    bad_key: str | None = None
    decided: bool = True
    operations: int = 0
    keys: int = 0
    elapsed: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def verdict(self) -> str:
        """One line for people."""
        head = f"{self.operations} operations on {self.keys} keys, {self.elapsed:.2f}s"
        if self.linearizable:
            return f"linearizable ({head})"
        if not self.decided:
            return f"undecided: the search for key {self.bad_key!r} timed out ({head})"
        stuck = self.info.get("stuck")
        why = f"; cannot place {stuck}" if stuck else ""
        return f"NOT linearizable: key {self.bad_key!r}{why} ({head})"


class _Timeout(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Entry:
    """One operation as the search sees it: ``ret`` may be +infinity."""

    kind: int
    value: str | None
    call: float
    ret: float
    op: Op


def _prepare(ops: Sequence[Op]) -> list[_Entry]:
    """The operations of one key that constrain the register, with return times."""
    puts_of: dict[str | None, int] = defaultdict(int)
    reads_of: dict[str | None, list[float]] = defaultdict(list)
    # a refused SET NX saw the key present: an unread put may be why, so none is dropped
    conditional = any(op.op == "setnx_refused" and op.outcome == "ok" for op in ops)
    for op in ops:
        if op.outcome == "fail":
            continue
        if op.op in ("put", "setnx"):
            puts_of[op.value] += 1
        elif op.op == "get" and op.outcome == "ok":
            assert op.complete is not None
            reads_of[op.value].append(op.complete)
    entries = []
    for op in ops:
        if op.outcome == "fail":
            continue  # definitely did not happen
        if op.outcome == "ok":
            assert op.complete is not None
            entries.append(_Entry(_KINDS[op.op], op.value, op.invoke, op.complete, op))
            continue
        if op.op in ("get", "setnx_refused"):
            continue  # a read nobody saw the answer of constrains nothing
        ret = _INF
        # an unknown INCR answered nothing: its value says nothing
        value = None if op.op == "incr" else op.value
        if op.op in ("put", "setnx") and puts_of[op.value] == 1:
            seen = [t for t in reads_of.get(op.value, ()) if t >= op.invoke]
            if seen:
                ret = min(seen)  # it took effect, before the first read of it completed
            elif not conditional:
                continue  # unobserved: taking effect or not is indistinguishable
            else:
                value = _UNREAD  # only its presence may matter (to a refused SET NX)
        entries.append(_Entry(_KINDS[op.op], value, op.invoke, ret, op))
    return entries


def check_key(
    key: str,
    ops: Sequence[Op],
    initial: str | None = None,
    deadline: float | None = None,
) -> KeyResult:
    """Search for a linearization of one key's operations (register starts at ``initial``)."""
    entries = _prepare(ops)
    n = len(entries)
    if n == 0:
        return KeyResult(key, True, 0)
    try:
        found, info = _search(entries, initial, deadline)
    except _Timeout:
        return KeyResult(key, None, n, {"key": key, "reason": "timed out"})
    info["key"] = key
    return KeyResult(key, found, n, info)


def _search(
    entries: list[_Entry], initial: str | None, deadline: float | None
) -> tuple[bool, dict[str, Any]]:
    n = len(entries)
    # Event list: entry 2i is op i's call, 2i+1 its return.  Calls sort before
    # returns at equal times (treating them as concurrent, the permissive reading).
    events = sorted(
        range(2 * n),
        key=lambda e: (entries[e >> 1].ret, 1) if e & 1 else (entries[e >> 1].call, 0),
    )
    head = 2 * n
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    last = head
    for e in events:
        nxt[last] = e
        prv[e] = last
        last = e
    kinds = [x.kind for x in entries]
    values = [x.value for x in entries]
    bits = [1 << i for i in range(n)]
    # INCRs, DELs and unread writes of unknown outcome are interchangeable within their
    # class (the same effect, nothing to match, no return): of those whose calls are in
    # reach, only the earliest is tried, since any linearization using another can swap
    # the two
    free = [_free(x) for x in entries]

    def seen_up_to(stop: int) -> int:
        flags, c = 0, nxt[head]
        while c != -1:
            if not c & 1:
                flags |= free[c >> 1]
            if c == stop:
                break
            c = nxt[c]
        return flags

    seen = 0
    cache: set[tuple[int, str | None]] = set()
    stack: list[tuple[int, str | None]] = []
    linearized = 0
    state = initial
    best = -1
    info: dict[str, Any] = {}
    steps = 0
    e = nxt[head]
    while nxt[head] != -1:
        if not e & 1:  # a call: can it take effect now?
            i = e >> 1
            if free[i]:
                if seen & free[i]:
                    e = nxt[e]
                    continue
                seen |= free[i]
            kind = kinds[i]
            if kind == _GET:
                ok = values[i] == state
                new = state
            elif kind == _PUT or kind == _DEL:
                ok = True
                new = values[i] if kind == _PUT else None
            else:
                ok, new = _conditional(kind, values[i], state, entries[i].ret == _INF)
            if ok:
                lin = linearized | bits[i]
                memo = (lin, new)
                if memo not in cache:
                    cache.add(memo)
                    stack.append((e, state))
                    state = new
                    linearized = lin
                    _lift(nxt, prv, e)
                    e = nxt[head]
                    seen = 0
                    steps += 1
                    if deadline is not None and not steps & 0x3FF and time.monotonic() > deadline:
                        raise _Timeout
                    continue
            e = nxt[e]
        else:  # a return whose call is not linearized yet: back up
            if len(stack) > best:
                best = len(stack)
                info = _diagnose(entries, stack, state, e, nxt, head)
            if not stack:
                return False, info
            e, state = stack.pop()
            linearized ^= bits[e >> 1]
            _unlift(nxt, prv, e)
            seen = seen_up_to(e)
            e = nxt[e]
    return True, {}


def _lift(nxt: list[int], prv: list[int], e: int) -> None:
    """Take call ``e`` and its return out of the event list."""
    for x in (e, e + 1):
        p, q = prv[x], nxt[x]
        nxt[p] = q
        if q != -1:
            prv[q] = p


def _unlift(nxt: list[int], prv: list[int], e: int) -> None:
    """Put call ``e`` and its return back: the return first (it was lifted last)."""
    for x in (e + 1, e):
        nxt[prv[x]] = x
        if nxt[x] != -1:
            prv[nxt[x]] = x


def _free(x: _Entry) -> int:
    """The class of an interchangeable write of unknown outcome (0: none)."""
    if x.ret != _INF:
        return 0
    if x.kind == _INCR:
        return 1
    if x.kind == _DEL:
        return 2
    if x.value == _UNREAD:
        return 4 if x.kind == _PUT else 8
    return 0


def _conditional(
    kind: int, value: str | None, state: str | None, unknown: bool
) -> tuple[bool, str | None]:
    """INCR and SET NX on the register: (may it take effect now, the state after)."""
    if kind == _INCR:
        try:
            n = int(state) + 1 if state is not None else 1
        except ValueError:
            return False, state  # an INCR of text is refused, never answered
        new = str(n)
        return unknown or value == new, new
    if kind == _SETNX:
        if state is None:
            return True, value
        return unknown, state  # an unknown SET NX may have found the key there
    return state is not None, state  # refused: the key was there


def _diagnose(
    entries: list[_Entry],
    stack: list[tuple[int, str | None]],
    state: str | None,
    blocked: int,
    nxt: list[int],
    head: int,
) -> dict[str, Any]:
    """What the deepest partial linearization looked like, for the report."""
    candidates: list[str] = []
    e = nxt[head]
    while e != blocked and e != -1 and len(candidates) < _SHOW:
        if not e & 1:
            candidates.append(str(entries[e >> 1].op))
        e = nxt[e]
    return {
        "linearized": len(stack),
        "operations": len(entries),
        "state": state,
        "last_linearized": [str(entries[c >> 1].op) for c, _ in stack[-_SHOW:]],
        "stuck": str(entries[blocked >> 1].op),
        "concurrent_candidates": candidates,
    }


def check(
    ops: Iterable[Op],
    timeout: float | None = None,
    initial: dict[str, str | None] | None = None,
) -> Result:
    """Is the history linearizable for a register per key?

    Keys start absent unless ``initial`` says otherwise.  ``timeout`` bounds
    the whole search in seconds (None: no bound); the first non-linearizable
    key ends it.
    """
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    by_key: dict[str, list[Op]] = defaultdict(list)
    total = 0
    for op in ops:
        by_key[op.key].append(op)
        total += 1
    undecided: KeyResult | None = None
    # smallest keys first: a violation in a small key is found, and reported, sooner
    for key in sorted(by_key, key=lambda k: (len(by_key[k]), k)):
        r = check_key(key, by_key[key], (initial or {}).get(key), deadline)
        if r.linearizable is False:
            return Result(False, key, True, total, len(by_key), time.monotonic() - started, r.info)
        if r.linearizable is None:
            undecided = r
            break
    elapsed = time.monotonic() - started
    if undecided is not None:
        return Result(False, undecided.key, False, total, len(by_key), elapsed, undecided.info)
    return Result(True, None, True, total, len(by_key), elapsed)
