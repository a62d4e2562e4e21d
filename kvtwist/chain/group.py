"""Groups: several requests the head decides together, as one write (no I/O).

A group (native OP_MULTI: Redis's MULTI/EXEC, MSET, MSETNX, RENAME) is
numbered as one op.  The head decides each of its requests in order, each
against the state the ones before it left (the head's latest state, then the
group's own writes), and the outcome is one ``Update`` whose ``group`` field
lists the writes to make: the store and the log apply that op as one unit,
so every member, a crash and a recovery see all of them or none, and no
other write comes between them.

Each sub-update carries its request's answer (as a read-modify-write's
fields); one that writes nothing (a read, a failed condition, a refusal) is
marked ``skip``.  A RENAME is two writes, of which only the first answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kvtwist.chain.rmw import Cond, Kind, Rmw, RmwResult, decide, result_of, stamp
from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.tree import BTree

NO_SUCH_KEY = "no such key"


@dataclass(frozen=True)
class Op:
    """One request of a group: a read-modify-write of ``key`` (or a RENAME of it to ``dest``)."""

    key: bytes
    rmw: Rmw
    dest: bytes | None = None  # RENAME: the new name (rmw.cond ABSENT: only if it is free)


@dataclass(frozen=True)
class Group:
    """What a group asks: its requests in order."""

    ops: tuple[Op, ...]
    #: write nothing unless every CAS condition holds before the group (MSETNX)
    all_or_nothing: bool = False
    #: the most bytes its writes may come to (0: no limit): it travels as one update
    max_bytes: int = 0
    #: Redis's WATCH: (key, watch point) pairs; the group aborts, writing nothing,
    #: if a key was written after its point (kvtwist.chain.watch)
    watch: tuple[tuple[bytes, int], ...] = ()


def _sub(key: bytes, is_put: bool, data: bytes, result: RmwResult | None, skip: bool) -> Update:
    u = Update(key=key, is_put=is_put, data=b"" if skip else data, skip=skip)
    if result is not None:
        stamp(u, result)
    return u


def _refused(key: bytes, found: bool) -> Update:
    return _sub(key, False, b"", RmwResult(applied=False, found=found), True)


def decide_group(group: Group, latest: Callable[[bytes], bytes | None]) -> tuple[list[Update], str]:
    """The sub-updates a group comes to, and the refusal of the whole group, if any.

    ``latest`` is the head's latest state; each request sees it as the
    group's earlier requests left it.
    """
    view: dict[bytes, bytes | None] = {}

    def get(key: bytes) -> bytes | None:
        return view[key] if key in view else latest(key)

    ops = group.ops
    if group.all_or_nothing:
        failed = [op for op in ops if op.rmw.kind is Kind.CAS and not _holds(op, get)]
        if failed:
            return [_refused(op.key, get(op.key) is not None) for op in ops], ""
        ops = tuple(Op(op.key, _always(op.rmw), op.dest) for op in ops)
    subs: list[Update] = []
    for op in ops:
        current = get(op.key)
        if op.dest is not None:
            free = op.rmw.cond is not Cond.ABSENT or (op.dest != op.key and get(op.dest) is None)
            subs.extend(_rename(op.key, op.dest, current, view, free))
            continue
        is_put, data, result = decide(op.rmw, current)
        skip = bool(result.error) or not result.applied or op.rmw.kind is Kind.READ
        if op.rmw.kind is Kind.SETRANGE and not op.rmw.data:
            skip = True
        subs.append(_sub(op.key, is_put, data, result, skip))
        if not skip:
            view[op.key] = data if is_put else None
    # encoded, each with its tag and length: the group field stays within a chain frame
    size = sum(s.ByteSize() + 6 for s in subs)
    if group.max_bytes and size > group.max_bytes:
        why = f"the group's writes come to {size} bytes, over the limit of {group.max_bytes}"
        return [], why
    return subs, ""


def _holds(op: Op, get: Callable[[bytes], bytes | None]) -> bool:
    """Whether a request's condition holds: a RENAMENX's is that its new name is free."""
    if op.dest is not None:
        return op.rmw.cond is not Cond.ABSENT or (op.dest != op.key and get(op.dest) is None)
    return decide(op.rmw, get(op.key))[2].applied


def _always(rmw: Rmw) -> Rmw:
    return Rmw(
        rmw.kind,
        rmw.data,
        Cond.ALWAYS,
        b"",
        rmw.delete,
        rmw.want_old,
        rmw.delta,
        rmw.max_value,
        rmw.offset,
        rmw.fdelta,
    )


def _rename(
    src: bytes,
    dest: bytes,
    current: bytes | None,
    view: dict[bytes, bytes | None],
    free: bool = True,
) -> list[Update]:
    """Redis's RENAME: the value moves to ``dest``; an absent ``src`` is refused.

    Not ``free`` (a RENAMENX whose new name is taken, or is its own): nothing
    moves, and the answer says the condition did not hold.
    """
    if current is None:
        return [_sub(src, False, b"", RmwResult(error=NO_SUCH_KEY), True)]
    if not free:
        return [_sub(src, False, b"", RmwResult(applied=False, found=True), True)]
    moved = _sub(dest, True, current, RmwResult(found=True), False)
    if dest == src:
        moved.skip, moved.data = True, b""
        return [moved]
    view[dest] = current
    view[src] = None
    gone = Update(key=src, is_put=False)  # no answer of its own
    return [moved, gone]


def writes_of(u: Update) -> Iterable[Update]:
    """The writes an update makes: itself, or its group's writes in order."""
    if not u.group:
        return (u,)
    return [s for s in u.group if not s.skip]


def apply_group(tree: BTree, u: Update) -> None:
    """Make a group's writes in a tree, in order (the store and recovery both do)."""
    for w in u.group:
        if w.skip:
            continue
        if w.is_put:
            tree.put(w.key, w.data)
        else:
            tree.delete(w.key)


def answers_of(u: Update) -> tuple[RmwResult, ...]:
    """A group's answers, one per request, in order."""
    return tuple(r for s in u.group if (r := result_of(s)) is not None)


def group_size(u: Update) -> int:
    """Bytes a group's writes and answers hold beyond the update itself."""
    return sum(len(s.key) + len(s.data) + len(s.rmw_old) + len(s.rmw_error) for s in u.group)


__all__ = [
    "NO_SUCH_KEY",
    "Group",
    "Op",
    "answers_of",
    "apply_group",
    "decide_group",
    "group_size",
    "writes_of",
]
