"""A private ZooKeeper server from Debian's package, on a free loopback port.

It runs from the package's jars with a configuration of its own in a
temporary directory, so the system's own ZooKeeper service is left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from kvtwist.procs.ports import free_port

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
