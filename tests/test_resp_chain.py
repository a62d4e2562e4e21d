"""Real Redis clients (redis-py sync and asyncio, redis-cli) against the RESP
ports of a chain of three ``twistd -n kvnode`` processes and a real ZooKeeper,
failover of the head included."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time

import redis
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, TryAgainError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kvtwist.resp import codec
from tests.nodes import NodeProcess, free_port, wait_for
from tests.test_chain import SESSION, ChainCase

REDIS_CLI = shutil.which("redis-cli") or "redis-cli"


class RespChainTests(ChainCase):
    def resp_chain(self, n: int = 3) -> list[tuple[NodeProcess, int]]:
        out = []
        for _ in range(n):
            rp = free_port()
            node = NodeProcess(
                args=[
                    "--zk",
                    self.zk.hosts,
                    "--zk-root",
                    self.root,
                    "--zk-session-timeout",
                    str(SESSION),
                    "--resp-port",
                    str(rp),
                ]
            ).start()
            self.nodes.append(node)
            wait_for(lambda node=node: node.port in self.member_ports(), 30, "a member")
            out.append((node, rp))
        return out

    def client(self, port: int, **kw: object) -> redis.Redis:
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, **kw)  # type: ignore[arg-type]
        self.addCleanup(r.close)
        return r

    def test_redis_py_on_every_member(self) -> None:
        """Writes at any member go to the head, reads to the tail: each member agrees."""
        (h, hp), (m, mp), (t, tp) = self.resp_chain()
        tail, mid, head = self.client(tp), self.client(mp), self.client(hp, protocol=3)
        self.assertTrue(tail.ping())
        self.assertTrue(tail.set("k", "v"))
        self.assertEqual(head.get("k"), b"v")
        self.assertEqual(mid.get("k"), b"v")
        self.assertEqual([mid.incr("n") for _ in range(3)], [1, 2, 3])
        self.assertEqual(tail.incrby("n", 10), 13)
        self.assertIsNone(head.set("k", "w", nx=True))
        self.assertEqual(head.set("k", "w", xx=True, get=True), b"v")
        self.assertEqual(mid.getdel("k"), b"w")
        self.assertTrue(mid.setnx("k", "x"))
        self.assertEqual(mid.append("k", "yz"), 3)
        self.assertEqual(tail.mset({"a": "1", "b": "2"}), True)
        self.assertEqual(head.mget("a", "b", "zz"), [b"1", b"2", None])
        self.assertEqual(sorted(tail.keys("*")), [b"a", b"b", b"k", b"n"])
        self.assertEqual(sorted(mid.scan_iter(match="[ab]", count=1)), [b"a", b"b"])
        self.assertEqual(head.dbsize(), 4)
        self.assertEqual(tail.info("replication")["chain_role"], "tail")
        self.assertEqual(head.info("replication")["chain_role"], "head")
        with self.assertRaises(ResponseError) as e:
            tail.incr("k")
        self.assertIn("not an integer", str(e.exception))
        with self.assertRaises(ResponseError):
            tail.set("e", "1", ex=10)
        pipe = mid.pipeline(transaction=False)
        for i in range(100):
            pipe.set(f"p{i}", i)
            pipe.get(f"p{i}")
            pipe.incr("count")
        replies = pipe.execute()
        self.assertEqual(replies[1::3], [str(i).encode() for i in range(100)])
        self.assertEqual(replies[2::3], list(range(1, 101)))

    def test_redis_asyncio_concurrent_incr(self) -> None:
        """Many connections incrementing one key at once: every answer distinct, none lost."""
        (_, hp), (_, mp), (_, tp) = self.resp_chain()

        async def run() -> tuple[list[int], bytes | None]:
            clients = [redis.asyncio.Redis(host="127.0.0.1", port=p) for p in (hp, mp, tp)]
            try:
                got = await asyncio.gather(*[clients[i % 3].incr("ctr") for i in range(300)])
                return list(got), await clients[2].get("ctr")
            finally:
                for c in clients:
                    await c.aclose()

        got, final = asyncio.run(run())
        self.assertEqual(sorted(got), list(range(1, 301)))
        self.assertEqual(final, b"300")

    def test_watch_retry_loop_counts_every_exec(self) -> None:
        """INCR by WATCH/GET/MULTI/SET/EXEC from clients on every member, retried on
        WatchError: the counter ends equal to the number of EXECs that succeeded."""
        ports = [p for _, p in self.resp_chain()]
        wins = [0] * 6
        aborts = [0] * 6
        errors: list[BaseException] = []

        def work(i: int) -> None:
            r = redis.Redis(host="127.0.0.1", port=ports[i % 3], socket_timeout=30)
            try:
                with r.pipeline() as p:
                    while wins[i] < 12:
                        try:
                            p.watch("ctr")
                            n = int(p.get("ctr") or 0)
                            p.multi()
                            p.set("ctr", n + 1)
                            p.execute()
                            wins[i] += 1
                        except WatchError:
                            aborts[i] += 1
            except BaseException as e:  # reported below, in the test's thread
                errors.append(e)
            finally:
                r.close()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        self.assertEqual(errors, [])
        self.assertEqual(wins, [12] * 6)
        self.assertEqual(self.client(ports[0]).get("ctr"), b"72")
        # a write of the same value, from another member, aborts a watcher
        watcher, other = self.client(ports[2]), self.client(ports[0])
        with watcher.pipeline() as p:
            p.watch("ctr")
            other.set("ctr", "72")
            p.multi()
            p.incr("ctr")
            with self.assertRaises(WatchError):
                p.execute()
        self.assertEqual(other.get("ctr"), b"72")

    def test_redis_cli_one_shot_and_pipe(self) -> None:
        (_, hp), _, (_, tp) = self.resp_chain()

        def cli(*args: str, stdin: bytes | None = None) -> str:
            done = subprocess.run(
                [REDIS_CLI, "-h", "127.0.0.1", "-p", str(tp), *args],
                input=stdin,
                capture_output=True,
                timeout=60,
                check=True,
            )
            return done.stdout.decode()

        self.assertEqual(cli("SET", "greeting", "hello world"), "OK\n")
        self.assertEqual(cli("GET", "greeting"), "hello world\n")
        self.assertEqual(cli("INCR", "visits"), "1\n")
        self.assertIn("unknown command 'NOPE'", cli("NOPE", "x"))
        mass = b"".join(codec.encode_command(b"SET", b"m%04d" % i, b"%d" % i) for i in range(2000))
        out = cli("--pipe", stdin=mass)
        self.assertIn("errors: 0, replies: 2000", out)
        self.assertEqual(self.client(hp).dbsize(), 2002)
        self.assertEqual(self.client(hp).get("m1999"), b"1999")

    def test_head_failover_seen_from_redis_py(self) -> None:
        """Killing the head: the client sees TRYAGAIN or a closed connection, never a
        wrong answer, and every acknowledged INCR is in the count."""
        (head, _), _, (_, tp) = self.resp_chain()
        r = self.client(tp)
        acked: list[int] = []
        failed = 0
        killed = False
        deadline = time.monotonic() + 90
        while len(acked) < 60:
            self.assertLess(time.monotonic(), deadline, f"stuck after {acked[-1:]} acks")
            if len(acked) == 20 and not killed:
                head.kill()
                killed = True
            try:
                acked.append(r.incr("ctr"))
            except TryAgainError:  # the reply began with TRYAGAIN
                failed += 1
            except (RedisConnectionError, RedisTimeoutError):
                failed += 1
        self.assertGreater(failed, 0, "the failover went unseen")
        self.assertEqual(acked, sorted(set(acked)), "two INCRs answered the same number")
        final = int(r.get("ctr") or 0)
        # an INCR that failed may still have been applied (Redis clients carry no retry
        # id): the count holds every acknowledged one and at most the failed ones more
        self.assertGreaterEqual(final, acked[-1])
        self.assertLessEqual(final, len(acked) + failed)
        self.assertEqual(acked[:20], list(range(1, 21)))

    def test_exec_across_a_head_failover_is_whole(self) -> None:
        """EXECs of two INCRs while the head is killed: each is applied whole or not at
        all, once per send; one that failed (TRYAGAIN, closed) may have been applied."""
        (head, _), _, (_, tp) = self.resp_chain()
        r = self.client(tp)
        acked = failed = 0
        killed = False
        deadline = time.monotonic() + 90
        while acked < 40:
            self.assertLess(time.monotonic(), deadline, f"stuck after {acked} acks")
            if acked == 15 and not killed:
                head.kill()
                killed = True
            try:
                with r.pipeline() as p:
                    a, b = p.incr("a").incr("b").execute()
                self.assertEqual(a, b, "an EXEC's INCRs are one op")
                acked += 1
            except (TryAgainError, RedisConnectionError, RedisTimeoutError):
                failed += 1
        self.assertGreater(failed, 0, "the failover went unseen")
        final_a, final_b = (int(v or 0) for v in r.mget("a", "b"))
        self.assertEqual(final_a, final_b, "no EXEC was applied in part")
        self.assertGreaterEqual(final_a, acked)
        self.assertLessEqual(final_a, acked + failed)
