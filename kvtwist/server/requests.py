"""Validation of client requests, kind by kind, and the reads they turn into.

Every check raises :class:`BadRequest` with the reason the client reads in its
ERROR reply.  A read is validated on the reactor and becomes a ``Reader``: the
work a reader thread does on one view of the tree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kvtwist import wire
from kvtwist.chain.bounds import Moved, narrowest
from kvtwist.chain.group import Group, Op
from kvtwist.chain.link import MAX_CLIENT_ID
from kvtwist.chain.outcomes import ReadView
from kvtwist.chain.rmw import Cond, Kind, Rmw
from kvtwist.chain.state import WriteRequest
from kvtwist.server.limits import Limits
from kvtwist.wire import Message

#: Reads whose replies may reach --max-reply: they hold that much of a reply budget.
BIG_READS = frozenset({wire.OP_GETKEYS, wire.OP_GETVALUES, wire.OP_RANGE})
#: Reads of one key or one number, whatever the store's size: done on the reactor.
POINT_READS = frozenset({wire.OP_GET, wire.OP_VERIFY})
#: The most keys a GET of KEYS may name and still be looked up on the reactor; one
#: naming more goes to a reader thread, so no request holds the reactor up for long.
LOOK_KEYS = 64
#: Bytes a repeated field's element costs beyond its contents (tag, length), at most.
_ELEMENT_OVERHEAD = 6

#: The work of one read against a snapshot: a complete reply frame.
Reader = Callable[[ReadView], bytes]


class BadRequest(Exception):
    """The request is malformed; the reason goes back to the client."""


def check_ctype(msg: Message, want: int) -> None:
    if msg.c_type != want:
        raise BadRequest(
            f"{wire.op_name(msg.opcode)} needs c_type {wire.Message.CType.Name(want)}"  # type: ignore[arg-type]
            f", got {msg.c_type}"
        )


def check_key(msg: Message, ctype: int, key: bytes | None, limits: Limits) -> bytes:
    check_ctype(msg, ctype)
    if key is None:
        raise BadRequest(f"{wire.op_name(msg.opcode)} needs a key")
    if not key:
        raise BadRequest("the key is empty")
    size = len(key)
    if size > limits.max_key:
        raise BadRequest(f"key of {size} bytes exceeds the limit of {limits.max_key}")
    return key


def single_key(msg: Message, limits: Limits) -> bytes:
    """The key of a GET or DEL."""
    return check_key(msg, wire.CT_KEY, msg.keys[0] if msg.keys else None, limits)


def write_request(msg: Message, limits: Limits) -> WriteRequest:
    """Validate a PUT or DEL."""
    client_id = msg.client_id
    if len(client_id) > MAX_CLIENT_ID // 4:
        size = len(client_id.encode())
        if size > MAX_CLIENT_ID:
            raise BadRequest(f"client_id of {size} bytes exceeds the limit of {MAX_CLIENT_ID}")
    dedup = (client_id, msg.request_id, msg.ack_below, msg.resend)
    if client_id and msg.ack_below > msg.request_id:
        raise BadRequest(f"ack_below {msg.ack_below} is above request_id {msg.request_id}")
    op = msg.opcode
    if op == wire.OP_MULTI:
        return False, b"", b"", *dedup, group_request(msg, limits)
    if op == wire.OP_PUT:
        key, data = _entry(msg, limits)
        return True, key, data, *dedup
    if op == wire.OP_DEL:
        return False, single_key(msg, limits), b"", *dedup
    if op == wire.OP_INCR:
        rmw = Rmw(Kind.INCR, delta=msg.delta)
        return True, single_key(msg, limits), b"", *dedup, rmw
    key, data = _entry(msg, limits)
    if op == wire.OP_APPEND:
        return True, key, b"", *dedup, Rmw(Kind.APPEND, data, max_value=limits.max_value)
    try:
        cond = Cond(msg.cond)
    except ValueError:
        raise BadRequest(f"CAS cond {msg.cond} is none of 0-3") from None
    if len(msg.expect) > limits.max_value:
        raise BadRequest(f"expect of {len(msg.expect)} bytes exceeds the value limit")
    rmw = Rmw(Kind.CAS, data, cond, msg.expect, msg.delete, msg.want_old)
    return True, key, b"", *dedup, rmw


def group_request(msg: Message, limits: Limits) -> Group:
    """Validate an OP_MULTI: each of its requests as on its own, decided together."""
    if not msg.ops and not msg.watch_keys:
        raise BadRequest("MULTI needs at least one request in ops")
    return Group(
        tuple(_group_op(sub, limits) for sub in msg.ops),
        all_or_nothing=msg.all_or_nothing,
        max_bytes=limits.max_key + limits.max_value,
        watch=_watch(msg, limits),
    )


def _watch(msg: Message, limits: Limits) -> tuple[tuple[bytes, int], ...]:
    """An OP_MULTI's watched keys, each with its watch point."""
    keys, points = msg.watch_keys, msg.watch_ops
    if len(keys) != len(points):
        raise BadRequest(f"MULTI has {len(keys)} watch_keys but {len(points)} watch_ops")
    if sum(map(len, keys)) > limits.max_key + limits.max_value:
        raise BadRequest("MULTI's watch_keys exceed --max-key plus --max-value bytes")
    pairs = zip(keys, points, strict=True)
    return tuple((check_key(msg, msg.c_type, k, limits), p) for k, p in pairs)


