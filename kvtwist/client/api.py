"""The client library: an asynchronous API returning Deferreds.

Keys are byte strings, as the nodes store them.  Every call takes a key as
``bytes`` or as ``str`` (sent as its UTF-8 bytes); keys that come back, from
``keys()`` and ``range()``, are always ``bytes``, since a stored key need not
be UTF-8.

``Client`` holds the request logic (building requests, reading replies,
numbering writes so that a retried write is applied once); subclasses only
decide where a request goes: ``DirectClient`` to one node, ``ChainClient``
(kvtwist.client.chain) to the head or the tail of a chain.
"""

from __future__ import annotations

import itertools
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP
from twisted.python.failure import Failure

from kvtwist import wire
from kvtwist.client.protocol import (
    ClientProtocol,
    ConnectionFailed,
    KVError,
    check,
    connect_failed,
    connect_quietly,
    endpoint,
    ready,
)
from kvtwist.tls import ClientTLS
from kvtwist.wire import Message


@dataclass(frozen=True)
class WriteResult:
    """A committed write: its op number, and for DEL whether the key was there."""

    op_n: int
    found: bool | None = None


@dataclass(frozen=True)
class CasResult:
    """A committed compare-and-set: whether it wrote, and what was there before."""

    op_n: int
    applied: bool
    found: bool
    old: bytes | None = None  # the value before, when asked for and found


@dataclass(frozen=True)
class OpStat:
    op: str
    count: int
    mean_service_us: float
    errors: int


