"""The kvtwist-client shell: parsing and formatting units, then the real program.

Integration tests run ``python -m kvtwist.client.shell`` as a subprocess against
a real node process (tests/nodes.py), one fresh node per test.
"""

from __future__ import annotations

import io
import os
import pty
import queue
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any
from unittest import SkipTest, mock

from twisted.trial.unittest import SynchronousTestCase

from kvtwist.client import shell
from kvtwist.client.api import OpStat, Stats, WriteResult
from kvtwist.client.blocking import BlockingClient
from kvtwist.client.protocol import ConnectionFailed, KVError
from kvtwist.client.shell import Shell, split_argv, target
from kvtwist.client.shell_commands import (
    COMMANDS,
    format_duration,
    format_stats,
    help_lines,
    listing,
    parse_line,
    parse_op_n,
    parse_range_args,
    parse_words,
)
from kvtwist.client.shell_syntax import UsageError, escape, split_words, to_bytes
from tests.nodes import ROOT, NodeProcess, env, free_port
from tests.test_blocking import private_reactor, start_node

SHELL = [sys.executable, "-m", "kvtwist.client.shell"]


def shell_env(home: str | None = None) -> dict[str, str]:
    e = env()
    e["PYTHONIOENCODING"] = "utf-8"  # compare bytes whatever the test machine's locale
    if home is not None:
        e["HOME"] = home
    return e


def run_shell(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*SHELL, *args], input=stdin, capture_output=True, cwd=ROOT, env=shell_env(), timeout=60
    )


def refused(port: int) -> str:
    return f"error: cannot connect to 127.0.0.1:{port}: Connection refused"


def lines(data: bytes) -> list[str]:
    return data.decode("utf-8").splitlines()


# ---- units: no server -----------------------------------------------------------


class EscapeTests(SynchronousTestCase):
    def test_printable_utf8_unchanged(self) -> None:
        """Printable UTF-8, non-ASCII, spaces and backslashes included, is shown as is."""
        for text in ["1", "data with spaces", "héllo wörld ✓", ""]:
            self.assertEqual(escape(text.encode()), text)

    def test_backslash_always_doubled(self) -> None:
        """A literal backslash shows as \\\\, so a value never looks like an escape of another."""
        self.assertEqual(escape(b"C:\\path"), "C:\\\\path")
        self.assertEqual(escape("C:\\path"), "C:\\\\path")
        self.assertEqual(escape(b"\\x00"), "\\\\x00")
        self.assertEqual(escape(b"\x00"), "\\x00")
        self.assertNotEqual(escape(b"\\x00"), escape(b"\x00"))

    def test_binary_escaped_like_repr_without_quotes(self) -> None:
        """NULs and invalid UTF-8 come out as \\xNN escapes, with no b'' around them."""
        self.assertEqual(escape(b"\x00\xffA"), "\\x00\\xffA")
        self.assertEqual(escape(b"a'b\"c\x01"), "a'b\"c\\x01")

    def test_control_characters_and_backslash_in_escaped_values(self) -> None:
        """Once escaping, newline/tab/CR get short escapes and a backslash doubles."""
        self.assertEqual(escape(b"a\nb\tc\rd\\e\x7f"), "a\\nb\\tc\\rd\\\\e\\x7f")

    def test_printable_non_ascii_kept_inside_escaped_values(self) -> None:
        """Valid non-ASCII characters stay readable next to escaped bytes."""
        self.assertEqual(escape("é\x00".encode() + b"\xc3"), "é\\x00\\xc3")
        self.assertEqual(escape("\u200b\U000e0001".encode()), "\\u200b\\U000e0001")

    def test_str_keys(self) -> None:
        """Keys (str) are escaped by the same rules."""
        self.assertEqual(escape("tab\tkey"), "tab\\tkey")
        self.assertEqual(escape("plain key"), "plain key")


