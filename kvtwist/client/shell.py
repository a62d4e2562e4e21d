"""``kvtwist-client``: an interactive shell and script runner for a kvtwist store.

    kvtwist-client 127.0.0.1:9000                  # interactive (prompt, history)
    kvtwist-client 127.0.0.1:9000 -c 'get a'       # one command
    printf 'put a 1\\nget a\\n' | kvtwist-client 127.0.0.1:9000
    kvtwist-client --zk zk1:2181,zk2:2181 --zk-root /chain

The commands are the original C client's (put, get, del, size, height,
getkeys, getvalues, verify) plus range and stats.  Every failure is one line
on stderr starting with ``error: ``; the exit status is that of the last
command (0 ok, 1 failed), 2 for usage errors or an unreachable server.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, NoReturn

from kvtwist.client.api import Stats
from kvtwist.client.protocol import ConnectionFailed, KVError

PROMPT = "kvtwist> "
HISTORY_FILE = "~/.kvtwist_history"
HISTORY_LENGTH = 1000

OK, FAILED, USAGE = 0, 1, 2

MAX_OP_N = 2**64 - 1  # op_n is a uint64 on the wire
MAX_LIMIT = 2**32 - 1  # RangeSpec.limit is a uint32


class ShellError(Exception):
    """A failure to report as one ``error: ...`` line."""


class UsageError(ShellError):
    """A command line the shell cannot run as typed."""


# ---- commands -------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    args: str  # as shown in usage: "<key> <data>"
    min_args: int
    max_args: int
    summary: str
    needs_server: bool = True
    free_text: bool = False  # takes keys/data, so suggest quoting on a bad count
    write: bool = False

    @property
    def usage(self) -> str:
        return f"{self.name} {self.args}".rstrip()


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("put", "<key> <data>", 2, 2, "store data under key", free_text=True, write=True),
        Command("get", "<key>", 1, 1, "show the value stored under key", free_text=True),
        Command("del", "<key>", 1, 1, "delete key", free_text=True, write=True),
        Command("size", "", 0, 0, "number of keys"),
        Command("height", "", 0, 0, "height of the tree"),
        Command("getkeys", "", 0, 0, "all keys, in order"),
        Command("getvalues", "", 0, 0, "all values, in key order"),
        Command("verify", "<op_n>", 1, 1, "whether write number op_n has been executed"),
        Command(
            "range",
            "[start [stop [limit]]]",
            0,
            3,
            "entries with start <= key < stop, at most limit ('-': open end)",
        ),
        Command("stats", "", 0, 0, "the server's statistics"),
        Command("help", "[command]", 0, 1, "this list, or one command's usage", False),
        Command("quit", "", 0, 0, "leave (so does end of input / Ctrl-D)", False),
    )
}

ALIASES = {"exit": "quit", "delete": "del", "keys": "getkeys", "values": "getvalues"}

QUOTE_HINT = "quote a key or data containing spaces, e.g. put \"my key\" \"some data\""


@dataclass(frozen=True)
class Parsed:
    command: Command
    args: list[str]


def lookup(name: str) -> Command:
    """The command called ``name`` (case-insensitive, aliases allowed)."""
    low = name.lower()
    cmd = COMMANDS.get(ALIASES.get(low, low))
    if cmd is None:
        raise UsageError(f"unknown command {name!r} (try 'help')")
    return cmd


def parse_line(line: str) -> Parsed | None:
    """One input line into a command and its arguments; None for blank/comment lines.

    Raises UsageError for bad quoting, unknown commands and wrong argument counts.
    """
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    try:
        words = shlex.split(stripped)
    except ValueError as e:
        raise UsageError(f"cannot parse the line: {str(e).lower()}") from None
    if not words:
        return None
    cmd = lookup(words[0])
    args = words[1:]
    if not cmd.min_args <= len(args) <= cmd.max_args:
        message = f"usage: {cmd.usage}"
        if cmd.free_text and len(args) > cmd.max_args:
            message += f" ({QUOTE_HINT})"
        raise UsageError(message)
    return Parsed(cmd, args)


def parse_op_n(text: str) -> int:
    """``verify``'s argument: an integer (the server judges whether it is > 0)."""
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"usage: verify <op_n> (op_n must be an integer, not {text!r})") from None
    if n > MAX_OP_N:
        raise UsageError(f"op number {n} is out of range (at most {MAX_OP_N})")
    return n


