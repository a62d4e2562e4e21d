"""The Redis commands kvtwist answers: a table from name to handler.

Each handler turns its command into native requests (GET, PUT, DEL, RANGE,
CAS, INCR, APPEND, ...) handed to the node's own dispatcher, so a RESP
command goes exactly where the same native request would: writes to the
head, reads to the tail, relayed when they arrive elsewhere.  What comes
back is encoded as Redis replies it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from kvtwist import wire
from kvtwist.chain.rmw import NOT_AN_INTEGER, Cond
from kvtwist.resp import codec
from kvtwist.wire import Message

if TYPE_CHECKING:
    from kvtwist.resp.protocol import RespConnection

#: The Redis version whose replies kvtwist imitates (clients pick features by it).
REDIS_COMPAT = "7.0.0"
#: Keys a SCAN step reads when it is given no COUNT (Redis's default).
SCAN_COUNT = 10
SYNTAX = "ERR syntax error"

Reply = bytes | Deferred[bytes]
#: "barrier" (WATCH) waits for every earlier command, and every later one for it
Kind = Literal["local", "read", "write", "barrier"]


class RespError(Exception):
    """An error reply; the text begins with its code."""


@dataclass(frozen=True)
class Command:
    handler: Callable[[RespConnection, list[bytes]], Reply]
    #: Redis's arity: exactly n arguments (the name included), or at least -n
    arity: int
    #: reads wait for earlier writes of the connection and writes for earlier reads
    kind: Kind
    #: may run before AUTH
    no_auth: bool = False


def check_native(reply: Message) -> Message:
    """A native reply, or its ERROR as Redis words a retryable or final failure."""
    if reply.opcode == wire.OP_ERROR:
        code = "TRYAGAIN" if reply.retry else "ERR"
        raise RespError(f"{code} {reply.error}")
    return reply


def to_int(arg: bytes) -> int:
    try:
        text = arg.decode("ascii")
        if text.strip() != text or not text:
            raise ValueError
        n = int(text)
    except (UnicodeDecodeError, ValueError):
        raise RespError(f"ERR {NOT_AN_INTEGER}") from None
    if not -(2**63) <= n < 2**63:
        raise RespError(f"ERR {NOT_AN_INTEGER}")
    return n


# glob patterns, as Redis matches them (KEYS, SCAN MATCH)


def glob_regex(pattern: bytes) -> re.Pattern[bytes]:
    """Redis's glob: ``*``, ``?``, ``[abc]``, ``[^a-z]``, and ``\\`` escaping one byte."""
    out = bytearray()
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i : i + 1]
        if c == b"*":
            out += b".*"
        elif c == b"?":
            out += b"."
        elif c == b"\\" and i + 1 < n:
            i += 1
            out += re.escape(pattern[i : i + 1])
        elif c == b"[":
            j = pattern.find(b"]", i + 1)
            if j < 0:
                out += re.escape(c)
            else:
                body = pattern[i + 1 : j]
                neg = body.startswith(b"^")
                if neg:
                    body = body[1:]
                parts = bytearray()
                k = 0
                while k < len(body):
                    if body[k : k + 1] == b"\\" and k + 1 < len(body):
                        k += 1
                    if k + 2 < len(body) and body[k + 1 : k + 2] == b"-":
                        lo, hi = sorted((body[k], body[k + 2]))
                        parts += re.escape(bytes([lo])) + b"-" + re.escape(bytes([hi]))
                        k += 3
                        continue
                    parts += re.escape(body[k : k + 1])
                    k += 1
                out += b"[" + (b"^" if neg else b"") + bytes(parts) + b"]" if parts else b"(?!)"
                i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile(bytes(out), re.DOTALL)


def glob_match(pattern: bytes, key: bytes) -> bool:
    return glob_regex(pattern).fullmatch(key) is not None


# SCAN cursors: the last key returned, as the decimal number clients expect


def cursor_of(key: bytes) -> bytes:
    return str(int.from_bytes(b"\x01" + key, "big")).encode()


