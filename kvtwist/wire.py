"""Framing and message helpers shared by the server, the client and chain links.

A frame is a 4-byte big-endian unsigned length followed by one serialized
``kvtwist.Message``; fields 1-6 of that message are the original C system's,
so its clients and servers speak to kvtwist unchanged.
"""

from __future__ import annotations

import contextlib
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from kvtwist.proto.kvtwist_pb2 import Entry, Message, RangeSpec
from kvtwist.sendnow import send_now

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
DEFAULT_MAX_KEY = 64 * 1024


@dataclass
class ClientLimits:
    """The largest request frame, key and value a node takes from its clients.

    Stated once for both users: the server checks requests against them
    (``kvtwist.server.Limits`` extends this class) and the chain links size
    their frames for the largest update they allow (``LinkConfig.client``).
    """

    max_frame: int = DEFAULT_MAX_FRAME
    max_key: int = DEFAULT_MAX_KEY
    max_value: int = DEFAULT_MAX_FRAME


OP_BAD = Message.OP_BAD
OP_SIZE = Message.OP_SIZE
OP_HEIGHT = Message.OP_HEIGHT
OP_DEL = Message.OP_DEL
OP_GET = Message.OP_GET
OP_PUT = Message.OP_PUT
OP_GETKEYS = Message.OP_GETKEYS
OP_GETVALUES = Message.OP_GETVALUES
OP_VERIFY = Message.OP_VERIFY
OP_ERROR = Message.OP_ERROR
OP_STATS = Message.OP_STATS
OP_RANGE = Message.OP_RANGE
OP_AUTH = Message.OP_AUTH
OP_CAS = Message.OP_CAS
OP_INCR = Message.OP_INCR
OP_APPEND = Message.OP_APPEND
OP_BACKUP = Message.OP_BACKUP
OP_MULTI = Message.OP_MULTI
OP_WATCH = Message.OP_WATCH
OP_SETRANGE = Message.OP_SETRANGE
OP_INCRBYFLOAT = Message.OP_INCRBYFLOAT
OP_RENAME = Message.OP_RENAME
OP_CHAIN_HELLO = Message.OP_CHAIN_HELLO
OP_CHAIN_UPDATE = Message.OP_CHAIN_UPDATE
OP_CHAIN_ACK = Message.OP_CHAIN_ACK
OP_CHAIN_JOIN = Message.OP_CHAIN_JOIN
OP_CHAIN_SNAPSHOT = Message.OP_CHAIN_SNAPSHOT
OP_CHAIN_AUTH = Message.OP_CHAIN_AUTH
OP_CHAIN_PING = Message.OP_CHAIN_PING

CT_BAD = Message.CT_BAD
CT_KEY = Message.CT_KEY
CT_VALUE = Message.CT_VALUE
CT_ENTRY = Message.CT_ENTRY
CT_KEYS = Message.CT_KEYS
CT_VALUES = Message.CT_VALUES
CT_RESULT = Message.CT_RESULT
CT_NONE = Message.CT_NONE
CT_ENTRIES = Message.CT_ENTRIES
CT_STATS = Message.CT_STATS
CT_RANGE = Message.CT_RANGE
CT_CHAIN = Message.CT_CHAIN
CT_SNAPSHOT = Message.CT_SNAPSHOT

#: Writes decided at the head against its latest state.
RMW_OPS = frozenset({OP_CAS, OP_INCR, OP_APPEND})
WRITE_OPS = frozenset({OP_PUT, OP_DEL, OP_MULTI}) | RMW_OPS
#: What an OP_MULTI may hold: these writes and reads, decided together at the head.
GROUP_OPS = frozenset({OP_PUT, OP_DEL, OP_GET, OP_SETRANGE, OP_INCRBYFLOAT, OP_RENAME}) | RMW_OPS
CHAIN_OPS = frozenset(
    {
        OP_CHAIN_HELLO,
        OP_CHAIN_UPDATE,
        OP_CHAIN_ACK,
        OP_CHAIN_JOIN,
        OP_CHAIN_SNAPSHOT,
        OP_CHAIN_AUTH,
        OP_CHAIN_PING,
    }
)


