"""The shell's syntax: a typed line into words of bytes, and bytes back into a line.

Pure functions, no I/O and no knowledge of the commands, so the quoting rules
(POSIX-like words, ``\\xHH`` escapes in double quotes) and the escaping of
output live in one place and are tested without a server.
"""

from __future__ import annotations

import re


class ShellError(Exception):
    """A failure to report as one ``error: ...`` line."""


class UsageError(ShellError):
    """A command line the shell cannot run as typed."""


_WORD_BREAK = re.compile(r"[\s'\"\\]")  # where an unquoted stretch ends
_IN_DOUBLE = re.compile(r'["\\]')  # where a double-quoted stretch ends
_SPACE = re.compile(r"\s+")
_SIMPLE_ESCAPES = {
    "n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b", "\\": b"\\", '"': b'"',
}
_HEX = frozenset("0123456789abcdefABCDEF")


def split_words(line: str) -> list[bytes]:
    """A line into its words, as bytes, in time linear in its length.

    Like a POSIX shell: whitespace separates words; single quotes keep text as
    is; a backslash outside quotes keeps the next character.  Inside double
    quotes a backslash starts an escape: ``\\n \\r \\t \\a \\b \\\\ \\"``
    or ``\\xHH`` (any byte), so binary data can be typed.  Every stretch of
    text is found with one regex search or str.find, never character by
    character, so a 16 MiB argument costs a few copies.
    """
    words: list[bytes] = []
    n = len(line)
    i = 0
    while True:
        gap = _SPACE.match(line, i)
        if gap is not None:
            i = gap.end()
        if i >= n:
            return words
        pieces: list[bytes] = []
        while i < n:
            ch = line[i]
            if ch.isspace():
                break
            if ch == "'":
                end = line.find("'", i + 1)
                if end < 0:
                    raise UsageError("cannot parse the line: no closing single quote")
                pieces.append(to_bytes(line[i + 1 : end]))
                i = end + 1
            elif ch == '"':
                i = _double_quoted(line, i + 1, pieces)
            elif ch == "\\":
                if i + 1 >= n:
                    raise UsageError("cannot parse the line: a backslash ends the line")
                pieces.append(to_bytes(line[i + 1]))
                i += 2
            else:
                m = _WORD_BREAK.search(line, i)
                end = n if m is None else m.start()
                pieces.append(to_bytes(line[i:end]))
                i = end
        words.append(b"".join(pieces))


def to_bytes(text: str) -> bytes:
    """Typed text as bytes: UTF-8, and a -c argument's bytes that are not UTF-8 kept."""
    return text.encode("utf-8", "surrogateescape")


def _double_quoted(line: str, i: int, pieces: list[bytes]) -> int:
    """Append the text of a double-quoted stretch starting at ``i``; the index after it."""
    n = len(line)
    while True:
        m = _IN_DOUBLE.search(line, i)
        if m is None:
            raise UsageError("cannot parse the line: no closing double quote")
        pieces.append(to_bytes(line[i : m.start()]))
        i = m.end()
        if m.group() == '"':
            return i
        code = line[i] if i < n else ""
        simple = _SIMPLE_ESCAPES.get(code)
        if simple is not None:
            pieces.append(simple)
            i += 1
        elif code == "x" and i + 2 < n and line[i + 1] in _HEX and line[i + 2] in _HEX:
            pieces.append(bytes([int(line[i + 1 : i + 3], 16)]))
            i += 3
        else:
            raise UsageError(
                f"cannot parse the line: unknown escape '\\{code}' in double quotes "
                "(use \\\\ for a backslash, \\xHH for a byte, or single quotes)"
            )


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape(data: bytes | str) -> str:
    """``data`` as one printable, unambiguous line.

    Printable UTF-8 without backslashes comes out unchanged; in anything else
    a backslash doubles and other bytes are escaped like Python's bytes repr
    without the quotes (``\\x00``, ``\\n``), keeping printable non-ASCII
    characters readable.  So a single backslash on screen always starts an
    escape: ``\\x00`` is one NUL byte, ``\\\\x00`` the four characters.
    """
    if isinstance(data, str):
        if data.isprintable() and "\\" not in data:
            return data
        data = data.encode("utf-8", "surrogatepass")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if text.isprintable() and "\\" not in text:
            return text
    out: list[str] = []
    for ch in data.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)