def key_of(cursor: bytes) -> bytes | None:
    """The key a cursor resumes after; None for cursor 0 (the start)."""
    try:
        n = int(cursor)
    except ValueError:
        raise RespError("ERR invalid cursor") from None
    if n == 0:
        return None
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    if n < 0 or raw[:1] != b"\x01":
        raise RespError("ERR invalid cursor")
    return raw[1:]


# connection and server


def ping(c: RespConnection, args: list[bytes]) -> Reply:
    if len(args) > 2:
        raise RespError("ERR wrong number of arguments for 'ping' command")
    return codec.bulk(args[1]) if len(args) == 2 else codec.PONG


def echo(c: RespConnection, args: list[bytes]) -> Reply:
    return codec.bulk(args[1])


def quit_(c: RespConnection, args: list[bytes]) -> Reply:
    c.close_after_reply()
    return codec.OK


def auth(c: RespConnection, args: list[bytes]) -> Reply:
    user: bytes | None
    if len(args) == 2:
        user, password = None, args[1]
    elif len(args) == 3:
        user, password = args[1], args[2]
    else:
        raise RespError(SYNTAX)
    c.log_in(user, password)
    return codec.OK


def hello(c: RespConnection, args: list[bytes]) -> Reply:
    resp = c.resp
    i = 1
    if len(args) > 1:
        try:
            resp = int(args[1])
        except ValueError:
            raise RespError("ERR Protocol version is not an integer or out of range") from None
        if resp not in (2, 3):
            raise RespError("NOPROTO unsupported protocol version")
        i = 2
    name = None
    while i < len(args):
        opt = args[i].upper()
        if opt == b"AUTH" and i + 2 < len(args):
            c.log_in(args[i + 1], args[i + 2])
            i += 3
        elif opt == b"SETNAME" and i + 1 < len(args):
            name = args[i + 1]
            i += 2
        else:
            opt_text = args[i].decode(errors="replace")
            raise RespError(f"ERR Syntax error in HELLO option '{opt_text}'")
    if not c.logged_in:
        raise RespError("NOAUTH HELLO must be called with the client already authenticated")
    if name is not None:
        c.name = name
    c.resp = resp
    b = codec.bulk
    return codec.mapping(
        [
            (b(b"server"), b(b"kvtwist")),
            (b(b"version"), b(REDIS_COMPAT.encode())),
            (b(b"proto"), codec.integer(resp)),
            (b(b"id"), codec.integer(c.id)),
            (b(b"mode"), b(b"standalone")),
            (b(b"role"), b(b"master")),
            (b(b"modules"), codec.array([])),
        ],
        resp,
    )


def select(c: RespConnection, args: list[bytes]) -> Reply:
    if to_int(args[1]) != 0:
        raise RespError("ERR DB index is out of range")
    return codec.OK


def client(c: RespConnection, args: list[bytes]) -> Reply:
    sub = args[1].upper()
    if sub == b"SETNAME" and len(args) == 3:
        if any(ch <= 0x20 or ch > 0x7E for ch in args[2]):
            raise RespError(
                "ERR Client names cannot contain spaces, newlines or special characters."
            )
        c.name = args[2]
        return codec.OK
    if sub == b"GETNAME" and len(args) == 2:
        return codec.bulk(c.name or None, c.resp)
    if sub == b"ID" and len(args) == 2:
        return codec.integer(c.id)
    if sub == b"SETINFO" and len(args) == 4:
        attr = args[2].upper()
        if attr not in (b"LIB-NAME", b"LIB-VER"):
            raise RespError(f"ERR Unrecognized option '{args[2].decode(errors='replace')}'")
        c.lib[attr.decode().lower()] = args[3]
        return codec.OK
    if sub == b"INFO" and len(args) == 2:
        return codec.verbatim(c.info_line() + b"\n", c.resp)
    if sub == b"LIST":
        conns = sorted(_listed(c, args[2:]), key=lambda x: x.id)
        return codec.verbatim(b"".join(x.info_line() + b"\n" for x in conns), c.resp)
    name = args[1].decode(errors="replace")
    raise RespError(
        f"ERR unknown subcommand or wrong number of arguments for '{name}'. Try CLIENT HELP."
    )