def parse_range_args(args: Sequence[str]) -> tuple[str | None, str | None, int]:
    """``range [start [stop [limit]]]`` into (start, stop, limit); ``-`` is an open end.

    A missing or ``-`` limit is 0, which asks for the server's default limit.
    """
    if len(args) > 3:
        raise UsageError(f"usage: {COMMANDS['range'].usage}")
    start = args[0] if len(args) > 0 and args[0] != "-" else None
    stop = args[1] if len(args) > 1 and args[1] != "-" else None
    limit = 0
    if len(args) > 2 and args[2] != "-":
        try:
            limit = int(args[2])
        except ValueError:
            raise UsageError(
                f"usage: {COMMANDS['range'].usage} (limit must be a number, not {args[2]!r})"
            ) from None
        if not 0 <= limit <= MAX_LIMIT:
            raise UsageError(f"range limit must be between 0 and {MAX_LIMIT}, not {limit}")
    return start, stop, limit


# ---- formatting -----------------------------------------------------------------

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape(data: bytes | str) -> str:
    """``data`` as one printable line.

    Printable UTF-8 comes out unchanged; anything else is escaped like Python's
    bytes repr without the quotes (``\\x00``, ``\\n``, ``\\\\``), keeping
    printable non-ASCII characters readable.
    """
    if isinstance(data, str):
        if data.isprintable():
            return data
        data = data.encode("utf-8", "surrogatepass")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if text.isprintable():
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


# ---- the shell ------------------------------------------------------------------


