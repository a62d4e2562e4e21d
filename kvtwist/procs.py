"""Real processes on loopback: a private ZooKeeper and ``twistd -n kvnode`` nodes.

One place for them, used by the integration tests, the fault campaigns
(kvtwist-torture), the demo cluster and the benchmarks.  Everything binds to
127.0.0.1 on free ports, waits on conditions with deadlines, and leaves the
system's own ZooKeeper service alone.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import kvtwist

JAVA_DIR = Path(os.environ.get("KVTWIST_ZK_JAVA_DIR", "/usr/share/java"))
ZOOKEEPER_JAR = Path(os.environ.get("KVTWIST_ZK_JAR", str(JAVA_DIR / "zookeeper.jar")))
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"

# The server's runtime dependencies (mirrors the Class-Path of Debian's
# zookeeper.jar manifest, listed explicitly so a stripped manifest still works),
# plus slf4j-simple so the server logs to stderr, i.e. into our log file, instead
# of needing the system log4j configuration that writes to /var/log/zookeeper.
_DEPENDENCY_JARS = (
    "zookeeper-jute.jar",
    "slf4j-api.jar",
    "slf4j-simple.jar",
    "netty-buffer.jar",
    "netty-codec.jar",
    "netty-common.jar",
    "netty-handler.jar",
    "netty-resolver.jar",
    "netty-transport.jar",
    "netty-transport-native-epoll.jar",
    "netty-transport-native-unix-common.jar",
    "commons-cli.jar",
    "commons-io.jar",
    "metrics-core.jar",
    "snappy-java.jar",
    "jackson-annotations.jar",
    "jackson-core.jar",
    "jackson-databind.jar",
    "findbugs-annotations.jar",
    "jetty9-client.jar",
    "jetty9-http.jar",
    "jetty9-io.jar",
    "jetty9-security.jar",
    "jetty9-server.jar",
    "jetty9-servlet.jar",
    "jetty9-util.jar",
    "servlet-api.jar",
)

TICK_TIME_MS = 200


def java_binary() -> str | None:
    """The java executable to use, honouring $JAVA_HOME, or None if absent."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java")


def zookeeper_classpath() -> str:
    """The classpath for the server: the jar plus whichever dependencies exist."""
    jars = [ZOOKEEPER_JAR] + [JAVA_DIR / name for name in _DEPENDENCY_JARS]
    return os.pathsep.join(str(jar) for jar in jars if jar.exists())


def zookeeper_available() -> str | None:
    """Return why a private ZooKeeper cannot be started, or None if it can.

    Tests use this as their skip reason, so it names what to install.
    """
    if java_binary() is None:
        return "java not found (apt-get install default-jre-headless zookeeper)"
    if not ZOOKEEPER_JAR.is_file():
        return f"{ZOOKEEPER_JAR} not found (apt-get install zookeeper)"
    if not (JAVA_DIR / "zookeeper-jute.jar").is_file():
        return f"{JAVA_DIR / 'zookeeper-jute.jar'} not found (apt-get install zookeeper)"
    return None


