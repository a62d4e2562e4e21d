"""MULTI/EXEC/DISCARD: a connection's queued commands, applied as one group.

Between MULTI and EXEC a connection's commands are checked (name, arity,
whether a transaction may hold them) and answered ``+QUEUED``.  At EXEC each
runs against a recorder that stands for the connection: the native requests
it would send are collected, in order, into one OP_MULTI, which the head
decides as one write against its latest state and the chain applies as one
op.  Nothing else comes between its requests, and a crash keeps all of them
or none.  When the group commits, each command's own reply is built from its
requests' answers, so EXEC answers as Redis does: an array of the replies,
an error in the place of a command that failed, the others applied.

WATCH asks the head for a watch point (OP_WATCH: the op it has committed),
kept per key on the connection; EXEC's group carries the watched keys with
their points and the head aborts it, writing nothing, if any was written
after its point (kvtwist.chain.watch): EXEC then answers a null array.
EXEC, DISCARD and UNWATCH forget the watches.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist import wire
from kvtwist.resp import codec
from kvtwist.resp.commands import Command, Reply, RespError, check_native
from kvtwist.wire import Message

if TYPE_CHECKING:
    from kvtwist.resp.protocol import RespConnection

log = Logger(namespace="kvtwist.resp")

QUEUED = b"+QUEUED\r\n"
EXECABORT = "EXECABORT Transaction discarded because of previous errors."
#: Commands a transaction may hold: those whose requests a group may hold, and local ones.
QUEUEABLE = frozenset(
    "get set setnx getset getdel mget mset del unlink exists strlen type append incr decr"
    " incrby decrby incrbyfloat getrange substr setrange rename renamenx ping echo time".split()
)
#: Commands that steer a transaction, or the connection: run in order, never queued.
CONTROL = frozenset({"multi", "exec", "discard", "watch", "unwatch", "quit"})
#: What one watched key costs beyond its bytes, against the connection's bound.
WATCH_OVERHEAD = 16


def call_error(name: str, cmd: Command | None, args: list[bytes]) -> bytes | None:
    """Redis's reply to an unknown command or a wrong argument count; None if neither."""
    if cmd is None:
        shown = "".join(f"'{a[:128].decode(errors='replace')}' " for a in args[1:])
        return codec.error(
            f"ERR unknown command '{args[0][:128].decode(errors='replace')}', "
            f"with args beginning with: {shown}"
        )
    n = cmd.arity
    if (n > 0 and len(args) != n) or (n < 0 and len(args) < -n):
        return codec.error(f"ERR wrong number of arguments for '{name}' command")
    return None


class Transaction:
    """The commands queued since MULTI, within the connection's limits."""

    def __init__(self, max_commands: int, max_bytes: int) -> None:
        self.queued: list[tuple[Command, list[bytes]]] = []
        self.failed = False  # a command was refused while queued: EXEC aborts
        self.max_commands = max_commands
        self.max_bytes = max_bytes
        self.bytes = 0

    def queue(self, name: str, cmd: Command | None, args: list[bytes]) -> bytes:
        """Queue one command; the reply it gets now."""
        error = call_error(name, cmd, args)
        if error is None and name not in QUEUEABLE:
            error = codec.error(f"ERR {name.upper()} is not supported inside MULTI by kvtwist")
        self.bytes += sum(map(len, args))
        if error is None and len(self.queued) >= self.max_commands:
            error = codec.error(f"ERR a transaction holds at most {self.max_commands} commands")
        if error is None and self.bytes > self.max_bytes:
            error = codec.error(f"ERR a transaction's commands exceed {self.max_bytes} bytes")
        if error is not None:
            self.failed = True
            return error
        assert cmd is not None
        self.queued.append((cmd, args))
        return QUEUED


