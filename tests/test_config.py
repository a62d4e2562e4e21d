"""``twistd kvnode --config FILE`` in memory: merging and refusals (kvtwist.config)."""

from __future__ import annotations

import io
import os
import tempfile
from contextlib import redirect_stderr

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.config import ConfigError, config_path
from kvtwist.tap import Options


class ConfigTests(SynchronousTestCase):
    def write(self, text: str, name: str = "kvnode.toml", mode: int = 0o644) -> str:
        d = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(d, ignore_errors=True))
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def parse(self, *argv: str) -> Options:
        o = Options()
        o.parseOptions(list(argv))
        return o

    def refused(self, *argv: str) -> str:
        err = io.StringIO()
        with redirect_stderr(err), self.assertRaises(SystemExit) as e:
            self.parse(*argv)
        self.assertEqual(e.exception.code, 2)
        lines = err.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        return lines[0]

    def test_file_over_defaults_command_line_over_file(self) -> None:
        path = self.write(
            'port = 9100\nthreads = 2\nfsync = "interval"\nfsync-interval = 0.5\n'
            "in-memory = true\nmetrics-port = 9190\nzk-session-timeout = 3\n"
        )
        o = self.parse("--config", path)
        self.assertEqual(o["port"], 9100)
        self.assertEqual(o["threads"], 2)
        self.assertEqual(o["fsync"], "interval")
        self.assertEqual(o["fsync-interval"], 0.5)
        self.assertEqual(o["in-memory"], 1)
        self.assertEqual(o["metrics-port"], 9190)
        self.assertEqual(o["zk-session-timeout"], 3.0)
        self.assertEqual(o["max-key"], Options()["max-key"])  # untouched: the default
        o = self.parse(f"--config={path}", "--port", "9200", "--threads", "3")
        self.assertEqual((o["port"], o["threads"], o["metrics-port"]), (9200, 3, 9190))
        # the order on the command line does not matter: the command line wins
        o = self.parse("--port", "9300", "--config", path)
        self.assertEqual(o["port"], 9300)

    def test_file_values_are_checked_as_options_are(self) -> None:
        path = self.write("port = 0\nin-memory = true\n")
        self.assertIn("'port'", self.refused("--config", path))
        # postOptions still judges the merged whole
        path = self.write('in-memory = true\ndata-dir = "/tmp/x"\n')
        with self.assertRaises(usage.UsageError):
            self.parse("--config", path)

    def test_unknown_key(self) -> None:
        path = self.write("port = 9100\nprot = 9101\n")
        line = self.refused("--config", path)
        self.assertIn("unknown key 'prot'", line)

    def test_secrets_only_from_files(self) -> None:
        for key, pointer in (("zk-auth", "zk-auth-file"), ("cluster-key", "cluster-key-file")):
            path = self.write(f'{key} = "user:secret"\n')
            line = self.refused("--config", path)
            self.assertIn(repr(key), line)
            self.assertIn(repr(pointer), line)
            self.assertNotIn("secret\"", line)

    def test_zk_auth_file(self) -> None:
        """--zk-auth-file reads USER:PASSWORD from a private file, also named in the config."""
        secret = self.write("ops:hunter2\n", "zkauth", 0o600)
        path = self.write(f'zk = "127.0.0.1:2181"\nzk-auth-file = "{secret}"\nin-memory = true\n')
        self.assertEqual(self.parse("--config", path)["zk-auth"], "ops:hunter2")
        os.chmod(secret, 0o644)
        with self.assertRaises(usage.UsageError) as e:
            self.parse("--config", path)
        self.assertIn("chmod 600", str(e.exception))

    def test_bad_files(self) -> None:
        self.assertIn("No such file", self.refused("--config", "/nonexistent/kvnode.toml"))
        self.assertIn("not TOML", self.refused("--config", self.write("port = \n")))
        self.assertIn("true or false", self.refused("--config", self.write('in-memory = "yes"\n')))
        self.assertIn("must be a string", self.refused("--config", self.write("zk-root = 5\n")))

    def test_config_path(self) -> None:
        self.assertEqual(config_path(["--port", "1", "--config", "f"]), "f")
        self.assertEqual(config_path(["--config=g"]), "g")
        self.assertIsNone(config_path(["--port", "1"]))
        with self.assertRaises(ConfigError):
            config_path(["--config"])
