"""``kvtwist-client``: an interactive shell and script runner for a kvtwist store.

    kvtwist-client                                 # interactive, 127.0.0.1:9000
    kvtwist-client -h 10.0.0.5 -p 9001             # or 10.0.0.5:9001
    kvtwist-client get a                           # one command (or -c 'get a')
    kvtwist-client -x put photo < photo.jpg        # last argument from stdin
    kvtwist-client --raw get photo > copy.jpg      # the value's exact bytes
    printf 'put a 1\\nget a\\n' | kvtwist-client
    kvtwist-client --zk zk1:2181,zk2:2181 --zk-root /chain
    kvtwist-client --zk zk1:2181 --cluster prod         # a cluster of many chains
    kvtwist-client --tls-ca ca.pem --token-file token 10.0.0.5:9000

The commands are the original C client's (put, get, del, size, height,
getkeys, getvalues, verify) plus range and stats.  Keys, like values, are any
bytes: typed with escapes in double quotes (``get "caf\\xe9"``), shown escaped
when they are not printable UTF-8, and written as they are with --raw.  Every
failure is one line on stderr starting with ``error: ``; the exit status is
that of the last command: 0 ok, 1 failed or (get) no such key, 2 a usage error
or no server.

This module is the program: its options, where to connect, the session that
runs commands with its reconnect policy, the input loops (a terminal with
history and completion, a pipe, one command) and the exit status.  How a typed
line becomes words is in ``shell_syntax``; what each command does is in
``shell_commands``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any, NoReturn

from kvtwist import __version__
from kvtwist.client.protocol import ConnectionFailed, KVError
from kvtwist.client.shell_commands import (
    ALIASES,
    COMMANDS,
    FAILED,
    OK,
    USAGE,
    Command,
    Parsed,
    parse_line,
    parse_words,
)
from kvtwist.client.shell_syntax import ShellError, UsageError, split_words
from kvtwist.client.targets import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    security,
    target,
)
from kvtwist.client.targets import maker as _maker

PROMPT = "kvtwist> "
HISTORY_FILE = "~/.kvtwist_history"
HISTORY_LENGTH = 1000


# ---- the shell ------------------------------------------------------------------


class Shell:
    """Runs parsed commands against a BlockingClient-like object; prints results.

    It is the ``Session`` that the command handlers print through and send
    requests with.

    ``connect`` makes the client (called at most once up front, and again to
    reconnect after the connection dropped).  ``raw`` prints values as their
    bytes, unescaped and without list footers; ``where`` names the server in
    the prompt.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        out: IO[str] | None = None,
        err: IO[str] | None = None,
        *,
        raw: bool = False,
        where: str = "",
    ) -> None:
        self._connect = connect
        self.client: Any = None
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.raw = raw
        self.where = where
        self.interactive = False
        self._stale = False  # the connection failed; reconnect before the next request

    @property
    def prompt(self) -> str:
        return f"{self.where}> " if self.where else PROMPT

    # output

    def say(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()

    def say_bytes(self, data: bytes) -> None:
        """Write ``data`` as it is (--raw output)."""
        self.out.flush()
        buffer = getattr(self.out, "buffer", None)
        if buffer is None:
            self.out.write(data.decode("utf-8", "surrogateescape"))
            self.out.flush()
        else:
            buffer.write(data)
            buffer.flush()

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

    def request(self, cmd: Command, call: Callable[[Any], Any]) -> Any:
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
            return self.execute(parsed)
        except UsageError as e:
            self.error(str(e))
            return USAGE
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

    def execute(self, parsed: Parsed) -> int:
        """Run one command; its status (FAILED, silently, for a missing key)."""
        return parsed.command.handler(self, parsed)

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
            return USAGE
        if parsed is None:
            return status
        if parsed.command.name == "quit":
            return None
        return self.run(parsed)

    def interact(self) -> int:
        """The interactive loop: prompt, readline history and completion."""
        rl = _setup_readline()
        self.interactive = True
        try:
            return self._loop(self._prompted())
        finally:
            _save_history(rl)

    def _prompted(self) -> Iterator[str | None]:
        while True:
            try:
                line = input(self.prompt)
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



EXIT_STATUSES = (
    "exit status: 0 the (last) command succeeded; 1 it failed, or get found no such key "
    "(with --raw nothing is printed then, so a stored value '(not found)' is told apart); "
    "2 a usage error or no server to talk to"
)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="kvtwist-client",
        usage="%(prog)s [options] [HOST:PORT] [COMMAND [ARG ...]]",
        description="Talk to a kvtwist node (default 127.0.0.1:9000) or a chain (--zk). "
        "With a COMMAND (as words, or -c LINE), run it and exit; otherwise interactive "
        "on a terminal, or one command per line from stdin. Options go before the command.",
        epilog="commands: " + ", ".join(COMMANDS) + " (type 'help' in the shell). "
        + EXIT_STATUSES + ".",
        add_help=False,
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument(
        "--version", action="version", version=f"kvtwist-client {__version__}",
        help="show kvtwist's version and exit",
    )
    p.add_argument("address", nargs="?", metavar="HOST:PORT", help="a node to talk to")
    p.add_argument("-h", "--host", help=f"the node's host (default {DEFAULT_HOST})")
    p.add_argument("-p", "--port", type=int, help=f"the node's port (default {DEFAULT_PORT})")
    p.add_argument("--zk", metavar="ZKHOSTS", help="ZooKeeper hosts (h1:2181,h2:2181) of a chain")
    p.add_argument("--zk-root", default="/chain", metavar="PATH", help="the chain's znode")
    p.add_argument(
        "--cluster", metavar="NAME", help="with --zk: a cluster of many chains (/kvtwist/NAME)"
    )
    p.add_argument("-c", dest="command", metavar="LINE", help="run one command line and exit")
    p.add_argument(
        "-x", dest="stdin_arg", action="store_true",
        help="read the command's last argument from stdin, as bytes (put KEY with -x)",
    )
    p.add_argument(
        "--raw", action="store_true",
        help="print values as their bytes: get prints exactly the value (no newline added), "
        "listings one item a line with no footer",
    )
    p.add_argument(
        "--tls-ca", metavar="FILE",
        help="speak TLS and accept only a node certificate signed by a CA in this PEM file "
        "(and naming the host dialled)",
    )
    p.add_argument(
        "--tls", action="store_true",
        help="speak TLS, verifying the node against the system's trust store",
    )
    p.add_argument(
        "--token-file", metavar="FILE",
        help="send the client token in FILE (mode 600) first, for nodes run with "
        "--auth-token-file",
    )
    p.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS",
        help="give up on connecting or on a command after this long (default 10 for a node, "
        "30 for a chain, enough to ride out a failover; 0: no limit)",
    )
    return p


