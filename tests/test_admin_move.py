"""``kvtwist-admin cluster move``, ``drain`` and ``undrain`` as processes against a real
ZooKeeper: they write the request record (never the map), refuse what cannot be
met with status 1 and a reason, and ``cluster status`` shows what is pending."""

from __future__ import annotations

import json
import uuid

from kvtwist.cluster.requests import Move, Requests
from kvtwist.cluster.shardmap import ClusterPaths, Server, ShardMap
from tests.test_admin_cluster import admin
from tests.zkserver import ZooKeeperCase

PLACEMENT = [("s0", "s1", "s2"), ("s1", "s2", "s3")]


class AdminMoveTests(ZooKeeperCase):
    """A cluster of four registered servers (znodes only, no processes: the
    commands need no controller to accept a request)."""

    def setUp(self) -> None:
        super().setUp()
        self.paths = ClusterPaths(f"t{uuid.uuid4().hex}")
        self.map = ShardMap.initial(3, [b"m"], PLACEMENT)
        self.kazoo.ensure_path(self.paths.root)
        self.kazoo.create(self.paths.map, self.map.encode())
        for i in range(4):
            zone = "zb" if i == 3 else f"z{i}"
            server = Server(f"s{i}", f"127.0.0.1:{7000 + i}", zone)
            self.kazoo.create(self.paths.server(server.id), server.encode(),
                              ephemeral=True, makepath=True)

    def run_admin(self, *args: str) -> tuple[int, str, str]:
        done = admin("cluster", *args[:1], self.paths.name, *args[1:], "--zk", self.zk.hosts)
        return done.returncode, done.stdout, done.stderr

    def requests(self) -> Requests:
        return Requests.decode(self.kazoo.get(self.paths.requests)[0])

    def test_move_writes_the_record_not_the_map(self) -> None:
        """An accepted move exits 0 and is in the request record, the map untouched;
        status shows it pending, in the table and in JSON."""
        code, out, err = self.run_admin("move", "c0", "--to", "s3", "--from", "s0")
        self.assertEqual(code, 0, err)
        self.assertIn("asked", out)
        self.assertEqual(self.requests(), Requests((Move("c0", "s0", "s3"),)))
        self.assertEqual(ShardMap.decode(self.kazoo.get(self.paths.map)[0]), self.map)
        code, out, err = self.run_admin("status", "-o", "json", "--timeout", "0.5")
        self.assertEqual(code, 0, err)
        body = json.loads(out)
        self.assertEqual([(m["chain"], m["from"], m["to"]) for m in body["moves"]],
                         [("c0", "s0", "s3")])
        self.assertIn("appending s3", body["moves"][0]["state"])
        code, out, err = self.run_admin("status", "--timeout", "0.5")
        self.assertIn("move        c0 s0 -> s3", out)

    def test_cancel_takes_the_move_out_of_the_record(self) -> None:
        """--cancel removes the shard's pending move (the map untouched by the admin);
        cancelling again, --cancel with --to or --from, and neither: refused."""
        self.assertEqual(self.run_admin("move", "c0", "--to", "s3", "--from", "s0")[0], 0)
        code, out, err = self.run_admin("move", "c0", "--cancel")
        self.assertEqual(code, 0, err)
        self.assertIn("cancel of the move of c0 from s0 to s3", out)
        self.assertEqual(self.requests(), Requests())
        self.assertEqual(ShardMap.decode(self.kazoo.get(self.paths.map)[0]), self.map)
        code, _, err = self.run_admin("move", "c0", "--cancel")
        self.assertEqual(code, 1)
        self.assertIn("no move of c0 is pending", err)
        for bad in (("--cancel", "--to", "s3"), ("--cancel", "--from", "s0"), ()):
            code, _, err = self.run_admin("move", "c0", *bad)
            self.assertEqual(code, 2, (bad, err))

    def test_move_refusals(self) -> None:
        """Unknown shard, unknown server, a member already, a source not a member, a
        second move of one chain, and a target sharing a zone with another member:
        each exit 1 with the reason, and the record unchanged."""
        cases = [
            (("move", "c9", "--to", "s3"), "unknown shard"),
            (("move", "c0", "--to", "s8"), "not live"),
            (("move", "c0", "--to", "s1"), "already a member"),
            (("move", "c0", "--to", "s3", "--from", "s3"), "not a member"),
        ]
        for args, words in cases:
            code, _, err = self.run_admin(*args)
            self.assertEqual(code, 1, (args, err))
            self.assertIn(words, err)
        self.assertIsNone(self.kazoo.exists(self.paths.requests))
        self.kazoo.set(self.paths.server("s3"),
                       Server("s3", "127.0.0.1:7003", "z1").encode())
        code, _, err = self.run_admin("move", "c0", "--to", "s3", "--from", "s0")
        self.assertEqual(code, 1, err)
        self.assertIn("one zone", err)
        # without --from the member in s3's zone is the one to leave
        code, out, err = self.run_admin("move", "c0", "--to", "s3", "-o", "json")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["move"], {"chain": "c0", "from": "s1", "to": "s3"})
        code, _, err = self.run_admin("move", "c0", "--to", "s3", "--from", "s2")
        self.assertEqual(code, 1, err)
        self.assertIn("pending already", err)
        code, _, err = self.run_admin("move", "c0", "--to", "a/b")
        self.assertEqual(code, 2, err)

    def test_drain_undrain_and_wait_deadline(self) -> None:
        """drain adds the server to the draining set (twice is the same request), a
        second drain that would leave fewer than R servers is refused, a move to a
        draining server is refused, --wait with no controller to act gives up at its
        deadline with status 1, and undrain ends the drain."""
        code, _, err = self.run_admin("drain", "s1")
        self.assertEqual(code, 0, err)
        code, out, err = self.run_admin("drain", "s1")
        self.assertEqual(code, 0, err)
        self.assertIn("asked already", out)
        self.assertEqual(self.requests().draining, ("s1",))
        code, _, err = self.run_admin("drain", "s2")
        self.assertEqual(code, 1, err)
        self.assertIn("would leave", err)
        code, _, err = self.run_admin("drain", "s9")
        self.assertEqual(code, 1, err)
        self.assertIn("unknown server", err)
        code, out, err = self.run_admin("status", "--timeout", "0.5")
        self.assertIn("draining    s1: still in c0,c1", out)
        code, _, err = self.run_admin("undrain", "s1")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.requests(), Requests())
        code, _, err = self.run_admin("undrain", "s1")
        self.assertEqual(code, 1, err)
        self.assertIn("not draining", err)
        code, out, err = self.run_admin("drain", "s0", "--wait", "--wait-timeout", "1",
                                        "-o", "json")
        self.assertEqual(code, 1, err)
        self.assertFalse(json.loads(out)["done"])
        code, _, err = self.run_admin("move", "c1", "--to", "s0")
        self.assertEqual(code, 1, err)
        self.assertIn("draining", err)

    def test_unreadable_record_is_not_overwritten(self) -> None:
        """A record of another format is refused, not overwritten, and status says so."""
        self.kazoo.create(self.paths.requests, b'{"format": 9}')
        code, _, err = self.run_admin("drain", "s1")
        self.assertEqual(code, 1, err)
        self.assertIn("format", err)
        self.assertEqual(self.kazoo.get(self.paths.requests)[0], b'{"format": 9}')
        code, out, err = self.run_admin("status", "--timeout", "0.5")
        self.assertEqual(code, 0, err)
        self.assertIn("unreadable", out)
