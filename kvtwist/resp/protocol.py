"""A node's RESP port (``--resp-port``): Redis clients on a chain member.

One connection parses commands, looks each up in the command table
(kvtwist.resp.commands) and answers in request order.  Its requests go to
the node's native dispatcher, so chain semantics are the native port's:
writes numbered at the head, reads answered at the tail, relayed from other
members.  As on the native port a read never overtakes an earlier write of
its connection, nor a write an earlier read; consecutive writes go to the
dispatcher as one batch (numbered and logged together at the head).
"""

from __future__ import annotations

import itertools
import os
import struct
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from kvtwist import __version__, wire
from kvtwist.flow import ReadPauses
from kvtwist.resp import codec
from kvtwist.resp.commands import COMMANDS, REDIS_COMPAT, Command, RespError, check_native
from kvtwist.resp.transaction import CONTROL, Transaction, call_error, execute
from kvtwist.sendnow import send_now
from kvtwist.server.dispatch import Dispatcher
from kvtwist.server.factory import ClientConnections
from kvtwist.server.limits import Limits
from kvtwist.server.requests import batched_get
from kvtwist.server.token import TokenCheck
from kvtwist.wire import Message

log = Logger(namespace="kvtwist.resp")

WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
NO_PASSWORD = (
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)


class RespFactory(Factory):
    """What the RESP port's connections share: the node's dispatcher and token, and
    the native port's limits and client set (so a congested chain pauses them too)."""

    def __init__(
        self,
        reactor: Any,
        dispatcher: Dispatcher,
        token: bytes | None = None,
        port: int = 0,
        max_pending: int | None = None,
        allow_flush: bool = False,
        limits: Limits | None = None,
        clients: ClientConnections | None = None,
    ) -> None:
        """``allow_flush``: FLUSHDB and FLUSHALL run (--resp-allow-flush);
        ``limits``: the native port's (connections, pending requests, sizes,
        idle timeout); ``clients``: the native port's client set, which the
        replica pauses while the chain is congested."""
        self.reactor = reactor
        self.allow_flush = allow_flush
        self.limits = limits = limits or dispatcher.limits
        #: the bytes of commands a MULTI may queue: what one update may carry
        self.max_transaction = limits.max_key + limits.max_value
        self.dispatcher = dispatcher
        self.token = token
        self.token_check = TokenCheck(token, reactor.seconds)
        self.port = port
        self.max_pending = max_pending or limits.max_pending
        self.clients = clients if clients is not None else ClientConnections()
        self.connections: set[RespConnection] = set()
        self.ids = itertools.count(1)
        self.started = time.monotonic()

    def buildProtocol(self, addr: Any) -> RespConnection:  # type: ignore[override]
        p = RespConnection()
        p.factory = self
        return p


class _Slot:
    """One command's place among the replies."""

    __slots__ = ("close", "reply")

    def __init__(self) -> None:
        self.reply: bytes | None = None
        self.close = False