def _ephemeral_start() -> int:
    """Where the kernel's range of ports for outgoing connections begins."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Taken below the kernel's range for outgoing connections: a port from that
    range can be handed to some process's outgoing connection between this
    check and the server's bind ("address already in use"); one below it never is.
    """
    top = _ephemeral_start()
    for _ in range(200):
        port = random.randrange(10000, top) if top > 11000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def four_letter_word(port: int, word: str, timeout: float = 2.0) -> str:
    """Send a ZooKeeper four-letter command to 127.0.0.1:port and return the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(word.encode("ascii"))
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


class ZooKeeperError(RuntimeError):
    """The private ZooKeeper server failed to start."""


class ZooKeeperProcess:
    """One standalone ZooKeeper server in a temporary directory on 127.0.0.1."""

    def __init__(
        self,
        tick_time_ms: int = TICK_TIME_MS,
        max_session_timeout_ms: int = 60_000,
        port: int | None = None,
    ) -> None:
        self.tick_time_ms = tick_time_ms
        self.max_session_timeout_ms = max_session_timeout_ms
        self.fixed_port = port  # None: a free port, new on every attempt
        self.port: int | None = None
        self.tempdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def hosts(self) -> str:
        """The kazoo connection string, "127.0.0.1:PORT"."""
        if self.port is None:
            raise ZooKeeperError("ZooKeeper is not running")
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return None if self.tempdir is None else self.tempdir / "zookeeper.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log, for error messages."""
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        text = path.read_text("utf-8", "replace").splitlines()
        return "\n".join(text[-lines:])

    def start(self, timeout: float = 30.0) -> None:
        """Launch the server and wait until it answers ``ruok`` and ``srvr``.

        The free-port probe is racy (another process may grab the port between
        our probe and the JVM's bind), so an early exit is retried on a new port.
        """
        reason = zookeeper_available()
        if reason is not None:
            raise ZooKeeperError(reason)
        with self._lock:
            if self.running:
                return
            deadline = time.monotonic() + timeout
            last_error = "no attempt made"
            for _attempt in range(3):
                try:
                    self._launch()
                    self._wait_ready(deadline)
                    return
                except ZooKeeperError as e:
                    last_error = str(e)
                    self._kill_and_cleanup()
                    if time.monotonic() >= deadline:
                        break
            raise ZooKeeperError(f"ZooKeeper did not start: {last_error}")

    def _launch(self) -> None:
        self.tempdir = Path(tempfile.mkdtemp(prefix="kvtwist-zk-"))
        data_dir = self.tempdir / "data"
        data_dir.mkdir()
        self.port = self.fixed_port or free_port()
        cfg = self.tempdir / "zoo.cfg"
        cfg.write_text(
            "\n".join(
                [
                    f"tickTime={self.tick_time_ms}",
                    "initLimit=10",
                    "syncLimit=5",
                    f"dataDir={data_dir}",
                    f"clientPort={self.port}",
                    "clientPortAddress=127.0.0.1",
                    f"minSessionTimeout={2 * self.tick_time_ms}",
                    f"maxSessionTimeout={self.max_session_timeout_ms}",
                    "maxClientCnxns=0",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=*",
                    "autopurge.purgeInterval=0",
                    "",
                ]
            )
        )
        self._exec()

    def _exec(self) -> None:
        """Run the server on the configuration and data already in ``tempdir``."""
        java = java_binary()
        assert java is not None and self.tempdir is not None
        cfg = self.tempdir / "zoo.cfg"
        command = [
            java,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.net.preferIPv4Stack=true",
            "-Dzookeeper.admin.enableServer=false",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-cp",
            zookeeper_classpath(),
            MAIN_CLASS,
            str(cfg),
        ]
        assert self.log_path is not None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tempdir,
                start_new_session=True,  # a ^C to the test run must not race our stop()
            )

    def _wait_ready(self, deadline: float) -> None:
        assert self.port is not None and self.process is not None
        delay = 0.02
        while True:
            if self.process.poll() is not None:
                raise ZooKeeperError(
                    f"java exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if four_letter_word(self.port, "ruok", timeout=1.0) == "imok":
                    # ruok answers before the server is serving; srvr does not.
                    if "Zxid" in four_letter_word(self.port, "srvr", timeout=1.0):
                        return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise ZooKeeperError(f"timed out waiting for ruok/srvr:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def pause(self) -> None:
        """SIGSTOP the server (clients see their connections hang, then drop)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the server (a crash), keeping its data, port and log for :meth:`restart`."""
        with self._lock:
            process = self.process
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()

    def restart(self, timeout: float = 30.0) -> None:
        """Start the server again on the same data directory and port, after :meth:`kill`.

        What it had written survives (the snapshot and transaction log), so
        sessions and ephemeral nodes come back until their timeout expires them.
        """
        with self._lock:
            if self.tempdir is None or self.port is None:
                raise ZooKeeperError("restart() needs a server that was started and killed")
            if self.running:
                return
            deadline = time.monotonic() + timeout
            while True:
                self._exec()
                try:
                    self._wait_ready(deadline)
                    return
                except ZooKeeperError:
                    # the port may linger for a moment after the crash: try again
                    process = self.process
                    if process is not None and process.poll() is None:
                        process.kill()
                        process.wait()
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.5)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server, SIGKILL it after ``timeout``; remove its tempdir."""
        with self._lock:
            self._kill_and_cleanup(timeout)

    def _kill_and_cleanup(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)  # in case it was paused
                process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()
        tempdir, self.tempdir = self.tempdir, None
        if tempdir is not None:
            shutil.rmtree(tempdir, ignore_errors=True)
        self.port = None

    def __enter__(self) -> ZooKeeperProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# kvtwist nodes

#: The directory holding the ``kvtwist`` package (the source tree when installed
#: editable), put on the nodes' PYTHONPATH so twistd finds the kvnode plugin.
PACKAGE_ROOT = Path(kvtwist.__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).parent / "twistd")

_T = TypeVar("_T")


def wait_for(cond: Callable[[], _T], timeout: float = 15.0, what: str = "condition") -> _T:
    """Poll ``cond`` until it returns something true; TimeoutError on the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


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
    ) -> NodeProcess:
        """A server of cluster ``cluster`` (``--cluster``), in memory unless told otherwise."""
        args = [
            "--zk", zk_hosts, "--cluster", cluster, "--server-id", server_id,
            "--zk-session-timeout", f"{session_timeout:g}",
        ]
        extra = list(extra_args or [])
        if "--data-dir" not in extra:
            extra.append("--in-memory")
        return cls(None, args + extra)

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
