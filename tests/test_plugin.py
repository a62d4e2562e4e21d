"""The twistd plugin: ``twistd kvnode --version`` and finding the plugin after installation."""

from __future__ import annotations

import subprocess
from importlib import metadata

from twisted.trial.unittest import SynchronousTestCase

from tests.nodes import ROOT, TWISTD, env


class VersionTests(SynchronousTestCase):
    def test_version_names_kvtwist(self) -> None:
        """`twistd kvnode --version` prints kvtwist's version, then Twisted's, and exits 0."""
        p = subprocess.run(
            [TWISTD, "kvnode", "--version"], capture_output=True, text=True, env=env(),
            cwd=ROOT, timeout=60,
        )
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout.splitlines()
        self.assertEqual(out[0], f"kvtwist version: {metadata.version('kvtwist')}")
        self.assertTrue(out[1].startswith("Twisted version: "), out)
