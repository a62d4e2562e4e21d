"""Operations, in memory: the STATS fields the admin reads, the admin's rows, health
rules and output, its options, host-string checks, ``--version`` and kazoo's log limit."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from types import SimpleNamespace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import kvtwist
from kvtwist import admin, wire
from kvtwist.adminstatus import (
    ChainStatus,
    MemberRow,
    member_rows,
    problems,
    status_json,
    status_table,
)
from kvtwist.chain.record import ChainRecord
from kvtwist.chain.state import ChainState
from kvtwist.kazoolog import RepeatFilter
from kvtwist.membership import Member
from kvtwist.nodestats import add_operations_fields, directory_bytes
from kvtwist.proto.kvtwist_pb2 import Stats, Update
from kvtwist.zkhosts import BadHosts, check_hosts
from tests.test_server import Conn, Harness


class StatsFieldsTests(SynchronousTestCase):
    def test_standalone_node(self) -> None:
        """STATS carries the op numbers, an empty Sent list, the version; in memory it has
        no data-directory size and a standalone node no session."""
        c = Conn(Harness())
        c.one(wire.req_put(b"a", b"1"))
        c.one(wire.req_put(b"b", b"2"))
        s = c.one(wire.req_stats()).stats
        self.assertEqual((s.received, s.applied, s.last_op), (2, 2, 2))
        self.assertEqual((s.sent_count, s.sent_bytes), (0, 0))
        self.assertEqual(s.version, kvtwist.__version__)
        self.assertFalse(s.HasField("data_dir_bytes"))
        self.assertEqual((s.zk_state, s.member), ("", ""))

    def test_chain_member_fields(self) -> None:
        """A member reports its Sent list, its znode name, the session state its
        coordinator last delivered and the bytes of the files in its data directory."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        os.mkdir(os.path.join(directory, "wal"))
        for name, size in (("a", 100), ("b", 23)):
            with open(os.path.join(directory, "wal", name), "wb") as f:
                f.write(b"x" * size)
        state = ChainState()
        state.last_received, state.applied_seq = 9, 8
        state.pending = {8: Update(seq=8), 9: Update(seq=9)}
        state.pending_bytes = 640
        replica = SimpleNamespace(
            state=state,
            store=SimpleNamespace(journal=SimpleNamespace(path=directory)),
            standalone=False,
            zk=SimpleNamespace(state="suspended", connected=False),
            name="node0000000003",
            succ=None,
            pred=None,
        )
        s = add_operations_fields(Stats(), replica)
        self.assertEqual((s.received, s.applied, s.sent_count, s.sent_bytes), (9, 8, 2, 640))
        self.assertEqual((s.data_dir_bytes, s.zk_state, s.member), (123, "suspended", replica.name))
        self.assertEqual(directory_bytes(os.path.join(directory, "gone")), 0)
        # a coordinator that tells nothing of its session: STATS still answers
        replica.zk = object()
        self.assertEqual(add_operations_fields(Stats(), replica).zk_state, "")
        replica.zk = SimpleNamespace(connected=True)
        self.assertEqual(add_operations_fields(Stats(), replica).zk_state, "connected")


def stats(**kw: Any) -> Stats:
    base: dict[str, Any] = dict(
        role="middle", received=10, applied=10, last_op=10, version="0.1.0", zk_state="connected"
    )
    base.update(kw)
    return Stats(**base)


def members(*ports: int) -> list[Member]:
    return [
        Member.from_znode(f"node{i:010d}", f"127.0.0.1:{port}".encode())
        for i, port in enumerate(ports, 1)
    ]


