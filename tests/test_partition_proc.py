"""A tail cut off from the chain and from ZooKeeper, with a client still on its side.

Real ``twistd -n kvnode`` processes, a real ZooKeeper, and the campaign's
fault-injecting proxy (kvtwist.verify.proxy) in front of every node and of
every node's ZooKeeper connection.  A writer on the majority side writes
increasing values to one key through the head; a reader on the tail's side
keeps reading that key from the tail directly, as the original client (which
keeps the connection to the tail it found) or a load balancer would.  The
tail's links and its ZooKeeper connection are cut together: no read the
tail answers may be older than a write the chain acknowledged before the
read was sent (docs/protocol.md, "Timing").
"""

from __future__ import annotations

import threading
import time

from kvtwist import wire
from tests.nodes import RawClient, wait_for
from tests.test_chain import ChainCase

KEY = b"register"


class Recorder:
    """Acknowledged writes and answered reads, with the monotonic times that order them."""

    def __init__(self) -> None:
        self.acked: list[tuple[float, int]] = []  # (acknowledged at, value)
        self.reads: list[tuple[float, int | None]] = []  # (sent at, value read)
        self.read_errors = 0
        self.stop = threading.Event()

    def write_loop(self, port: int) -> None:
        n = 0
        client: RawClient | None = None
        while not self.stop.is_set():
            n += 1
            try:
                if client is None:
                    client = RawClient(port, timeout=30)
                [reply] = client.call(wire.req_put(KEY, str(n).encode()))
            except OSError:
                client = None
                time.sleep(0.05)
                continue
            if reply.opcode != wire.OP_ERROR:
                self.acked.append((time.monotonic(), n))
            else:
                time.sleep(0.02)

    def read_loop(self, port: int) -> None:
        client: RawClient | None = None
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                if client is None:
                    client = RawClient(port, timeout=30)
                [reply] = client.call(wire.req_get(KEY))
            except OSError:
                client = None
                time.sleep(0.05)
                continue
            if reply.opcode == wire.OP_ERROR:
                self.read_errors += 1
                time.sleep(0.02)
                continue
            value = int(bytes(reply.values[0])) if reply.values else None
            self.reads.append((sent, value))
            time.sleep(0.005)

    def stale(self) -> list[tuple[float, int | None, int]]:
        """Reads that returned less than a write acknowledged before they were sent."""
        out = []
        acked = sorted(self.acked)
        for sent, value in self.reads:
            newest = max((v for t, v in acked if t < sent), default=None)
            if newest is not None and (value is None or value < newest):
                out.append((sent, value, newest))
        return out


class MinorityPartitionTests(ChainCase):
    timeout = 180

    def run_partition(self, session: float, link_timeout: float, zk_after: float) -> None:
        proxy, (a, b, c) = self.proxied_chain(
            session=session, extra_args=("--link-timeout", f"{link_timeout:g}"), zk_routes=True
        )
        rec = Recorder()
        threads = [
            threading.Thread(target=rec.write_loop, args=(a.port,), daemon=True),
            threading.Thread(target=rec.read_loop, args=(c.port,), daemon=True),
        ]
        for t in threads:
            t.start()
        self.addCleanup(rec.stop.set)
        wait_for(lambda: len(rec.acked) >= 20 and len(rec.reads) >= 20, 30, "traffic")
        # the tail loses its predecessor, then ZooKeeper; its reader stays with it
        proxy.rule("c", "b", "blackhole")
        proxy.rule("b", "c", "blackhole")
        cut = time.monotonic()
        time.sleep(zk_after)
        proxy.rule("zk-c", "*", "blackhole")
        before = len(rec.acked)
        wait_for(lambda: len(rec.acked) >= before + 20, 60, "writes without the cut-off tail")
        resumed = rec.acked[before][0] - cut
        held_until = time.monotonic() + session  # hold it a while longer, then heal
        while time.monotonic() < held_until:
            time.sleep(0.1)
        proxy.clear()
        wait_for(lambda: len(self.member_ports()) == 3, 60, "the tail back in the chain")
        rec.stop.set()
        for t in threads:
            t.join(35)
        served_after_cut = sum(1 for sent, _ in rec.reads if sent > cut)
        print(
            f"\nwrites resumed {resumed:.1f}s after the cut; the cut-off tail answered "
            f"{served_after_cut} reads after it ({rec.read_errors} refused)"
        )
        self.assertEqual(rec.stale(), [], "the cut-off tail answered stale reads")
        self.assertGreater(len(rec.reads), 20)

    def test_tail_cut_off_with_a_reader_serves_no_stale_read(self) -> None:
        """The tail and a reader cut off together from the chain and ZooKeeper (ZooKeeper
        a second after the link, the order that left the widest stale window): the
        chain goes on writing, and the tail answers no read older than a commit."""
        self.run_partition(session=4.0, link_timeout=1.0, zk_after=1.0)
