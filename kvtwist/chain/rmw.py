"""Read-modify-writes, decided at the head against its latest state (no I/O).

A compare-and-set, an increment or an append is decided when the head numbers
it, against the value its key has after every update numbered before it (the
Sent list's last update of that key, else the committed tree).  The decision
is a plain PUT or DEL, so nothing downstream changes: the chain carries plain
updates, and the answer (old value, new number, whether the condition held)
travels in the update, so every member can answer a retry of it the same.

A request whose condition fails, or that is refused (not an integer), still
becomes an update that writes back what is there: its answer is given only
once that update commits, after everything numbered before it, so it is
linearizable like any write and a retry finds it in the retry table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

from kvtwist.proto.kvtwist_pb2 import Update

#: Redis's words for these refusals, kept so the RESP port can answer them as Redis does.
NOT_AN_INTEGER = "value is not an integer or out of range"
OVERFLOW = "increment or decrement would overflow"
NOT_A_FLOAT = "value is not a valid float"
NAN_OR_INFINITY = "increment would produce NaN or Infinity"
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class Cond(enum.IntEnum):
    """When a CAS writes (Message field 26)."""

    ALWAYS = 0
    ABSENT = 1
    PRESENT = 2
    EQUALS = 3


class Kind(enum.Enum):
    CAS = "cas"
    INCR = "incr"
    APPEND = "append"
    # inside a group (kvtwist.chain.group) only
    READ = "read"  # answers the value (old), writes nothing
    SETRANGE = "setrange"  # writes data at offset, zero-padded; number: the new length
    INCRFLOAT = "incrfloat"  # adds fdelta; old: the new value's text


@dataclass(frozen=True)
class Rmw:
    """What a read-modify-write asks: its kind and its arguments."""

    kind: Kind
    data: bytes = b""  # CAS: the value it puts; APPEND: what it appends
    cond: Cond = Cond.ALWAYS
    expect: bytes = b""
    delete: bool = False  # CAS: delete instead of put
    want_old: bool = False  # CAS: answer the value before
    delta: int = 0  # INCR
    max_value: int = 0  # APPEND, SETRANGE: the longest value it may make (0: no limit)
    offset: int = 0  # SETRANGE
    fdelta: str = ""  # INCRFLOAT: the increment as decimal text


@dataclass(frozen=True)
class RmwResult:
    """The answer of a decided read-modify-write."""

    applied: bool = True  # CAS: the condition held
    found: bool = False  # the key was there before
    old: bytes = b""  # its value before, when asked (CAS want_old)
    number: int = 0  # INCR: the new number; APPEND: the new length
    error: str = ""  # a refusal: nothing was changed

    @property
    def size(self) -> int:
        """Bytes beyond a plain retry-table entry (memory accounting)."""
        return len(self.old) + len(self.error)


def decide(rmw: Rmw, current: bytes | None) -> tuple[bool, bytes, RmwResult]:
    """The plain update (is_put, data) a request comes to, and its answer.

    A condition that fails, or a refusal, writes back ``current`` unchanged.
    """
    keep = (current is not None, current or b"")
    found = current is not None
    if rmw.kind is Kind.CAS:
        cond = rmw.cond
        if cond is Cond.ALWAYS:
            ok = True
        elif cond is Cond.ABSENT:
            ok = not found
        elif cond is Cond.PRESENT:
            ok = found
        else:
            ok = found and current == rmw.expect
        old = (current or b"") if rmw.want_old else b""
        result = RmwResult(applied=ok, found=found, old=old)
        if not ok:
            return *keep, result
        if rmw.delete:
            return False, b"", result
        return True, rmw.data, result
    if rmw.kind is Kind.INCR:
        try:
            n = parse_int(current) if found else 0
        except ValueError:
            return *keep, RmwResult(found=found, error=NOT_AN_INTEGER)
        n += rmw.delta
        if not INT64_MIN <= n <= INT64_MAX:
            return *keep, RmwResult(found=found, error=OVERFLOW)
        return True, str(n).encode(), RmwResult(found=found, number=n)
    if rmw.kind in _MORE:
        return _MORE[rmw.kind](rmw, current)
    # APPEND
    value = (current or b"") + rmw.data
    if rmw.max_value and len(value) > rmw.max_value:
        error = f"value of {len(value)} bytes exceeds the limit of {rmw.max_value}"
        return *keep, RmwResult(found=found, error=error)
    return True, value, RmwResult(found=found, number=len(value))


def parse_int(value: bytes | None) -> int:
    """A stored value as Redis reads an integer: decimal, no spaces, within 64 bits."""
    if value is None or not value or len(value) > 20:
        raise ValueError("not an integer")
    text = value.decode("ascii", "replace")
    body = text[1:] if text[0] == "-" else text
    if not body.isdigit() or not body.isascii() or (body[0] == "0" and len(body) > 1):
        raise ValueError("not an integer")
    if text == "-0":
        raise ValueError("not an integer")
    n = int(text)
    if not INT64_MIN <= n <= INT64_MAX:
        raise ValueError("out of range")
    return n


def stamp(u: Update, result: RmwResult) -> None:
    """Carry the answer in the update (every member answers a retry from it)."""
    u.rmw = True
    u.rmw_applied = result.applied
    u.rmw_found = result.found
    u.rmw_old = result.old
    u.rmw_number = result.number
    u.rmw_error = result.error


def result_of(u: Update) -> RmwResult | None:
    """The answer an update carries, if it is a decided read-modify-write."""
    if not u.rmw:
        return None
    return RmwResult(u.rmw_applied, u.rmw_found, u.rmw_old, u.rmw_number, u.rmw_error)


# the kinds a group decides (kvtwist.chain.group): they never stand alone


def _read(rmw: Rmw, current: bytes | None) -> tuple[bool, bytes, RmwResult]:
    found = current is not None
    return found, current or b"", RmwResult(found=found, old=current or b"")


def _setrange(rmw: Rmw, current: bytes | None) -> tuple[bool, bytes, RmwResult]:
    """Redis's SETRANGE: an empty write changes nothing (nor creates the key)."""
    found = current is not None
    old = current or b""
    if not rmw.data:
        return found, old, RmwResult(found=found, number=len(old))
    value = old.ljust(rmw.offset, b"\x00")
    value = value[: rmw.offset] + rmw.data + value[rmw.offset + len(rmw.data) :]
    if rmw.max_value and len(value) > rmw.max_value:
        error = f"value of {len(value)} bytes exceeds the limit of {rmw.max_value}"
        return found, old, RmwResult(found=found, error=error)
    return True, value, RmwResult(found=found, number=len(value))