class MemberRowTests(SynchronousTestCase):
    def test_rows_lag_and_a_silent_member(self) -> None:
        """Rows follow chain order; lag is the head's received op minus the member's
        applied one (never below 0); a member that does not answer is a row saying why."""
        answers = {
            1: stats(role="head", received=50, applied=50, last_op=40),
            2: stats(received=45, applied=44, last_op=40, data_dir_bytes=4096),
            4: stats(role="tail", received=52, applied=52, last_op=40),
        }

        def ask(address: tuple[str, int]) -> Stats:
            if address[1] not in answers:
                raise ConnectionError("connection refused")
            return answers[address[1]]

        rows = member_rows(members(1, 2, 3, 4), ask)
        self.assertEqual([r.position for r in rows], ["head", "middle", "middle", "tail"])
        self.assertEqual([r.lag for r in rows], [0, 6, None, 0])
        self.assertEqual([r.committed for r in rows], [40, 40, None, 40])
        self.assertEqual((rows[1].data_dir_bytes, rows[0].data_dir_bytes), (4096, None))
        self.assertEqual((rows[2].answered, rows[2].error), (False, "connection refused"))
        table = status_table(ChainStatus("/chain", None, rows))
        self.assertIn("127.0.0.1:3  does not answer: connection refused", table)
        self.assertIn("record      none yet", table)
        line = next(x for x in table.splitlines() if x.startswith("node0000000002"))
        self.assertEqual(line.split()[:8], ["node0000000002", "middle", "127.0.0.1:2",
                                            "45", "44", "40", "6", "0"])
        self.assertIn("4.0 KiB", line)

    def test_json_is_stable(self) -> None:
        """The JSON form has the documented keys, rows in chain order."""
        rows = member_rows(members(1), lambda a: stats(role="head+tail"))
        record = ChainRecord(3, 7, (("node0000000001", "127.0.0.1:1"),), version=2)
        body = json.loads(status_json(ChainStatus("/chain", record, rows, [])))
        self.assertEqual(set(body), {"root", "record", "members", "waiting"})
        self.assertEqual(body["record"]["epoch"], 3)
        self.assertEqual(
            set(body["members"][0]),
            {
                "name", "address", "position", "answered", "error", "role", "received",
                "applied", "committed", "lag", "sent_count", "sent_bytes", "uptime_s",
                "version", "data_dir_bytes", "zk_state", "keys", "connections",
                "lag_s", "unacked_age_s", "succ_rtt_s", "pred_rtt_s",
            },
        )
        self.assertEqual(body["members"][0]["role"], "head+tail")


class HealthTests(SynchronousTestCase):
    def row(self, position: str, role: str | None, answered: bool = True) -> MemberRow:
        return MemberRow(
            f"n-{position}", f"127.0.0.1:{len(position)}", position, answered, None, role
        )

    def test_healthy(self) -> None:
        rows = [self.row("head", "head"), self.row("middle", "middle"), self.row("tail", "tail")]
        self.assertEqual(problems(ChainStatus("/c", None, rows), 3), [])

    def test_problems(self) -> None:
        """One line per problem: too few members, a silent member, a head that is
        still joining."""
        rows = [self.row("head", "joining"), self.row("tail", None, answered=False)]
        found = problems(ChainStatus("/c", None, rows), 3)
        self.assertEqual(len(found), 3, found)
        self.assertIn("fewer than the 3 wanted", found[0])
        self.assertIn("is not serving as head (it says joining)", found[1])
        self.assertIn("tail n-tail at 127.0.0.1:4 does not answer", found[2])
        self.assertEqual(problems(ChainStatus("/c", None, [])), ["the chain /c has no members"])


class AdminOptionsTests(SynchronousTestCase):
    def test_options_before_or_after_the_command(self) -> None:
        """The shared options mean the same before and after the subcommand."""
        parser = admin.build_parser()
        opts = ["--zk", "h:1", "--zk-root", "/r", "-o", "json"]
        before = parser.parse_args([*opts, "status"])
        after = parser.parse_args(["status", *opts])
        for name in ("zk", "zk_root", "output"):
            self.assertEqual(getattr(before, name), getattr(after, name))
        self.assertEqual((after.zk, after.zk_root, after.output), ("h:1", "/r", "json"))
        plain = parser.parse_args(["health"])
        self.assertEqual((plain.zk, plain.output, plain.members), ("127.0.0.1:2181", "table", 1))

    def test_help_description_is_whole(self) -> None:
        description = admin.build_parser().description or ""
        self.assertTrue(description.rstrip().endswith("'-o json'."), description)
        self.assertIn("'health' exits 0 only", description)

    def test_bad_hosts_is_one_line(self) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(admin.main(["status", "--zk", "foo::bar"]), 2)
        self.assertEqual(len(err.getvalue().splitlines()), 1)
        self.assertIn("'foo::bar' is not HOST:PORT", err.getvalue())


