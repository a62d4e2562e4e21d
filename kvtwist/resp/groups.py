"""The Redis commands that are native groups (OP_MULTI), and the rest of the strings.

MSET, MSETNX, RENAME, RENAMENX, SETRANGE and INCRBYFLOAT each become one OP_MULTI: the
head decides its requests together against its latest state, in write order,
and the chain applies them as one op, so a reader sees all of an MSET or
none of it.  GETRANGE is a read sliced here; WAIT answers from the chain's
membership; FLUSHDB and FLUSHALL run only on a node started with
``--resp-allow-flush``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvtwist import wire
from kvtwist.chain.rmw import NOT_A_FLOAT, parse_float
from kvtwist.resp import codec
from kvtwist.resp.commands import Command, Reply, RespError, check_native, to_int
from kvtwist.wire import Message

if TYPE_CHECKING:
    from kvtwist.resp.protocol import RespConnection

#: Redis's largest string (proto-max-bulk-len): SETRANGE refuses to reach past it.
MAX_STRING = 512 * 1024 * 1024
#: Keys one step of FLUSHDB reads and deletes.
FLUSH_STEP = 1000

#: A sub-request's answer: its reply, or the error Redis words it as.
Answer = Message | RespError


def answers(reply: Message) -> list[Answer]:
    """Each request's answer in an OP_MULTI reply, in order."""
    out: list[Answer] = []
    for one in reply.ops:
        try:
            out.append(check_native(one))
        except RespError as e:
            out.append(e)
    return out


def ok(a: Answer) -> Message:
    """A request's reply; its error raised as the command's."""
    if isinstance(a, RespError):
        raise a
    return a


def group(
    c: RespConnection,
    ops: list[Message],
    build: Callable[[list[Answer]], bytes],
    all_or_nothing: bool = False,
) -> Reply:
    return c.write(wire.req_multi(ops, all_or_nothing)).addCallback(lambda r: build(answers(r)))


def _all_ok(rs: list[Answer]) -> bytes:
    for r in rs:
        ok(r)
    return codec.OK


def mset(c: RespConnection, args: list[bytes]) -> Reply:
    if len(args) % 2 == 0:
        raise RespError("ERR wrong number of arguments for 'mset' command")
    ops = [wire.req_put(args[i], args[i + 1]) for i in range(1, len(args), 2)]
    return group(c, ops, _all_ok)


def msetnx(c: RespConnection, args: list[bytes]) -> Reply:
    if len(args) % 2 == 0:
        raise RespError("ERR wrong number of arguments for 'msetnx' command")
    ops = [wire.req_cas(args[i], args[i + 1], cond=1) for i in range(1, len(args), 2)]
    return group(c, ops, lambda rs: codec.integer(int(all(ok(r).applied for r in rs))), True)


def rename(c: RespConnection, args: list[bytes]) -> Reply:
    return group(c, [wire.req_rename(args[1], args[2])], _all_ok)


def renamenx(c: RespConnection, args: list[bytes]) -> Reply:
    op = wire.req_rename(args[1], args[2], nx=True)
    return group(c, [op], lambda rs: codec.integer(int(ok(rs[0]).applied)))


def setrange(c: RespConnection, args: list[bytes]) -> Reply:
    offset = to_int(args[2])
    if offset < 0:
        raise RespError("ERR offset is out of range")
    if offset + len(args[3]) > MAX_STRING:
        raise RespError("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    op = wire.req_setrange(args[1], offset, args[3])
    return group(c, [op], lambda rs: codec.integer(int(ok(rs[0]).number)))


def incrbyfloat(c: RespConnection, args: list[bytes]) -> Reply:
    try:
        parse_float(args[2])
    except ValueError:
        raise RespError(f"ERR {NOT_A_FLOAT}") from None
    op = wire.req_incrbyfloat(args[1], args[2].decode("ascii"))
    return group(c, [op], lambda rs: codec.bulk(bytes(ok(rs[0]).values[0])))


def getrange(c: RespConnection, args: list[bytes]) -> Reply:
    start, end = to_int(args[2]), to_int(args[3])
    return c.read(wire.req_get(args[1])).addCallback(
        lambda r: codec.bulk(substring(bytes(r.values[0]) if r.values else b"", start, end))
    )


def substring(value: bytes, start: int, end: int) -> bytes:
    """GETRANGE's slice: indexes from the end when negative, both ends included."""
    n = len(value)
    if start < 0 and end < 0 and start > end:
        return b""
    if start < 0:
        start = max(n + start, 0)
    if end < 0:
        end = max(n + end, 0)
    end = min(end, n - 1)
    if start > end or n == 0:
        return b""
    return value[start : end + 1]


def wait(c: RespConnection, args: list[bytes]) -> Reply:
    """Every write this connection was answered is on every member: all of them hold it."""
    to_int(args[1])
    if to_int(args[2]) < 0:
        raise RespError("ERR timeout is negative")
    view = c.factory.dispatcher.replica.view
    return codec.integer(max(len(view.members) - 1, 0) if view is not None else 0)


def flush(c: RespConnection, args: list[bytes]) -> Reply:
    """FLUSHDB/FLUSHALL [ASYNC|SYNC]: delete every key, a page at a time (not atomic)."""
    name = args[0].decode(errors="replace").upper()
    if not c.factory.allow_flush:
        raise RespError(f"ERR {name} is refused: the node was not started with --resp-allow-flush")
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        raise RespError("ERR syntax error")

    def page(_: object = None) -> Reply:
        return c.read(wire.req_range(None, None, FLUSH_STEP)).addCallback(delete)

    def delete(r: Message) -> Reply:
        if not r.keys:
            return codec.OK
        ops = [wire.req_del(k) for k in r.keys]
        return c.write_now(wire.req_multi(ops)).addCallback(page)

    return page()


COMMANDS: dict[str, Command] = {
    "mset": Command(mset, -3, "write"),
    "msetnx": Command(msetnx, -3, "write"),
    "rename": Command(rename, 3, "write"),
    "renamenx": Command(renamenx, 3, "write"),
    "setrange": Command(setrange, 4, "write"),
    "incrbyfloat": Command(incrbyfloat, 3, "write"),
    "getrange": Command(getrange, 4, "read"),
    "substr": Command(getrange, 4, "read"),
    "wait": Command(wait, 3, "read"),
    "flushdb": Command(flush, -1, "write"),
    "flushall": Command(flush, -1, "write"),
}
