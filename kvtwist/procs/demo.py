"""What the foreground demos (scripts/cluster.py, scripts/shards.py) share.

A demo starts ZooKeeper from the development configuration (etc/zoo.cfg) on
a port of its choosing, or uses one already running there; prints without
failing once the reader of its output has gone; waits on conditions with
deadlines; and, whatever stops it (Ctrl-C, SIGTERM, SIGHUP, a closed output
pipe, a failure), stops everything it started before it exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from kvtwist.procs.zookeeper import (
    MAIN_CLASS,
    four_letter_word,
    java_binary,
    zookeeper_available,
    zookeeper_classpath,
)

__all__ = [
    "STOP_SIGNALS",
    "DemoZooKeeper",
    "Failed",
    "LogWatch",
    "Stop",
    "alive",
    "cmdline",
    "run_foreground",
    "say",
    "shown",
    "wait",
    "zk_ok",
    "zk_serving",
]


class Stop(Exception):
    """A signal asked the demo to stop."""


class Failed(Exception):
    """Starting or running the demo went wrong; the message says how."""


_quiet = False


def say(text: str) -> None:
    """Print, unless the reader of our output has gone (then print nothing more)."""
    global _quiet
    if _quiet:
        return
    try:
        print(text, flush=True)
    except OSError:  # BrokenPipeError, or a terminal that went away
        _quiet = True
        try:  # so that the interpreter's last flush cannot fail either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def _shield() -> None:
    """From here on nothing may interrupt stopping: not a second Ctrl-C, nor SIGHUP."""
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
    except Stop:  # one more arrived while we were at it
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def run_foreground(
    name: str, start: Callable[[], None], stop: Callable[[], None],
    then: Callable[[], None] | None = None,
) -> int:
    """``start()``, then ``then()`` (default: sleep until a signal), then always
    ``stop()``; the exit status: 1 if either raised Failed (its message on stderr)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stop)
    status = 0
    try:
        start()
        if then is not None:
            then()
        else:
            while True:
                time.sleep(3600)
    except Stop:
        pass
    except Failed as e:
        status = 1
        try:
            print(f"{name}: {e}", file=sys.stderr, flush=True)
        except OSError:
            pass
    finally:
        _shield()
        stop()
    return status


def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``cond`` until it holds; Failed after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise Failed(f"timed out waiting for {what}")
        time.sleep(0.1)


class LogWatch:
    """Watches a log for a line written after it was created, not by an earlier run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def seen(self, text: str) -> bool:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(self.offset if size >= self.offset else 0)  # rotated: a new file
                return text.encode() in f.read()
        except FileNotFoundError:
            return False


def zk_ok(port: int) -> bool:
    """Whether a ZooKeeper answers ``ruok`` on 127.0.0.1:``port``."""
    try:
        return four_letter_word(port, "ruok", 1.0) == "imok"
    except OSError:
        return False


def zk_serving(port: int) -> bool:
    """Whether it serves clients yet: ``ruok`` answers before it does, ``srvr`` not."""
    try:
        return zk_ok(port) and "Zxid" in four_letter_word(port, "srvr", 1.0)
    except OSError:
        return False


def shown(path: Path) -> str:
    """``path`` relative to the working directory when that is shorter."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


class DemoZooKeeper:
    """The demo's ZooKeeper: ``config`` (etc/zoo.cfg) on ``port``, run in ``directory``
    (its data, configuration and log there), unless one answers there already."""

    def __init__(self, config: Path, directory: Path, port: int) -> None:
        self.config = config
        self.dir = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "zookeeper.log"

    @staticmethod
    def unavailable() -> str | None:
        """Why no ZooKeeper can be started here, or None."""
        return zookeeper_available()

    def start(self) -> None:
        """Start it and wait until it answers, saying so; or say whose one is used."""
        if zk_ok(self.port):
            say(f"ZooKeeper already running on {self.hosts}; using it (and leaving it running)")
            return
        java = java_binary()
        if java is None:
            raise Failed("java not found")
        self.dir.mkdir(parents=True, exist_ok=True)
        text = self.config.read_text().replace("clientPort=2181", f"clientPort={self.port}")
        (self.dir / "zoo.cfg").write_text(text)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [java, "-Xmx256m", "-cp", zookeeper_classpath(), MAIN_CLASS,
                 str(self.dir / "zoo.cfg")],
                cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        zk = self.process
        wait(lambda: zk.poll() is None and zk_serving(self.port), 30, "ZooKeeper")
        say(f"ZooKeeper on {self.hosts} (pid {zk.pid}, log {shown(self.log)})")

    @property
    def ours(self) -> bool:
        return self.process is not None

    def stop(self) -> None:
        """Stop it if this demo started it."""
        if self.process is None:
            return
        say("stopping ZooKeeper")
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