class VersionTests(SynchronousTestCase):
    def test_every_tool(self) -> None:
        """--version prints the tool's name and kvtwist's version and exits 0."""
        from kvtwist.bench.cli import build_parser as bench_parser
        from kvtwist.client.shell import main as client_main
        from kvtwist.verify.torture import parse_args as torture_args

        calls = {
            "kvtwist-admin": lambda: admin.main(["--version"]),
            "kvtwist-bench": lambda: bench_parser().parse_args(["--version"]),
            "kvtwist-torture": lambda: torture_args(["--version"]),
        }
        for name, call in calls.items():
            out = io.StringIO()
            with contextlib.redirect_stdout(out), self.assertRaises(SystemExit) as done:
                call()
            self.assertEqual(done.exception.code, 0)
            self.assertEqual(out.getvalue().strip(), f"{name} {kvtwist.__version__}")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(client_main(["--version"]), 0)
        self.assertEqual(out.getvalue().strip(), f"kvtwist-client {kvtwist.__version__}")


class HostsTests(SynchronousTestCase):
    def test_good(self) -> None:
        for hosts in ("127.0.0.1:2181", "a:1,b:2", "zk", "[::1]:2181", "a:2181/chroot"):
            self.assertEqual(check_hosts(hosts), hosts)

    def test_bad(self) -> None:
        """What kazoo refuses, and port 0 (which kazoo would quietly turn into 2181)."""
        for hosts in ("foo::bar", "a:99999", "", "a:x", ",", "a:1,,b", "a:0"):
            with self.assertRaises(BadHosts) as e:
                check_hosts(hosts)
            self.assertIn(f"--zk {hosts!r} is not HOST:PORT", str(e.exception))
            self.assertNotIn("\n", str(e.exception))

    def test_node_option(self) -> None:
        """twistd kvnode --zk foo::bar: one line on stderr and exit status 2 at parsing."""
        from kvtwist.tap import Options

        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as done:
            Options().parseOptions(["--in-memory", "--zk", "foo::bar"])
        self.assertEqual(done.exception.code, 2)
        self.assertEqual(len(err.getvalue().splitlines()), 1)
        self.assertTrue(err.getvalue().startswith("kvtwist: --zk 'foo::bar'"))


class RepeatFilterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = 0.0
        self.filter = RepeatFilter(30.0, lambda: self.t)
        self.logger = logging.getLogger("kvtwist.test.kazoo")
        self.logger.propagate = False
        self.lines: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: self.lines.append(record.getMessage())  # type: ignore
        self.logger.addHandler(handler)
        self.logger.addFilter(self.filter)
        self.addCleanup(self.logger.removeHandler, handler)
        self.addCleanup(self.logger.removeFilter, self.filter)

    def test_first_then_a_count(self) -> None:
        """The first of each kind passes; repeats within the interval are left out; the
        next one after it says how many were; other lines pass untouched."""
        for _ in range(20):
            self.logger.warning("Connection dropped: %s", "socket connection error: refused")
            self.logger.warning("Transition to CONNECTING")
            self.t += 1.0
        self.logger.warning("Session has expired")
        self.t = 31.0
        self.logger.warning("Connection dropped: %s", "socket connection error: refused")
        self.assertEqual(
            self.lines,
            [
                "Connection dropped: socket connection error: refused",
                "Transition to CONNECTING",
                "Session has expired",
                "Connection dropped: socket connection error: refused "
                "(19 more like it in the last 30s)",
            ],
        )
