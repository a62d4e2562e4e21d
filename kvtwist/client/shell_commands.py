"""The shell's commands: one table from name to usage, help and handler.

Each handler runs one command on a ``Session`` (the shell: where output goes,
and a client to send requests through) and returns the command's exit status.
The words a user typed become a command here too, checked against the table,
and the results are formatted here, so adding a command is one handler and
one row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kvtwist.client.api import Stats
from kvtwist.client.shell_syntax import UsageError, escape, split_words, to_bytes

OK, FAILED, USAGE = 0, 1, 2

#: What ``get`` prints for a missing key (the status, 1, tells it from a value).
NOT_FOUND = "(not found)"

MAX_OP_N = 2**64 - 1  # op_n is a uint64 on the wire
MAX_LIMIT = 2**32 - 1  # RangeSpec.limit is a uint32

QUOTE_HINT = "quote a key or data containing spaces, e.g. put \"my key\" \"some data\""


class Session(Protocol):
    """What a command runs on: the shell's output and its connection."""

    raw: bool  # --raw: values as their bytes, listings without footers
    interactive: bool  # at a terminal: a raw value gets a newline

    def say(self, *lines: str) -> None: ...

    def say_bytes(self, data: bytes) -> None: ...

    def request(self, cmd: Command, call: Callable[[Any], Any]) -> Any:
        """``call(client)``, with the shell's reconnect-and-retry policy for ``cmd``."""
        ...


Handler = Callable[[Session, "Parsed"], int]


@dataclass(frozen=True)
class Command:
    name: str
    args: str  # as shown in usage: "<key> <data>"
    min_args: int
    max_args: int
    summary: str
    handler: Handler
    needs_server: bool = True
    free_text: bool = False  # takes keys/data, so suggest quoting on a bad count
    write: bool = False

    @property
    def usage(self) -> str:
        return f"{self.name} {self.args}".rstrip()


@dataclass(frozen=True)
class Parsed:
    command: Command
    args: list[bytes]


# ---- handlers -------------------------------------------------------------------


def _help(s: Session, p: Parsed) -> int:
    topic = p.args[0].decode("utf-8", "backslashreplace") if p.args else None
    s.say(*help_lines(topic))
    return OK


def _quit(s: Session, p: Parsed) -> int:
    return OK  # the input loops stop before running it; on the command line it does nothing


def _put(s: Session, p: Parsed) -> int:
    key, value = p.args
    r = s.request(p.command, lambda c: c.put(key, value))
    s.say(f"ok op {r.op_n}")
    return OK


def _del(s: Session, p: Parsed) -> int:
    key = p.args[0]
    r = s.request(p.command, lambda c: c.delete(key))
    state = "not found" if r.found is False else "deleted"
    s.say(f"{state} (op {r.op_n})")
    return OK


def _get(s: Session, p: Parsed) -> int:
    """The value; a missing key is FAILED, silently with --raw."""
    key = p.args[0]
    found = s.request(p.command, lambda c: c.get(key))
    if found is None:
        if not s.raw:
            s.say(NOT_FOUND)
        return FAILED
    if s.raw:
        s.say_bytes(found + b"\n" if s.interactive else found)
    else:
        s.say(escape(found))
    return OK


def _size(s: Session, p: Parsed) -> int:
    s.say(str(s.request(p.command, lambda c: c.size())))
    return OK


def _height(s: Session, p: Parsed) -> int:
    s.say(str(s.request(p.command, lambda c: c.height())))
    return OK


def _getkeys(s: Session, p: Parsed) -> int:
    _say_items(s, s.request(p.command, lambda c: c.keys()), "key")
    return OK


def _getvalues(s: Session, p: Parsed) -> int:
    _say_items(s, s.request(p.command, lambda c: c.values()), "value")
    return OK


def _verify(s: Session, p: Parsed) -> int:
    n = parse_op_n(p.args[0])
    done = s.request(p.command, lambda c: c.verify(n))
    s.say(f"op {n}: {'executed' if done else 'not yet executed'}")
    return OK


def _range(s: Session, p: Parsed) -> int:
    start, stop, limit = parse_range_args(p.args)
    items = s.request(p.command, lambda c: c.range(start, stop, limit))
    if s.raw:
        _say_items(s, [_raw(k) + b"\t" + v for k, v in items], "entry", "entries")
    else:
        lines = [f"{escape(k)}\t{escape(v)}" for k, v in items]
        s.say(*listing(lines, "entry", "entries"))
    return OK


def _stats(s: Session, p: Parsed) -> int:
    s.say(*format_stats(s.request(p.command, lambda c: c.stats())))
    return OK


def _say_items(
    s: Session, items: Sequence[bytes | str], word: str, words: str | None = None
) -> None:
    """A listing: escaped with a counted footer, or with --raw one raw item a line."""
    if s.raw:
        s.say_bytes(b"".join(_raw(item) + b"\n" for item in items))
    else:
        s.say(*listing([escape(item) for item in items], word, words))


def _raw(item: bytes | str) -> bytes:
    return to_bytes(item) if isinstance(item, str) else item