#: CLIENT LIST TYPE's types: every RESP connection is a normal client.
CLIENT_TYPES = (b"normal", b"master", b"replica", b"slave", b"pubsub")


def _listed(c: RespConnection, args: list[bytes]) -> list[RespConnection]:
    """CLIENT LIST's filters, as Redis's: ``[TYPE type] [ID id [id ...]]``."""
    conns = list(c.factory.connections)
    if not args:
        return conns
    option = args[0].upper()
    if option == b"TYPE" and len(args) == 2:
        kind = args[1].lower()
        if kind not in CLIENT_TYPES:
            raise RespError(f"ERR Unknown client type '{args[1].decode(errors='replace')}'")
        return conns if kind == b"normal" else []
    if option == b"ID" and len(args) > 1:
        ids = set()
        for arg in args[1:]:
            n = to_int(arg) if arg.lstrip(b"-").isdigit() else 0
            if n <= 0:
                raise RespError("ERR Invalid client ID")
            ids.add(n)
        return [x for x in conns if x.id in ids]
    raise RespError("ERR syntax error")


def command(c: RespConnection, args: list[bytes]) -> Reply:
    if len(args) == 1:
        return codec.array([_command_info(n, cmd) for n, cmd in sorted(COMMANDS.items())])
    sub = args[1].upper()
    if sub == b"COUNT":
        return codec.integer(len(COMMANDS))
    if sub == b"DOCS":
        return codec.mapping([], c.resp)  # no docs: redis-cli then gives no hints
    if sub == b"INFO":
        names = [a.decode(errors="replace").lower() for a in args[2:]]
        return codec.array(
            [_command_info(n, COMMANDS[n]) if n in COMMANDS else codec.null(c.resp) for n in names]
        )
    name = args[1].decode(errors="replace")
    raise RespError(
        f"ERR unknown subcommand or wrong number of arguments for '{name}'. Try COMMAND HELP."
    )


def _command_info(name: str, cmd: Command) -> bytes:
    flags = [b"readonly"] if cmd.kind == "read" else [b"write"] if cmd.kind == "write" else []
    first = 0 if cmd.kind == "local" else 1
    last = -1 if cmd.arity < 0 and first else first
    return codec.array(
        [
            codec.bulk(name.encode()),
            codec.integer(cmd.arity),
            codec.array([codec.simple(f.decode()) for f in flags]),
            codec.integer(first),
            codec.integer(last),
            codec.integer(1 if first else 0),
        ]
    )


def time_(c: RespConnection, args: list[bytes]) -> Reply:
    now = time.time()
    secs = int(now)
    return codec.bulks([str(secs).encode(), str(int((now - secs) * 1e6)).encode()])


def info(c: RespConnection, args: list[bytes]) -> Reply:
    wanted = {a.lower() for a in args[1:]} or {b"default"}
    every = bool(wanted & {b"all", b"everything", b"default"})

    def build(size: int | None) -> bytes:
        sections = []
        for name, fields in c.info_sections(size):
            if every or name.lower().encode() in wanted:
                lines = [f"# {name}"] + [f"{k}:{v}" for k, v in fields]
                sections.append("\r\n".join(lines) + "\r\n")
        return codec.verbatim("\r\n".join(sections).encode(), c.resp)

    if every or b"keyspace" in wanted:
        return c.read(wire.req_size()).addCallback(lambda r: build(int(r.result)))
    return build(None)


def dbsize(c: RespConnection, args: list[bytes]) -> Reply:
    return c.read(wire.req_size()).addCallback(lambda r: codec.integer(int(r.result)))


def refused(what: str) -> Callable[[RespConnection, list[bytes]], Reply]:
    def handler(c: RespConnection, args: list[bytes]) -> Reply:
        raise RespError(f"ERR {args[0].decode(errors='replace').upper()} {what}")

    return handler


# strings


def get(c: RespConnection, args: list[bytes]) -> Reply:
    return c.read(wire.req_get(args[1])).addCallback(lambda r: codec.bulk(_value(r), c.resp))


def _value(r: Message) -> bytes | None:
    return bytes(r.values[0]) if r.values else None