class FrameTooLarge(Exception):
    """A header announced more bytes than the receiver accepts."""

    def __init__(self, length: int, limit: int, frames: list[bytes] | None = None) -> None:
        super().__init__(f"frame of {length} bytes exceeds the maximum of {limit}")
        self.length = length
        self.limit = limit
        self.frames = frames or []  # complete frames that came before the bad header


class FrameDecoder:
    """Splits a byte stream into frame payloads.

    The announced length is checked before anything is buffered for it, so a
    hostile header cannot make the receiver allocate the size it claims.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Return the frames completed by ``data``; raise FrameTooLarge on a bad header."""
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        size = HEADER.size
        while end - pos >= size:
            (length,) = HEADER.unpack_from(buf, pos)
            if length > self.max_frame:
                del buf[:pos]
                raise FrameTooLarge(length, self.max_frame, frames)
            stop = pos + size + length
            if stop > end:
                break
            frames.append(bytes(buf[pos + size : stop]))
            pos = stop
        if pos:
            del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take(self) -> bytes:
        """The bytes of frames not complete yet, for another decoder to go on with."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def frame(msg: Message) -> bytes:
    """Serialize ``msg`` with its length header."""
    data = msg.SerializeToString()
    return HEADER.pack(len(data)) + data


#: Field number of ``Message.updates`` (repeated Update).
UPDATES_FIELD = 15


def assemble(head: Message, field: int, items: list[bytes]) -> bytes:
    """The frame of ``head`` with serialized messages appended as repeated ``field``.

    Protobuf concatenation merges, so this is the frame of ``head`` with
    those messages in that field, built without copying them into it.
    """
    tag = _varint((field << 3) | 2)
    parts = [b"", head.SerializeToString()]
    for item in items:
        parts.append(tag)
        parts.append(_varint(len(item)))
        parts.append(item)
    body_len = sum(len(p) for p in parts)
    parts[0] = HEADER.pack(body_len)
    return b"".join(parts)


def decode(payload: bytes) -> Message:
    """Parse one frame's payload; raises DecodeError on bytes that are no Message."""
    msg = Message()
    msg.ParseFromString(payload)
    return msg


def error_reply(reason: str, retry: bool = False) -> Message:
    """An ERROR reply in the original's shape (c_type NONE) with a readable reason."""
    return Message(opcode=OP_ERROR, c_type=CT_NONE, error=reason, retry=retry)


def reply(request_op: int, **fields: Any) -> Message:
    """A reply to ``request_op``: the original's rule is request opcode + 1."""
    return Message(opcode=request_op + 1, **fields)  # type: ignore[arg-type]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTE[n]
    out = []
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_BYTE = [bytes((i,)) for i in range(0x80)]


#: The hot replies are assembled from bytes instead of built as Messages: the
#: same encoding protobuf gives (tests compare the two), at a fraction of the cost.
_GET_HIT = _varint(1 << 3) + _varint(OP_GET + 1) + _varint(2 << 3) + _varint(CT_VALUE)
_GET_MISS = HEADER.pack(len(_GET_HIT)) + _GET_HIT
_VALUES_TAG = _varint((6 << 3) | 2)
_RESULT_HEAD: dict[int, bytes] = {
    op: _varint(1 << 3) + _varint(op + 1) + _varint(2 << 3) + _varint(CT_RESULT)
    for op in (OP_PUT, OP_DEL)
}
_RESULT_TAG = _varint(3 << 3)
_OP_N_TAG = _varint(9 << 3)
_FOUND = {None: b"", True: _varint(8 << 3) + b"\x01", False: _varint(8 << 3) + b"\x00"}