# ---- the table ------------------------------------------------------------------

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "put", "<key> <data>", 2, 2, "store data under key", _put, free_text=True, write=True
        ),
        Command("get", "<key>", 1, 1, "show the value stored under key", _get, free_text=True),
        Command("del", "<key>", 1, 1, "delete key", _del, free_text=True, write=True),
        Command("size", "", 0, 0, "number of keys", _size),
        Command("height", "", 0, 0, "height of the tree", _height),
        Command("getkeys", "", 0, 0, "all keys, in order", _getkeys),
        Command("getvalues", "", 0, 0, "all values, in key order", _getvalues),
        Command(
            "verify", "<op_n>", 1, 1, "whether write number op_n has been executed", _verify
        ),
        Command(
            "range",
            "[start [stop [limit]]]",
            0,
            3,
            "entries with start <= key < stop, at most limit ('-': open end)",
            _range,
        ),
        Command("stats", "", 0, 0, "the server's statistics", _stats),
        Command(
            "help", "[command]", 0, 1, "this list, or one command's usage", _help,
            needs_server=False,
        ),
        Command(
            "quit", "", 0, 0, "leave (so does end of input / Ctrl-D)", _quit, needs_server=False
        ),
    )
}

ALIASES = {"exit": "quit", "delete": "del", "keys": "getkeys", "values": "getvalues"}


def lookup(name: str) -> Command:
    """The command called ``name`` (case-insensitive, aliases allowed)."""
    low = name.lower()
    cmd = COMMANDS.get(ALIASES.get(low, low))
    if cmd is None:
        raise UsageError(f"unknown command {name!r} (try 'help')")
    return cmd


def is_command(name: str) -> bool:
    low = name.lower()
    return ALIASES.get(low, low) in COMMANDS


# ---- words into a command -------------------------------------------------------


def parse_words(words: Sequence[bytes]) -> Parsed | None:
    """A command and its arguments; None for no words.

    Raises UsageError for unknown commands and wrong argument counts.
    """
    if not words:
        return None
    try:
        name = words[0].decode("utf-8")
    except UnicodeDecodeError:
        name = words[0].decode("utf-8", "backslashreplace")
    cmd = lookup(name)
    args = list(words[1:])
    if not cmd.min_args <= len(args) <= cmd.max_args:
        message = f"usage: {cmd.usage}"
        if cmd.free_text and len(args) > cmd.max_args:
            message += f" ({QUOTE_HINT})"
        raise UsageError(message)
    return Parsed(cmd, args)


def parse_line(line: str) -> Parsed | None:
    """One input line into a command and its arguments; None for blank/comment lines.

    Raises UsageError for bad quoting, unknown commands and wrong argument counts.
    """
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    return parse_words(split_words(stripped))


def parse_op_n(arg: bytes | str) -> int:
    """``verify``'s argument: an integer (the server judges whether it is > 0)."""
    text = arg.decode("utf-8", "backslashreplace") if isinstance(arg, bytes) else arg
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"usage: verify <op_n> (op_n must be an integer, not {text!r})") from None
    if n > MAX_OP_N:
        raise UsageError(f"op number {n} is out of range (at most {MAX_OP_N})")
    return n


def parse_range_args(args: Sequence[bytes | str]) -> tuple[bytes | None, bytes | None, int]:
    """``range [start [stop [limit]]]`` into (start, stop, limit); ``-`` is an open end.

    A missing or ``-`` limit is 0, which asks for the server's default limit.
    """
    if len(args) > 3:
        raise UsageError(f"usage: {COMMANDS['range'].usage}")
    words = [a.encode("utf-8") if isinstance(a, str) else a for a in args]
    start = words[0] if len(words) > 0 and words[0] != b"-" else None
    stop = words[1] if len(words) > 1 and words[1] != b"-" else None
    limit = 0
    if len(words) > 2 and words[2] != b"-":
        text = words[2].decode("utf-8", "backslashreplace")
        try:
            limit = int(text)
        except ValueError:
            raise UsageError(
                f"usage: {COMMANDS['range'].usage} (limit must be a number, not {text!r})"
            ) from None
        if not 0 <= limit <= MAX_LIMIT:
            raise UsageError(f"range limit must be between 0 and {MAX_LIMIT}, not {limit}")
    return start, stop, limit


# ---- formatting -----------------------------------------------------------------


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def listing(items: Sequence[str], word: str, words: str | None = None) -> list[str]:
    """One item per line and a ``(N keys)`` footer, or just ``(empty)``."""
    if not items:
        return ["(empty)"]
    return [*items, f"({plural(len(items), word, words)})"]


def format_duration(seconds: float) -> str:
    """``12.3s``, ``4m 05s``, ``2h 03m 04s``, ``3d 04h 05m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h:02d}h {m:02d}m"
    if h:
        return f"{h}h {m:02d}m {s:02d}s"
    return f"{m}m {s:02d}s"


def format_stats(st: Stats) -> list[str]:
    """The STATS reply as an aligned table: node facts, then one row per op."""
    facts = [
        ("role", st.role or "?"),
        ("keys", str(st.keys)),
        ("height", str(st.height)),
        ("connections", str(st.connections)),
        ("uptime", format_duration(st.uptime_s)),
        ("last op", str(st.last_op)),
    ]
    width = max(len(name) for name, _ in facts)
    lines = [f"{name:<{width}}  {value}" for name, value in facts]
    lines.append("")
    rows = [("op", "count", "mean µs", "errors")]
    rows += [(o.op, str(o.count), f"{o.mean_service_us:.1f}", str(o.errors)) for o in st.ops]
    if len(rows) == 1:
        lines.append("(no requests yet)")
        return lines
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        lines.append(
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}"
        )
    return lines


def help_lines(name: str | None = None) -> list[str]:
    if name is not None:
        cmd = lookup(name)
        return [f"usage: {cmd.usage}", f"  {cmd.summary}"]
    width = max(len(c.usage) for c in COMMANDS.values())
    lines = ["commands:"]
    lines += [f"  {c.usage:<{width}}  {c.summary}" for c in COMMANDS.values()]
    lines.append(QUOTE_HINT[0].upper() + QUOTE_HINT[1:] + ".")
    return lines
