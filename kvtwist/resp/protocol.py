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

import hmac
import itertools
import os
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist import __version__, wire
from kvtwist.resp import codec
from kvtwist.resp.commands import COMMANDS, REDIS_COMPAT, Command, RespError, check_native
from kvtwist.server.dispatch import Dispatcher
from kvtwist.wire import Message

log = Logger(namespace="kvtwist.resp")

WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
NO_PASSWORD = (
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)


class RespFactory(Factory):
    """What the RESP port's connections share: the node's dispatcher and token."""

    def __init__(
        self,
        reactor: Any,
        dispatcher: Dispatcher,
        token: bytes | None = None,
        port: int = 0,
        max_pending: int = 1000,
    ) -> None:
        self.reactor = reactor
        self.dispatcher = dispatcher
        self.token = token
        self.port = port
        self.max_pending = max_pending
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


class RespConnection(Protocol):
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
        self._paused = False
        self._current = _Slot()  # the command a handler is running for

    # the connection

    def connectionMade(self) -> None:
        f = self.factory
        self.id = next(f.ids)
        self.logged_in = f.token is None
        f.connections.add(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections.discard(self)
        self._closing = True
        self._queue.clear()

    def peer(self) -> str:
        t = self.transport
        if t is None:
            return "?"
        p = t.getPeer()
        return f"{getattr(p, 'host', '?')}:{getattr(p, 'port', '?')}"

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
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
        if cmd is None:
            shown = "".join(f"'{a[:128].decode(errors='replace')}' " for a in args[1:])
            slot.reply = codec.error(
                f"ERR unknown command '{args[0][:128].decode(errors='replace')}', "
                f"with args beginning with: {shown}"
            )
            return
        n = cmd.arity
        if (n > 0 and len(args) != n) or (n < 0 and len(args) < -n):
            slot.reply = codec.error(f"ERR wrong number of arguments for '{name}' command")
            return
        self._queue.append((cmd, args, slot))
        if len(self._slots) > self.factory.max_pending and not self._paused:
            self._paused = True
            if self.transport is not None:
                self.transport.pauseProducing()

    # running commands in order

    def _pump(self) -> None:
        """Start queued commands in order: reads wait for earlier writes, writes for reads."""
        queue = self._queue
        while queue:
            cmd, args, slot = queue[0]
            if cmd.kind == "write" and self._reads:
                break
            if cmd.kind == "read" and self._writes:
                break
            queue.popleft()
            self._start(cmd, args, slot)
        batch, self._batch = self._batch, []
        if batch:
            self._send_writes(batch)

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
        if kind == "write":
            self._writes += 1
        else:
            self._reads += 1
        result.addErrback(_error_reply).addCallback(self._answered, slot, kind)

    def _answered(self, reply: bytes, slot: _Slot, kind: str) -> None:
        slot.reply = reply
        if kind == "write":
            self._writes -= 1
        else:
            self._reads -= 1
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
            self.transport.write(b"".join(out))
        if close and self.transport is not None:
            self._closing = True
            self.transport.loseConnection()
        elif self._paused and len(slots) <= self.factory.max_pending // 2:
            self._paused = False
            if self.transport is not None:
                self.transport.resumeProducing()

    def close_after_reply(self) -> None:
        """QUIT: the connection closes once this command's reply is written."""
        self._current.close = True

    # what handlers use

    def read(self, msg: Message) -> Deferred[Message]:
        """A native read, answered where the native port answers it."""
        d = self.factory.dispatcher.handle(msg, self.peer)
        return d.addCallback(_decoded)

    def write(self, msg: Message) -> Deferred[Message]:
        """A native write; the writes one turn of the pump starts go as one batch."""
        d: Deferred[Message] = Deferred()
        self._batch.append((msg, d))
        return d

    def _send_writes(self, batch: list[tuple[Message, Deferred[Message]]]) -> None:
        msgs = [m for m, _ in batch]

        def done(frames: list[bytes]) -> None:
            for (_, d), frame in zip(batch, frames, strict=True):
                try:
                    d.callback(_decoded(frame))
                except RespError:
                    d.errback()

        def failed(f: Failure) -> None:
            for _, d in batch:
                d.errback(f)

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
        if user in (None, b"default") and hmac.compare_digest(password, token):
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
