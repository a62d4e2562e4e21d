"""Mixed chains with real ZooKeeper and real ``twistd -n kvnode`` processes.

The original C server is played by tests/foreign_server.py, run as its own
process: it registers in the chain root as the C servers do, answers the
original requests, and prints ``bad frame`` (then exits or drops the
connection) on anything else, such as a kvtwist chain frame.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from kvtwist import wire
from tests.nodes import ROOT, RawClient, env, wait_for
from tests.test_chain import SESSION, ChainCase

FOREIGN_LINE = "does not speak kvtwist's chain protocol"


class ForeignProcess:
    """The stand-in original server as a process, with its output in a file."""

    def __init__(self, hosts: str, root: str, on_bad: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kvforeign-"))
        self.out = self.dir / "stdout"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "foreign_server.py"),
                "--zk",
                hosts,
                "--root",
                root,
                "--on-bad",
                on_bad,
                "--session-timeout",
                str(SESSION),
            ],
            env=env(),
            stdout=open(self.out, "wb"),
            stderr=subprocess.STDOUT,
        )
        line = wait_for(self._registered, 30, "the original server to register")
        _, self.name, address = line.split()
        self.port = int(address.rsplit(":", 1)[1])

    def _registered(self) -> str | None:
        for line in self.output().splitlines():
            if line.startswith("registered "):
                return line
        if self.proc.poll() is not None:
            raise AssertionError(f"the original server exited: {self.output()}")
        return None

    def output(self) -> str:
        return self.out.read_text()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.out.unlink(missing_ok=True)
        self.dir.rmdir()


class MixedChainTests(ChainCase):
    def foreign(self, on_bad: str) -> ForeignProcess:
        f = ForeignProcess(self.zk.hosts, self.root, on_bad)
        self.addCleanup(f.stop)
        return f

    def names(self) -> list[str]:
        return [name for name, _ in self.members()]

    def record_names(self) -> set[str]:
        data, _ = self.kazoo.get(f"{self.root}-state")
        return {m["name"] for m in json.loads(data)["members"]}

    def test_original_server_joining_a_chain_with_data_is_left_out(self) -> None:
        """Two kvtwist nodes under a writer; an original server registers behind them.
        It is left out (its znode deleted, one log line) without a chain frame reaching
        it, writes go on being acknowledged, and nothing acknowledged is lost."""
        a, b = self.chain(2)
        w, out = self.start_writer()
        self.wait_acks(out, 50)
        foreign = self.foreign("drop")
        wait_for(lambda: foreign.name not in self.names(), 30, "the original server left out")
        acked = len(self.acked(out))
        self.wait_acks(out, acked + 50)
        acks = self.stop_writer(w, out)
        self.assert_converged([a, b], acks)
        self.assertTrue(foreign.alive)
        self.assertNotIn("bad frame", foreign.output(), "a chain frame reached it")
        said = [
            line for line in a.log().splitlines() + b.log().splitlines() if FOREIGN_LINE in line
        ]
        self.assertEqual(len(said), 1, said)
        self.assertIn(foreign.name, said[0])
        names = self.names()
        self.assertEqual(len(names), 2)
        self.assertEqual(self.record_names(), set(names))

    def test_node_started_into_a_root_of_original_servers_waits(self) -> None:
        """A kvtwist node started into a root whose only member is an original server
        does not serve it empty, does not disturb it, and says why."""
        foreign = self.foreign("exit")
        n = self.start_node(wait_member=False)
        n.wait_listening()

        def waiting() -> bool:
            with RawClient(n.port) as c:
                return bool(c.stats().role == "waiting")

        wait_for(waiting, 30, "the node to wait")
        with RawClient(n.port) as c:
            reply = c.one(wire.req_put(b"k", b"v"))
        self.assertEqual(reply.opcode, wire.OP_ERROR)
        self.assertTrue(reply.retry)
        self.assertTrue(foreign.alive, foreign.output())
        self.assertNotIn("bad frame", foreign.output())
        self.assertEqual(self.names(), [foreign.name])
        self.assertIn("do not speak kvtwist", n.log())
        self.assertFalse(self.kazoo.exists(f"{self.root}-state"), "a record made for nothing")
