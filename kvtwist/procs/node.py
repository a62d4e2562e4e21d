"""``twistd -n kvnode`` processes on loopback, and a blocking client of the wire for tests."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import kvtwist
from kvtwist.procs.ports import free_port, port_open, wait_for

#: The directory holding the ``kvtwist`` package (the source tree when installed
#: editable), put on the nodes' PYTHONPATH so twistd finds the kvnode plugin.
PACKAGE_ROOT = Path(kvtwist.__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).parent / "twistd")



def node_env() -> dict[str, str]:
    """The environment for node processes: the package importable, the default reactor."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TWISTED_REACTOR", None)
    return env


@functools.cache
def kvnode_options() -> frozenset[str]:
    """The long options ``twistd kvnode --help`` lists: what this build of the node takes.

    Campaigns ask it before using an option newer builds have (``--data-dir``,
    ``--cluster-key-file``), so one runner works against old and new nodes.
    """
    run = subprocess.run(
        [TWISTD, "kvnode", "--help"],
        env=node_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return frozenset(re.findall(r"--([a-z][a-z0-9-]*)", run.stdout))


class NodeProcess:
    """One ``twistd -n kvnode`` process on 127.0.0.1, logging into its own directory."""

    def __init__(
        self,
        port: int | None = None,
        args: list[str] | None = None,
        directory: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.args = list(args or [])
        self.env = dict(env or {})  # over node_env(), e.g. kvtwist.verify.wallclock's preload
        self._own_dir = directory is None
        self.dir = (
            Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="kvnode-"))
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logfile = self.dir / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def member(
        cls,
        zk_hosts: str,
        root: str,
        session_timeout: float,
        directory: Path | None = None,
        port: int | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> NodeProcess:
        """A node that joins the chain at ``root``."""
        args = ["--zk", zk_hosts, "--zk-root", root, "--zk-session-timeout", f"{session_timeout:g}"]
        return cls(port, args + list(extra_args or []), directory, env)

    @classmethod
    def cluster_server(
        cls,
        zk_hosts: str,
        cluster: str,
        server_id: str,
        session_timeout: float = 4.0,
        extra_args: list[str] | None = None,
        directory: Path | None = None,
    ) -> NodeProcess:
        """A server of cluster ``cluster`` (``--cluster``), in memory unless told otherwise;
        ``directory`` keeps its log (and is kept) across restarts, as a member's does."""
        args = [
            "--zk", zk_hosts, "--cluster", cluster, "--server-id", server_id,
            "--zk-session-timeout", f"{session_timeout:g}",
        ]
        extra = list(extra_args or [])
        if "--data-dir" not in extra:
            extra.append("--in-memory")
        return cls(None, args + extra, directory)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def command(self) -> list[str]:
        return [
            TWISTD,
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

    def start(self, wait: bool = True, timeout: float = 30.0) -> NodeProcess:
        """Launch the process, by default waiting until it listens."""
        with open(self.dir / "stdout", "ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                env={**node_env(), **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C to the runner must not race our cleanup
            )
        if wait:
            self.wait_listening(timeout)
        return self

    def wait_listening(self, timeout: float = 30.0) -> None:
        def listening() -> bool:
            if self.exited is not None:
                raise RuntimeError(f"node exited with {self.exited}:\n{self.log_tail()}")
            return port_open(self.port)

        wait_for(listening, timeout, f"node on port {self.port} to listen")

    @property
    def exited(self) -> int | None:
        """The exit status once the process has ended, else None."""
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to anyone."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: a stall (GC pause, swapped out, VM migration) the node cannot notice."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (after SIGCONT, in case it is paused), SIGKILL on the deadline."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout)
        return self.proc.returncode

    def cleanup(self) -> None:
        """Stop, and remove the directory if this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        parts = []
        for name in ("stdout", "node.log"):
            p = self.dir / name
            if p.exists():
                parts.append(p.read_text(errors="replace"))
        return "\n".join(parts)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class RawClient:
    """A blocking client of one node speaking raw frames (no reactor needed).

    The runner uses it to read each node's own copy (``local`` reads, which no
    chain client may issue) and the tail's final state.
    """

    def __init__(self, port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
        from kvtwist import wire

        self.wire = wire
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.decoder = wire.FrameDecoder(1 << 30)
        self.ready: list[bytes] = []

    def call(self, *msgs: Any) -> list[Any]:
        self.sock.sendall(b"".join(self.wire.frame(m) for m in msgs))
        return self.read(len(msgs))

    def one(self, msg: Any) -> Any:
        return self.call(msg)[0]

    def read(self, n: int) -> list[Any]:
        """The next ``n`` replies."""
        out: list[Any] = []
        while len(out) < n:
            if not self.ready:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("closed by the node")
                self.ready.extend(self.decoder.feed(data))
                continue
            out.append(self.wire.decode(self.ready.pop(0)))
        return out

    def get(self, key: bytes) -> bytes | None:
        """A linearizable read (the node must be the tail); KVError-like RuntimeError on ERROR."""
        [reply] = self.call(self.wire.req_get(key))
        if reply.opcode == self.wire.OP_ERROR:
            raise RuntimeError(f"GET {key!r}: {reply.error}")
        return bytes(reply.values[0]) if reply.values else None

    def stats(self) -> Any:
        [reply] = self.call(self.wire.req_stats())
        return reply.stats

    def dump(self) -> list[tuple[bytes, bytes]]:
        """This node's own copy, whatever its role."""
        keys = self.wire.req_getkeys()
        keys.local = True
        values = self.wire.req_getvalues()
        values.local = True
        k, v = self.call(keys, values)
        for reply in (k, v):
            if reply.opcode == self.wire.OP_ERROR:
                raise RuntimeError(f"local dump refused: {reply.error}")
        return list(zip([bytes(x) for x in k.keys], [bytes(x) for x in v.values], strict=True))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def dump(port: int, timeout: float = 5.0) -> list[tuple[bytes, bytes]] | None:
    """The local copy of the node on ``port``, or None if it cannot be read now."""
    try:
        with RawClient(port, timeout=timeout) as c:
            return c.dump()
    except (OSError, RuntimeError, ValueError):
        return None
