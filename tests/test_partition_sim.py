"""Random partitions of an in-memory chain, checked for stale reads and lost writes.

A seeded simulation on tests/fakes' ``Net`` (one clock, iosim links, the
in-memory coordinator): writes of increasing numbers to a few keys at the
head, reads at every node that would serve one, and at random the links of a
node cut or healed, a node cut off from ZooKeeper (its session expiring once
the cut lasts a session timeout) and healed, or both, the links first.  After every step:

- no node that serves reads answers a key with less than the latest write
  acknowledged for it (reads are linearizable: registers of rising values);
- reads never go back: a read never returns less than one that ended before it.

At the end everything heals, and the chain must hold every acknowledged write.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.fakes.chain import Net, Node

KEYS = (b"a", b"b", b"c")
SESSION = 2.0  # the fake's effective session timeout
STEPS = 400


class Simulation:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.net = Net()
        self.nodes = self.net.chain(3)
        self.next_value = 1
        self.acked: dict[bytes, int] = dict.fromkeys(KEYS, 0)
        self.seen: dict[bytes, int] = dict.fromkeys(KEYS, 0)
        self.problems: list[str] = []
        self.later: list[Any] = []  # cuts to come

    # faults

    def isolate(self, node: Node) -> None:
        """Links first, ZooKeeper a little later: the order that left the widest stale
        window (the predecessor gives up on the node while its lease still runs)."""
        self.net.cut_links(node)
        delay = self.rng.uniform(0.0, 2 * node.replica.link_timeout)
        self.later.append(self.net.clock.callLater(delay, self.net.cut_zk, node))

    # client operations

    def write(self) -> None:
        head = next(
            (n for n in self.nodes if n.replica.is_head and n.zk.cut_at is None), None
        )
        if head is None:
            return
        key = self.rng.choice(KEYS)
        value = self.next_value
        self.next_value += 1

        def acked(result: Any) -> Any:
            self.acked[key] = max(self.acked[key], value)
            return result

        head.write(key, str(value).encode()).addCallbacks(acked, lambda f: None)

    def read_everywhere(self) -> None:
        for node in self.nodes:
            if not node.replica.serving_reads:
                continue
            for key in KEYS:
                raw = node.replica.committed_tree.get(key)
                value = int(raw) if raw is not None else 0
                if value < self.acked[key]:
                    self.problems.append(
                        f"t={self.net.clock.seconds():.2f} {node.name} read {key!r}={value}, "
                        f"but {self.acked[key]} was acknowledged"
                    )
                if value < self.seen[key]:
                    self.problems.append(
                        f"t={self.net.clock.seconds():.2f} {node.name} read {key!r}={value} "
                        f"after a read of {self.seen[key]}"
                    )
                self.seen[key] = max(self.seen[key], value)

    # the run

    def step(self) -> None:
        r = self.rng.random()
        victim = self.rng.choice(self.nodes)
        if r < 0.45:
            self.write()
        elif r < 0.49:
            self.net.cut_links(victim)
        elif r < 0.52:
            self.isolate(victim)
        elif r < 0.58:
            self.net.heal_links()
        elif r < 0.64:
            self.net.cut_zk(victim)
        elif r < 0.72:
            self.net.heal_zk(victim, SESSION)
        for p in list(self.net.pumps):
            p.pump()
        self.net.clock.advance(self.rng.choice((0.0, 0.05, 0.1, 0.3, 0.8)))
        self.net.expire_sessions(SESSION)
        self.read_everywhere()

    def heal_all(self) -> None:
        for call in self.later:
            if call.active():
                call.cancel()
        self.net.heal_links()
        for node in self.nodes:
            self.net.heal_zk(node, SESSION)
        for _ in range(60):
            self.net.settle(rounds=20)
            self.net.clock.advance(0.5)
            self.read_everywhere()

    def run(self) -> None:
        for _ in range(STEPS):
            self.step()
        self.heal_all()


class PartitionSimulationTests(SynchronousTestCase):
    def test_random_partitions_serve_no_stale_read(self) -> None:
        """Over 30 seeded runs of random link cuts, ZooKeeper cuts and session expiries,
        no serving node answers a read older than an acknowledged write or an earlier
        read, and after healing the tail holds every acknowledged write."""
        for seed in range(30):
            sim = Simulation(seed)
            sim.run()
            self.assertEqual(sim.problems[:5], [], f"seed {seed}")
            tails = [n for n in sim.nodes if n.replica.serving_reads]
            self.assertTrue(tails, f"seed {seed}: no node serves reads after healing")
            for key, value in sim.acked.items():
                raw = tails[0].replica.committed_tree.get(key)
                held = int(raw) if raw is not None else 0
                self.assertGreaterEqual(held, value, f"seed {seed}: {key!r} lost")
