"""ZooKeeper ACLs (--zk-auth): the adapter's znodes, a real node, and kvtwist-admin, against
a real ZooKeeper; kazoo clients without credentials play the stranger."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Generator
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import Permissions
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest

from kvtwist import admin, wire
from kvtwist.chain.record import ChainRecord
from kvtwist.client.chain import ChainClient
from kvtwist.membership import parse_address
from kvtwist.tap import Options
from kvtwist.zk import ZooKeeper, digest_acl, open_to_writes
from tests.nodes import NodeProcess, RawClient, wait_for
from tests.zkserver import shared_zookeeper, unique_root, zookeeper_available

AUTH = "kvnode:s3cret-password"
SESSION = 2.0


def acl_of(client: KazooClient, path: str) -> dict[str, int]:
    """``{"digest:kvnode:...": perms, "world:anyone": perms}`` for ``path``."""
    acl, _stat = client.get_acls(path)
    return {f"{a.id.scheme}:{a.id.id}": a.perms for a in acl}


class DigestACLTests(unittest.SynchronousTestCase):
    def test_acl_shape(self) -> None:
        """Everything for the digest identity, READ only for anyone."""
        acl = {f"{a.id.scheme}:{a.id.id.split(':')[0]}": a.perms for a in digest_acl(AUTH)}
        self.assertEqual(acl, {"digest:kvnode": Permissions.ALL, "world:anyone": Permissions.READ})
        self.assertFalse(open_to_writes(digest_acl(AUTH)))

    def test_bad_forms(self) -> None:
        """USER:PASSWORD needs both parts; the option names itself in the error."""
        for bad in ("nocolon", ":pw", "user:"):
            with self.assertRaises(ValueError):
                digest_acl(bad)
        with self.assertRaises(usage.UsageError) as cm:
            Options().parseOptions(["--zk", "127.0.0.1:2181", "--zk-auth", "nocolon"])
        self.assertIn("--zk-auth", str(cm.exception))


class StrangerMixin:
    """A real ZooKeeper and a kazoo client without credentials."""

    def start_zk(self: Any) -> None:
        why = zookeeper_available()
        if why:
            raise unittest.SkipTest(why)
        self.zk = shared_zookeeper()
        self.root = unique_root()
        self.stranger = KazooClient(self.zk.hosts)
        self.stranger.start(15)
        self.addCleanup(self.stranger.stop)

    def assert_protected(self: Any, path: str) -> None:
        """``path`` reads for anyone, changes only for the digest identity."""
        perms = acl_of(self.stranger, path)
        self.assertEqual(perms.get("world:anyone"), Permissions.READ, f"{path}: {perms}")
        digest = [p for who, p in perms.items() if who.startswith("digest:kvnode:")]
        self.assertEqual(digest, [Permissions.ALL], f"{path}: {perms}")


class AdapterACLTests(StrangerMixin, unittest.TestCase):
    """Every kind of znode the adapter creates, checked with a stranger's kazoo client."""

    def setUp(self) -> None:
        self.start_zk()

    @inlineCallbacks
    def test_every_znode_protected(self) -> Generator[Deferred[Any], Any, None]:
        """Root, member, record, waiting and lock znodes: read by all, changed by the owner."""
        zk = ZooKeeper(reactor, self.zk.hosts, self.root, SESSION, auth=AUTH)
        yield zk.start()
        self.addCleanup(zk.stop)
        name = yield zk.register("127.0.0.1:7001")
        ok = yield zk.write_record(b"record", -1)
        self.assertTrue(ok)
        yield zk.advertise_waiting("w1", b"{}")
        release = yield zk.lock("join", timeout=10)
        self.addCleanup(release)
        stranger = self.stranger
        lock_children = yield deferToThread(stranger.get_children, zk.lock_path("join"))
        paths = [
            self.root,
            f"{self.root}/{name}",
            zk.sibling_path("state"),
            zk.sibling_path("waiting"),
            f"{zk.sibling_path('waiting')}/w1",
            zk.lock_path("join"),
            f"{zk.lock_path('join')}/{lock_children[0]}",
        ]
        for path in paths:
            yield deferToThread(self.assert_protected, path)
        # and what a stranger may do: read, but change nothing
        members = yield deferToThread(stranger.get_children, self.root)
        self.assertEqual(members, [name])
        data, _ = yield deferToThread(stranger.get, f"{self.root}/{name}")
        self.assertEqual(parse_address(data), ("127.0.0.1", 7001))
        for change in (
            lambda: stranger.delete(f"{self.root}/{name}"),
            lambda: stranger.create(f"{self.root}/node9999999999", b"127.0.0.1:6666"),
            lambda: stranger.set(zk.sibling_path("state"), b"forged"),
            lambda: stranger.delete(f"{zk.sibling_path('waiting')}/w1"),
        ):
            with self.assertRaises(NoAuthError):
                yield deferToThread(change)
        data, _ = yield deferToThread(stranger.get, zk.sibling_path("state"))
        self.assertEqual(data, b"record")

    @inlineCallbacks
    def start_reporting_open_znodes(self) -> Generator[Deferred[Any], Any, list[str]]:
        """Start a protected adapter; the paths it says anyone may change."""
        warnings: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "lets anyone change it" in str(event.get("log_format", "")):
                warnings.append(event["path"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        zk = ZooKeeper(reactor, self.zk.hosts, self.root, SESSION, auth=AUTH)
        yield zk.start()
        self.addCleanup(zk.stop)
        return warnings

    @inlineCallbacks
    def test_open_root_reported(self) -> Generator[Deferred[Any], Any, None]:
        """A root created by someone without --zk-auth stays open; the node says so."""
        yield deferToThread(self.stranger.ensure_path, self.root)
        warnings = yield self.start_reporting_open_znodes()
        self.assertEqual(warnings, [self.root])

    @inlineCallbacks
    def test_open_record_and_join_lock_reported(self) -> Generator[Deferred[Any], Any, None]:
        """A protected root beside a chain record or join lock that anyone may change is
        no protection: the node names each open one at start."""
        first = ZooKeeper(reactor, self.zk.hosts, self.root, SESSION, auth=AUTH)
        yield first.start()
        yield first.stop()
        record = f"{self.root}-state"
        lock = f"{self.root}-join"
        yield deferToThread(self.stranger.create, record, b"record")
        yield deferToThread(self.stranger.ensure_path, lock)
        warnings = yield self.start_reporting_open_znodes()
        self.assertEqual(sorted(warnings), sorted([record, lock]))

    @inlineCallbacks
    def test_chain_client_creates_nothing(self) -> Generator[Deferred[Any], Any, None]:
        """The chain client only reads: on a root no node made yet it finds no members and
        leaves the root to the first node (which gives it the ACL)."""
        client = yield ChainClient.connect(reactor, self.zk.hosts, self.root, deadline=5)
        self.addCleanup(client.close)
        assert client.view is not None
        self.assertEqual(len(client.view), 0)
        exists = yield deferToThread(self.stranger.exists, self.root)
        self.assertIsNone(exists)

    @inlineCallbacks
    def test_without_auth_open(self) -> Generator[Deferred[Any], Any, None]:
        """Without --zk-auth nothing changes: znodes are open to all, as before."""
        zk = ZooKeeper(reactor, self.zk.hosts, self.root, SESSION)
        yield zk.start()
        self.addCleanup(zk.stop)
        name = yield zk.register("127.0.0.1:7001")
        yield deferToThread(self.stranger.delete, f"{self.root}/{name}")
        members = yield deferToThread(self.stranger.get_children, self.root)
        self.assertEqual(members, [])


class NodeACLTests(StrangerMixin, unittest.SynchronousTestCase):
    """Real nodes run with --zk-auth."""

    def setUp(self) -> None:
        self.start_zk()

    def node(self) -> NodeProcess:
        n = NodeProcess.member(
            self.zk.hosts, self.root, SESSION, extra_args=["--in-memory", "--zk-auth", AUTH]
        ).start()
        self.addCleanup(n.cleanup)
        return n

    def members(self) -> list[str]:
        s = self.stranger
        return sorted(s.get_children(self.root)) if s.exists(self.root) else []

    def test_stranger_cannot_change_the_chain(self) -> None:
        """A client without auth reads the members but cannot delete one or write the record;
        the chain keeps serving."""
        head = self.node()
        wait_for(lambda: len(self.members()) == 1, 30, "the head to register")
        tail = self.node()
        wait_for(lambda: len(self.members()) == 2, 30, "the tail to register")
        first, second = self.members()
        data, _ = self.stranger.get(f"{self.root}/{second}")
        self.assertEqual(parse_address(data), ("127.0.0.1", tail.port))
        with self.assertRaises(NoAuthError):
            self.stranger.delete(f"{self.root}/{first}")
        record = f"{self.root}-state"
        wait_for(lambda: self.stranger.exists(record) is not None, 30, "the chain record")
        with self.assertRaises(NoAuthError):
            self.stranger.set(record, b"forged")
        for path in (self.root, f"{self.root}/{first}", record):
            self.assert_protected(path)
        self.assertEqual(self.members(), [first, second])
        with RawClient(head.port) as c:
            reply = c.one(wire.req_put(b"k", b"v"))
            self.assertEqual(reply.opcode, wire.OP_PUT + 1, reply.error)
        with RawClient(tail.port) as c:
            self.assertEqual(c.get(b"k"), b"v")


class AdminACLTests(StrangerMixin, unittest.SynchronousTestCase):
    """kvtwist-admin force-start on protected znodes."""

    def setUp(self) -> None:
        self.start_zk()
        owner = KazooClient(
            self.zk.hosts, auth_data=[("digest", AUTH)], default_acl=digest_acl(AUTH)
        )
        owner.start(15)
        self.addCleanup(owner.stop)
        owner.ensure_path(self.root)
        owner.create(f"{self.root}-state", ChainRecord().encode(), makepath=True)
        info = {"address": "127.0.0.1:7001", "last_op": 5, "epoch": 1, "name": "node0000000001"}
        owner.create(f"{self.root}-waiting/w1", json.dumps(info).encode(), makepath=True)

    def admin(self, *args: str) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = admin.main(["--zk", self.zk.hosts, "--zk-root", self.root, *args])
        return status, err.getvalue()

    def test_force_start_needs_auth(self) -> None:
        """Without --zk-auth force-start is refused with one line; with it, it goes through."""
        status, err = self.admin("force-start")
        self.assertEqual(status, 1)
        self.assertIn("--zk-auth", err)
        status, err = self.admin("--zk-auth", AUTH, "force-start")
        self.assertEqual((status, err), (0, ""))
        data, _ = self.stranger.get(f"{self.root}-state")
        self.assertIn(b"w1", data)