def set_(c: RespConnection, args: list[bytes]) -> Reply:
    key, value = args[1], args[2]
    cond, get_old = Cond.ALWAYS, False
    for opt in args[3:]:
        o = opt.upper()
        if o == b"NX" and cond is Cond.ALWAYS:
            cond = Cond.ABSENT
        elif o == b"XX" and cond is Cond.ALWAYS:
            cond = Cond.PRESENT
        elif o == b"GET":
            get_old = True
        elif o in (b"EX", b"PX", b"EXAT", b"PXAT", b"KEEPTTL"):
            raise RespError(f"ERR SET {o.decode()} is not supported: kvtwist keeps no expiry times")
        else:
            raise RespError(SYNTAX)
    if cond is Cond.ALWAYS and not get_old:
        return c.write(wire.req_put(key, value)).addCallback(lambda _: codec.OK)
    msg = wire.req_cas(key, value, cond, want_old=get_old)

    def done(r: Message) -> bytes:
        if get_old:
            return codec.bulk(_value(r) if r.found else None, c.resp)
        return codec.OK if r.applied else codec.null(c.resp)

    return c.write(msg).addCallback(done)


def setnx(c: RespConnection, args: list[bytes]) -> Reply:
    msg = wire.req_cas(args[1], args[2], Cond.ABSENT)
    return c.write(msg).addCallback(lambda r: codec.integer(int(r.applied)))


def getset(c: RespConnection, args: list[bytes]) -> Reply:
    msg = wire.req_cas(args[1], args[2], Cond.ALWAYS, want_old=True)
    return c.write(msg).addCallback(lambda r: codec.bulk(_value(r) if r.found else None, c.resp))


def getdel(c: RespConnection, args: list[bytes]) -> Reply:
    msg = wire.req_cas(args[1], cond=Cond.ALWAYS, delete=True, want_old=True)
    return c.write(msg).addCallback(lambda r: codec.bulk(_value(r) if r.found else None, c.resp))


def _read_keys(c: RespConnection, keys: list[bytes]) -> Deferred[dict[bytes, bytes]]:
    """The values of ``keys`` that are there, read at one state: one command is
    one read, as in Redis (separate GETs may each follow a different write)."""
    msg = wire.req_get(keys[0]) if len(keys) == 1 else wire.req_get_many(keys)

    def found(r: Message) -> dict[bytes, bytes]:
        if r.c_type == wire.CT_VALUE:  # the one key's reply
            return {keys[0]: bytes(r.values[0])} if r.values else {}
        return dict(zip(map(bytes, r.keys), map(bytes, r.values), strict=True))

    return c.read(msg).addCallback(found)


def mget(c: RespConnection, args: list[bytes]) -> Reply:
    keys = args[1:]
    return _read_keys(c, keys).addCallback(
        lambda got: codec.bulks([got.get(k) for k in keys], c.resp)
    )


def delete(c: RespConnection, args: list[bytes]) -> Reply:
    ds = [c.write(wire.req_del(k)) for k in args[1:]]
    return _all(ds).addCallback(lambda rs: codec.integer(sum(bool(r.found) for r in rs)))


def exists(c: RespConnection, args: list[bytes]) -> Reply:
    keys = args[1:]
    return _read_keys(c, keys).addCallback(lambda got: codec.integer(sum(k in got for k in keys)))


def strlen(c: RespConnection, args: list[bytes]) -> Reply:
    return c.read(wire.req_get(args[1])).addCallback(
        lambda r: codec.integer(len(r.values[0]) if r.values else 0)
    )


def type_(c: RespConnection, args: list[bytes]) -> Reply:
    return c.read(wire.req_get(args[1])).addCallback(
        lambda r: codec.simple("string" if r.values else "none")
    )


def append(c: RespConnection, args: list[bytes]) -> Reply:
    msg = wire.req_append(args[1], args[2])
    return c.write(msg).addCallback(lambda r: codec.integer(int(r.number)))