#: Options taking a value, to find where the command's words begin in argv.
_VALUE_OPTIONS = frozenset({"-h", "--host", "-p", "--port", "--zk", "--zk-root", "-c",
                            "--cluster", "--timeout", "--tls-ca", "--token-file"})


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """argv into (options and address, command words).

    The command starts at the first word that is not an option or an option's
    value and not an address (HOST:PORT has a colon), or at the word after the
    address; from there on every word, ``-x`` or ``--foo`` alike, is an argument.
    """
    i = 0
    seen_address = False
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return list(argv[:i]), list(argv[i + 1 :])
        if word.startswith("-") and word != "-":
            i += 2 if word in _VALUE_OPTIONS else 1
            continue
        if seen_address or ":" not in word:
            return list(argv[:i]), list(argv[i:])
        seen_address = True
        i += 1
    return list(argv), []


def _command(ns: argparse.Namespace, words: list[str]) -> Parsed | None:
    """The command given on the command line (words or -c), -x's argument appended."""
    if ns.command is not None and words:
        raise UsageError("give the command either as words or with -c, not both")
    if ns.command is not None:
        stripped = ns.command.strip()
        args = [] if stripped.startswith("#") else split_words(stripped)
    else:
        args = [os.fsencode(word) for word in words]
    if ns.stdin_arg:
        if not args:
            raise UsageError("-x needs a command (its last argument is read from stdin)")
        args.append(sys.stdin.buffer.read())
    return parse_words(args)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit status."""
    for stream in (sys.stdout, sys.stderr):
        # A value or key the terminal's encoding cannot show must not crash the shell.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    parser = build_parser()
    options, words = split_argv(sys.argv[1:] if argv is None else argv)
    try:
        ns = parser.parse_args(options)
    except _ArgumentError as e:
        print(f"error: {e} (try --help)", file=sys.stderr)
        return USAGE
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    try:
        where = target(ns)
        given = ns.command is not None or bool(words) or ns.stdin_arg
        parsed = _command(ns, words) if given else None
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    if given and (parsed is None or not parsed.command.needs_server):
        return OK if parsed is None else Shell(lambda: None, raw=ns.raw).run(parsed)
    try:
        connect = _maker(where, ns.timeout, security(ns))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE

    shell = Shell(connect, raw=ns.raw, where=where.where)
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