def get_reply_frame(value: bytes | None) -> bytes:
    """The framed reply to a GET: the value, or none when the key is missing."""
    if value is None:
        return _GET_MISS
    n = len(value)
    if n < 0x80:
        body = b"".join((_GET_HIT, _VALUES_TAG, bytes((n,)), value))
    else:
        body = b"".join((_GET_HIT, _VALUES_TAG, _varint(n), value))
    return HEADER.pack(len(body)) + body


def write_reply_frame(request_op: int, op_n: int, found: bool | None = None) -> bytes:
    """The framed RESULT reply to a PUT or DEL, as ``result_reply`` builds it."""
    if not op_n:
        body = _RESULT_HEAD[request_op] + _FOUND[found]
    else:
        result = op_n << 1 if op_n <= 2**31 - 1 else (2**31 - 1) << 1
        body = b"".join(
            (
                _RESULT_HEAD[request_op],
                _RESULT_TAG,
                _varint(result),
                _FOUND[found],
                _OP_N_TAG,
                _varint(op_n),
            )
        )
    return HEADER.pack(len(body)) + body


def result_reply(request_op: int, value: int) -> Message:
    """A RESULT reply; the 32-bit ``result`` saturates, ``op_n`` carries the full number."""
    clamped = max(-(2**31), min(2**31 - 1, value))
    return reply(request_op, c_type=CT_RESULT, result=clamped, op_n=max(value, 0))


# Requests, built in one place for the client library, the shell and chain links.


def req_size() -> Message:
    return Message(opcode=OP_SIZE, c_type=CT_NONE)


def req_height() -> Message:
    return Message(opcode=OP_HEIGHT, c_type=CT_NONE)


def req_get(key: bytes) -> Message:
    return Message(opcode=OP_GET, c_type=CT_KEY, keys=[key])


def req_get_many(keys: list[bytes]) -> Message:
    """A GET of several keys, answered from one committed state (Redis's MGET)."""
    return Message(opcode=OP_GET, c_type=CT_KEYS, keys=keys)


def req_put(key: bytes, data: bytes, client_id: str = "", request_id: int = 0) -> Message:
    return Message(
        opcode=OP_PUT,
        c_type=CT_ENTRY,
        entry=Entry(key=key, data=data),
        client_id=client_id,
        request_id=request_id,
    )


def req_del(key: bytes, client_id: str = "", request_id: int = 0) -> Message:
    return Message(
        opcode=OP_DEL, c_type=CT_KEY, keys=[key], client_id=client_id, request_id=request_id
    )


def req_cas(
    key: bytes,
    data: bytes = b"",
    cond: int = 0,
    expect: bytes = b"",
    delete: bool = False,
    want_old: bool = False,
    client_id: str = "",
    request_id: int = 0,
) -> Message:
    """A compare-and-set: put ``data`` (or delete) when ``cond`` holds (docs/protocol.md)."""
    return Message(
        opcode=OP_CAS,
        c_type=CT_ENTRY,
        entry=Entry(key=key, data=data),
        cond=cond,
        expect=expect,
        delete=delete,
        want_old=want_old,
        client_id=client_id,
        request_id=request_id,
    )


def req_incr(key: bytes, delta: int = 1, client_id: str = "", request_id: int = 0) -> Message:
    return Message(
        opcode=OP_INCR,
        c_type=CT_KEY,
        keys=[key],
        delta=delta,
        client_id=client_id,
        request_id=request_id,
    )


def req_append(key: bytes, data: bytes, client_id: str = "", request_id: int = 0) -> Message:
    return Message(
        opcode=OP_APPEND,
        c_type=CT_ENTRY,
        entry=Entry(key=key, data=data),
        client_id=client_id,
        request_id=request_id,
    )


def rmw_reply(
    request_op: int, op_n: int, applied: bool, found: bool, old: bytes | None, number: int
) -> Message:
    """The RESULT reply to a CAS, INCR or APPEND."""
    m = result_reply(request_op, op_n)
    m.found = found
    if request_op == OP_CAS:
        m.applied = applied
        if old is not None:
            m.values.append(old)
    else:
        m.number = number
    return m