class ParseTests(SynchronousTestCase):
    def test_blank_and_comment_lines(self) -> None:
        """Blank lines and lines starting with # are no commands."""
        for line in ["", "   ", "\n", "# put a 1", "   # note"]:
            self.assertIsNone(parse_line(line))

    def test_quoting(self) -> None:
        """shlex quoting gives keys and data with spaces."""
        p = parse_line('put "my key" \'data with spaces\'\n')
        assert p is not None
        self.assertEqual((p.command.name, p.args), ("put", [b"my key", b"data with spaces"]))

    def test_names_are_case_insensitive_with_aliases(self) -> None:
        """PUT, Get and the aliases exit/delete/keys/values resolve to commands."""
        parsed = [parse_line(x) for x in ["PUT a 1", "Get a", "exit", "delete a", "keys", "values"]]
        names = [p.command.name if p else None for p in parsed]
        self.assertEqual(names, ["put", "get", "quit", "del", "getkeys", "getvalues"])

    def test_unknown_command(self) -> None:
        """An unknown command names itself and points to help."""
        with self.assertRaises(UsageError) as cm:
            parse_line("foo bar")
        self.assertEqual(str(cm.exception), "unknown command 'foo' (try 'help')")

    def test_wrong_argument_count_gives_usage(self) -> None:
        """Too few or too many arguments give the command's usage."""
        cases = {
            "put a": "usage: put <key> <data>",
            "get": "usage: get <key>",
            "size now": "usage: size",
            "verify": "usage: verify <op_n>",
            "range a b 1 2": "usage: range [start [stop [limit]]]",
        }
        for line, message in cases.items():
            with self.assertRaises(UsageError) as cm:
                parse_line(line)
            self.assertEqual(str(cm.exception), message)

    def test_extra_words_suggest_quoting(self) -> None:
        """put with unquoted spaces is refused with a hint to quote, not silently joined."""
        with self.assertRaises(UsageError) as cm:
            parse_line("put a data with spaces")
        self.assertTrue(str(cm.exception).startswith("usage: put <key> <data> (quote "))
        self.assertIn('put "my key" "some data"', str(cm.exception))

    def test_bad_quoting(self) -> None:
        """An unclosed quote is a usage error, not a traceback."""
        with self.assertRaises(UsageError) as cm:
            parse_line('put a "unterminated')
        self.assertEqual(str(cm.exception), "cannot parse the line: no closing double quote")
        with self.assertRaises(UsageError) as cm:
            parse_line("put a 'unterminated")
        self.assertEqual(str(cm.exception), "cannot parse the line: no closing single quote")

    def test_double_quoted_escapes(self) -> None:
        """In double quotes \\xHH is any byte and \\n \\r \\t \\\\ \\" their characters."""
        self.assertEqual(split_words(r'"\x00\xff\n" "\\" "\"" "\t\r" "\xAbz"'),
                         [b"\x00\xff\n", b"\\", b'"', b"\t\r", b"\xabz"])
        p = parse_line(r'put k "caf\xe9 \\x41"')
        assert p is not None
        self.assertEqual(p.args, [b"k", b"caf\xe9 \\x41"])

    def test_unknown_escape_refused(self) -> None:
        """An escape the shell does not know is an error, not a silent guess."""
        for line in [r'put k "C:\path"', r'put k "\x4"', r'put k "\x4g"']:
            with self.assertRaises(UsageError) as cm:
                parse_line(line)
            self.assertIn("unknown escape", str(cm.exception))

    def test_single_quotes_and_bare_backslash(self) -> None:
        """Single quotes keep backslashes; outside quotes a backslash keeps the next character."""
        self.assertEqual(split_words(r"'C:\x00' a\ b a\\b"), [b"C:\\x00", b"a b", b"a\\b"])
        self.assertEqual(split_words("a'b c'\"d e\"f  g"), [b"ab cd ef", b"g"])
        self.assertEqual(split_words("  "), [])
        self.assertEqual(split_words("x ''"), [b"x", b""])

    def test_non_ascii_text_is_utf8(self) -> None:
        """Text typed outside escapes is encoded as UTF-8."""
        self.assertEqual(split_words("put é '✓'"), [b"put", "é".encode(), "✓".encode()])

    def test_long_argument_in_one_piece(self) -> None:
        """A 16 MiB argument, bare, quoted or escaped, comes back whole (parsed in linear time)."""
        big = "v" * (16 * 1024 * 1024)
        for line in [f"put k {big}", f"put k '{big}'", f'put k "{big}\\x00"']:
            words = split_words(line)
            self.assertEqual([len(w) for w in words[:2]], [3, 1])
            self.assertEqual(words[2][: len(big)], big.encode())
        self.assertEqual(split_words(f'"{big}\\x00"')[0][-2:], b"v\x00")

    def test_range_arguments(self) -> None:
        """range takes optional start, stop, limit; '-' leaves an end (or the limit) open."""
        self.assertEqual(parse_range_args([]), (None, None, 0))
        self.assertEqual(parse_range_args(["a"]), (b"a", None, 0))
        self.assertEqual(parse_range_args(["-", "m"]), (None, b"m", 0))
        self.assertEqual(parse_range_args(["a", "-", "5"]), (b"a", None, 5))
        self.assertEqual(parse_range_args(["a", "z", "-"]), (b"a", b"z", 0))
        self.assertEqual(parse_range_args([b"caf\xe9", b"\xff"]), (b"caf\xe9", b"\xff", 0))

    def test_bad_range_limit(self) -> None:
        """A limit that is not a non-negative 32-bit number is a usage error."""
        for bad in ["x", "-3", str(2**32)]:
            self.assertRaises(UsageError, parse_range_args, ["a", "b", bad])

    def test_verify_argument(self) -> None:
        """verify needs an integer op number that fits in 64 bits."""
        self.assertEqual(parse_op_n("17"), 17)
        self.assertEqual(parse_op_n("0"), 0)  # the server says why 0 is wrong
        self.assertRaises(UsageError, parse_op_n, "seventeen")
        self.assertRaises(UsageError, parse_op_n, str(2**64))


class SyntaxTests(SynchronousTestCase):
    """shell_syntax's word splitting, apart from any command."""

    def test_any_whitespace_separates_words(self) -> None:
        """Tabs, newlines and runs of spaces separate words, and none is kept."""
        self.assertEqual(split_words(" a\tb \n  c\t"), [b"a", b"b", b"c"])

    def test_backslash_ending_the_line_refused(self) -> None:
        """A backslash with nothing after it is a usage error, not an empty escape."""
        with self.assertRaises(UsageError) as cm:
            split_words("put k v\\")
        self.assertEqual(str(cm.exception), "cannot parse the line: a backslash ends the line")

    def test_bell_and_backspace_escapes(self) -> None:
        """In double quotes \\a and \\b are the bell and backspace bytes."""
        self.assertEqual(split_words(r'"\a\b"'), [b"\a\b"])

    def test_undecodable_argument_bytes_kept(self) -> None:
        """Bytes of an argument that were not UTF-8 (surrogate escapes) come back as they were."""
        self.assertEqual(to_bytes("caf\udce9"), b"caf\xe9")
        self.assertEqual(split_words("get caf\udce9 'x\udcff'"), [b"get", b"caf\xe9", b"x\xff"])

    def test_escaped_output_reads_back(self) -> None:
        """A value shown escaped, typed back in double quotes, is the same bytes."""
        for value in [b"\x00\xff", b"a\nb\tc\r", b"C:\\x00", "é\x01".encode()]:
            self.assertEqual(split_words(f'"{escape(value)}"'), [value])