def _group_op(msg: Message, limits: Limits) -> Op:
    op = msg.opcode
    if op not in wire.GROUP_OPS:
        raise BadRequest(f"MULTI cannot hold {wire.op_name(op)}")
    if op == wire.OP_GET:
        return Op(single_key(msg, limits), Rmw(Kind.READ))
    if op == wire.OP_RENAME:
        check_ctype(msg, wire.CT_KEYS)
        if len(msg.keys) != 2:
            raise BadRequest("RENAME needs two keys")
        src, dest = (check_key(msg, wire.CT_KEYS, k, limits) for k in msg.keys)
        if msg.cond not in (Cond.ALWAYS, Cond.ABSENT):
            raise BadRequest(f"RENAME takes cond 0 or 1 (dest absent), got {msg.cond}")
        return Op(src, Rmw(Kind.CAS, cond=Cond(msg.cond)), dest)
    if op == wire.OP_INCRBYFLOAT:
        return Op(single_key(msg, limits), Rmw(Kind.INCRFLOAT, fdelta=msg.float_delta[:5000]))
    if op == wire.OP_SETRANGE:
        key, data = _entry(msg, limits)
        if msg.offset + len(data) > limits.max_value:
            raise BadRequest(
                f"value of {msg.offset + len(data)} bytes exceeds the limit of {limits.max_value}"
            )
        return Op(key, Rmw(Kind.SETRANGE, data, offset=msg.offset, max_value=limits.max_value))
    request = write_request(msg, limits)
    is_put, key, data = request[:3]
    rmw = request[7] if len(request) > 7 else None
    if rmw is None:  # a plain PUT or DEL, answered as a CAS that always holds
        rmw = Rmw(Kind.CAS, data, delete=not is_put)
    if not isinstance(rmw, Rmw):
        raise BadRequest("MULTI cannot hold MULTI")
    return Op(key, rmw)


def _entry(msg: Message, limits: Limits) -> tuple[bytes, bytes]:
    """The key and data of a request that carries an entry (PUT, CAS, APPEND)."""
    check_ctype(msg, wire.CT_ENTRY)
    if not msg.HasField("entry"):
        raise BadRequest(f"{wire.op_name(msg.opcode)} needs an entry")
    entry = msg.entry
    key = check_key(msg, wire.CT_ENTRY, entry.key, limits)
    data = entry.data
    if len(data) > limits.max_value:
        raise BadRequest(f"value of {len(data)} bytes exceeds the limit of {limits.max_value}")
    return key, data


def not_a_request(msg: Message) -> BadRequest:
    """Why an opcode that no handler takes is refused."""
    op = msg.opcode
    if op == wire.OP_ERROR or op % 10 == 1:
        return BadRequest(f"opcode {op} is a reply, not a request")
    if op == wire.OP_BAD:
        return BadRequest("opcode BAD (0) is no request (an empty frame reads as one)")
    return BadRequest(f"unknown opcode {op}")


# one reader per kind of read


def _get(msg: Message, limits: Limits) -> Reader:
    if msg.c_type == wire.CT_KEYS:
        return _get_many(msg, limits)
    key = single_key(msg, limits)

    def get(v: ReadView) -> bytes:
        if not v.whole and not v.holds(key):
            raise Moved("the key's shard was split off this chain")
        return wire.get_reply_frame(v.tree.get(key))

    return get


def _get_many(msg: Message, limits: Limits) -> Reader:
    """A GET of several keys: the ones there, with their values, from one state.

    Reading them together is what makes it one read: GETs sent one by one may
    each be answered after a different write, even in one frame.
    """
    keys = [check_key(msg, wire.CT_KEYS, k, limits) for k in msg.keys]
    if not keys:
        raise BadRequest("GET of KEYS needs at least one key")
    op = wire.OP_GET
    max_reply = limits.max_reply

    def get(v: ReadView) -> bytes:
        if not v.whole and not all(v.holds(k) for k in keys):
            raise Moved("a key's shard was split off this chain")
        tree_get = v.tree.get
        return _entries(op, [(k, d) for k in keys if (d := tree_get(k)) is not None], max_reply)

    return get


