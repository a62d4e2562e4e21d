"""A node that joins holds the requests it gets until it is a member, with real processes.

The original C client follows the chain's znodes and dials a new tail the
moment its znode appears, and gives up on any ERROR.  Here a client does the
same: a ZooKeeper watch on the chain root, and for every new member a GET
sent to it at once.  Over several joins, every one is answered.
"""

from __future__ import annotations

import threading

from kazoo.recipe.watchers import ChildrenWatch

from kvtwist import wire
from kvtwist.membership import parse_address
from tests.nodes import RawClient, wait_for
from tests.test_chain import ChainCase


class JoiningNodeTests(ChainCase):
    timeout = 120

    def test_new_member_dialled_at_once_answers(self) -> None:
        """A GET sent to each new member the moment its znode appears is answered with
        the value, never with an ERROR (it waits while the node registers)."""
        (first,) = self.chain(1)
        with RawClient(first.port) as c:
            [r] = c.call(wire.req_put(b"k", b"v"))
            self.assertNotEqual(r.opcode, wire.OP_ERROR, r.error)
        lock = threading.Lock()
        seen: set[str] = set()
        answers: dict[str, bytes] = {}
        errors: list[str] = []

        def ask(name: str) -> None:
            try:
                data, _ = self.kazoo.get(f"{self.root}/{name}")
                address = parse_address(data)
                assert address is not None
                with RawClient(address[1], timeout=30) as c:
                    [reply] = c.call(wire.req_get(b"k"))
            except Exception as e:  # the node vanished: not what this test is about
                with lock:
                    errors.append(f"{name}: {e!r}")
                return
            with lock:
                if reply.opcode == wire.OP_ERROR:
                    errors.append(f"{name}: ERROR {reply.error}")
                else:
                    answers[name] = bytes(reply.values[0]) if reply.values else b""

        def changed(children: list[str]) -> None:
            for name in children:
                if name.startswith("node") and name not in seen:
                    seen.add(name)
                    threading.Thread(target=ask, args=(name,), daemon=True).start()

        with lock:
            seen.update(self.kazoo.get_children(self.root))
        ChildrenWatch(self.kazoo, self.root, changed)
        for i in range(3):
            self.start_node()
            wait_for(lambda i=i: len(answers) + len(errors) > i, 30, "the new member's answer")
        self.assertEqual(errors, [])
        self.assertEqual(sorted(answers.values()), [b"v"] * 3)