class CommandTableTests(SynchronousTestCase):
    """shell_commands: words into a command, and the table behind it."""

    def test_words_into_a_command(self) -> None:
        """No words are no command; the name is looked up, the arguments kept as bytes."""
        self.assertIsNone(parse_words([]))
        p = parse_words([b"GET", b"\xff"])
        assert p is not None
        self.assertEqual((p.command.name, p.args), ("get", [b"\xff"]))

    def test_undecodable_command_name_shown_escaped(self) -> None:
        """A command name that is not UTF-8 is named with escapes in the error."""
        with self.assertRaises(UsageError) as cm:
            parse_words([b"g\xffet"])
        self.assertEqual(str(cm.exception), "unknown command 'g\\\\xffet' (try 'help')")

    def test_help_lists_the_table_in_order(self) -> None:
        """help shows every command of the table once, in its order, and one by name or alias."""
        shown = [line.split()[0] for line in help_lines()[1:-1]]
        self.assertEqual(shown, list(COMMANDS))
        self.assertEqual(help_lines("delete"), ["usage: del <key>", "  delete key"])

    def test_handler_runs_on_any_session(self) -> None:
        """A command's handler needs only a Session: its output and a request function."""

        class Recorder:
            raw = False
            interactive = False

            def __init__(self) -> None:
                self.lines: list[str] = []
                self.calls: list[str] = []

            def say(self, *lines: str) -> None:
                self.lines += lines

            def say_bytes(self, data: bytes) -> None:
                self.lines.append(repr(data))

            def request(self, cmd: Any, call: Any) -> Any:
                self.calls.append(cmd.name)
                return call(StoreClient({b"k": b"v"}))

        session = Recorder()
        for line in ["get k", "get nothing"]:
            parsed = parse_line(line)
            assert parsed is not None
            session.lines.append(str(parsed.command.handler(session, parsed)))
        self.assertEqual(session.lines, ["v", "0", "(not found)", "1"])
        self.assertEqual(session.calls, ["get", "get"])


class FormatTests(SynchronousTestCase):
    def test_listing_footer(self) -> None:
        """Lists end with a counted footer (singular or plural) or are just '(empty)'."""
        self.assertEqual(listing([], "key"), ["(empty)"])
        self.assertEqual(listing(["a"], "key"), ["a", "(1 key)"])
        self.assertEqual(listing(["a", "b"], "entry", "entries"), ["a", "b", "(2 entries)"])

    def test_duration(self) -> None:
        """Uptimes read as seconds, minutes, hours or days."""
        self.assertEqual(format_duration(3.21), "3.2s")
        self.assertEqual(format_duration(125), "2m 05s")
        self.assertEqual(format_duration(3 * 3600 + 61), "3h 01m 01s")
        self.assertEqual(format_duration(2 * 86400 + 3600 + 300), "2d 01h 05m")

    def test_stats_table(self) -> None:
        """Stats print as aligned name/value rows, then one aligned row per op."""
        st = Stats(
            ops=(OpStat("GET", 12, 15.25, 0), OpStat("VERIFY", 3, 1234.5, 1)),
            keys=5, connections=2, uptime_s=75.0, last_op=17, role="standalone", height=3,
        )
        self.assertEqual(format_stats(st), [
            "role         standalone",
            "keys         5",
            "height       3",
            "connections  2",
            "uptime       1m 15s",
            "last op      17",
            "",
            "op      count  mean µs  errors",
            "GET        12     15.2       0",
            "VERIFY      3   1234.5       1",
        ])


class FakeClient:
    """Stands in for BlockingClient in the reconnect-policy tests."""

    def __init__(self, name: str, fail: set[str] | None = None) -> None:
        self.name = name
        self.fail = fail or set()
        self.lost = False
        self.calls: list[str] = []
        self.closed = False

    def _maybe_fail(self, op: str) -> None:
        self.calls.append(op)
        if op in self.fail:
            raise ConnectionFailed("connection closed by the server")

    def get(self, key: str) -> bytes:
        self._maybe_fail("get")
        return self.name.encode()

    def put(self, key: str, value: bytes) -> WriteResult:
        self._maybe_fail("put")
        return WriteResult(7)

    def size(self) -> int:
        self._maybe_fail("size")
        return 3

    def verify(self, n: int) -> bool:
        raise KVError("VERIFY needs an op number > 0, got 0")

    def close(self) -> None:
        self.closed = True