def _incrfloat(rmw: Rmw, current: bytes | None) -> tuple[bool, bytes, RmwResult]:
    found = current is not None
    keep = (found, current or b"")
    try:
        base = parse_float(current) if found else 0.0
        delta = parse_float(rmw.fdelta.encode())
    except ValueError:
        return *keep, RmwResult(found=found, error=NOT_A_FLOAT)
    n = base + delta
    if n != n or n in (float("inf"), float("-inf")):
        return *keep, RmwResult(found=found, error=NAN_OR_INFINITY)
    text = format_float(n).encode()
    return True, text, RmwResult(found=found, old=text)


_MORE = {Kind.READ: _read, Kind.SETRANGE: _setrange, Kind.INCRFLOAT: _incrfloat}


def parse_float(value: bytes | None) -> float:
    """A value as Redis reads a float: decimal or exponent notation, no spaces, not NaN."""
    if not value or len(value) > 5000:
        raise ValueError("not a float")
    text = value.decode("ascii", "replace")
    if text.strip() != text or "_" in text or "nan" in text.lower():
        raise ValueError("not a float")
    return float(text)


def format_float(n: float) -> str:
    """A float as Redis writes INCRBYFLOAT's result: positional, no trailing zeros."""
    text = format(Decimal(repr(n)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
