"""The chain's membership values (kvtwist.membership): addresses, roots, sequence order."""

from __future__ import annotations

from twisted.trial import unittest

from kvtwist.membership import Member, Membership, parse_address, parse_seq, validate_root


class MembershipTests(unittest.SynchronousTestCase):
    """Parsing and validation; no ZooKeeper needed."""

    def test_parse_address_good(self) -> None:
        """Well-formed host:port data parses, including bracketed IPv6."""
        self.assertEqual(parse_address(b"127.0.0.1:7000"), ("127.0.0.1", 7000))
        self.assertEqual(parse_address(b"kv-1.example:1"), ("kv-1.example", 1))
        self.assertEqual(parse_address(b"h:65535"), ("h", 65535))
        self.assertEqual(parse_address(b"[::1]:7000"), ("::1", 7000))

    def test_parse_address_trailing_nul_and_whitespace(self) -> None:
        """A C writer's trailing NUL and surrounding whitespace are accepted."""
        self.assertEqual(parse_address(b"127.0.0.1:7000\x00"), ("127.0.0.1", 7000))
        self.assertEqual(parse_address(b" 127.0.0.1:7000\n"), ("127.0.0.1", 7000))

    def test_parse_address_junk(self) -> None:
        """Junk data yields None and never raises."""
        for junk in [
            b"\xff",
            b"nohost",
            b"h:99999",
            b"",
            b":7000",
            b"h:0",
            b"h:-1",
            b"h:",
            b"h:7000x",
            b"h: 7000",
            b"a b:7000",
            b"h:7000\x00\x00",
            b"::1:7000",
            b"[zz]:7000",
            "h:\u0661".encode(),  # an Arabic-Indic digit
            None,
        ]:
            self.assertIsNone(parse_address(junk), junk)

    def test_validate_root_good(self) -> None:
        """Ordinary absolute paths are accepted and returned unchanged."""
        for path in ["/chain", "/a/b-c", "/t-0123abcd", "/x.y", "/..a", "/a/.b"]:
            self.assertEqual(validate_root(path), path)

    def test_validate_root_bad(self) -> None:
        """Paths ZooKeeper would reject (or that make no sense as a root) raise ValueError."""
        for path in [
            "",
            "chain",
            "/",
            "/chain/",
            "//a",
            "/a//b",
            "/a/./b",
            "/a/..",
            "/.",
            "/a\x00b",
            "/a\nb",
            "/a\x7fb",
            "/zookeeper",
            "/zookeeper/quota",
        ]:
            with self.assertRaises(ValueError, msg=repr(path)):
                validate_root(path)

    def test_membership_navigation(self) -> None:
        """head/tail/index/predecessor/successor follow sequence order."""
        a, b, c = (Member(f"node{i:010d}", i, ("h", 7000 + i)) for i in (1, 5, 9))
        m = Membership(config=7, members=(a, b, c))
        self.assertEqual((m.head(), m.tail()), (a, c))
        self.assertEqual(m.index(b.name), 1)
        self.assertIsNone(m.index("node0000000002"))
        self.assertEqual((m.predecessor(b.name), m.successor(b.name)), (a, c))
        self.assertIsNone(m.predecessor(a.name))
        self.assertIsNone(m.successor(c.name))
        self.assertIsNone(m.successor("nope"))
        empty = Membership(config=0, members=())
        self.assertIsNone(empty.head())
        self.assertIsNone(empty.tail())

    def test_parse_seq(self) -> None:
        """Sequence numbers come from node<digits> names; anything else is -1."""
        self.assertEqual(parse_seq("node0000000042"), 42)
        self.assertEqual(parse_seq("node"), -1)
        self.assertEqual(parse_seq("lock0000000001"), -1)
        self.assertEqual(parse_seq("node12x"), -1)