class ShellPolicyTests(SynchronousTestCase):
    def make(self, *clients: Any) -> Shell:
        queue_ = list(clients)

        def connect() -> Any:
            item = queue_.pop(0)
            if isinstance(item, Exception):
                raise item
            return item

        self.out, self.err = io.StringIO(), io.StringIO()
        sh = Shell(connect, self.out, self.err)
        sh.connect()
        return sh

    def test_read_retried_once_on_a_new_connection(self) -> None:
        """A read that meets a dropped connection reconnects and is retried, once."""
        first, second = FakeClient("one", {"get"}), FakeClient("two")
        sh = self.make(first, second)
        self.assertEqual(sh.run_line("get a"), 0)
        self.assertEqual(self.out.getvalue(), "two\n")
        self.assertEqual(self.err.getvalue(), "")
        self.assertTrue(first.closed)

    def test_write_not_retried_but_next_command_reconnects(self) -> None:
        """A write cut off is reported (maybe applied), not resent; the next command reconnects."""
        first, second = FakeClient("one", {"put"}), FakeClient("two")
        sh = self.make(first, second)
        self.assertEqual(sh.run_line("put a 1"), 1)
        self.assertEqual(
            self.err.getvalue(),
            "error: connection closed by the server (the put may or may not have been applied)\n",
        )
        self.assertEqual(second.calls, [])
        self.assertEqual(sh.run_line("put a 1"), 0)
        self.assertEqual((first.calls, second.calls), (["put"], ["put"]))
        self.assertEqual(self.out.getvalue(), "ok op 7\n")

    def test_known_lost_connection_replaced_before_sending(self) -> None:
        """When the client already knows its connection is gone, the shell reconnects first."""
        first, second = FakeClient("one"), FakeClient("two")
        sh = self.make(first, second)
        first.lost = True
        self.assertEqual(sh.run_line("put a 1"), 0)
        self.assertEqual((first.calls, second.calls), ([], ["put"]))

    def test_failed_reconnect_reported_and_tried_again_later(self) -> None:
        """A failed reconnect is one error; the following command tries to connect again."""
        refused = ConnectionFailed("cannot connect to h:1: Connection refused")
        first, third = FakeClient("one", {"size"}), FakeClient("three")
        sh = self.make(first, refused, third)
        self.assertEqual(sh.run_line("size"), 1)
        self.assertEqual(self.err.getvalue(), "error: cannot connect to h:1: Connection refused\n")
        self.assertEqual(sh.run_line("size"), 0)
        self.assertEqual(self.out.getvalue(), "3\n")

    def test_server_error_is_one_line(self) -> None:
        """A KVError prints 'error: <reason>' and fails the command without reconnecting."""
        sh = self.make(FakeClient("one"))
        self.assertEqual(sh.run_line("verify 0"), 1)
        self.assertEqual(self.err.getvalue(), "error: VERIFY needs an op number > 0, got 0\n")

    def test_run_lines_status_is_the_last_commands(self) -> None:
        """The status of a script is its last command's; bad UTF-8 lines fail alone."""
        sh = self.make(FakeClient("one"))
        self.assertEqual(sh.run_lines(iter([b"verify 0\n", b"size\n", b"# done\n"])), 0)
        self.assertEqual(sh.run_lines(iter([b"size\n", b"\xff\n"])), 1)
        self.assertEqual(sh.run_lines(iter([b"size\n", b"quit\n", b"verify 0\n"])), 0)
        self.assertEqual(
            self.err.getvalue(),
            "error: VERIFY needs an op number > 0, got 0\nerror: input is not valid UTF-8\n",
        )

    def test_missing_chain_module(self) -> None:
        """--zk without a usable kvtwist.client.chain is one error line and status 2."""
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        with mock.patch.dict(sys.modules, {"kvtwist.client.chain": None}):
            status = shell.main(["--zk", "127.0.0.1:2181", "-c", "size"])
        self.assertEqual(status, 2)
        self.assertEqual(len(err.getvalue().splitlines()), 1)
        self.assertTrue(err.getvalue().startswith("error: ZooKeeper mode is unavailable: "))


class ArgvTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Any:
        options, words = split_argv(argv)
        return target(shell.build_parser().parse_args(options)), words

    def test_default_address(self) -> None:
        """With no address the shell talks to 127.0.0.1:9000, like redis-cli to its port."""
        where, words = self.parse()
        self.assertEqual((where.address, where.zk, words), ("127.0.0.1:9000", None, []))

    def test_host_and_port_options(self) -> None:
        """-h and -p give the address in parts; each defaults on its own."""
        self.assertEqual(self.parse("-h", "10.1.2.3", "-p", "9001")[0].address, "10.1.2.3:9001")
        self.assertEqual(self.parse("-p", "9001")[0].address, "127.0.0.1:9001")
        self.assertEqual(self.parse("-h", "::1")[0].address, "[::1]:9000")

    def test_command_words_start_after_options_and_address(self) -> None:
        """The first word that is no option, option value or HOST:PORT starts the command."""
        self.assertEqual(split_argv(["get", "a"]), ([], ["get", "a"]))
        self.assertEqual(
            split_argv(["h:1", "--raw", "get", "-x"]), (["h:1", "--raw"], ["get", "-x"])
        )
        self.assertEqual(
            split_argv(["-p", "1", "put", "k", "a:b"]), (["-p", "1"], ["put", "k", "a:b"])
        )
        self.assertEqual(split_argv(["h:1", "h:2"]), (["h:1"], ["h:2"]))
        self.assertEqual(split_argv(["--timeout=3", "--", "--odd"]), (["--timeout=3"], ["--odd"]))

    def test_where_names_the_chain(self) -> None:
        """With --zk the prompt names ZooKeeper and the chain's root."""
        where, _ = self.parse("--zk", "127.0.0.1:2181", "--zk-root", "/mine")
        self.assertEqual(where.where, "127.0.0.1:2181/mine")

    def test_contradictions_are_usage_errors(self) -> None:
        """An address with -h/-p, or a node with --zk, is refused."""
        for argv in [("h:1", "-p", "2"), ("-h", "a", "--zk", "z:1"), ("h:1", "--zk", "z:1")]:
            self.assertRaises(UsageError, self.parse, *argv)