def incr_by(sign: int, fixed: int | None) -> Callable[[RespConnection, list[bytes]], Reply]:
    def handler(c: RespConnection, args: list[bytes]) -> Reply:
        delta = fixed if fixed is not None else to_int(args[2])
        delta *= sign
        if not -(2**63) <= delta < 2**63:
            raise RespError("ERR decrement would overflow")
        msg = wire.req_incr(args[1], delta)
        return c.write(msg).addCallback(lambda r: codec.integer(int(r.number)))

    return handler


# the keyspace


def keys(c: RespConnection, args: list[bytes]) -> Reply:
    pattern = glob_regex(args[1])
    return c.read(wire.req_getkeys()).addCallback(
        lambda r: codec.bulks([k for k in r.keys if pattern.fullmatch(k)])
    )


def scan(c: RespConnection, args: list[bytes]) -> Reply:
    after = key_of(args[1])
    pattern = None
    count = SCAN_COUNT
    i = 2
    while i < len(args):
        opt = args[i].upper()
        if i + 1 >= len(args):
            raise RespError(SYNTAX)
        if opt == b"MATCH":
            pattern = glob_regex(args[i + 1])
        elif opt == b"COUNT":
            count = to_int(args[i + 1])
            if count < 1:
                raise RespError(SYNTAX)
        elif opt == b"TYPE":
            if args[i + 1].lower() != b"string":
                count = 0  # every value is a string: nothing else to find
        else:
            raise RespError(SYNTAX)
        i += 2
    if count == 0:
        return codec.array([codec.bulk(b"0"), codec.array([])])
    start = None if after is None else after + b"\x00"  # the first key after the last one
    msg = wire.req_range(start, None, min(count, 10_000))

    def done(r: Message) -> bytes:
        found = list(r.keys)
        nxt = cursor_of(found[-1]) if len(found) >= min(count, 10_000) else b"0"
        if pattern is not None:
            found = [k for k in found if pattern.fullmatch(k)]
        return codec.array([codec.bulk(nxt), codec.bulks(found)])

    return c.read(msg).addCallback(done)


def _all(ds: list[Deferred[Message]]) -> Deferred[list[Message]]:
    """Every reply, or the first failure (each is checked already)."""

    def first(f: Failure) -> Failure:
        return f.value.subFailure  # type: ignore[union-attr,no-any-return]

    return defer.gatherResults(ds, consumeErrors=True).addErrback(first)


COMMANDS: dict[str, Command] = {
    "ping": Command(ping, -1, "local"),
    "echo": Command(echo, 2, "local"),
    "quit": Command(quit_, -1, "local", no_auth=True),
    "auth": Command(auth, -2, "local", no_auth=True),
    "hello": Command(hello, -1, "local", no_auth=True),
    "select": Command(select, 2, "local"),
    "client": Command(client, -2, "local"),
    "command": Command(command, -1, "local"),
    "time": Command(time_, 1, "local"),
    "info": Command(info, -1, "read"),
    "dbsize": Command(dbsize, 1, "read"),
    "get": Command(get, 2, "read"),
    "set": Command(set_, -3, "write"),
    "setnx": Command(setnx, 3, "write"),
    "getset": Command(getset, 3, "write"),
    "getdel": Command(getdel, 2, "write"),
    "mget": Command(mget, -2, "read"),
    "del": Command(delete, -2, "write"),
    "unlink": Command(delete, -2, "write"),
    "exists": Command(exists, -2, "read"),
    "strlen": Command(strlen, 2, "read"),
    "type": Command(type_, 2, "read"),
    "append": Command(append, 3, "write"),
    "incr": Command(incr_by(1, 1), 2, "write"),
    "decr": Command(incr_by(-1, 1), 2, "write"),
    "incrby": Command(incr_by(1, None), 3, "write"),
    "decrby": Command(incr_by(-1, None), 3, "write"),
    "keys": Command(keys, 2, "read"),
    "scan": Command(scan, -2, "read"),
}

# the groups (MSET, RENAME, ...) and the rest, in a module of their own
from kvtwist.resp import groups, transaction  # noqa: E402

COMMANDS.update(groups.COMMANDS)
COMMANDS.update(transaction.COMMANDS)

__all__ = ["COMMANDS", "Command", "RespError", "check_native"]