@dataclass(frozen=True)
class Stats:
    ops: tuple[OpStat, ...]
    keys: int
    connections: int
    uptime_s: float
    last_op: int
    role: str
    height: int


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) into a pair; ValueError with a readable reason."""
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f"address {text!r} needs the form HOST:PORT")
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host:
        raise ValueError(f"address {text!r} has no host")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"address {text!r} has a bad port {port!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"address {text!r}: port {number} out of range")
    return host, number


#: A key or value as callers give it: bytes as they are, text as its UTF-8 bytes.
Data = bytes | str


def as_bytes(value: Data) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _op_n(reply: Message) -> int:
    return int(reply.op_n) if reply.op_n else int(reply.result)


class Client:
    """Request logic shared by every client; ``_send`` routes one request."""

    def __init__(self) -> None:
        self.client_id = uuid.uuid4().hex
        self._request_ids = itertools.count(1)
        #: request ids of writes not yet answered, oldest first
        self._unanswered: OrderedDict[int, None] = OrderedDict()

    def _send(self, msg: Message, write: bool) -> Deferred[Message]:
        raise NotImplementedError

    def _call(self, msg: Message, write: bool = False) -> Deferred[Message]:
        d = self._send(msg, write)
        d.addCallback(check)
        return d

    # writes

    def _write(self, msg: Message) -> Deferred[Message]:
        """Send a numbered write with ``ack_below``: its request id is unanswered until it ends.

        Once a write's Deferred fires this client never sends it again, so its
        request id counts as answered whatever the outcome, and the chain may
        forget it.
        """
        rid = msg.request_id
        unanswered = self._unanswered
        unanswered[rid] = None
        msg.ack_below = next(iter(unanswered))

        def answered(result: Any) -> Any:
            unanswered.pop(rid, None)
            return result

        return self._call(msg, write=True).addBoth(answered)

    def put(self, key: Data, value: Data) -> Deferred[WriteResult]:
        msg = wire.req_put(as_bytes(key), as_bytes(value), self.client_id, next(self._request_ids))
        return self._write(msg).addCallback(lambda r: WriteResult(_op_n(r)))

    def delete(self, key: Data) -> Deferred[WriteResult]:
        msg = wire.req_del(as_bytes(key), self.client_id, next(self._request_ids))

        def done(r: Message) -> WriteResult:
            return WriteResult(_op_n(r), r.found if r.HasField("found") else None)

        return self._write(msg).addCallback(done)

    def cas(
        self,
        key: Data,
        value: Data = b"",
        *,
        cond: int = 0,
        expect: Data = b"",
        delete: bool = False,
        want_old: bool = False,
    ) -> Deferred[CasResult]:
        """Put ``value`` (or delete the key) atomically when ``cond`` holds: 0 always,
        1 the key is absent, 2 present, 3 its value equals ``expect``."""
        msg = wire.req_cas(
            as_bytes(key),
            as_bytes(value),
            cond,
            as_bytes(expect),
            delete,
            want_old,
            self.client_id,
            next(self._request_ids),
        )

        def done(r: Message) -> CasResult:
            old = bytes(r.values[0]) if want_old and r.values else None
            return CasResult(_op_n(r), r.applied, r.found, old)

        return self._write(msg).addCallback(done)

    def incr(self, key: Data, delta: int = 1) -> Deferred[int]:
        """Add ``delta`` to the decimal number stored at ``key`` (absent: 0): the new number."""
        msg = wire.req_incr(as_bytes(key), delta, self.client_id, next(self._request_ids))
        return self._write(msg).addCallback(lambda r: int(r.number))

    def append(self, key: Data, value: Data) -> Deferred[int]:
        """Append to the value at ``key`` (absent: empty): the new length."""
        msg = wire.req_append(
            as_bytes(key), as_bytes(value), self.client_id, next(self._request_ids)
        )
        return self._write(msg).addCallback(lambda r: int(r.number))

    # reads

    def get(self, key: Data) -> Deferred[bytes | None]:
        return self._call(wire.req_get(as_bytes(key))).addCallback(
            lambda r: bytes(r.values[0]) if r.values else None
        )

    def size(self) -> Deferred[int]:
        return self._call(wire.req_size()).addCallback(lambda r: int(r.result))

    def height(self) -> Deferred[int]:
        return self._call(wire.req_height()).addCallback(lambda r: int(r.result))

    def keys(self) -> Deferred[list[bytes]]:
        return self._call(wire.req_getkeys()).addCallback(lambda r: list(r.keys))

    def values(self) -> Deferred[list[bytes]]:
        return self._call(wire.req_getvalues()).addCallback(lambda r: [bytes(v) for v in r.values])

    def verify(self, op_n: int) -> Deferred[bool]:
        return self._call(wire.req_verify(op_n)).addCallback(lambda r: r.result == 1)

    def range(
        self, start: Data | None = None, stop: Data | None = None, limit: int = 0
    ) -> Deferred[list[tuple[bytes, bytes]]]:
        """Entries with start <= key < stop in bytewise key order, at most ``limit``."""
        msg = wire.req_range(
            None if start is None else as_bytes(start),
            None if stop is None else as_bytes(stop),
            limit,
        )
        return self._call(msg).addCallback(
            lambda r: [(k, bytes(v)) for k, v in zip(r.keys, r.values, strict=True)]
        )

    def stats(self) -> Deferred[Stats]:
        def done(r: Message) -> Stats:
            s = r.stats
            ops = tuple(OpStat(o.op, o.count, o.mean_service_us, o.errors) for o in s.ops)
            return Stats(ops, s.keys, s.connections, s.uptime_s, s.last_op, s.role, s.height)

        return self._call(wire.req_stats()).addCallback(done)

    def raw(self, msg: Message) -> Deferred[Message]:
        """Send any message and return the reply unchecked (ERROR replies included)."""
        return self._send(msg, msg.opcode in wire.WRITE_OPS)

    def close(self) -> Deferred[None]:
        raise NotImplementedError


class DirectClient(Client):
    """A client of one node over one pipelined connection."""

    def __init__(self, protocol: ClientProtocol) -> None:
        super().__init__()
        self.protocol = protocol

    @classmethod
    def connect(
        cls,
        reactor: IReactorTCP,
        host: str,
        port: int,
        timeout: float | None = 10.0,
        *,
        tls: ClientTLS | None = None,
        token: bytes | None = None,
    ) -> Deferred[DirectClient]:
        """Connect to ``host:port``: over TLS with ``tls``, logged in with ``token``.

        Fails with ConnectionFailed when the node cannot be reached or its
        certificate is not accepted, KVError when it refuses the token.
        """
        ep = endpoint(reactor, host, port, 30.0 if timeout is None else timeout, tls)
        d: Deferred[Any] = connect_quietly(ep, ClientProtocol())

        def failed(f: Failure) -> Failure:
            if f.check(ConnectionFailed, KVError):
                return f
            return Failure(connect_failed((host, port), f))

        def secured_failed(f: Failure) -> Failure:
            if f.check(ConnectionFailed):
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                return Failure(ConnectionFailed(f"cannot connect to {where}: {f.value}"))
            return f

        d.addErrback(failed)
        d.addCallback(lambda p: ready(p, tls, token).addErrback(secured_failed))
        return d.addCallback(cls)

    def _send(self, msg: Message, write: bool) -> Deferred[Message]:
        return self.protocol.request(msg)

    def close(self) -> Deferred[None]:
        return self.protocol.close()


__all__ = [
    "Client",
    "ConnectionFailed",
    "Data",
    "DirectClient",
    "KVError",
    "OpStat",
    "Stats",
    "WriteResult",
    "CasResult",
    "parse_address",
]