class Recorder:
    """Stands for the connection while EXEC runs its commands: collects their requests."""

    def __init__(self, conn: RespConnection) -> None:
        self._conn = conn
        self.ops: list[Message] = []
        #: per request made: its Deferred, how many ops it took, and how their
        #: replies make its own (None: the one op's reply is its own)
        self._waiting: list[tuple[Deferred[Message], int, _Join | None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def read(self, msg: Message) -> Deferred[Message]:
        return self._record(msg)

    def write(self, msg: Message) -> Deferred[Message]:
        return self._record(msg)

    def _record(self, msg: Message) -> Deferred[Message]:
        join: _Join | None = None
        if msg.opcode == wire.OP_MULTI:
            subs = list(msg.ops)  # its requests join the transaction's, in place
            join = _as_group
        elif msg.opcode == wire.OP_GET and msg.c_type == wire.CT_KEYS:
            subs = [wire.req_get(k) for k in msg.keys]  # a group reads them at one state
            join = partial(_as_entries, list(msg.keys))
        elif msg.opcode in wire.GROUP_OPS:
            subs = [msg]
        else:
            raise RespError(f"ERR {wire.op_name(msg.opcode)} cannot run inside MULTI")
        d: Deferred[Message] = Deferred()
        self.ops.extend(subs)
        self._waiting.append((d, len(subs), join))
        return d

    def answer(self, replies: list[Message]) -> None:
        """Hand each request its reply (a group its replies), in order."""
        i = 0
        for d, n, join in self._waiting:
            part, i = replies[i : i + n], i + n
            try:
                d.callback(check_native(part[0]) if join is None else join(part))
            except RespError:
                d.errback()


_Join = Callable[[list[Message]], Message]


def _as_group(replies: list[Message]) -> Message:
    return wire.reply(wire.OP_MULTI, ops=replies)


def _as_entries(keys: list[bytes], replies: list[Message]) -> Message:
    """The replies of a multi-key GET's GETs as its own: the keys found, with values."""
    out = wire.reply(wire.OP_GET, c_type=wire.CT_ENTRIES)
    for k, r in zip(keys, replies, strict=True):
        if check_native(r).values:
            out.keys.append(k)
            out.values.append(r.values[0])
    return out


def execute(c: RespConnection, tx: Transaction) -> Reply:
    """EXEC: run the queued commands as one group; the array of their replies,
    or a null array when a watched key was written since its WATCH."""
    watch = list(c.watched.items())
    c.watched.clear()
    if tx.failed:
        raise RespError(EXECABORT)
    rec = Recorder(c)
    replies: list[bytes | None] = [None] * len(tx.queued)
    for i, (cmd, args) in enumerate(tx.queued):
        try:
            result = cmd.handler(rec, args)  # type: ignore[arg-type]
        except RespError as e:
            replies[i] = codec.error(str(e))
            continue
        except Exception:
            log.failure("{cmd} failed inside EXEC", cmd=args[0])
            replies[i] = codec.error("ERR internal error")
            continue
        if isinstance(result, bytes):
            replies[i] = result
        else:
            result.addErrback(_error).addCallback(partial(replies.__setitem__, i))
    if not rec.ops and not watch:
        return _array(replies)

    def done(reply: Message) -> bytes:
        if reply.aborted:
            return codec.null_array(c.resp)
        rec.answer(list(reply.ops))
        return _array(replies)

    return c.write(wire.req_multi(rec.ops, watch=watch)).addCallback(done)


def watch(c: RespConnection, args: list[bytes]) -> Reply:
    """WATCH key...: each key not watched yet is watched from the head's watch point."""
    keys = args[1:]
    f = c.factory
    max_key = f.limits.max_key
    for k in keys:
        if not k:
            raise RespError("ERR the key is empty")
        if len(k) > max_key:
            raise RespError(f"ERR key of {len(k)} bytes exceeds the limit of {max_key}")
    size = sum(len(k) + WATCH_OVERHEAD for k in {*keys, *c.watched})
    limit = min(16 * max_key, f.max_transaction)  # the group carries them: within one update
    if size > limit:
        raise RespError(f"ERR a connection may watch at most {limit} bytes of keys")

    def noted(reply: Message) -> bytes:
        for k in keys:
            c.watched.setdefault(k, reply.op_n)
        return codec.OK

    return c.read(wire.req_watch()).addCallback(noted)


def unwatch(c: RespConnection, args: list[bytes]) -> Reply:
    c.watched.clear()
    return codec.OK


def _array(replies: list[bytes | None]) -> bytes:
    """The replies in order; one its requests never answered is an error in its place."""
    return codec.array([codec.error("ERR no reply") if r is None else r for r in replies])


def _error(f: Failure) -> bytes:
    if f.check(RespError):
        return codec.error(str(f.value))
    log.failure("a command inside EXEC failed", f)
    return codec.error(f"ERR internal error: {f.getErrorMessage()}")


def _ok(c: RespConnection, args: list[bytes]) -> Reply:
    return codec.OK


#: What COMMAND lists; the connection steers these itself (RespConnection.control).
COMMANDS: dict[str, Command] = {
    "multi": Command(_ok, 1, "local"),
    "exec": Command(_ok, 1, "write"),
    "discard": Command(unwatch, 1, "local"),
    "watch": Command(watch, -2, "barrier"),
    "unwatch": Command(unwatch, 1, "local"),
}