def req_multi(
    ops: list[Message],
    all_or_nothing: bool = False,
    watch: list[tuple[bytes, int]] | None = None,
) -> Message:
    """Several requests (GROUP_OPS) decided at the head as one write, in order;
    ``watch``: (key, watch point) pairs, any written after its point aborts it."""
    m = Message(opcode=OP_MULTI, c_type=CT_NONE, ops=ops, all_or_nothing=all_or_nothing)
    if watch:
        m.watch_keys.extend(k for k, _ in watch)
        m.watch_ops.extend(p for _, p in watch)
    return m


def req_watch() -> Message:
    """Ask the head for a watch point (op_n of the reply): Redis's WATCH."""
    return Message(opcode=OP_WATCH, c_type=CT_NONE)


def req_setrange(key: bytes, offset: int, data: bytes) -> Message:
    return Message(
        opcode=OP_SETRANGE, c_type=CT_ENTRY, entry=Entry(key=key, data=data), offset=offset
    )


def req_incrbyfloat(key: bytes, delta: str) -> Message:
    return Message(opcode=OP_INCRBYFLOAT, c_type=CT_KEY, keys=[key], float_delta=delta)


def req_rename(key: bytes, dest: bytes, nx: bool = False) -> Message:
    """RENAME; with ``nx`` (Redis's RENAMENX) only while ``dest`` is absent (cond 1)."""
    return Message(opcode=OP_RENAME, c_type=CT_KEYS, keys=[key, dest], cond=1 if nx else 0)


def req_getkeys() -> Message:
    return Message(opcode=OP_GETKEYS, c_type=CT_NONE)


def req_getvalues() -> Message:
    return Message(opcode=OP_GETVALUES, c_type=CT_NONE)


def req_verify(op_n: int) -> Message:
    clamped = max(-(2**31), min(2**31 - 1, op_n))
    return Message(opcode=OP_VERIFY, c_type=CT_RESULT, result=clamped, op_n=max(op_n, 0))


def req_stats() -> Message:
    return Message(opcode=OP_STATS, c_type=CT_NONE)


def req_backup(index: int) -> Message:
    """Chunk ``index`` of a backup; index 0 freezes the node's committed state anew."""
    return Message(opcode=OP_BACKUP, c_type=CT_NONE, request_id=index)


def req_auth(token: bytes) -> Message:
    """A client's proof that it holds the node's token (``--auth-token-file``)."""
    return Message(opcode=OP_AUTH, c_type=CT_NONE, token=token)


def req_range(start: bytes | None = None, stop: bytes | None = None, limit: int = 0) -> Message:
    spec = RangeSpec(limit=limit)
    if start is not None:
        spec.start = start
    if stop is not None:
        spec.stop = stop
    return Message(opcode=OP_RANGE, c_type=CT_RANGE, range=spec)


_OP_NAMES = {number: name.removeprefix("OP_") for name, number in Message.Opcode.items()}


def op_name(opcode: int) -> str:
    """``PUT`` for OP_PUT; the number for opcodes this build does not know."""
    return _OP_NAMES.get(opcode) or str(opcode)


