"""Tests for kvtwist.tree: the persistent AVL tree behind the store."""

from __future__ import annotations

import inspect
import itertools
import math
import threading
from bisect import bisect_left
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.tree import AVLTree, Node

# Mostly a tiny alphabet so puts collide and deletes hit; sometimes arbitrary
# bytes (NUL, 0x80-0xff, invalid UTF-8) so bytewise ordering is exercised.
small_keys = st.binary(max_size=3).map(lambda b: bytes(b"abc"[x % 3] for x in b))
any_keys = st.binary(max_size=4)
keys_st = st.one_of(small_keys, small_keys, small_keys, any_keys)
values_st = st.binary(max_size=8)
limits_st = st.one_of(st.none(), st.integers(min_value=-1, max_value=6))
bounds_st = st.one_of(st.none(), keys_st)


def avl_height_bound(n: int) -> float:
    """Upper bound on AVL height for n keys (the Fibonacci-tree worst case)."""
    return 1.44 * math.log2(n + 2)


def model_range(
    model: dict[bytes, bytes], start: bytes | None, stop: bytes | None, limit: int | None
) -> list[tuple[bytes, bytes]]:
    """Reference implementation of AVLTree.range over a plain dict."""
    out = [
        (k, model[k])
        for k in sorted(model)
        if (start is None or k >= start) and (stop is None or k < stop)
    ]
    if limit is not None and limit > 0:
        out = out[:limit]
    return out


def assert_matches(case: SynchronousTestCase, tree: AVLTree, model: dict[bytes, bytes]) -> None:
    """Full-content comparison of a tree against a dict model."""
    tree.check()
    ks = sorted(model)
    case.assertEqual(tree.keys(), ks)
    case.assertEqual(tree.values(), [model[k] for k in ks])
    case.assertEqual(tree.items(), [(k, model[k]) for k in ks])
    case.assertEqual(list(tree), ks)
    case.assertEqual(len(tree), len(model))
    case.assertEqual(tree.size(), len(model))


operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), keys_st, values_st),
        st.tuples(st.just("put"), keys_st, values_st),
        st.tuples(st.just("delete"), keys_st),
        st.tuples(st.just("get"), keys_st),
        st.tuples(st.just("range"), bounds_st, bounds_st, limits_st),
        st.tuples(st.just("iter"), bounds_st),
        st.tuples(st.just("ends")),
        st.tuples(st.just("scan")),
    ),
    max_size=80,
)


class TreeModelTests(SynchronousTestCase):
    """Random operation sequences compared against a dict + sorted keys model."""

    @settings(max_examples=300, deadline=None)
    @given(operations)
    def test_operations_match_model(self, ops: list[tuple[Any, ...]]) -> None:
        """Any sequence of operations behaves like a sorted dict and keeps every invariant."""
        tree = AVLTree()
        model: dict[bytes, bytes] = {}
        for op in ops:
            name = op[0]
            if name == "put":
                _, key, value = op
                self.assertEqual(tree.put(key, value), key not in model)
                model[key] = value
            elif name == "delete":
                _, key = op
                self.assertEqual(tree.delete(key), key in model)
                model.pop(key, None)
            elif name == "get":
                _, key = op
                self.assertEqual(tree.get(key), model.get(key))
                self.assertEqual(tree.get(key, b"?"), model.get(key, b"?"))
                self.assertEqual(key in tree, key in model)
            elif name == "range":
                _, start, stop, limit = op
                self.assertEqual(
                    tree.range(start, stop, limit), model_range(model, start, stop, limit)
                )
            elif name == "iter":
                _, start = op
                self.assertEqual(
                    list(tree.iter_items(start)), model_range(model, start, None, None)
                )
            elif name == "ends":
                ks = sorted(model)
                self.assertEqual(tree.first(), (ks[0], model[ks[0]]) if ks else None)
                self.assertEqual(tree.last(), (ks[-1], model[ks[-1]]) if ks else None)
            else:
                self.assertEqual(tree.items(), sorted(model.items()))
            tree.check()
            n = len(model)
            self.assertEqual(len(tree), n)
            self.assertLessEqual(tree.height(), avl_height_bound(n))
            self.assertGreaterEqual(tree.height(), math.ceil(math.log2(n + 1)))
        assert_matches(self, tree, model)