class RawOutputTests(SynchronousTestCase):
    def make(self, raw: bool) -> Shell:
        self.bytes_out = io.BytesIO()
        self.out = io.TextIOWrapper(self.bytes_out, encoding="utf-8", write_through=True)
        self.err = io.StringIO()
        data = {b"k": b"\x00\xff\n", b"t": b"(not found)", b"caf\xe9": b"latin-1"}
        sh = Shell(lambda: StoreClient(data), self.out, self.err, raw=raw)
        sh.connect()
        return sh

    def test_raw_get_prints_the_exact_bytes(self) -> None:
        """--raw get writes the value's bytes, nothing added; a missing key prints nothing, 1."""
        sh = self.make(raw=True)
        self.assertEqual(sh.run_line("get k"), 0)
        self.assertEqual(self.bytes_out.getvalue(), b"\x00\xff\n")
        self.assertEqual(sh.run_line("get missing"), 1)
        self.assertEqual(self.bytes_out.getvalue(), b"\x00\xff\n")
        self.assertEqual(self.err.getvalue(), "")

    def test_raw_listings_have_no_footer(self) -> None:
        """--raw listings are one unescaped item a line, no '(N keys)' footer."""
        sh = self.make(raw=True)
        self.assertEqual(sh.run_line("getkeys"), 0)
        self.assertEqual(sh.run_line("range"), 0)
        self.assertEqual(
            self.bytes_out.getvalue(),
            b"caf\xe9\nk\nt\ncaf\xe9\tlatin-1\nk\t\x00\xff\n\nt\t(not found)\n",
        )

    def test_missing_key_status_without_raw(self) -> None:
        """Without --raw a missing key still reads '(not found)' but the status is 1."""
        sh = self.make(raw=False)
        self.assertEqual(sh.run_line("get t"), 0)
        self.assertEqual(sh.run_line("get missing"), 1)
        self.assertEqual(self.bytes_out.getvalue(), b"(not found)\n(not found)\n")

    def test_non_utf8_key_typed_with_escapes(self) -> None:
        """A key typed with escapes in double quotes reaches the client as those bytes."""
        sh = self.make(raw=False)
        self.assertEqual(sh.run_line(r'get "caf\xe9"'), 0)
        self.assertEqual(sh.run_line(r'get "caf\xc3\xa9"'), 1)  # é in UTF-8: another key
        self.assertEqual(self.bytes_out.getvalue(), b"latin-1\n(not found)\n")
        self.assertEqual(self.err.getvalue(), "")

    def test_non_utf8_key_shown_escaped(self) -> None:
        """Listings show a key that is not UTF-8 with the same escapes as values."""
        sh = self.make(raw=False)
        self.assertEqual(sh.run_line("getkeys"), 0)
        self.assertEqual(sh.run_line("range"), 0)
        self.assertEqual(
            self.bytes_out.getvalue().decode().splitlines(),
            ["caf\\xe9", "k", "t", "(3 keys)",
             "caf\\xe9\tlatin-1", "k\t\\x00\\xff\\n", "t\t(not found)", "(3 entries)"],
        )


class StoreClient:
    """A BlockingClient stand-in over a dict."""

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self.data = data
        self.lost = False

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def keys(self) -> list[bytes]:
        return sorted(self.data)

    def range(self, start: Any, stop: Any, limit: int) -> list[tuple[bytes, bytes]]:
        return sorted(self.data.items())

    def close(self) -> None:
        pass


# ---- the real program against a real node ---------------------------------------


class ShellTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = start_node(self)
        self.addr = self.node.address

    def test_script_on_stdin(self) -> None:
        """A piped script runs every command and prints readable results, no prompts."""
        script = b"""# a comment

put a 1
put "my key" "data with spaces"
get a
get "my key"
get missing
size
height
getkeys
getvalues
verify 2
verify 99
range
range - b
range "my key" - 1
del a
del a
range
"""
        proc = run_shell(self.addr, stdin=script)
        self.assertEqual(proc.stderr, b"")
        self.assertEqual(lines(proc.stdout), [
            "ok op 1",
            "ok op 2",
            "1",
            "data with spaces",
            "(not found)",
            "2",
            "2",
            "a",
            "my key",
            "(2 keys)",
            "1",
            "data with spaces",
            "(2 values)",
            "op 2: executed",
            "op 99: not yet executed",
            "a\t1",
            "my key\tdata with spaces",
            "(2 entries)",
            "a\t1",
            "(1 entry)",
            "my key\tdata with spaces",
            "(1 entry)",
            "deleted (op 3)",
            "not found (op 4)",
            "my key\tdata with spaces",
            "(1 entry)",
        ])
        self.assertEqual(proc.returncode, 0)

    def test_empty_store_listings(self) -> None:
        """Listings of an empty store say '(empty)'."""
        proc = run_shell(self.addr, stdin=b"getkeys\ngetvalues\nrange\nsize\n")
        self.assertEqual(lines(proc.stdout), ["(empty)", "(empty)", "(empty)", "0"])
        self.assertEqual(proc.returncode, 0)

    def test_stats_table(self) -> None:
        """stats prints the node's facts and an aligned per-op table."""
        proc = run_shell(self.addr, stdin=b"put a 1\nget a\nstats\n")
        out = lines(proc.stdout)
        self.assertEqual(out[:2], ["ok op 1", "1"])
        table = out[2:]
        self.assertEqual(table[0], "role         standalone")
        self.assertEqual(table[1], "keys         1")
        self.assertEqual(table[2], "height       1")
        self.assertTrue(table[3].startswith("connections  "))
        self.assertTrue(table[4].startswith("uptime       "))
        self.assertEqual(table[5], "last op      1")
        self.assertEqual(table[6], "")
        self.assertEqual(table[7].split(), ["op", "count", "mean", "µs", "errors"])
        rows = {row.split()[0]: row.split()[1:] for row in table[8:]}
        self.assertEqual((rows["PUT"][0], rows["GET"][0], rows["GET"][2]), ("1", "1", "0"))
        self.assertEqual(len({len(row) for row in table[7:]}), 1)  # aligned columns
        self.assertEqual(proc.returncode, 0)

    def test_non_printable_values_shown_escaped(self) -> None:
        """Binary values (put by the blocking client) print escaped; readable text stays as is."""
        with BlockingClient.connect(self.addr, reactor=private_reactor()) as kv:
            kv.put("bin", b"\x00\xffA\n")
            kv.put("tab\tkey", "héllo")
        proc = run_shell(self.addr, stdin=b"get bin\ngetkeys\ngetvalues\nrange\n")
        self.assertEqual(proc.stderr, b"")
        self.assertEqual(lines(proc.stdout), [
            "\\x00\\xffA\\n",
            "bin",
            "tab\\tkey",
            "(2 keys)",
            "\\x00\\xffA\\n",
            "héllo",
            "(2 values)",
            "bin\t\\x00\\xffA\\n",
            "tab\\tkey\théllo",
            "(2 entries)",
        ])

    def test_one_command_with_c(self) -> None:
        """-c runs one command and returns its status."""
        put = run_shell(self.addr, "-c", 'put "k 1" "v 1"')
        self.assertEqual((lines(put.stdout), put.stderr, put.returncode), (["ok op 1"], b"", 0))
        get = run_shell(self.addr, "-c", 'get "k 1"')
        self.assertEqual((lines(get.stdout), get.returncode), (["v 1"], 0))
        missing = run_shell(self.addr, "-c", "get nothing")
        self.assertEqual((lines(missing.stdout), missing.returncode), (["(not found)"], 1))
        bad = run_shell(self.addr, "-c", "verify 0")
        self.assertEqual(bad.stdout, b"")
        self.assertEqual(bad.stderr, b"error: VERIFY needs an op number > 0, got 0\n")
        self.assertEqual(bad.returncode, 1)

    def test_c_usage_errors(self) -> None:
        """-c or words with an unknown command or a wrong argument count: one line, status 2."""
        unknown = run_shell(self.addr, "-c", "foo")
        self.assertEqual(unknown.stderr, b"error: unknown command 'foo' (try 'help')\n")
        self.assertEqual(unknown.returncode, 2)
        extra = run_shell(self.addr, "-c", "put k two words")
        self.assertEqual(len(lines(extra.stderr)), 1)
        self.assertTrue(extra.stderr.startswith(b"error: usage: put <key> <data> (quote"))
        self.assertEqual(extra.returncode, 2)
        words = run_shell(self.addr, "put", "k")
        self.assertEqual(words.stderr, b"error: usage: put <key> <data>\n")
        self.assertEqual(words.returncode, 2)
        script = run_shell(self.addr, stdin=b"size\nfoo\n")
        self.assertEqual((lines(script.stdout), script.returncode), (["0"], 2))

    def test_command_as_words_with_host_and_port(self) -> None:
        """`-h HOST -p PORT get a` works like HOST:PORT -c 'get a'; words are taken verbatim."""
        hp = ["-h", "127.0.0.1", "-p", str(self.node.port)]
        put = run_shell(*hp, "put", "my key", "-1 --raw")
        self.assertEqual((put.stdout, put.stderr, put.returncode), (b"ok op 1\n", b"", 0))
        get = run_shell(self.addr, "get", "my key")
        self.assertEqual((get.stdout, get.returncode), (b"-1 --raw\n", 0))
        both = run_shell(*hp, "-c", "size", "size")
        self.assertEqual(both.returncode, 2)

    def test_missing_key_told_from_a_not_found_value(self) -> None:
        """A missing key exits 1 (--raw: printing nothing); a stored "(not found)" exits 0."""
        run_shell(self.addr, "put", "trap", "(not found)")
        stored = run_shell(self.addr, "get", "trap")
        missing = run_shell(self.addr, "get", "nothing")
        self.assertEqual((stored.stdout, stored.returncode), (b"(not found)\n", 0))
        self.assertEqual((missing.stdout, missing.stderr, missing.returncode),
                         (b"(not found)\n", b"", 1))
        raw_stored = run_shell(self.addr, "--raw", "get", "trap")
        raw_missing = run_shell(self.addr, "--raw", "get", "nothing")
        self.assertEqual((raw_stored.stdout, raw_stored.returncode), (b"(not found)", 0))
        self.assertEqual((raw_missing.stdout, raw_missing.stderr, raw_missing.returncode),
                         (b"", b"", 1))

    def test_escapes_round_trip_binary_values(self) -> None:
        """A value typed with escapes is stored as those bytes and shown with the same escapes."""
        typed = r'"\x00\xff\n\\\"\t\rA"'
        put = run_shell(self.addr, stdin=f"put bin {typed}\n".encode())
        self.assertEqual((put.stderr, put.returncode), (b"", 0))
        with BlockingClient.connect(self.addr, reactor=private_reactor()) as kv:
            self.assertEqual(kv.get("bin"), b'\x00\xff\n\\"\t\rA')
        self.assertEqual(run_shell(self.addr, "get", "bin").stdout, b'\\x00\\xff\\n\\\\"\\t\\rA\n')
        raw = run_shell(self.addr, "--raw", "getvalues")
        self.assertEqual(raw.stdout, b'\x00\xff\n\\"\t\rA\n')

    def test_non_utf8_key_typed_shown_and_raw(self) -> None:
        """``put "caf\\xe9"`` stores the four bytes; listings escape the key, --raw prints it."""
        put = run_shell(self.addr, stdin=b'put "caf\\xe9" latin-1\nput caf\xc3\xa9 utf-8\n')
        self.assertEqual((put.stderr, put.returncode), (b"", 0))
        with BlockingClient.connect(self.addr, reactor=private_reactor()) as kv:
            self.assertEqual(kv.get(b"caf\xe9"), b"latin-1")
            self.assertEqual(kv.get("café"), b"utf-8")
        listed = run_shell(self.addr, "getkeys").stdout
        self.assertEqual(listed, "café\ncaf\\xe9\n(2 keys)\n".encode())
        self.assertEqual(run_shell(self.addr, "--raw", "getkeys").stdout, b"caf\xc3\xa9\ncaf\xe9\n")
        got = run_shell(self.addr, "-c", r'get "caf\xe9"')
        self.assertEqual((got.stdout, got.returncode), (b"latin-1\n", 0))
        deleted = run_shell(self.addr, "-c", r'del "caf\xe9"')
        self.assertEqual((deleted.stdout[:7], deleted.returncode), (b"deleted", 0))

    def test_long_line_on_stdin(self) -> None:
        """A line holding a 16 MiB - 1 KiB value is parsed and stored well within the deadline."""
        value = b"v" * (16 * 1024 * 1024 - 1024)
        proc = run_shell(self.addr, stdin=b"put big " + value + b"\nsize\n")
        self.assertEqual((proc.stdout, proc.stderr, proc.returncode), (b"ok op 1\n1\n", b"", 0))

    def test_status_is_the_last_commands(self) -> None:
        """Exit status 1 when the last command fails, 0 when it succeeds after a failure."""
        failing = run_shell(self.addr, stdin=b"put a 1\nverify 0\n")
        self.assertEqual(lines(failing.stdout), ["ok op 1"])
        self.assertEqual(failing.stderr, b"error: VERIFY needs an op number > 0, got 0\n")
        self.assertEqual(failing.returncode, 1)
        recovered = run_shell(self.addr, stdin=b"verify 0\nfoo\nput b\nsize\n")
        self.assertEqual(lines(recovered.stdout), ["1"])
        self.assertEqual(lines(recovered.stderr), [
            "error: VERIFY needs an op number > 0, got 0",
            "error: unknown command 'foo' (try 'help')",
            "error: usage: put <key> <data>",
        ])
        self.assertEqual(recovered.returncode, 0)

    def test_quit_stops_reading(self) -> None:
        """quit ends the session; later lines are not run."""
        proc = run_shell(self.addr, stdin=b"put a 1\nquit\nput b 2\n")
        self.assertEqual((lines(proc.stdout), proc.returncode), (["ok op 1"], 0))
        self.assertEqual(run_shell(self.addr, "-c", "size").stdout, b"1\n")

    def test_non_utf8_input_line(self) -> None:
        """A line that is not UTF-8 is one error; the lines around it still run."""
        proc = run_shell(self.addr, stdin=b"put a 1\nput b \xff\xfe\nget a\n")
        self.assertEqual(lines(proc.stdout), ["ok op 1", "1"])
        self.assertEqual(proc.stderr, b"error: input is not valid UTF-8\n")
        self.assertEqual(proc.returncode, 0)
        last = run_shell(self.addr, stdin=b"get a\n\xff\n")
        self.assertEqual((last.stderr, last.returncode), (b"error: input is not valid UTF-8\n", 1))

    def test_reconnects_after_the_node_restarts(self) -> None:
        """After the connection drops, the next command reconnects (or fails in one line)."""
        proc = subprocess.Popen(
            [*SHELL, self.addr], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=ROOT, env=shell_env(),
        )
        self.addCleanup(proc.kill)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)

        def send(line: str) -> None:
            assert proc.stdin is not None
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()

        send("put a 1")
        self.assertEqual(out.next(), "ok op 1")
        port = self.node.port
        self.node.stop()
        send("get a")  # the node is down: reconnecting fails
        self.assertEqual(err.next(), refused(port))
        start_node(self, port=port)
        send("size")  # a new, empty node on the same port
        self.assertEqual(out.next(), "0")
        send("put b 2")
        self.assertEqual(out.next(), "ok op 1")
        proc.stdin.close()
        self.assertEqual(proc.wait(30), 0)

    def test_help_needs_no_server(self) -> None:
        """-c help prints the command list even when nothing listens."""
        proc = run_shell(f"127.0.0.1:{free_port()}", "-c", "help")
        out = lines(proc.stdout)
        self.assertEqual(out[0], "commands:")
        for name in ["put", "get", "del", "size", "height", "getkeys", "getvalues", "verify",
                     "range", "stats", "help", "quit"]:
            self.assertTrue(any(line.split()[0] == name for line in out[1:-1]), name)
        self.assertEqual(proc.returncode, 0)