class FramedProtocol(Protocol):
    """A Protocol speaking length-framed Messages, for both ends of every link.

    Unlike ``Int32StringReceiver`` it never drops a connection silently: an
    over-long header is answered with an ERROR frame before the close.
    """

    max_frame = DEFAULT_MAX_FRAME
    log = Logger()
    transport: Any  # an ITransport; typed loosely because zope interfaces defeat mypy
    #: While a handshake owns the connection, received messages go to it and
    #: ``sendMessage`` holds what others send until ``endHandshake``.
    handshake: Callable[[Message], None] | None = None
    _held_out: list[bytes] | None = None

    def connectionMade(self) -> None:
        # Replies, acknowledgements and heartbeats are small frames that must
        # leave at once: Nagle's algorithm would hold them for the peer's
        # delayed ACK (tens of milliseconds on every request-reply turn).
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            with contextlib.suppress(OSError):
                no_delay(True)
        self._decoder = FrameDecoder(self.max_frame)
        self._inbox: deque[bytes] = deque()
        self._too_large: FrameTooLarge | None = None

    def dataReceived(self, data: bytes) -> None:
        try:
            self._inbox.extend(self._decoder.feed(data))
        except FrameTooLarge as e:
            self._inbox.extend(e.frames)
            self._too_large = e
        self.drain()

    def inputPaused(self) -> bool:
        """Subclasses say when to leave received frames unprocessed (flow control)."""
        return False

    def drain(self) -> None:
        """Process received frames until none are left or input is paused."""
        inbox = self._inbox
        while inbox and not self.inputPaused():
            if self.transport is None or getattr(self, "_closing", False):
                inbox.clear()
                return
            payload = inbox.popleft()
            try:
                msg = decode(payload)
            except DecodeError as e:
                self.badFrame(payload, e)
                continue
            (self.handshake or self.messageReceived)(msg)
        if not inbox and self._too_large is not None and not getattr(self, "_closing", False):
            exc, self._too_large = self._too_large, None
            self.frameTooLarge(exc)

    def sendMessage(self, msg: Message) -> None:
        self.sendFrame(frame(msg))

    def sendFrame(self, data: bytes) -> None:
        """Send a whole frame; held while a handshake owns the connection."""
        if self.handshake is not None:
            if self._held_out is None:
                self._held_out = []
            self._held_out.append(data)
            return
        assert self.transport is not None
        send_now(self.transport, data)

    def writeMessage(self, msg: Message) -> None:
        """Send now, past a running handshake (the handshake's own messages)."""
        assert self.transport is not None
        self.transport.write(frame(msg))

    def beginHandshake(self, handler: Callable[[Message], None]) -> None:
        self.handshake = handler

    def endHandshake(self, ok: bool) -> None:
        """Hand the connection back: send what was held if ``ok``, else drop it."""
        self.handshake = None
        held, self._held_out = self._held_out or [], None
        if ok and self.transport is not None:
            self.transport.writeSequence(held)

    def disconnect(self, abort: bool = False) -> None:
        """Close after the pending output is written, or at once if ``abort``.

        A transport with a registered producer never closes on
        ``loseConnection`` alone, so the producer is unregistered first.  A
        peer that stopped reading would keep a graceful close pending for
        ever: that one is aborted.
        """
        t = self.transport
        if t is None:
            return
        if getattr(t, "producer", None) is not None:
            t.unregisterProducer()
        if abort and hasattr(t, "abortConnection"):
            t.abortConnection()
        else:
            t.loseConnection()

    def frameTooLarge(self, exc: FrameTooLarge) -> None:
        self.log.warn("{peer}: {reason}; closing", peer=self.peerName(), reason=str(exc))
        self.sendMessage(error_reply(str(exc)))
        self._closing = True
        self.disconnect()

    def badFrame(self, payload: bytes, exc: Exception) -> None:
        """A well-framed payload that is not a Message."""
        self.log.warn(
            "{peer}: undecodable frame of {n} bytes: {e}",
            peer=self.peerName(),
            n=len(payload),
            e=exc,
        )
        self.sendMessage(error_reply(f"undecodable message ({len(payload)} bytes): {exc}"))

    def messageReceived(self, msg: Message) -> None:
        raise NotImplementedError

    def peerName(self) -> str:
        if self.transport is None:
            return "?"
        try:
            peer = self.transport.getPeer()
        except Exception:
            return "?"
        host = getattr(peer, "host", None)
        port = getattr(peer, "port", None)
        return f"{host}:{port}" if host is not None else str(peer)