class Shell:
    """Runs parsed commands against a BlockingClient-like object; prints results.

    ``connect`` makes the client (called at most once up front, and again to
    reconnect after the connection dropped).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        out: IO[str] | None = None,
        err: IO[str] | None = None,
    ) -> None:
        self._connect = connect
        self.client: Any = None
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._stale = False  # the connection failed; reconnect before the next request

    # output

    def say(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()

    def error(self, message: str) -> None:
        self.out.flush()
        self.err.write(f"error: {message}\n")
        self.err.flush()

    # connection

    def connect(self) -> None:
        self.client = self._connect()
        self._stale = False

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None

    def _request(self, cmd: Command, call: Callable[[Any], Any]) -> Any:
        """Run ``call(client)``; after a dropped connection, reconnect once first.

        A read that fails because the connection dropped under it is retried
        once on a new connection; a write is not (it may have been applied),
        but the next command reconnects.
        """
        from kvtwist.client.blocking import RequestTimeout

        if self.client is None or self._stale or getattr(self.client, "lost", False):
            self._reconnect()
            return self._once(cmd, call)
        try:
            return self._once(cmd, call)
        except RequestTimeout:
            raise
        except ConnectionFailed:
            if cmd.write:
                raise
        self._reconnect()
        return self._once(cmd, call)

    def _once(self, cmd: Command, call: Callable[[Any], Any]) -> Any:
        try:
            return call(self.client)
        except ConnectionFailed as e:
            self._stale = True
            if cmd.write:
                raise ConnectionFailed(
                    f"{e} (the {cmd.name} may or may not have been applied)"
                ) from e
            raise

    def _reconnect(self) -> None:
        old, self.client = self.client, None
        if old is not None:
            try:
                old.close()
            except Exception:
                pass
        self._stale = True
        self.connect()

    # commands

    def run(self, parsed: Parsed) -> int:
        try:
            self.execute(parsed)
        except (ShellError, KVError, ConnectionFailed) as e:
            self.error(str(e) or type(e).__name__)
            return FAILED
        except KeyboardInterrupt:
            self.error("interrupted")
            return FAILED
        except BrokenPipeError:
            raise  # the reader of our output went away: main() ends quietly
        except Exception as e:  # a bug, but still one line, never a traceback
            self.error(f"unexpected {type(e).__name__}: {e}")
            return FAILED
        return OK

    def execute(self, parsed: Parsed) -> None:
        cmd, args = parsed.command, parsed.args
        name = cmd.name
        if name == "help":
            self.say(*help_lines(args[0] if args else None))
        elif name == "quit":
            pass
        elif name == "put":
            r = self._request(cmd, lambda c: c.put(args[0], args[1].encode("utf-8")))
            self.say(f"ok op {r.op_n}")
        elif name == "del":
            r = self._request(cmd, lambda c: c.delete(args[0]))
            state = "not found" if r.found is False else "deleted"
            self.say(f"{state} (op {r.op_n})")
        elif name == "get":
            value = self._request(cmd, lambda c: c.get(args[0]))
            self.say("(not found)" if value is None else escape(value))
        elif name == "size":
            self.say(str(self._request(cmd, lambda c: c.size())))
        elif name == "height":
            self.say(str(self._request(cmd, lambda c: c.height())))
        elif name == "getkeys":
            keys = self._request(cmd, lambda c: c.keys())
            self.say(*listing([escape(k) for k in keys], "key"))
        elif name == "getvalues":
            values = self._request(cmd, lambda c: c.values())
            self.say(*listing([escape(v) for v in values], "value"))
        elif name == "verify":
            n = parse_op_n(args[0])
            done = self._request(cmd, lambda c: c.verify(n))
            self.say(f"op {n}: {'executed' if done else 'not yet executed'}")
        elif name == "range":
            start, stop, limit = parse_range_args(args)
            items = self._request(cmd, lambda c: c.range(start, stop, limit))
            lines = [f"{escape(k)}\t{escape(v)}" for k, v in items]
            self.say(*listing(lines, "entry", "entries"))
        elif name == "stats":
            self.say(*format_stats(self._request(cmd, lambda c: c.stats())))
        else:  # pragma: no cover - every command is handled above
            raise ShellError(f"command {name!r} is not implemented")

    # input loops

    def run_lines(self, lines: Iterator[bytes]) -> int:
        """Run commands from byte lines (a pipe or file); the last command's status."""
        return self._loop(_decoded(raw) for raw in lines)

    def _loop(self, lines: Iterable[str | None]) -> int:
        """Run lines until quit or the end; None stands for input that was not UTF-8."""
        status = OK
        for line in lines:
            if line is None:
                self.error("input is not valid UTF-8")
                status = FAILED
                continue
            next_status = self.run_line(line, status)
            if next_status is None:
                break
            status = next_status
        return status

    def run_line(self, line: str, status: int = OK) -> int | None:
        """Run one input line: the new status (``status`` for a blank line), or None for quit."""
        try:
            parsed = parse_line(line)
        except UsageError as e:
            self.error(str(e))
            return FAILED
        if parsed is None:
            return status
        if parsed.command.name == "quit":
            return None
        return self.run(parsed)

    def interact(self) -> int:
        """The interactive loop: prompt, readline history and completion."""
        rl = _setup_readline()
        try:
            return self._loop(self._prompted())
        finally:
            _save_history(rl)

    def _prompted(self) -> Iterator[str | None]:
        while True:
            try:
                line = input(PROMPT)
            except EOFError:
                self.say("")
                return
            except KeyboardInterrupt:
                self.say("")
                continue
            except UnicodeDecodeError:
                yield None
                continue
            yield line if _valid_text(line) else None


