"""Step one process's wall clock: a small preload library built from wallclock.c.

Campaigns and tests run a node with :func:`environ` added to its
environment; :class:`WallClock` then moves that node's ``CLOCK_REALTIME`` by
writing the offset file, while its monotonic and boot-time clocks, the
machine's clock and every other process stay as they are.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("wallclock.c")


class WallClockUnavailable(RuntimeError):
    pass


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def library() -> Path:
    """The built preload library (built once per source version, in the temp dir)."""
    text = SOURCE.read_bytes()
    digest = hashlib.sha256(text).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"kvtwist-wallclock-{digest}.so"
    if target.exists():
        return target
    cc = compiler()
    if cc is None:
        raise WallClockUnavailable("no C compiler (cc) to build the wall-clock shim")
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    done = subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-o", str(partial), str(SOURCE), "-ldl"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise WallClockUnavailable(f"building the wall-clock shim failed: {done.stderr.strip()}")
    os.replace(partial, target)
    return target


def unavailable() -> str | None:
    """Why wall clocks cannot be stepped here (None: they can)."""
    try:
        library()
    except WallClockUnavailable as e:
        return str(e)
    return None


def write_offset(path: Path, offset: float) -> None:
    """The processes reading ``path`` see their wall clock ``offset`` seconds off (within 50 ms)."""
    partial = Path(path).with_suffix(".tmp")
    partial.write_text(f"{offset:.3f}\n")
    os.replace(partial, path)


class WallClock:
    """The wall-clock offset of the processes started with :meth:`environ`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0.0
        self.set(0.0)

    def environ(self) -> dict[str, str]:
        return {"LD_PRELOAD": str(library()), "KVTWIST_WALLCLOCK_FILE": str(self.path)}

    def set(self, offset: float) -> None:
        """From now on (within 50 ms) the wall clock reads ``offset`` seconds off."""
        write_offset(self.path, offset)
        self.offset = offset

    def step(self, by: float) -> None:
        self.set(self.offset + by)