@implementer(IPushProducer)
class RespConnection(ReadPauses, Protocol, TimeoutMixin):
    """One Redis client.  It stops reading while it has --max-pending commands
    unanswered, while its replies fill the send buffer, or while the chain is
    congested (the native port's client set is paused as one)."""

    factory: RespFactory
    transport: Any

    def __init__(self) -> None:
        self.parser = codec.RequestParser()
        self.resp = 2
        self.name = b""
        self.lib: dict[str, bytes] = {}
        self.id = 0
        self.logged_in = True
        self._queue: deque[tuple[Command, list[bytes], _Slot]] = deque()
        self._slots: deque[_Slot] = deque()
        self._reads = 0
        self._writes = 0
        self._batch: list[tuple[Message, Deferred[Message]]] = []
        self._closing = False
        self._pause_reasons: set[str] = set()
        self._current = _Slot()  # the command a handler is running for
        self._tx: Transaction | None = None  # since MULTI, as commands arrive
        #: WATCH: each watched key's watch point, until EXEC, DISCARD or UNWATCH
        self.watched: dict[bytes, int] = {}
        self._barrier = False  # a WATCH is running: nothing else starts
        self._pumping = False  # starting commands: their GETs and writes go as batches
        self._delivering = False  # a batch's replies are being handed out
        self._gets: list[tuple[Message, Deferred[Message]]] = []

    # the connection

    def callLater(self, delay: float, f: Any, *args: Any) -> Any:
        """The idle timeout runs on the node's clock."""
        return self.factory.reactor.callLater(delay, f, *args)

    def connectionMade(self) -> None:
        f = self.factory
        limits = f.limits
        self.id = next(f.ids)
        self.logged_in = f.token is None
        self.parser = codec.RequestParser(
            max(limits.max_key, limits.max_value), max(limits.max_frame, f.max_transaction)
        )
        if len(f.clients) >= limits.max_connections:
            log.warn("{peer}: refused, too many connections (limit)", peer=self.peer())
            self.transport.write(codec.error("ERR max number of clients reached"))
            self._closing = True
            self.transport.loseConnection()
            return
        f.connections.add(self)
        f.clients.add(self)
        if limits.idle_timeout:
            self.setTimeout(limits.idle_timeout)
        self.transport.registerProducer(self, True)
        if f.dispatcher.replica.congested:
            self.pause("chain")

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections.discard(self)
        self.factory.clients.discard(self)
        self.setTimeout(None)
        self._closing = True
        self._queue.clear()

    def timeoutConnection(self) -> None:
        log.info("{peer}: idle; closing", peer=self.peer())
        self._closing = True
        self.transport.loseConnection()

    # flow control: the reasons it stops reading

    def peer(self) -> str:
        t = self.transport
        if t is None:
            return "?"
        p = t.getPeer()
        return f"{getattr(p, 'host', '?')}:{getattr(p, 'port', '?')}"

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        commands = self.parser.feed(data)
        error = self.parser.error
        for args in commands:
            self._enqueue(args)
        if error is not None:
            slot = _Slot()
            slot.reply = codec.error(f"ERR {error}")
            slot.close = True
            self._slots.append(slot)
            self._closing = True
        self._pump()
        self._flush()

    def _enqueue(self, args: list[bytes]) -> None:
        slot = _Slot()
        self._slots.append(slot)
        name = args[0].decode(errors="replace").lower()
        cmd = COMMANDS.get(name)
        if name in CONTROL:
            self._control(name, args, slot)
            return
        if self._tx is not None:
            slot.reply = self._tx.queue(name, cmd, args)
            return
        error = call_error(name, cmd, args)
        if error is not None:
            slot.reply = error
            return
        assert cmd is not None
        self._later(cmd, args, slot)

    def _control(self, name: str, args: list[bytes], slot: _Slot) -> None:
        """MULTI, EXEC, DISCARD, WATCH, UNWATCH: decided as they arrive, run in order."""
        error = call_error(name, COMMANDS[name], args)
        tx = self._tx
        if error is not None:
            slot.reply = error
            if tx is not None:
                tx.failed = True
        elif name == "multi":
            if tx is not None:
                slot.reply = codec.error("ERR MULTI calls can not be nested")
                return
            f = self.factory
            self._tx = Transaction(f.max_pending, f.max_transaction)
            self._later(COMMANDS[name], args, slot)
        elif name in ("exec", "discard"):
            if tx is None:
                slot.reply = codec.error(f"ERR {name.upper()} without MULTI")
                return
            self._tx = None
            if name == "discard":
                self._later(COMMANDS[name], args, slot)
                return
            run = Command(lambda c, a: execute(c, tx), 1, "write")
            self._later(run, args, slot)
        elif name == "watch" and tx is not None:
            slot.reply = codec.error("ERR WATCH inside MULTI is not allowed")
        else:
            self._later(COMMANDS[name], args, slot)

    def _later(self, cmd: Command, args: list[bytes], slot: _Slot) -> None:
        self._queue.append((cmd, args, slot))
        if len(self._slots) > self.factory.max_pending:
            self.pause("pending")

    # running commands in order

    def _pump(self) -> None:
        """Start queued commands in order: reads wait for earlier writes, writes for
        reads, a WATCH for every earlier command and every later command for it (its
        watch point is taken after the connection's earlier writes and before its
        later reads)."""
        queue = self._queue
        pumping, self._pumping = self._pumping, True
        try:
            while queue and not self._barrier:
                cmd, args, slot = queue[0]
                kind = cmd.kind
                if kind == "write" and self._reads:
                    break
                if kind == "read" and self._writes:
                    break
                if kind == "barrier" and (self._reads or self._writes or self._batch):
                    break
                queue.popleft()
                self._start(cmd, args, slot)
        finally:
            self._pumping = pumping
        batch, self._batch = self._batch, []
        if batch:
            self._send_writes(batch)
        gets, self._gets = self._gets, []
        if gets:
            self._send_gets(gets)

    def _start(self, cmd: Command, args: list[bytes], slot: _Slot) -> None:
        if not self.logged_in and not cmd.no_auth:
            slot.reply = codec.error("NOAUTH Authentication required.")
            return
        self._current = slot
        try:
            result = cmd.handler(self, args)
        except RespError as e:
            slot.reply = codec.error(str(e))
            return
        except Exception:
            log.failure("{peer}: {cmd} failed", peer=self.peer(), cmd=args[0])
            slot.reply = codec.error("ERR internal error")
            return
        if isinstance(result, bytes):
            slot.reply = result
            return
        kind = cmd.kind
        if kind == "barrier":
            self._barrier = True
        if kind in ("write", "barrier"):
            self._writes += 1
        else:
            self._reads += 1
        result.addErrback(_error_reply).addCallback(self._answered, slot, kind)

    def _answered(self, reply: bytes, slot: _Slot, kind: str) -> None:
        slot.reply = reply
        if kind == "barrier":
            self._barrier = False
        if kind in ("write", "barrier"):
            self._writes -= 1
        else:
            self._reads -= 1
        if self._closing and self.transport is None:
            return
        if self._delivering:
            return  # the batch being answered pumps and flushes once, at its end
        self._pump()
        self._flush()

    def _deliver(self, answers: list[tuple[Deferred[Message], Any]]) -> None:
        """Fire a batch's Deferreds (a reply frame, or a Failure each), then start what
        waited for them and write every reply ready, at once."""
        self._delivering = True
        try:
            for d, frame in answers:
                if isinstance(frame, Failure):
                    d.errback(frame)
                    continue
                try:
                    d.callback(_decoded(frame))
                except RespError:
                    d.errback()
        finally:
            self._delivering = False
        if self._closing and self.transport is None:
            return
        self._pump()
        self._flush()

    def _flush(self) -> None:
        """Write the replies that are ready, in request order."""
        slots = self._slots
        out: list[bytes] = []
        close = False
        while slots and slots[0].reply is not None:
            slot = slots.popleft()
            out.append(slot.reply)  # type: ignore[arg-type]
            if slot.close:
                close = True
                slots.clear()
                self._queue.clear()
                break
        if out and self.transport is not None:
            send_now(self.transport, out[0] if len(out) == 1 else b"".join(out))
        if close and self.transport is not None:
            self._closing = True
            self.transport.loseConnection()
        elif "pending" in self._pause_reasons and len(slots) <= self.factory.max_pending // 2:
            self.resume("pending")

    def close_after_reply(self) -> None:
        """QUIT: the connection closes once this command's reply is written."""
        self._current.close = True

    # what handlers use

    def read(self, msg: Message) -> Deferred[Message]:
        """A native read, answered where the native port answers it; the GETs one
        turn of the pump starts are read by one job (as the native port batches them)."""
        if self._pumping and batched_get(msg):
            got: Deferred[Message] = Deferred()
            self._gets.append((msg, got))
            return got
        d = self.factory.dispatcher.handle(msg, self.peer)
        return d.addCallback(_decoded)

    def _send_gets(self, gets: list[tuple[Message, Deferred[Message]]]) -> None:
        def done(frames: list[bytes]) -> None:
            self._deliver([(d, frame) for (_, d), frame in zip(gets, frames, strict=True)])

        def failed(f: Failure) -> None:
            self._deliver([(d, f) for _, d in gets])

        msgs = [m for m, _ in gets]
        self.factory.dispatcher.get_many(msgs, self.peer).addCallbacks(done, failed)

    def write(self, msg: Message) -> Deferred[Message]:
        """A native write; the writes one turn of the pump starts go as one batch."""
        d: Deferred[Message] = Deferred()
        self._batch.append((msg, d))
        return d

    def write_now(self, msg: Message) -> Deferred[Message]:
        """A native write sent at once (a command that writes after it has read)."""
        d = self.factory.dispatcher.write_many([msg], self.peer)
        return d.addCallback(lambda frames: _decoded(frames[0]))

    def _send_writes(self, batch: list[tuple[Message, Deferred[Message]]]) -> None:
        msgs = [m for m, _ in batch]

        def done(frames: list[bytes]) -> None:
            self._deliver([(d, frame) for (_, d), frame in zip(batch, frames, strict=True)])

        def failed(f: Failure) -> None:
            self._deliver([(d, f) for _, d in batch])

        self.factory.dispatcher.write_many(msgs, self.peer).addCallbacks(done, failed)

    def log_in(self, user: bytes | None, password: bytes) -> None:
        """AUTH's check (``user`` None: the one-argument form)."""
        token = self.factory.token
        if token is None:
            if user is None:
                raise RespError(NO_PASSWORD)
            if user != b"default":
                raise RespError(WRONGPASS)
            return
        if user in (None, b"default") and self.factory.token_check.accepts(password, self.peer()):
            self.logged_in = True
            return
        self.close_after_reply()  # as the native port: a wrong token ends the connection
        raise RespError(WRONGPASS)

    def info_line(self) -> bytes:
        lib = " ".join(f"{k}={v.decode(errors='replace')}" for k, v in sorted(self.lib.items()))
        return (
            f"id={self.id} addr={self.peer()} name={self.name.decode(errors='replace')} "
            f"db=0 resp={self.resp} {lib}"
        ).encode()

    def info_sections(self, size: int | None) -> Iterator[tuple[str, list[tuple[str, Any]]]]:
        f = self.factory
        replica = f.dispatcher.replica
        yield (
            "Server",
            [
                ("redis_version", REDIS_COMPAT),
                ("kvtwist_version", __version__),
                ("redis_mode", "standalone"),
                ("arch_bits", struct.calcsize("P") * 8),
                ("process_id", os.getpid()),
                ("tcp_port", f.port),
                ("uptime_in_seconds", int(time.monotonic() - f.started)),
            ],
        )
        yield ("Clients", [("connected_clients", len(f.connections))])
        yield (
            "Replication",
            [
                ("role", "master"),
                ("connected_slaves", 0),
                ("chain_role", replica.role),
                ("chain_committed_op", replica.committed_seq),
            ],
        )
        yield ("Cluster", [("cluster_enabled", 0)])  # a Redis cluster's, which this is not
        if size is not None:
            yield ("Keyspace", [("db0", f"keys={size},expires=0,avg_ttl=0")] if size else [])


def _decoded(frame: bytes) -> Message:
    return check_native(wire.decode(frame[4:]))


def _error_reply(f: Failure) -> bytes:
    if f.check(RespError):
        return codec.error(str(f.value))
    log.failure("RESP command failed", f)
    return codec.error(f"ERR internal error: {f.getErrorMessage()}")


__all__ = ["RespConnection", "RespFactory"]