class StdinArgumentTests(SynchronousTestCase):
    def test_16_mib_binary_value_through_x(self) -> None:
        """-x stores stdin's exact bytes (16 MiB, not UTF-8) and --raw get returns them."""
        limit = 16 * 1024 * 1024
        node = NodeProcess(args=["--max-frame", str(limit + 4096), "--max-value", str(limit)])
        node.start()
        self.addCleanup(node.cleanup)
        value = bytes(range(256)) * (limit // 256)
        put = run_shell("-p", str(node.port), "-x", "put", "blob", stdin=value)
        self.assertEqual((put.stdout, put.stderr, put.returncode), (b"ok op 1\n", b"", 0))
        got = run_shell("-p", str(node.port), "--raw", "get", "blob")
        self.assertEqual((len(got.stdout), got.returncode), (limit, 0))
        self.assertTrue(got.stdout == value)
        with_c = run_shell(node.address, "-x", "-c", "put 'small one'", stdin=b"\xfe\n")
        self.assertEqual(with_c.returncode, 0)
        self.assertEqual(run_shell(node.address, "--raw", "get", "small one").stdout, b"\xfe\n")


class StartupTests(SynchronousTestCase):
    def test_unreachable_server(self) -> None:
        """A closed port gives exactly one 'error: cannot connect' line and status 2."""
        port = free_port()
        for args, stdin in [((), b"size\n"), (("-c", "size"), b"")]:
            proc = run_shell(f"127.0.0.1:{port}", *args, stdin=stdin)
            self.assertEqual(proc.stdout, b"")
            self.assertEqual(proc.stderr, (refused(port) + "\n").encode())
            self.assertEqual(proc.returncode, 2)

    def test_usage_errors(self) -> None:
        """Bad command lines are one error line and status 2, never a traceback."""
        for args in [("no-port",), ("h:1", "--zk", "z:2181"), ("--timeout", "soon", "h:1"),
                     ("--bogus",), ("h:0",), ("-h", "a", "h:1"), ("-p", "1", "--zk", "z:2181"),
                     ("-p", "x"), ("-x",), ("-c", "size", "size")]:
            proc = run_shell(*args)
            self.assertEqual(proc.stdout, b"", args)
            self.assertEqual(len(lines(proc.stderr)), 1, (args, proc.stderr))
            self.assertTrue(proc.stderr.startswith(b"error: "), (args, proc.stderr))
            self.assertEqual(proc.returncode, 2, args)

    def test_zk_timeout_is_kept(self) -> None:
        """--timeout N with an unreachable ZooKeeper gives up after about N s, not N + 5."""
        started = time.monotonic()
        proc = run_shell("--zk", f"127.0.0.1:{free_port()}", "--timeout", "2", "get", "a")
        elapsed = time.monotonic() - started
        self.assertEqual(proc.returncode, 2)
        self.assertIn(b"cannot reach ZooKeeper", proc.stderr)
        # The bound tested is the limit the user set (plus start-up), not a speed.
        self.assertLess(elapsed, 2 + 3.5)

    def test_wrong_zk_root(self) -> None:
        """A root with no chain under it is reported as a chain without members."""
        from tests.zkserver import shared_zookeeper, unique_root, zookeeper_available

        why = zookeeper_available()
        if why:
            raise SkipTest(why)
        zk = shared_zookeeper()
        root = unique_root()
        proc = run_shell("--zk", zk.hosts, "--zk-root", root, "--timeout", "1", "get", "a")
        self.assertEqual(proc.stdout, b"")
        self.assertEqual(
            lines(proc.stderr),
            [f"error: gave up after 1s: the chain at {root} has no members (ZooKeeper {zk.hosts})"],
        )
        self.assertEqual(proc.returncode, 1)

    def test_unreachable_zookeeper(self) -> None:
        """--zk with no ZooKeeper listening gives one error line and status 2 after the timeout."""
        proc = run_shell("--zk", f"127.0.0.1:{free_port()}", "--timeout", "1", "-c", "size")
        self.assertEqual(proc.stdout, b"")
        self.assertEqual(len(lines(proc.stderr)), 1, proc.stderr)
        self.assertTrue(proc.stderr.startswith(b"error: "), proc.stderr)
        self.assertEqual(proc.returncode, 2)


class InteractiveTests(SynchronousTestCase):
    def test_terminal_session(self) -> None:
        """On a terminal: a prompt, tab completion of command names, and a history file."""
        node = start_node(self)
        home = tempfile.mkdtemp(prefix="kvtwist-home-")
        self.addCleanup(shutil.rmtree, home, True)
        e = shell_env(home)
        e["TERM"] = "dumb"
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [*SHELL, node.address], stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=e,
            close_fds=True,
        )
        os.close(slave)
        self.addCleanup(proc.kill)
        self.addCleanup(os.close, master)
        term = Terminal(master)
        prompt = f"{node.address}> "
        term.expect(prompt)
        term.send("put a 1\n")
        term.expect("ok op 1")
        term.expect(prompt)
        term.send("hei\t\n")  # completes to "height "
        term.expect("1\r\n")
        term.send("bogus\n")
        term.expect("error: unknown command 'bogus' (try 'help')")
        term.send("quit\n")
        self.assertEqual(proc.wait(30), 2)  # the last command (bogus) was a usage error
        with open(os.path.join(home, ".kvtwist_history"), encoding="utf-8") as f:
            history = f.read()
        self.assertIn("put a 1", history)
        self.assertIn("height", history)


# ---- helpers for live processes -------------------------------------------------


class LineReader:
    """Lines from a pipe, read on a thread so a test can wait with a deadline."""

    def __init__(self, pipe: Any) -> None:
        self._lines: queue.Queue[bytes] = queue.Queue()

        def pump() -> None:
            for line in iter(pipe.readline, b""):
                self._lines.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout: float = 20.0) -> str:
        try:
            return self._lines.get(timeout=timeout).decode("utf-8").rstrip("\n")
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s") from None


class Terminal:
    """The master side of a pty: send keystrokes, wait for output."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = b""

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, text: str, timeout: float = 20.0) -> None:
        want = text.encode()
        deadline = time.monotonic() + timeout
        while want not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen within {timeout}s; got {self.seen!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{text!r} not seen before EOF; got {self.seen!r}")
                self.seen += chunk
        self.seen = self.seen[self.seen.index(want) + len(want):]
