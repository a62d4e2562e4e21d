"""--metrics-port and --config on real ``twistd -n kvnode`` processes."""

from __future__ import annotations

import os
import subprocess
import tempfile
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.membership import sibling_path
from tests.nodes import TWISTD, NodeProcess, RawClient, env, free_port, port_open, wait_for
from tests.test_chain import SESSION, ChainCase


def other_port(*taken: int) -> int:
    """A free port none of ``taken`` (free_port may hand out a number twice)."""
    while (port := free_port()) in taken:
        pass
    return port


def http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError as e:  # nothing listens (yet): the client port binds first
        return 0, str(e.reason)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, text = http(port, "/metrics")
    assert code == 200, code
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class MetricsChainTests(ChainCase):
    def member(self) -> tuple[NodeProcess, int]:
        n = NodeProcess.member(self.zk.hosts, self.root, SESSION)
        metrics = other_port(n.port, *(m.port for m in self.nodes))
        n.args += ["--metrics-port", str(metrics)]
        n.start()
        self.nodes.append(n)
        wait_for(lambda: n.port in self.member_ports(), 30, f"node {n.port} to join")
        # its znode shows before the node sees itself in a view: ready only then
        wait_for(lambda: http(metrics, "/readyz")[0] == 200, 15, f"node {n.port} ready")
        return n, metrics

    def test_scrape_a_chain_under_writes(self) -> None:
        """Each member's /metrics shows its role, the writes it took and committed,
        the log's fsyncs, its data directory and its ZooKeeper session."""
        head, head_m = self.member()
        tail, tail_m = self.member()
        wait_for(lambda: scrape(tail_m)[("kvtwist_role", (("role", "tail"),))] == 1, 15, "tail")
        with RawClient(head.port) as c:
            replies = c.call(*[wire.req_put(f"k{i}".encode(), b"v") for i in range(25)])
        self.assertTrue(all(r.opcode == wire.OP_PUT + 1 for r in replies))
        h = scrape(head_m)
        self.assertEqual(h[("kvtwist_role", (("role", "head"),))], 1)
        self.assertEqual(h[("kvtwist_role", (("role", "tail"),))], 0)
        self.assertEqual(h[("kvtwist_requests_total", (("op", "put"), ("outcome", "ok")))], 25)
        self.assertEqual(h[("kvtwist_request_duration_seconds_count", (("op", "put"),))], 25)
        self.assertGreaterEqual(h[("kvtwist_commit_duration_seconds_count", ())], 1)
        self.assertGreaterEqual(h[("kvtwist_wal_fsync_duration_seconds_count", ())], 1)
        self.assertEqual(h[("kvtwist_wal_batch_records_sum", ())], 25)
        self.assertEqual(h[("kvtwist_zookeeper_session", (("state", "connected"),))], 1)
        self.assertGreater(h[("kvtwist_data_dir_bytes", ())], 0)
        self.assertGreaterEqual(h[("kvtwist_op_received", ())], 25)
        t = wait_for(
            lambda: (s := scrape(tail_m))[("kvtwist_op_committed", ())] >= 25 and s,
            10,
            "the tail to commit",
        )
        self.assertEqual(t[("kvtwist_role", (("role", "tail"),))], 1)
        self.assertEqual(t[("kvtwist_sent_list_length", ())], 0)
        self.assertEqual(t[("kvtwist_chain_links_open", ())], 1)  # the head's link
        for port in (head_m, tail_m):
            self.assertEqual(http(port, "/healthz"), (200, "ok\n"))
            self.assertEqual(http(port, "/readyz")[0], 200)

    def test_readyz_flips_when_fenced(self) -> None:
        """A member whose znode is deleted is fenced; held out of the chain (we hold the
        join lock), /readyz says 503 with the reason; let back in, 200 again."""
        node, metrics = self.member()
        self.assertEqual(http(metrics, "/readyz"), (200, "ready: head+tail\n"))
        lock = self.kazoo.Lock(sibling_path(self.root, "join"))
        self.assertTrue(lock.acquire(timeout=10))
        try:
            for name in self.kazoo.get_children(self.root):
                self.kazoo.delete(f"{self.root}/{name}")
            code, body = wait_for(
                lambda: (r := http(metrics, "/readyz"))[0] == 503 and r, 15, "readyz to fail"
            )
            self.assertTrue(body.startswith("not serving: "), body)
            self.assertEqual(len(body.splitlines()), 1)
            self.assertEqual(http(metrics, "/healthz")[0], 200)  # alive all the same
            v = scrape(metrics)
            self.assertEqual(v[("kvtwist_role", (("role", "head+tail"),))], 0)
            self.assertGreaterEqual(v[("kvtwist_role_changes_total", ())], 1)
        finally:
            lock.release()
        wait_for(lambda: http(metrics, "/readyz")[0] == 200, 30, "readyz after the rejoin")
        node.stop()
        self.assertFalse(port_open(metrics))  # stopped: nothing answers


class ConfigFileTests(SynchronousTestCase):
    def config(self, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=".toml")
        os.write(fd, text.encode())
        os.close(fd)
        self.addCleanup(os.unlink, path)
        return path

    def test_options_from_the_file_command_line_wins(self) -> None:
        """The node serves metrics on the file's port and keeps nothing on disk (the
        file's in-memory); its --port from the command line beats the file's."""
        node = NodeProcess()
        file_port = other_port(node.port)
        metrics = other_port(node.port, file_port)
        path = self.config(f"port = {file_port}\nmetrics-port = {metrics}\nin-memory = true\n")
        node.args = ["--config", path]
        node.start()
        self.addCleanup(node.cleanup)
        self.addCleanup(node.stop)
        wait_for(lambda: port_open(metrics), 15, "the metrics port from the file")
        self.assertFalse(port_open(file_port))
        self.assertEqual(http(metrics, "/readyz"), (200, "ready: standalone\n"), node.log())
        self.assertNotIn(("kvtwist_data_dir_bytes", ()), scrape(metrics))
        self.assertIn("in-memory", node.log())
        self.assertFalse((node.dir / "kvtwist-data").exists())

    def test_unknown_key_exits_2_in_one_line(self) -> None:
        path = self.config("port = 9100\nmetrics-prot = 9101\n")
        done = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "kvnode", "--config", path],
            capture_output=True,
            text=True,
            env=env(),
            timeout=60,
        )
        self.assertEqual(done.returncode, 2)
        lines = (done.stdout + done.stderr).splitlines()
        self.assertEqual(lines, [f"kvtwist: config file {path}: unknown key 'metrics-prot'"])
