"""Redis's own tools against the RESP ports of a real chain of three nodes:
redis-cli interactive through a pty, ``--pipe`` mass insertion and ``-r``
repeats, redis-benchmark, and MULTI/EXEC through redis-py's transactional
pipelines, whose groups no concurrent reader ever sees half of."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import termios
import threading
import time

import redis

from kvtwist.resp import codec
from tests import test_resp_chain  # its tests are not collected again here
from tests.test_chain import ChainCase
from tests.test_resp_chain import REDIS_CLI

REDIS_BENCHMARK = shutil.which("redis-benchmark") or "redis-benchmark"


class Terminal:
    """redis-cli on a pseudo-terminal, as a person at a keyboard runs it."""

    def __init__(self, port: int) -> None:
        master, slave = pty.openpty()
        # a window size, so linenoise edits lines without asking the cursor's place
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
        self.proc = subprocess.Popen(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            close_fds=True,
            env={**os.environ, "TERM": "xterm"},
        )
        os.close(slave)
        self.fd = master
        self.buf = b""

    def read_until(self, token: bytes, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while token not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {token!r} from redis-cli; it showed {self.buf!r}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    self.buf += os.read(self.fd, 4096)
                except OSError:  # the program ended
                    raise AssertionError(f"redis-cli ended; it showed {self.buf!r}") from None
        i = self.buf.index(token) + len(token)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def type(self, line: str) -> str:
        """Type a line at the prompt; what redis-cli printed before its next prompt."""
        os.write(self.fd, line.encode() + b"\r")
        self.read_until(b"\r\n")  # the line as it was edited
        out = self.read_until(b"> ")
        return out.rsplit(b"\r\n", 1)[0].decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.fd)


class RespToolsTests(ChainCase):
    resp_chain = test_resp_chain.RespChainTests.resp_chain
    client = test_resp_chain.RespChainTests.client

    def test_redis_cli_interactive(self) -> None:
        """A redis-cli session on a terminal: replies as Redis's, MULTI shown as (TX)."""
        _, (_, mp), _ = self.resp_chain()
        term = Terminal(mp)
        self.addCleanup(term.close)
        prompt = term.read_until(b"> ")
        self.assertIn(f"127.0.0.1:{mp}> ".encode(), prompt)
        self.assertEqual(term.type("SET greeting hello"), "OK")
        self.assertEqual(term.type("GET greeting"), '"hello"')
        self.assertEqual(term.type("INCRBYFLOAT f 1.5"), '"1.5"')
        self.assertEqual(term.type("MULTI"), "OK")
        self.assertEqual(term.type("INCR n"), "QUEUED")
        self.assertEqual(term.type("RENAME greeting g"), "QUEUED")
        self.assertEqual(term.type("GETRANGE g 1 3"), "QUEUED")
        self.assertEqual(term.type("EXEC"), '1) (integer) 1\r\n2) OK\r\n3) "ell"')
        self.assertEqual(term.type("EXISTS greeting"), "(integer) 0")
        self.assertEqual(term.type("WAIT 2 0"), "(integer) 2")
        self.assertIn("unknown command 'NOPE'", term.type("NOPE"))
        self.assertIn("--resp-allow-flush", term.type("FLUSHALL"))
        os.write(term.fd, b"quit\r")
        self.assertEqual(term.proc.wait(30), 0)

    def test_redis_cli_pipe_and_repeat(self) -> None:
        """--pipe mass insertion of many commands, and -r repeating one: none lost."""
        (_, hp), _, (_, tp) = self.resp_chain()
        mass = b"".join(
            codec.encode_command(b"MSET", b"a%05d" % i, b"%d" % i, b"b%05d" % i, b"%d" % i)
            + codec.encode_command(b"INCR", b"total")
            for i in range(5000)
        )
        done = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(hp), "--pipe"],
            input=mass,
            capture_output=True,
            timeout=120,
            check=True,
        )
        self.assertIn(b"errors: 0, replies: 10000", done.stdout)
        r = self.client(tp)
        self.assertEqual(r.get("total"), b"5000")
        self.assertEqual(r.dbsize(), 10001)
        repeat = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(tp), "-r", "50", "INCR", "rep"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        self.assertEqual(repeat.stdout.decode().split(), [str(i) for i in range(1, 51)])

    def test_redis_benchmark(self) -> None:
        """redis-benchmark's tests run to the end; every INCR it counted is in the store."""
        (_, hp), _, (_, tp) = self.resp_chain()
        done = subprocess.run(
            [
                REDIS_BENCHMARK,
                "-h",
                "127.0.0.1",
                "-p",
                str(hp),
                "-q",
                "-n",
                "2000",
                "-c",
                "8",
                "-P",
                "4",
                "-t",
                "ping,set,get,incr,mset",
            ],
            capture_output=True,
            timeout=300,
            check=True,
        )
        out = done.stdout.decode(errors="replace")
        for test in ("PING_INLINE", "PING_MBULK", "SET", "GET", "INCR", "MSET (10 keys)"):
            self.assertRegex(out, re.escape(test) + r": [\d.]+ requests per second")
        self.assertEqual(self.client(tp).get("counter:__rand_int__"), b"2000")

    def test_transactions_are_atomic_to_readers(self) -> None:
        """redis-py MULTI/EXEC pipelines from many threads at every member: each EXEC is
        one write, so a reader never sees one counter ahead of the other."""
        (_, hp), (_, mp), (_, tp) = self.resp_chain()
        r = self.client(tp)
        with r.pipeline(transaction=True) as p:
            p.set("k", "v").incr("n").rename("k", "k2").get("k2")
            self.assertEqual(p.execute(), [True, 1, True, b"v"])
        stop = threading.Event()
        torn: list[tuple[bytes | None, bytes | None]] = []
        errors: list[BaseException] = []

        def writer(port: int) -> None:
            c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
            try:
                for _ in range(40):
                    with c.pipeline(transaction=True) as p:
                        p.incr("x").incr("y")
                        a, b = p.execute()
                        if a != b:
                            torn.append((str(a).encode(), str(b).encode()))
            except BaseException as e:  # noqa: BLE001 (reported below)
                errors.append(e)
            finally:
                c.close()

        def reader() -> None:
            c = redis.Redis(host="127.0.0.1", port=mp, socket_timeout=30)
            try:
                while not stop.is_set():
                    x, y = c.mget("x", "y")
                    if x != y:
                        torn.append((x, y))
            finally:
                c.close()

        threads = [threading.Thread(target=writer, args=(p,)) for p in (hp, mp, tp, hp)]
        watch = threading.Thread(target=reader)
        watch.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stop.set()
        watch.join(30)
        self.assertEqual(errors, [])
        self.assertEqual(torn, [], "a reader or an EXEC saw half of a transaction")
        self.assertEqual(r.mget("x", "y"), [b"160", b"160"])

    def test_transactions_across_head_failover(self) -> None:
        """Killing the head while EXECs are in flight: each EXEC is applied whole or not
        at all, so the two counters it moves together are equal at every member after."""
        (head, _), (_, mp), (_, tp) = self.resp_chain()
        c = redis.Redis(host="127.0.0.1", port=tp, socket_timeout=10)
        self.addCleanup(c.close)
        done = failed = 0
        killed = False
        deadline = time.monotonic() + 90
        while done < 60:
            self.assertLess(time.monotonic(), deadline, f"stuck after {done} EXECs")
            if done == 20 and not killed:
                head.kill()
                killed = True
            try:
                with c.pipeline(transaction=True) as p:
                    a, b = p.incr("x").incr("y").execute()
                self.assertEqual(a, b, "one EXEC's counters apart")
                done += 1
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                redis.exceptions.ResponseError,
            ):
                failed += 1  # TRYAGAIN or a closed connection: applied whole or not at all
        self.assertGreater(failed, 0, "the failover went unseen")
        for port in (mp, tp):
            x, y = self.client(port).mget("x", "y")
            self.assertEqual(x, y)
            self.assertGreaterEqual(int(x or 0), done)
            self.assertLessEqual(int(x or 0), done + failed)
