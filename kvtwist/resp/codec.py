"""RESP, the Redis serialization protocol: a request parser and reply encoders.

Pure functions of bytes (no Twisted), so each is tested byte for byte.  A
request is an array of bulk strings (``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n``)
or an inline command (``GET k\\r\\n``), as redis-cli and telnet send.
Replies are RESP2 unless the connection said ``HELLO 3``; then nulls, maps,
sets and doubles have their RESP3 types.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: Redis's own bounds on a request: elements of one command, and one inline line.
MAX_ARGS = 1024 * 1024
MAX_INLINE = 64 * 1024


class ProtocolError(Exception):
    """The bytes are no RESP request: answered with this error, then the connection closes."""


class RequestParser:
    """Splits a byte stream into commands (lists of arguments), across reads."""

    def __init__(self, max_bulk: int = 512 * 1024 * 1024, max_request: int = 0) -> None:
        """``max_request``: the most bytes one unfinished command may hold (0: no limit)."""
        self.max_bulk = max_bulk
        self.max_request = max_request
        self._buf = bytearray()
        #: malformed input met: the commands before it stand, nothing after it is read
        self.error: ProtocolError | None = None

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Every complete command in what arrived, up to malformed input (``error``)."""
        if self.error is not None:
            return []
        buf = self._buf
        buf += data
        out: list[list[bytes]] = []
        pos = 0
        n = len(buf)
        while pos < n:
            try:
                if buf[pos] == 0x2A:  # '*'
                    cmd, end = self._multibulk(buf, pos)
                else:
                    cmd, end = self._inline(buf, pos)
            except ProtocolError as e:
                self.error = e
                buf.clear()
                return out
            if end < 0:
                if self.max_request and n - pos > self.max_request:
                    self.error = ProtocolError(
                        f"Protocol error: request exceeds {self.max_request} bytes"
                    )
                    buf.clear()
                    return out
                break
            pos = end
            if cmd:
                out.append(cmd)
        del buf[:pos]
        return out

    def _inline(self, buf: bytearray, pos: int) -> tuple[list[bytes], int]:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if len(buf) - pos > MAX_INLINE:
                raise ProtocolError("Protocol error: too big inline request")
            return [], -1
        line = bytes(buf[pos:nl]).rstrip(b"\r")
        return line.split(), nl + 1

    def _multibulk(self, buf: bytearray, pos: int) -> tuple[list[bytes], int]:
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            if len(buf) - pos > MAX_INLINE:
                raise ProtocolError("Protocol error: too big mbulk count string")
            return [], -1
        count = _number(buf[pos + 1 : nl])
        if count is None or count > MAX_ARGS:
            raise ProtocolError("Protocol error: invalid multibulk length")
        pos = nl + 2
        args: list[bytes] = []
        for _ in range(max(count, 0)):
            if pos >= len(buf):
                return [], -1
            if buf[pos] != 0x24:  # '$'
                got = chr(buf[pos])
                raise ProtocolError(f"Protocol error: expected '$', got '{got}'")
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                return [], -1
            size = _number(buf[pos + 1 : nl])
            if size is None or size < 0 or size > self.max_bulk:
                raise ProtocolError("Protocol error: invalid bulk length")
            start = nl + 2
            end = start + size
            if end + 2 > len(buf):
                return [], -1
            if buf[end : end + 2] != b"\r\n":
                raise ProtocolError("Protocol error: bulk string not ended by CRLF")
            args.append(bytes(buf[start:end]))
            pos = end + 2
        return args, pos


def _number(text: bytes | bytearray) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


# replies


def simple(text: str) -> bytes:
    return b"+" + text.encode() + b"\r\n"


OK = simple("OK")
PONG = simple("PONG")


def error(text: str) -> bytes:
    """An error reply; ``text`` begins with its code (ERR, TRYAGAIN, NOAUTH, ...)."""
    return b"-" + text.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"


def integer(n: int) -> bytes:
    return b":%d\r\n" % n


def bulk(value: bytes | None, resp: int = 2) -> bytes:
    if value is None:
        return null(resp)
    return b"$%d\r\n%s\r\n" % (len(value), value)


def null(resp: int = 2) -> bytes:
    return b"_\r\n" if resp == 3 else b"$-1\r\n"


def null_array(resp: int = 2) -> bytes:
    """The null array (an EXEC a watched key aborted)."""
    return b"_\r\n" if resp == 3 else b"*-1\r\n"


def array(items: Sequence[bytes]) -> bytes:
    """An array of already-encoded replies."""
    return b"*%d\r\n" % len(items) + b"".join(items)


def bulks(values: Iterable[bytes | None], resp: int = 2) -> bytes:
    return array([bulk(v, resp) for v in values])


def mapping(pairs: Sequence[tuple[bytes, bytes]], resp: int = 2) -> bytes:
    """A map of encoded keys to encoded values: RESP3's map, RESP2's flat array."""
    head = b"%%%d\r\n" % len(pairs) if resp == 3 else b"*%d\r\n" % (2 * len(pairs))
    return head + b"".join(k + v for k, v in pairs)


def verbatim(text: bytes, resp: int = 2) -> bytes:
    """A text reply (INFO, CLIENT INFO): RESP3's verbatim string, else a bulk string."""
    if resp == 3:
        body = b"txt:" + text
        return b"=%d\r\n%s\r\n" % (len(body), body)
    return bulk(text)


def encode_command(*args: bytes) -> bytes:
    """A request as a client sends it (for tests and tools)."""
    return array([bulk(a) for a in args])