def _size(msg: Message, limits: Limits) -> Reader:
    check_ctype(msg, wire.CT_NONE)

    def size(v: ReadView) -> bytes:
        n = len(v.tree) if v.whole else v.tree.count(v.start, v.end)
        return wire.frame(wire.result_reply(wire.OP_SIZE, n))

    return size


def _height(msg: Message, limits: Limits) -> Reader:
    check_ctype(msg, wire.CT_NONE)
    return lambda v: wire.frame(wire.result_reply(wire.OP_HEIGHT, v.tree.height()))


def _listing(values: bool) -> Callable[[Message, Limits], Reader]:
    """GETKEYS or GETVALUES: the whole tree's keys or values, refused past --max-reply."""
    op = wire.OP_GETVALUES if values else wire.OP_GETKEYS

    def make(msg: Message, limits: Limits) -> Reader:
        check_ctype(msg, wire.CT_NONE)
        max_reply = limits.max_reply

        def run(v: ReadView) -> bytes:
            found = v.tree.listing(values, max_reply, _ELEMENT_OVERHEAD, v.start, v.end)
            if found is None:
                raise too_big(op, max_reply)
            if values:
                return wire.frame(wire.reply(op, c_type=wire.CT_VALUES, values=found))
            return wire.frame(wire.reply(op, c_type=wire.CT_KEYS, keys=found))

        return run

    return make


def _verify(msg: Message, limits: Limits) -> Reader:
    check_ctype(msg, wire.CT_RESULT)
    n = msg.op_n if msg.op_n else msg.result
    if n <= 0:
        raise BadRequest(f"VERIFY needs an op number > 0, got {n}")
    return lambda v: wire.frame(wire.result_reply(wire.OP_VERIFY, 1 if n <= v.seq else 0))


def _range(msg: Message, limits: Limits) -> Reader:
    check_ctype(msg, wire.CT_RANGE)
    op = wire.OP_RANGE
    spec = msg.range
    start = spec.start if spec.HasField("start") else None
    stop = spec.stop if spec.HasField("stop") else None
    limit = min(spec.limit or limits.range_limit, limits.range_limit)
    max_reply = limits.max_reply

    def scan(v: ReadView) -> bytes:
        low, high = start, stop
        if not v.whole:  # only what is still this chain's
            low = v.start if low is None else max(low, v.start)
            high = narrowest(high, v.end)
        return _entries(op, v.tree.range(low, high, limit), max_reply)

    return scan


#: Each kind of read, by opcode: validate it and make its Reader.
READERS: dict[int, Callable[[Message, Limits], Reader]] = {
    wire.OP_GET: _get,
    wire.OP_SIZE: _size,
    wire.OP_HEIGHT: _height,
    wire.OP_GETKEYS: _listing(values=False),
    wire.OP_GETVALUES: _listing(values=True),
    wire.OP_VERIFY: _verify,
    wire.OP_RANGE: _range,
}


def reader(msg: Message, limits: Limits) -> Reader:
    """Validate a read; return the work to do against a snapshot."""
    make = READERS.get(msg.opcode)
    if make is None:
        raise not_a_request(msg)
    return make(msg, limits)


def batched_get(msg: Message) -> bool:
    """A GET of one key of the committed state (not of this node's own copy): the
    batched read path of a run of them (``Dispatcher.get_many``)."""
    return msg.opcode == wire.OP_GET and not msg.local and msg.c_type != wire.CT_KEYS


def reply_cost(msg: Message, limits: Limits) -> int:
    """The reply bytes a request started alone may build: what it holds of the budget."""
    op = msg.opcode
    if op in BIG_READS:
        return limits.max_reply
    if op == wire.OP_GET:  # one read on its own (local, not served here, several keys)
        return limits.max_reply if msg.c_type == wire.CT_KEYS else limits.max_value
    return 0


def too_big(op: int, max_reply: int) -> BadRequest:
    return BadRequest(
        f"the {wire.op_name(op)} reply would exceed {max_reply} bytes (--max-reply); "
        "page through the keys with RANGE and a smaller limit"
    )


def _entries(op: int, items: list[tuple[bytes, bytes]], max_reply: int) -> bytes:
    """The ENTRIES reply frame of ``items``, refused past ``max_reply`` before it is built."""
    _bounded(op, (len(k) + len(d) for k, d in items), max_reply)
    return wire.frame(
        wire.reply(
            op, c_type=wire.CT_ENTRIES, keys=[k for k, _ in items], values=[d for _, d in items]
        )
    )


def _bounded(op: int, sizes: Iterable[int], max_reply: int) -> None:
    """Refuse a listing whose reply would exceed ``max_reply`` bytes, before building it."""
    total = 0
    for n in sizes:
        total += n + _ELEMENT_OVERHEAD
        if total > max_reply:
            raise too_big(op, max_reply)
