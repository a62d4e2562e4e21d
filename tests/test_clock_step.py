"""Steps of one member's wall clock, backwards and forwards, with real processes.

The member runs with kvtwist.verify.wallclock's preload library, which moves
only that process's ``CLOCK_REALTIME``; ZooKeeper, the other members and the
machine keep the real time.  A node's timers run on a steady clock
(kvtwist.clock), so a step in either direction must not fence it, stall its
lease or its links, or lose a write.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from kvtwist.verify.wallclock import WallClock
from tests.nodes import NodeProcess, wait_for
from tests.test_chain import SESSION, ChainCase


class ClockStepTests(ChainCase):
    timeout = 180

    def test_member_survives_wall_clock_steps(self) -> None:
        """The tail's wall clock steps 120 s back, then 300 s forward, then back to
        true, while a writer runs: it stays a member under the same znode, writes go on,
        and every acknowledged write is on every copy."""
        clock = WallClock(Path(tempfile.mkdtemp(prefix="kvclock-")) / "offset")
        head = NodeProcess.member(self.zk.hosts, self.root, SESSION).start()
        self.nodes.append(head)
        wait_for(lambda: head.port in self.member_ports(), 30, "the head")
        tail = NodeProcess.member(self.zk.hosts, self.root, SESSION)
        tail.env = clock.environ()
        tail.start()
        self.nodes.append(tail)
        wait_for(lambda: tail.port in self.member_ports(), 30, "the tail")
        names = [name for name, _ in self.members()]
        w, out = self.start_writer()
        self.wait_acks(out, 20)
        for step in (-120.0, +300.0, -180.0):
            clock.step(step)
            count = len(self.acked(out))
            # several session timeouts: long enough for a watchdog or a lease
            # on the wall clock to fence the node
            until = time.monotonic() + 3 * SESSION
            while time.monotonic() < until:
                time.sleep(0.1)
            self.wait_acks(out, count + 20, 30)
            self.assertEqual([name for name, _ in self.members()], names, f"after {step:+g}s")
        acks = self.stop_writer(w, out)
        self.assertNotIn("fenced", tail.log())
        self.assert_converged(self.nodes, acks)
