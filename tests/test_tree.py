"""Tests for kvtwist.tree: the persistent B+tree behind the store."""

from __future__ import annotations

import gc
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

from kvtwist.tree import BTree, _Leaf, freeze_collector

# Keys are bytes, as in the store.  Mostly a tiny alphabet so puts collide and
# deletes hit; sometimes arbitrary bytes (NUL, 0x80-0xff, invalid UTF-8) so
# bytewise ordering is exercised.
small_keys = st.text(alphabet="abc", max_size=3).map(str.encode)
any_keys = st.binary(max_size=4)
keys_st = st.one_of(small_keys, small_keys, small_keys, any_keys)
values_st = st.binary(max_size=8)
limits_st = st.one_of(st.none(), st.integers(min_value=-1, max_value=6))
bounds_st = st.one_of(st.none(), keys_st)


class TinyTree(BTree):
    """Nodes of a few entries, so a few dozen keys already make several levels."""

    LEAF_MAX = 4
    INNER_MAX = 4


class OddTree(BTree):
    """Other small widths: leaves of at most 3 keys, inner nodes of at most 5 children."""

    LEAF_MAX = 3
    INNER_MAX = 5


def height_bounds(tree: BTree) -> tuple[int, int]:
    """The least and most height() can be for a tree of this size and depth.

    No binary search tree over n keys is lower than ceil(log2(n + 1)); ours
    is at most a full node's binary search per level.
    """
    n = len(tree)
    lo = math.ceil(math.log2(n + 1))
    hi = tree.depth() * (tree.INNER_MAX - 1).bit_length() + tree.LEAF_MAX.bit_length()
    return lo, hi


