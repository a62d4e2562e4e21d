"""The twistd plugin: ``twistd kvnode --version`` and finding the plugin after installation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

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


class EditableInstallTests(SynchronousTestCase):
    """What the README says about ``pip install -e``, checked with pip itself (offline)."""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="kvtwist-install-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.src = self.tmp / "src"
        self.src.mkdir()
        for name in ["pyproject.toml", "README.md"]:
            shutil.copy(ROOT / name, self.src / name)
        ignore = shutil.ignore_patterns("__pycache__", "dropin.cache")
        for name in ["kvtwist", "twisted"]:
            shutil.copytree(ROOT / name, self.src / name, ignore=ignore)

    def venv(self, name: str, *pip_args: str) -> subprocess.CompletedProcess[str]:
        """``twistd kvnode --version`` in a fresh venv where pip installed kvtwist with
        ``pip_args``."""
        home = self.tmp / name
        # pip, setuptools and the dependencies come from this venv, through a .pth file.
        venv = [sys.executable, "-m", "venv", "--without-pip", str(home)]
        subprocess.run(venv, check=True, timeout=120)
        site = next((home / "lib").glob("python*/site-packages"))
        ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
        (site / "deps.pth").write_text("\n".join(ours) + "\n")
        subprocess.run(
            [str(home / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
             "--no-build-isolation", "--no-index", "--disable-pip-version-check", *pip_args,
             str(self.src)],
            check=True, timeout=300, capture_output=True, cwd=self.tmp,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
        return subprocess.run(
            [str(home / "bin" / "python"), "-c",
             "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
             "kvnode", "--version"],
            capture_output=True, text=True, timeout=60, cwd=self.tmp,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )

    def test_default_editable_mode_hides_the_plugin(self) -> None:
        """Plain `pip install -e .` leaves twistd without kvnode, as the README warns."""
        p = self.venv("default", "-e")
        self.assertIn("Unknown command: kvnode", p.stdout + p.stderr)

    def test_compat_editable_mode_finds_the_plugin(self) -> None:
        """`pip install -e . --config-settings editable_mode=compat` makes kvnode work."""
        p = self.venv("compat", "--config-settings", "editable_mode=compat", "-e")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(p.stdout.startswith("kvtwist version: "), p.stdout)
