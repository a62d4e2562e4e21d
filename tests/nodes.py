"""Real ``twistd -n kvnode`` processes for integration tests.

Each node runs in its own process on a free loopback port, logs to a file in
a temporary directory (printed when a test fails), and is stopped with SIGTERM
(SIGKILL on a deadline).  Waiting is always on a condition with a deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TWISTD = [str(Path(sys.executable).parent / "twistd")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> object:
    """Poll ``cond`` until it returns something true; raise on the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("TWISTED_REACTOR", None)
    return e


class NodeProcess:
    """One kvtwist node process."""

    def __init__(self, port: int | None = None, args: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.args = list(args or [])
        self.dir = Path(tempfile.mkdtemp(prefix="kvnode-"))
        self.logfile = self.dir / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            *TWISTD,
            "-n",
            "--pidfile=",
            f"--logfile={self.logfile}",
            "kvnode",
            "--port",
            str(self.port),
            "--interface",
            "127.0.0.1",
            *self.args,
        ]

    def start(self, wait: bool = True, timeout: float = 20.0) -> NodeProcess:
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.dir,
            env=env(),
            stdin=subprocess.DEVNULL,
            stdout=open(self.dir / "stdout", "wb"),
            stderr=subprocess.STDOUT,
        )
        if wait:
            wait_for(self._listening, timeout, f"node on port {self.port} to listen")
        return self

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()}")
        return port_open(self.port)

    def log(self) -> str:
        parts = []
        for name in ("stdout", "node.log"):
            p = self.dir / name
            if p.exists():
                parts.append(p.read_text(errors="replace"))
        return "\n".join(parts)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to anyone."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RawClient:
    """A blocking client speaking raw frames, for tests that must not run a reactor."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        from kvtwist import wire

        self.wire = wire
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.decoder = wire.FrameDecoder(1 << 30)
        self.ready: list[bytes] = []

    def call(self, *msgs: object) -> list[object]:
        self.sock.sendall(b"".join(self.wire.frame(m) for m in msgs))  # type: ignore[arg-type]
        return self.read(len(msgs))

    def read(self, n: int) -> list[object]:
        """The next ``n`` replies."""
        out = []
        while len(out) < n:
            if not self.ready:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("closed by the node")
                self.ready.extend(self.decoder.feed(data))
                continue
            out.append(self.wire.decode(self.ready.pop(0)))
        return out

    def one(self, msg: object) -> object:
        return self.call(msg)[0]

    def dump(self) -> list[tuple[str, bytes]]:
        """This node's own copy, whatever its role."""
        keys = self.wire.req_getkeys()
        keys.local = True
        values = self.wire.req_getvalues()
        values.local = True
        k, v = self.call(keys, values)
        return list(zip(k.keys, v.values, strict=True))  # type: ignore[attr-defined]

    def close(self) -> None:
        self.sock.close()


def dump(port: int) -> list[tuple[str, bytes]] | None:
    try:
        c = RawClient(port, timeout=5)
    except OSError:
        return None
    try:
        return c.dump()
    except OSError:
        return None
    finally:
        c.close()