def depth_bound(tree: BTree) -> float:
    """Most inner levels a tree of len(tree) keys may have when every node is half full."""
    n = len(tree)
    leaves = max(1.0, n / (tree.LEAF_MAX // 2))
    return 1 + math.log(leaves) / math.log(tree.INNER_MAX // 2)


def assert_shape(case: SynchronousTestCase, tree: BTree) -> None:
    """Invariants, O(log n) depth and a height within its bounds."""
    tree.check()
    case.assertLessEqual(tree.depth(), depth_bound(tree))
    lo, hi = height_bounds(tree)
    case.assertGreaterEqual(tree.height(), lo)
    case.assertLessEqual(tree.height(), hi)


def model_range(
    model: dict[bytes, bytes], start: bytes | None, stop: bytes | None, limit: int | None
) -> list[tuple[bytes, bytes]]:
    """Reference implementation of BTree.range over a plain dict."""
    out = [
        (k, model[k])
        for k in sorted(model)
        if (start is None or k >= start) and (stop is None or k < stop)
    ]
    if limit is not None and limit > 0:
        out = out[:limit]
    return out


def assert_matches(case: SynchronousTestCase, tree: BTree, model: dict[bytes, bytes]) -> None:
    """Full-content comparison of a tree against a dict model."""
    assert_shape(case, tree)
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
        self.run_model(BTree(), ops)

    @settings(max_examples=300, deadline=None)
    @given(operations)
    def test_operations_match_model_tiny_nodes(self, ops: list[tuple[Any, ...]]) -> None:
        """With nodes of four entries the same sequences split and merge nodes on every level."""
        self.run_model(TinyTree(), ops)

    @settings(max_examples=200, deadline=None)
    @given(operations)
    def test_operations_match_model_odd_widths(self, ops: list[tuple[Any, ...]]) -> None:
        """Odd node widths (leaves of 3, inner nodes of 5) keep the model too."""
        self.run_model(OddTree(), ops)

    def run_model(self, tree: BTree, ops: list[tuple[Any, ...]]) -> None:
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
            assert_shape(self, tree)
            self.assertEqual(len(tree), len(model))
        assert_matches(self, tree, model)


class TreeMachine(RuleBasedStateMachine):
    """Stateful model check that also keeps snapshots and re-verifies them later."""

    def __init__(self) -> None:
        super().__init__()
        self.tree: BTree = TinyTree()
        self.model: dict[bytes, bytes] = {}
        self.snapshots: list[tuple[BTree, dict[bytes, bytes], list[tuple[bytes, bytes]]]] = []
        #: iterations begun at a snapshot, with what they must yield in all
        self.iters: list[tuple[Any, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]] = []

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
        # an iteration started now must also finish on this version
        it = self.tree.iter_items()
        first = list(itertools.islice(it, 2))
        self.snapshots.append((self.tree.copy(), dict(self.model), first))
        self.iters.append((it, first, sorted(self.model.items())))

    @invariant()
    def consistent(self) -> None:
        self.tree.check()
        ks = sorted(self.model)
        assert self.tree.keys() == ks
        assert self.tree.values() == [self.model[k] for k in ks]
        n = len(ks)
        assert self.tree.size() == n
        assert self.tree.depth() <= depth_bound(self.tree)
        lo, hi = height_bounds(self.tree)
        assert lo <= self.tree.height() <= hi
        for snap, old, _ in self.snapshots:
            assert len(snap) == len(old)
            assert snap.keys() == sorted(old)

    def teardown(self) -> None:
        for snap, old, _ in self.snapshots:
            snap.check()
            assert snap.items() == sorted(old.items())
            for k, v in old.items():
                assert snap.get(k) == v
        for it, first, whole in self.iters:
            assert first + list(it) == whole


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
        t = BTree()
        t.check()
        self.assertEqual(len(t), 0)
        self.assertEqual(t.size(), 0)
        self.assertEqual(t.height(), 0)
        self.assertIsNone(t.get("a"))
        self.assertEqual(t.get("a", b"d"), b"d")
        self.assertNotIn("a", t)
        self.assertEqual(list(t), [])
        self.assertEqual(t.keys(), [])
        self.assertEqual(t.values(), [])
        self.assertEqual(t.items(), [])
        self.assertEqual(list(t.iter_items()), [])
        self.assertEqual(list(t.iter_items("a")), [])
        self.assertEqual(t.range(), [])
        self.assertEqual(t.range("a", "b", 3), [])
        self.assertIsNone(t.first())
        self.assertIsNone(t.last())
        self.assertEqual(len(t.copy()), 0)

    def test_bounded_listing(self) -> None:
        """listing() is keys() or values() while their sizes fit, and None past the bound."""
        t = BTree.from_sorted([b"k%04d" % i for i in range(1000)], [b"vv"] * 1000)
        self.assertEqual(t.listing(False, 5000), t.keys())
        self.assertEqual(t.listing(True, 2000, overhead=0), t.values())
        self.assertIsNone(t.listing(True, 1999))
        self.assertIsNone(t.listing(False, 5000, overhead=1))
        self.assertEqual(BTree().listing(True, 0), [])

    def test_single_key(self) -> None:
        """One key gives height 1 and is both first and last."""
        t = BTree()
        self.assertTrue(t.put("k", b"v"))
        self.assertEqual(t.height(), 1)
        self.assertEqual(t.first(), ("k", b"v"))
        self.assertEqual(t.last(), ("k", b"v"))
        t.check()

    def test_delete_missing_returns_false(self) -> None:
        """Deleting an absent key returns False and leaves the tree (even its root) untouched."""
        t = BTree()
        self.assertFalse(t.delete("x"))
        for k in "bdf":
            t.put(k, k.encode())
        state = t._state
        for k in ["a", "c", "e", "g", ""]:
            self.assertFalse(t.delete(k))
        self.assertIs(t._state, state)
        self.assertEqual(t.keys(), ["b", "d", "f"])
        self.assertTrue(t.delete("d"))
        self.assertFalse(t.delete("d"))
        self.assertEqual(len(t), 2)
        t.check()

    def test_put_existing_replaces(self) -> None:
        """Putting an existing key returns False, replaces the value and keeps the size."""
        t = BTree()
        self.assertTrue(t.put("a", b"1"))
        self.assertTrue(t.put("b", b"2"))
        self.assertFalse(t.put("a", b"3"))
        self.assertEqual(t.get("a"), b"3")
        self.assertEqual(len(t), 2)
        self.assertFalse(t.put("b", b""))
        self.assertEqual(t.get("b"), b"")
        self.assertIn("b", t)
        t.check()

    def test_replace_copies_path(self) -> None:
        """Replacing a value publishes a new root, so an earlier copy keeps the old value."""
        t = BTree()
        for i in range(100):
            t.put(f"k{i:03d}", b"old")
        snap = t.copy()
        state = t._state
        t.put("k050", b"new")
        self.assertIsNot(t._state[0], state[0])
        self.assertEqual(snap.get("k050"), b"old")
        self.assertEqual(t.get("k050"), b"new")

    def test_code_point_ordering(self) -> None:
        """Keys sort by code point (plain str <), including astral vs BMP characters."""
        keys = ["", "a", "B", "\uffff", "\U00010000", "\U0001f600", "é", "e\u0301", "\x00", "ab"]
        t = BTree()
        for k in keys:
            t.put(k, k.encode("utf-8"))
        self.assertEqual(t.keys(), sorted(keys))
        self.assertEqual(t.first(), ("", b""))
        self.assertEqual(t.last(), ("\U0001f600", "\U0001f600".encode()))
        self.assertEqual(t.range("\uffff", None), [(k, k.encode()) for k in sorted(keys)[-3:]])
        t.check()

    def test_contains_non_str(self) -> None:
        """Membership tests with a non-str key answer False instead of raising."""
        t = BTree()
        t.put("1", b"x")
        self.assertNotIn(1, t)

    def test_bytewise_ordering(self) -> None:
        """Keys sort bytewise: NUL first, 0xff last, and UTF-8 text in code point order."""
        text = ["a", "B", "\uffff", "\U00010000", "\U0001f600", "é", "e\u0301", "ab"]
        keys = [b"", b"\x00", b"\xff", b"caf\xe9", b"\x7f", *(k.encode() for k in text)]
        t = TinyTree()
        for k in keys:
            t.put(k, k)
        self.assertEqual(t.keys(), sorted(keys))
        self.assertEqual(t.first(), (b"", b""))
        self.assertEqual(t.last(), (b"\xff", b"\xff"))
        utf8 = [k.encode() for k in sorted(text)]  # code point order is UTF-8 byte order
        self.assertEqual([k for k in t.keys() if k in utf8], utf8)
        self.assertEqual(t.range(b"\xc3", None), [(k, k) for k in sorted(keys) if k >= b"\xc3"])
        t.check()

    def test_bytes_keys(self) -> None:
        """The tree only compares keys, so bytes keys work the same as str keys."""
        t = TinyTree()
        model = {bytes([i % 7, i]): bytes([i]) for i in range(0, 200, 3)}
        for k, v in model.items():
            self.assertTrue(t.put(k, v))
        self.assertTrue(t.delete(bytes([0, 0])))
        del model[bytes([0, 0])]
        t.check()
        self.assertEqual(t.items(), sorted(model.items()))
        self.assertEqual(
            t.range(b"\x03", b"\x04"),
            [(k, v) for k, v in sorted(model.items()) if b"\x03" <= k < b"\x04"],
        )
        self.assertIn(bytes([3, 3]), t)
        self.assertNotIn("\x03\x03", t)  # a str never matches a bytes key

    def test_height_small_trees(self) -> None:
        """For a store in one leaf, height() is a balanced binary tree's: ceil(log2(n + 1))."""
        t = BTree()
        expected = {0: 0, 1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 7: 3, 8: 4, 63: 6, 64: 7}
        for n in range(65):
            if n in expected:
                self.assertEqual(t.height(), expected[n], n)
            t.put(f"k{n:03d}", b"")

    def test_height_counts_every_level(self) -> None:
        """In a deep tree the height is the costliest path: each level's search depth, summed."""

        def worst(node: Any, depth: int) -> int:
            if depth == 0:
                return len(node.order).bit_length()
            seps, kids = node
            return len(seps).bit_length() + max(worst(k, depth - 1) for k in kids)

        t = TinyTree()
        for i in range(300):
            t.put(f"k{(i * 37) % 300:04d}", b"")
            root, depth, _ = t._state
            self.assertEqual(t.height(), worst(root, depth))
        self.assertGreaterEqual(t.depth(), 4)
        lo, hi = height_bounds(t)
        self.assertTrue(lo <= t.height() <= hi, (lo, t.height(), hi))

    def test_freeze_collector(self) -> None:
        """freeze_collector moves the live heap into the collector's permanent generation."""
        t = BTree.from_sorted([f"k{i:05d}" for i in range(1000)], [b"v"] * 1000)
        self.addCleanup(gc.unfreeze)
        freeze_collector()
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertEqual(t.get("k00500"), b"v")


def leaf(*keys: str) -> _Leaf:
    """A leaf holding ``keys`` in the given order, each mapped to b""."""
    made = _Leaf.fromkeys(keys, b"")
    made.order = list(keys)
    return made


class TreeCheckTests(SynchronousTestCase):
    """check() must actually catch each kind of corruption."""

    def broken(self, root: Any, depth: int, size: int) -> BTree:
        t = TinyTree()
        t._state = (root, depth, size)
        return t

    def test_check_detects_order(self) -> None:
        """Keys out of order within a leaf are reported."""
        t = self.broken(leaf("b", "a"), 0, 2)
        self.assertRaisesRegex(AssertionError, "order", t.check)

    def test_check_detects_duplicate(self) -> None:
        """A key listed twice in a leaf violates strict ordering."""
        t = self.broken(leaf("b", "b"), 0, 2)
        self.assertRaisesRegex(AssertionError, "order", t.check)

    def test_check_detects_separator(self) -> None:
        """A key on the wrong side of its parent's separator is reported."""
        t = self.broken((["b"], [leaf("a", "b"), leaf("c", "d")]), 1, 4)
        self.assertRaisesRegex(AssertionError, "order", t.check)
        t = self.broken((["c"], [leaf("a", "b"), leaf("c", "d")]), 1, 4)
        t.check()

    def test_check_detects_fill(self) -> None:
        """An underfull non-root leaf and an overfull leaf are reported."""
        t = self.broken((["c"], [leaf("a"), leaf("c", "d")]), 1, 3)
        self.assertRaisesRegex(AssertionError, "fill", t.check)
        t = self.broken(leaf(*"abcde"), 0, 5)
        self.assertRaisesRegex(AssertionError, "fill", t.check)

    def test_check_detects_depth(self) -> None:
        """Leaves at different depths (or a wrong stored depth) are reported."""
        t = self.broken(leaf("a", "b"), 1, 2)
        self.assertRaisesRegex(AssertionError, "depth", t.check)
        t = self.broken((["c"], [leaf("a", "b"), leaf("c", "d")]), 0, 4)
        self.assertRaisesRegex(AssertionError, "depth", t.check)

    def test_check_detects_leaf_mismatch(self) -> None:
        """A leaf whose key order and dict disagree is reported."""
        bad = leaf("a", "b")
        bad.order = ["a", "c"]
        t = self.broken(bad, 0, 2)
        self.assertRaisesRegex(AssertionError, "differ", t.check)

    def test_check_detects_size(self) -> None:
        """A stored size that disagrees with the key count is reported."""
        t = BTree()
        t.put("a", b"")
        t._state = (t._state[0], 0, 5)
        self.assertRaisesRegex(AssertionError, "size", t.check)


class TreePersistenceTests(SynchronousTestCase):
    def test_copy_is_isolated_both_ways(self) -> None:
        """A copy keeps its contents while the original changes heavily, and vice versa."""
        t = BTree()
        for i in range(0, 2000, 2):
            t.put(f"k{i:05d}", b"v0")
        before = t.items()
        snap = t.copy()
        self.assertIs(snap._state, t._state)  # O(1): shares structure
        for i in range(0, 2000, 3):
            t.put(f"k{i:05d}", b"v1")
        for i in range(0, 2000, 4):
            t.delete(f"k{i:05d}")
        after = t.items()
        t.check()
        snap.check()
        self.assertEqual(snap.items(), before)
        self.assertEqual(len(snap), len(before))
        self.assertNotEqual(after, before)

        for i in range(0, 2000, 5):
            snap.put(f"k{i:05d}", b"v2")
        for k, _ in before[::3]:
            snap.delete(k)
        snap.check()
        t.check()
        self.assertEqual(t.items(), after)

    def test_iterator_sees_one_version(self) -> None:
        """An iteration already under way keeps walking the version it started on."""
        t = BTree()
        for i in range(500):
            t.put(f"k{i:04d}", b"a")
        expected = t.items()
        it = t.iter_items()
        got = [next(it)]
        for i in range(500):
            if i % 2:
                t.delete(f"k{i:04d}")
            else:
                t.put(f"k{i:04d}", b"b")
        t.put("k0000x", b"new")
        got.extend(it)
        self.assertEqual(got, expected)

    def test_concurrent_reader_sees_whole_versions(self) -> None:
        """A reader thread scanning while a writer inserts only ever sees complete versions."""
        n = 3000
        names = [f"user{i:05d}" for i in range(n)]
        t = BTree()
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

    def _assert_balanced(self, t: BTree, n: int) -> None:
        self.assertEqual(len(t), n)
        assert_shape(self, t)

    def test_sorted_inserts(self) -> None:
        """Ascending inserts keep height O(log n) (the old unbalanced tree reached height n)."""
        t = BTree()
        names = [f"user{i:05d}" for i in range(self.n)]
        for name in names:
            t.put(name, b"v")
        self._assert_balanced(t, self.n)
        self.assertEqual(t.keys(), names)

    def test_reverse_inserts(self) -> None:
        """Descending inserts keep height O(log n) too."""
        t = BTree()
        for i in reversed(range(self.n)):
            t.put(f"user{i:05d}", b"v")
        self._assert_balanced(t, self.n)
        self.assertEqual(t.first(), ("user00000", b"v"))
        self.assertEqual(t.last(), (f"user{self.n - 1:05d}", b"v"))

    def test_sorted_deletes(self) -> None:
        """Deleting from one end keeps the tree balanced all the way down to empty."""
        t = BTree()
        n = 2000
        for i in range(n):
            t.put(f"user{i:05d}", b"v")
        for i in range(n):
            self.assertTrue(t.delete(f"user{i:05d}"))
            if i % 97 == 0:
                self._assert_balanced(t, n - i - 1)
        self.assertEqual(len(t), 0)
        self.assertEqual(t.height(), 0)
        t.check()


class TreeScanTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = BTree()
        self.names = [f"k{i:03d}" for i in range(0, 200, 2)]  # k000, k002, ..., k198
        for name in self.names:
            self.t.put(name, name.encode())

    def pairs(self, names: list[str]) -> list[tuple[bytes, bytes]]:
        return [(k, k.encode()) for k in names]

    def test_iter_items_is_lazy(self) -> None:
        """iter_items is a generator that can yield its first items without a full scan."""
        it = self.t.iter_items("k050")
        self.assertTrue(inspect.isgenerator(it))
        self.assertEqual(list(itertools.islice(it, 3)), self.pairs(["k050", "k052", "k054"]))

    def test_iter_items_start(self) -> None:
        """iter_items(start) begins at the first key >= start, present or not."""
        for start in ["", "k", "k000", "k001", "k099", "k100", "k197", "k198", "k199", "z"]:
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
        self.assertEqual(self.t.range("k011", limit=2), self.pairs(["k012", "k014"]))
        self.assertEqual(self.t.range("k010", "k014", 10), self.pairs(["k010", "k012"]))
        self.assertEqual(self.t.range(limit=1000), self.pairs(self.names))
        for unlimited in (None, 0, -5):
            self.assertEqual(self.t.range(limit=unlimited), self.pairs(self.names))

    def test_range_start_only(self) -> None:
        """range(start) returns every key >= start."""
        self.assertEqual(self.t.range("k190"), self.pairs(["k190", "k192", "k194", "k196", "k198"]))
        self.assertEqual(self.t.range("k199"), [])

    def test_range_stop_only(self) -> None:
        """range(stop=...) returns every key < stop (stop is exclusive)."""
        self.assertEqual(self.t.range(stop="k006"), self.pairs(["k000", "k002", "k004"]))
        self.assertEqual(self.t.range(None, "k000"), [])

    def test_range_start_not_before_stop(self) -> None:
        """start >= stop gives an empty result."""
        self.assertEqual(self.t.range("k010", "k010"), [])
        self.assertEqual(self.t.range("k050", "k010"), [])
        self.assertEqual(self.t.range("k010", "k010", 5), [])

    def test_range_half_open(self) -> None:
        """range includes start and excludes stop."""
        self.assertEqual(self.t.range("k010", "k016"), self.pairs(["k010", "k012", "k014"]))


class FromSortedTests(SynchronousTestCase):
    def test_builds_valid_tree(self) -> None:
        """from_sorted gives a valid AVL tree with the same items, for every size up to 300."""
        for n in range(300):
            items = [(f"k{i:04d}", str(i).encode()) for i in range(n)]
            t = BTree.from_sorted([k for k, _ in items], [v for _, v in items])
            t.check()
            self.assertEqual(t.items(), items)
            self.assertEqual(len(t), n)

    def test_rejects_unsorted(self) -> None:
        """Unsorted or duplicate keys are refused rather than building a broken tree."""
        with self.assertRaises(ValueError):
            BTree.from_sorted(["b", "a"], [b"", b""])
        with self.assertRaises(ValueError):
            BTree.from_sorted(["a", "a"], [b"", b""])
        with self.assertRaises(ValueError):
            BTree.from_sorted(["a"], [])

    def test_updatable_afterwards(self) -> None:
        """A tree built from sorted items takes puts and deletes like any other."""
        t = BTree.from_sorted([f"k{i:03d}" for i in range(100)], [b""] * 100)
        t.put("k0505", b"x")
        t.delete("k000")
        t.check()
        self.assertEqual(len(t), 100)
