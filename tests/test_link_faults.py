"""Chain links under attack and under faults, with real ``twistd -n kvnode`` processes.

A stranger without the cluster key, a member paused for less than its session
timeout, a link cut in both directions while both ends still reach ZooKeeper
(through the campaign's fault-injecting proxy, kvtwist.verify.proxy), and
large values: in each case a writer's acknowledged writes all survive, the
copies end identical and the chain goes on writing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from kvtwist import wire
from kvtwist.verify import stranger
from tests.nodes import NodeProcess, RawClient, dump, wait_for
from tests.test_chain import SESSION, ChainCase
from tests.zkserver import secret_file


def local_keys(port: int) -> list[bytes]:
    with RawClient(port, timeout=60) as c:
        msg = wire.req_getkeys()
        msg.local = True
        return list(c.one(msg).keys)


class LinkFaultTests(ChainCase):
    def keyed_chain(self, n: int) -> list[NodeProcess]:
        path = secret_file(self)
        nodes = []
        for _ in range(n):
            node = NodeProcess.member(
                self.zk.hosts, self.root, SESSION, extra_args=["--cluster-key-file", path]
            ).start()
            self.nodes.append(node)
            wait_for(lambda node=node: node.port in self.member_ports(), 30, "a keyed node")
            nodes.append(node)
        return nodes

    def config(self) -> int:
        return int(self.kazoo.exists(self.root).cversion)

    def test_stranger_without_the_key_changes_nothing(self) -> None:
        """A process without the cluster key tries forged HELLO/UPDATE/ACK/JOIN on every
        member while a client writes: nothing is accepted, nothing acknowledged is lost."""
        self.keyed_chain(3)
        w, out = self.start_writer()
        self.wait_acks(out, 20)
        members = [(name, addr[1]) for name, addr in self.members() if addr]
        summary = stranger.run(members, self.config(), 8, seed=5)
        self.assertEqual(summary["accepted"], 0, summary)
        self.assertTrue(summary["attempts"])
        self.wait_acks(out, len(self.acked(out)) + 20)
        acks = self.stop_writer(w, out)
        self.assert_converged(self.nodes, acks)
        held = dict(wait_for(lambda: dump(self.nodes[-1].port), 10, "the tail's copy"))
        self.assertFalse([v for v in held.values() if v.startswith(b"stranger-")])

    def test_member_paused_briefly_does_not_stall_the_chain(self) -> None:
        """A middle node SIGSTOPped for half its session timeout: after SIGCONT the chain
        writes again, and nothing acknowledged is lost."""
        nodes = self.chain(3)
        w, out = self.start_writer()
        self.wait_acks(out, 20)
        nodes[1].signal(signal.SIGSTOP)
        time.sleep(SESSION / 2)
        nodes[1].signal(signal.SIGCONT)
        resumed = time.monotonic()
        count = len(self.acked(out))
        self.wait_acks(out, count + 20, 30)
        print(f"\nwrites resumed {time.monotonic() - resumed:.2f}s after SIGCONT")
        acks = self.stop_writer(w, out)
        wait_for(lambda: len(self.member_ports()) == 3, 30, "all three members")
        self.assert_converged(nodes, acks)

    def test_cut_link_between_members_is_resolved(self) -> None:
        """Head and middle cannot reach each other but both reach ZooKeeper: the head
        removes the middle, which rejoins; the chain commits again and loses nothing."""
        proxy, nodes = self.proxied_chain()
        w, out = self.start_writer()
        self.wait_acks(out, 20)
        proxy.rule("b", "a", "blackhole")  # a -> b
        proxy.rule("a", "b", "blackhole")  # b -> a
        stats = proxy.stats()
        self.assertIn("b", stats["a"]["open"] + stats["b"]["open"], "the link was not cut")
        cut = time.monotonic()
        count = len(self.acked(out))
        self.wait_acks(out, count + 20, 60)
        print(f"\n20 writes acknowledged {time.monotonic() - cut:.2f}s after the cut")
        proxy.clear()
        acks = self.stop_writer(w, out)
        wait_for(lambda: len(self.member_ports()) == 3, 60, "the removed node to rejoin")
        self.assert_converged(nodes, acks)

    def test_six_clients_with_six_megabyte_values(self) -> None:
        """Six clients write 6 MB values to a chain of 3: every write commits, the chain
        never jams, and a small write afterwards is acknowledged at once."""
        self.chain(3)
        script = Path(__file__).with_name("bigwriter.py")
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), self.zk.hosts, self.root, f"big{i}", "30"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in range(6)
        ]
        outs = [p.communicate(timeout=180)[0] for p in procs]
        for p, text in zip(procs, outs, strict=True):
            self.assertEqual(p.returncode, 0, text[-2000:])
        written = sum(int(t.split()[-1]) for t in outs)
        self.assertGreater(written, 6)
        t0 = time.monotonic()
        small = subprocess.run(
            [sys.executable, str(script), self.zk.hosts, self.root, "small", "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(small.returncode, 0, small.stdout[-2000:])
        self.assertLess(time.monotonic() - t0, 30)
        # the values together pass --max-reply: list each copy's keys, not its values
        listings = [local_keys(n.port) for n in self.nodes]
        self.assertEqual(sum(1 for k in listings[-1] if k.startswith(b"big")), written)
        self.assertEqual(listings[0], listings[1])
        self.assertEqual(listings[1], listings[2])
