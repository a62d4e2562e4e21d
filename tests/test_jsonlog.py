"""JSON logs: the observer twistd's --logger names, in memory and in a real node."""

from __future__ import annotations

import io
import json
from pathlib import Path

from twisted.logger import Logger, eventsFromJSONLogFile, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.jsonlog import observer
from tests.nodes import NodeProcess, RawClient, wait_for


class ObserverTests(SynchronousTestCase):
    def test_one_json_object_per_line(self) -> None:
        """Each event is one line of JSON with its namespace, level and text, and
        twisted.logger reads the lines back into events."""
        out = io.StringIO()
        log = Logger(namespace="kvtwist.chain", observer=observer(out))
        log.info("joined the chain as {name} at op {n}", name="node0000000001", n=7)
        log.warn("second line")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first = json.loads(lines[0])
        self.assertEqual(first["log_namespace"], "kvtwist.chain")
        self.assertEqual(first["log_level"]["name"], "info")
        self.assertEqual((first["name"], first["n"]), ("node0000000001", 7))
        events = list(eventsFromJSONLogFile(io.StringIO(out.getvalue()), recordSeparator=""))
        self.assertEqual(
            formatEvent(events[0]), "joined the chain as node0000000001 at op 7"
        )


class JSONNode(NodeProcess):
    def command(self) -> list[str]:
        cmd = super().command()
        cmd.insert(cmd.index("kvnode"), "--logger=kvtwist.jsonlog.observer")
        return cmd


class NodeJSONLogTests(SynchronousTestCase):
    def test_node_logs_json_lines(self) -> None:
        """A node run with --logger=kvtwist.jsonlog.observer writes only JSON lines on
        its standard output, its own events among them."""
        n = JSONNode(args=["--in-memory"]).start()
        self.addCleanup(n.cleanup)
        self.addCleanup(n.stop)
        with RawClient(n.port) as c:
            c.stats()
        out = Path(n.dir) / "stdout"

        def kvtwist_events() -> list[dict[str, object]]:
            rows = [json.loads(line) for line in out.read_text().splitlines() if line]
            return [e for e in rows if str(e.get("log_namespace", "")).startswith("kvtwist")]

        events = wait_for(kvtwist_events, 15, "the node's own events")
        self.assertTrue(all("log_format" in e and "log_time" in e for e in events))
        n.stop()
        for line in out.read_text().splitlines():
            json.loads(line)  # every line, to the last one