def _decoded(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _valid_text(text: str) -> bool:
    """False for text holding surrogate escapes of undecodable input bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _setup_readline() -> Any:
    try:
        import readline
    except ImportError:
        return None
    try:
        readline.read_history_file(os.path.expanduser(HISTORY_FILE))
    except Exception:
        pass
    readline.set_history_length(HISTORY_LENGTH)
    names = sorted([*COMMANDS, *ALIASES])

    def complete(text: str, state: int) -> str | None:
        buffer = readline.get_line_buffer()
        if buffer[: readline.get_begidx()].strip():
            return None  # only the first word is a command name
        matches = [n + " " for n in names if n.startswith(text.lower())]
        return matches[state] if state < len(matches) else None

    readline.set_completer(complete)
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    return readline


def _save_history(rl: Any) -> None:
    if rl is None:
        return
    try:
        rl.write_history_file(os.path.expanduser(HISTORY_FILE))
    except Exception:
        pass


# ---- the program ----------------------------------------------------------------


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="kvtwist-client",
        description="Talk to a kvtwist node (HOST:PORT) or chain (--zk). "
        "Interactive on a terminal; otherwise reads one command per line from stdin.",
        epilog="commands: " + ", ".join(COMMANDS) + " (type 'help' in the shell)",
    )
    p.add_argument("address", nargs="?", metavar="HOST:PORT", help="a node to talk to")
    p.add_argument("--zk", metavar="ZKHOSTS", help="ZooKeeper hosts (h1:2181,h2:2181) of a chain")
    p.add_argument("--zk-root", default="/chain", metavar="PATH", help="the chain's znode")
    p.add_argument("-c", dest="command", metavar="CMD", help="run one command and exit")
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS",
        help="connection and request timeout (default 10)",
    )
    return p


def _maker(ns: argparse.Namespace) -> Callable[[], Any]:
    """A function connecting a BlockingClient as the arguments say."""
    from kvtwist.client.api import parse_address
    from kvtwist.client.blocking import BlockingClient

    timeout: float | None = ns.timeout if ns.timeout > 0 else None
    if ns.zk is None:
        address: str = ns.address
        try:
            parse_address(address)
        except ValueError as e:
            raise UsageError(str(e)) from None
        return lambda: BlockingClient.connect(address, timeout)
    # kazoo reports every failed connection attempt through logging; the shell
    # reports the outcome itself, as one line.
    logging.getLogger("kazoo").addHandler(logging.NullHandler())
    logging.getLogger("kazoo").propagate = False
    try:
        chain = importlib.import_module("kvtwist.client.chain")
    except Exception as e:
        raise UsageError(f"ZooKeeper mode is unavailable: {type(e).__name__}: {e}") from None
    zk_hosts, root = ns.zk, ns.zk_root

    def make(reactor: Any) -> Any:
        return chain.ChainClient.connect(reactor, zk_hosts, root, deadline=timeout)

    where = f"the chain {root} via ZooKeeper {zk_hosts}"
    return lambda: BlockingClient(make, timeout=timeout, description=where)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit status."""
    for stream in (sys.stdout, sys.stderr):
        # A value or key the terminal's encoding cannot show must not crash the shell.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except _ArgumentError as e:
        print(f"error: {e} (try --help)", file=sys.stderr)
        return USAGE
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    if (ns.address is None) == (ns.zk is None):
        print("error: give either HOST:PORT or --zk ZKHOSTS (try --help)", file=sys.stderr)
        return USAGE

    parsed: Parsed | None = None
    if ns.command is not None:
        if not _valid_text(ns.command):
            print("error: input is not valid UTF-8", file=sys.stderr)
            return FAILED
        try:
            parsed = parse_line(ns.command)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return FAILED
        if parsed is None or not parsed.command.needs_server:
            shell = Shell(lambda: None)
            return OK if parsed is None else shell.run(parsed)

    try:
        connect = _maker(ns)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE

    shell = Shell(connect)
    try:
        return _session(shell, parsed)
    except BrokenPipeError:
        # Like `kvtwist-client ... | head -1`: stop quietly, and keep Python
        # from complaining when it flushes stdout at exit.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return FAILED
    finally:
        shell.close()


def _session(shell: Shell, parsed: Parsed | None) -> int:
    try:
        shell.connect()
    except (ConnectionFailed, KVError) as e:
        shell.error(str(e))
        return USAGE
    except KeyboardInterrupt:
        shell.error("interrupted")
        return USAGE
    except Exception as e:
        shell.error(f"cannot connect: {type(e).__name__}: {e}")
        return USAGE
    if parsed is not None:
        return shell.run(parsed)
    if sys.stdin.isatty():
        return shell.interact()
    try:
        return shell.run_lines(iter(sys.stdin.buffer.readline, b""))
    except KeyboardInterrupt:
        shell.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