class TreeMachine(RuleBasedStateMachine):
    """Stateful model check that also keeps snapshots and re-verifies them later."""

    def __init__(self) -> None:
        super().__init__()
        self.tree = AVLTree()
        self.model: dict[bytes, bytes] = {}
        self.snapshots: list[tuple[AVLTree, dict[bytes, bytes]]] = []

    @initialize(items=st.dictionaries(keys_st, values_st, max_size=20))
    def load(self, items: dict[bytes, bytes]) -> None:
        for k, v in items.items():
            self.tree.put(k, v)
        self.model.update(items)

    @rule(key=keys_st, value=values_st)
    def put(self, key: bytes, value: bytes) -> None:
        assert self.tree.put(key, value) == (key not in self.model)
        self.model[key] = value

    @rule(key=keys_st)
    def delete(self, key: bytes) -> None:
        assert self.tree.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def delete_existing(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        assert self.tree.delete(key)
        del self.model[key]

    @rule(key=keys_st)
    def get(self, key: bytes) -> None:
        assert self.tree.get(key) == self.model.get(key)
        assert (key in self.tree) == (key in self.model)

    @rule(start=bounds_st, stop=bounds_st, limit=limits_st)
    def range(self, start: bytes | None, stop: bytes | None, limit: int | None) -> None:
        assert self.tree.range(start, stop, limit) == model_range(self.model, start, stop, limit)

    @rule()
    def ends(self) -> None:
        ks = sorted(self.model)
        assert self.tree.first() == ((ks[0], self.model[ks[0]]) if ks else None)
        assert self.tree.last() == ((ks[-1], self.model[ks[-1]]) if ks else None)

    @rule()
    def snapshot(self) -> None:
        self.snapshots.append((self.tree.copy(), dict(self.model)))

    @invariant()
    def consistent(self) -> None:
        self.tree.check()
        ks = sorted(self.model)
        assert self.tree.keys() == ks
        assert self.tree.values() == [self.model[k] for k in ks]
        n = len(ks)
        assert self.tree.size() == n
        assert self.tree.height() <= avl_height_bound(n)

    def teardown(self) -> None:
        for snap, old in self.snapshots:
            snap.check()
            assert snap.items() == sorted(old.items())


class TreeStatefulTests(SynchronousTestCase):
    def test_state_machine(self) -> None:
        """Interleaved updates, reads and snapshots stay equal to the model at every step."""
        run_state_machine_as_test(
            TreeMachine,
            settings=settings(max_examples=100, stateful_step_count=50, deadline=None),
        )


class TreeBasicsTests(SynchronousTestCase):
    def test_empty_tree(self) -> None:
        """An empty tree answers every read with its empty value and passes check()."""
        t = AVLTree()
        t.check()
        self.assertEqual(len(t), 0)
        self.assertEqual(t.size(), 0)
        self.assertEqual(t.height(), 0)
        self.assertIsNone(t.get(b"a"))
        self.assertEqual(t.get(b"a", b"d"), b"d")
        self.assertNotIn(b"a", t)
        self.assertEqual(list(t), [])
        self.assertEqual(t.keys(), [])
        self.assertEqual(t.values(), [])
        self.assertEqual(t.items(), [])
        self.assertEqual(list(t.iter_items()), [])
        self.assertEqual(list(t.iter_items(b"a")), [])
        self.assertEqual(t.range(), [])
        self.assertEqual(t.range(b"a", b"b", 3), [])
        self.assertIsNone(t.first())
        self.assertIsNone(t.last())
        self.assertEqual(len(t.copy()), 0)

    def test_single_key(self) -> None:
        """One key gives height 1 and is both first and last."""
        t = AVLTree()
        self.assertTrue(t.put(b"k", b"v"))
        self.assertEqual(t.height(), 1)
        self.assertEqual(t.first(), (b"k", b"v"))
        self.assertEqual(t.last(), (b"k", b"v"))
        t.check()

    def test_delete_missing_returns_false(self) -> None:
        """Deleting an absent key returns False and leaves the tree (even its root) untouched."""
        t = AVLTree()
        self.assertFalse(t.delete(b"x"))
        for k in (b"b", b"d", b"f"):
            t.put(k, k)
        root = t._root
        for k in [b"a", b"c", b"e", b"g", b""]:
            self.assertFalse(t.delete(k))
        self.assertIs(t._root, root)
        self.assertEqual(t.keys(), [b"b", b"d", b"f"])
        self.assertTrue(t.delete(b"d"))
        self.assertFalse(t.delete(b"d"))
        self.assertEqual(len(t), 2)
        t.check()

    def test_put_existing_replaces(self) -> None:
        """Putting an existing key returns False, replaces the value and keeps the size."""
        t = AVLTree()
        self.assertTrue(t.put(b"a", b"1"))
        self.assertTrue(t.put(b"b", b"2"))
        self.assertFalse(t.put(b"a", b"3"))
        self.assertEqual(t.get(b"a"), b"3")
        self.assertEqual(len(t), 2)
        self.assertFalse(t.put(b"b", b""))
        self.assertEqual(t.get(b"b"), b"")
        self.assertIn(b"b", t)
        t.check()

    def test_replace_copies_path(self) -> None:
        """Replacing a value publishes a new root, so an earlier copy keeps the old value."""
        t = AVLTree()
        for i in range(100):
            t.put(f"k{i:03d}".encode(), b"old")
        snap = t.copy()
        root = t._root
        t.put(b"k050", b"new")
        self.assertIsNot(t._root, root)
        self.assertEqual(snap.get(b"k050"), b"old")
        self.assertEqual(t.get(b"k050"), b"new")

    def test_bytewise_ordering(self) -> None:
        """Keys sort bytewise: NUL first, 0xff last, and UTF-8 text in code point order."""
        text = ["a", "B", "\uffff", "\U00010000", "\U0001f600", "é", "e\u0301", "ab"]
        keys = [b"", b"\x00", b"\xff", b"caf\xe9", b"\x7f", *(k.encode() for k in text)]
        t = AVLTree()
        for k in keys:
            t.put(k, k)
        self.assertEqual(t.keys(), sorted(keys))
        self.assertEqual(t.first(), (b"", b""))
        self.assertEqual(t.last(), (b"\xff", b"\xff"))
        utf8 = [k.encode() for k in sorted(text)]  # code point order is UTF-8 byte order
        self.assertEqual([k for k in t.keys() if k in utf8], utf8)
        self.assertEqual(t.range(b"\xc3", None), [(k, k) for k in sorted(keys) if k >= b"\xc3"])
        t.check()

    def test_contains_non_bytes(self) -> None:
        """Membership tests with a key that is not bytes answer False instead of raising."""
        t = AVLTree()
        t.put(b"1", b"x")
        self.assertNotIn(1, t)
        self.assertNotIn("1", t)

    def test_node_has_no_dict(self) -> None:
        """Nodes use __slots__ (no per-node __dict__), keeping 10^6 keys affordable."""
        t = AVLTree()
        t.put(b"a", b"b")
        self.assertEqual(Node.__slots__, ("key", "value", "left", "right", "height"))
        self.assertFalse(hasattr(t._root, "__dict__"))


class TreeCheckTests(SynchronousTestCase):
    """check() must actually catch each kind of corruption."""

    def test_check_detects_order(self) -> None:
        """A left child larger than its parent is reported as a BST order violation."""
        t = AVLTree()
        t._root = Node(b"b", b"", Node(b"c", b"", None, None, 1), None, 2)
        t._size = 2
        self.assertRaisesRegex(AssertionError, "order", t.check)

    def test_check_detects_duplicate(self) -> None:
        """Equal keys in parent and child violate strict ordering."""
        t = AVLTree()
        t._root = Node(b"b", b"", None, Node(b"b", b"", None, None, 1), 2)
        t._size = 2
        self.assertRaisesRegex(AssertionError, "order", t.check)

    def test_check_detects_imbalance(self) -> None:
        """A three-node chain is reported as an AVL balance violation."""
        t = AVLTree()
        c = Node(b"c", b"", None, None, 1)
        t._root = Node(b"a", b"", None, Node(b"b", b"", None, c, 2), 3)
        t._size = 3
        self.assertRaisesRegex(AssertionError, "balance", t.check)

    def test_check_detects_height(self) -> None:
        """A wrong stored height is reported."""
        t = AVLTree()
        t._root = Node(b"a", b"", None, None, 2)
        t._size = 1
        self.assertRaisesRegex(AssertionError, "height", t.check)

    def test_check_detects_size(self) -> None:
        """A stored size that disagrees with the node count is reported."""
        t = AVLTree()
        t.put(b"a", b"")
        t._size = 5
        self.assertRaisesRegex(AssertionError, "size", t.check)


class TreePersistenceTests(SynchronousTestCase):
    def test_copy_is_isolated_both_ways(self) -> None:
        """A copy keeps its contents while the original changes heavily, and vice versa."""
        t = AVLTree()
        for i in range(0, 2000, 2):
            t.put(f"k{i:05d}".encode(), b"v0")
        before = t.items()
        snap = t.copy()
        self.assertIs(snap._root, t._root)  # O(1): shares structure
        for i in range(0, 2000, 3):
            t.put(f"k{i:05d}".encode(), b"v1")
        for i in range(0, 2000, 4):
            t.delete(f"k{i:05d}".encode())
        after = t.items()
        t.check()
        snap.check()
        self.assertEqual(snap.items(), before)
        self.assertEqual(len(snap), len(before))
        self.assertNotEqual(after, before)

        for i in range(0, 2000, 5):
            snap.put(f"k{i:05d}".encode(), b"v2")
        for k, _ in before[::3]:
            snap.delete(k)
        snap.check()
        t.check()
        self.assertEqual(t.items(), after)

    def test_iterator_sees_one_version(self) -> None:
        """An iteration already under way keeps walking the version it started on."""
        t = AVLTree()
        for i in range(500):
            t.put(f"k{i:04d}".encode(), b"a")
        expected = t.items()
        it = t.iter_items()
        got = [next(it)]
        for i in range(500):
            if i % 2:
                t.delete(f"k{i:04d}".encode())
            else:
                t.put(f"k{i:04d}".encode(), b"b")
        t.put(b"k0000x", b"new")
        got.extend(it)
        self.assertEqual(got, expected)

    def test_concurrent_reader_sees_whole_versions(self) -> None:
        """A reader thread scanning while a writer inserts only ever sees complete versions."""
        n = 3000
        names = [f"user{i:05d}".encode() for i in range(n)]
        t = AVLTree()
        done = threading.Event()
        errors: list[str] = []

        def reader() -> None:
            while not done.is_set():
                ks = t.keys()
                if ks != names[: len(ks)]:
                    errors.append(f"torn read of {len(ks)} keys")
                    return

        th = threading.Thread(target=reader)
        th.start()
        try:
            for name in names:
                t.put(name, b"v")
        finally:
            done.set()
            th.join()
        self.assertEqual(errors, [])
        self.assertEqual(t.keys(), names)


class TreeBalanceTests(SynchronousTestCase):
    n = 20000

    def _assert_balanced(self, t: AVLTree, n: int) -> None:
        t.check()
        self.assertEqual(len(t), n)
        self.assertLessEqual(t.height(), avl_height_bound(n))

    def test_sorted_inserts(self) -> None:
        """Ascending inserts keep height O(log n) (the old unbalanced tree reached height n)."""
        t = AVLTree()
        names = [f"user{i:05d}".encode() for i in range(self.n)]
        for name in names:
            t.put(name, b"v")
        self._assert_balanced(t, self.n)
        self.assertEqual(t.keys(), names)

    def test_reverse_inserts(self) -> None:
        """Descending inserts keep height O(log n) too."""
        t = AVLTree()
        for i in reversed(range(self.n)):
            t.put(f"user{i:05d}".encode(), b"v")
        self._assert_balanced(t, self.n)
        self.assertEqual(t.first(), (b"user00000", b"v"))
        self.assertEqual(t.last(), (f"user{self.n - 1:05d}".encode(), b"v"))

    def test_sorted_deletes(self) -> None:
        """Deleting from one end keeps the tree balanced all the way down to empty."""
        t = AVLTree()
        n = 2000
        for i in range(n):
            t.put(f"user{i:05d}".encode(), b"v")
        for i in range(n):
            self.assertTrue(t.delete(f"user{i:05d}".encode()))
            if i % 97 == 0:
                self._assert_balanced(t, n - i - 1)
        self.assertEqual(len(t), 0)
        self.assertEqual(t.height(), 0)
        t.check()


class TreeScanTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = AVLTree()
        self.names = [f"k{i:03d}".encode() for i in range(0, 200, 2)]  # k000, k002, ..., k198
        for name in self.names:
            self.t.put(name, name)

    def pairs(self, names: list[bytes]) -> list[tuple[bytes, bytes]]:
        return [(k, k) for k in names]

    def test_iter_items_is_lazy(self) -> None:
        """iter_items is a generator that can yield its first items without a full scan."""
        it = self.t.iter_items(b"k050")
        self.assertTrue(inspect.isgenerator(it))
        self.assertEqual(list(itertools.islice(it, 3)), self.pairs([b"k050", b"k052", b"k054"]))

    def test_iter_items_start(self) -> None:
        """iter_items(start) begins at the first key >= start, present or not."""
        starts = [b"", b"k", b"k000", b"k001", b"k099", b"k100", b"k197", b"k198", b"k199", b"z"]
        for start in starts:
            i = bisect_left(self.names, start)
            self.assertEqual(list(self.t.iter_items(start)), self.pairs(self.names[i:]), start)
        self.assertEqual(list(self.t.iter_items()), self.pairs(self.names))

    def test_iter_keys(self) -> None:
        """Iterating the tree yields keys ascending."""
        self.assertEqual(list(self.t), self.names)
        self.assertEqual(list(iter(self.t)), self.t.keys())

    def test_range_limit(self) -> None:
        """A positive limit caps the result; None, 0 and negatives mean no limit."""
        self.assertEqual(self.t.range(limit=3), self.pairs(self.names[:3]))
        self.assertEqual(self.t.range(b"k011", limit=2), self.pairs([b"k012", b"k014"]))
        self.assertEqual(self.t.range(b"k010", b"k014", 10), self.pairs([b"k010", b"k012"]))
        self.assertEqual(self.t.range(limit=1000), self.pairs(self.names))
        for unlimited in (None, 0, -5):
            self.assertEqual(self.t.range(limit=unlimited), self.pairs(self.names))

    def test_range_start_only(self) -> None:
        """range(start) returns every key >= start."""
        tail = self.pairs([b"k190", b"k192", b"k194", b"k196", b"k198"])
        self.assertEqual(self.t.range(b"k190"), tail)
        self.assertEqual(self.t.range(b"k199"), [])

    def test_range_stop_only(self) -> None:
        """range(stop=...) returns every key < stop (stop is exclusive)."""
        self.assertEqual(self.t.range(stop=b"k006"), self.pairs([b"k000", b"k002", b"k004"]))
        self.assertEqual(self.t.range(None, b"k000"), [])

    def test_range_start_not_before_stop(self) -> None:
        """start >= stop gives an empty result."""
        self.assertEqual(self.t.range(b"k010", b"k010"), [])
        self.assertEqual(self.t.range(b"k050", b"k010"), [])
        self.assertEqual(self.t.range(b"k010", b"k010", 5), [])

    def test_range_half_open(self) -> None:
        """range includes start and excludes stop."""
        self.assertEqual(self.t.range(b"k010", b"k016"), self.pairs([b"k010", b"k012", b"k014"]))


class FromSortedTests(SynchronousTestCase):
    def test_builds_valid_tree(self) -> None:
        """from_sorted gives a valid AVL tree with the same items, for every size up to 300."""
        for n in range(300):
            items = [(f"k{i:04d}".encode(), str(i).encode()) for i in range(n)]
            t = AVLTree.from_sorted([k for k, _ in items], [v for _, v in items])
            t.check()
            self.assertEqual(t.items(), items)
            self.assertEqual(len(t), n)

    def test_rejects_unsorted(self) -> None:
        """Unsorted or duplicate keys are refused rather than building a broken tree."""
        with self.assertRaises(ValueError):
            AVLTree.from_sorted([b"b", b"a"], [b"", b""])
        with self.assertRaises(ValueError):
            AVLTree.from_sorted([b"a", b"a"], [b"", b""])
        with self.assertRaises(ValueError):
            AVLTree.from_sorted([b"a"], [])

    def test_updatable_afterwards(self) -> None:
        """A tree built from sorted items takes puts and deletes like any other."""
        t = AVLTree.from_sorted([f"k{i:03d}".encode() for i in range(100)], [b""] * 100)
        t.put(b"k0505", b"x")
        t.delete(b"k000")
        t.check()
        self.assertEqual(len(t), 100)
