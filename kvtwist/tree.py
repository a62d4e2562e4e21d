"""A persistent (path-copying) B+tree mapping keys to ``bytes`` values.

Why a B+tree and not a binary tree: in CPython the cost of a lookup in a large
tree is dominated by pointer chasing (a cache miss per node and per key) and
by interpreted work per level.  Here a lookup in 10^6 keys bisects (at C
speed) through three inner nodes and ends in one hash probe in a leaf,
instead of walking some twenty-five binary nodes; an update copies a few
lists and one small dict instead of allocating a fresh object per level.  It
also keeps the cyclic collector's work small: a million keys make some fifty
thousand tracked containers, not a million.

Shape.  A leaf is a ``dict`` (subclass ``_Leaf``) from key to value, plus
``order``, its keys in ascending order.  An inner node is ``(seps,
children)`` with ``len(seps) == len(children) - 1``; every key under
``children[i]`` is at least ``seps[i - 1]`` and below ``seps[i]``.  Every
leaf is at the same depth, and every node but the root is at least half full,
so put and delete are O(log n) and get is O(log n) comparisons plus a hash
probe.  Keys are compared with ``<`` and ``==`` and hashed, so any totally
ordered hashable type works (``str`` or ``bytes``); one tree should hold one
type.

Persistence.  Nodes are never mutated once a published root can reach them:
an update copies the leaf and the child lists on its search path, shares
everything else, and publishes the new version by assigning ``_state``, one
``(root, depth, size)`` tuple.  That buys what the server needs:

* a reader (in any thread) that grabs ``_state`` once can traverse it while a
  writer keeps updating, with no locks and no torn views, and ``len()`` always
  matches the version it goes with;
* ``copy()`` is O(1), so "the state as of op N" or a state-transfer stream is
  just a saved ``_state``.

Concurrency contract: one writer at a time per tree object (the store's
writer thread); readers may use the tree, or a ``copy()`` of it, from any
thread.  Every read method looks at ``_state`` exactly once.

``height()``: the original protocol reports the height of a binary search
tree.  A node's sorted keys (or separators) read as a balanced binary search
tree have height ``ceil(log2(f + 1))`` for ``f`` of them, and the children
hang below it; ``height()`` is the height of the binary tree that makes, the
most along any root-to-leaf path.  It is 0 for an empty tree, 1 for one key,
``ceil(log2(n + 1))`` while the tree is a single leaf (up to ``LEAF_MAX``
keys), and about ``log2(n)`` beyond; it is O(n / LEAF_MAX) to compute.

The module is pure Python and deliberately imports nothing from Twisted.

Collector note: the tree makes no reference cycles, so the cyclic collector
never frees any of it.  ``freeze_collector()`` moves everything alive into
the permanent generation, which collections skip; a node may call it after
loading a large state.
"""

from __future__ import annotations

import gc
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from itertools import islice
from operator import lt
from typing import Any

__all__ = ["BTree", "Key", "freeze_collector"]

#: The key type callers use.  The tree itself only compares keys with < and
#: ==, so changing this alias is all a change of key type needs here.
Key = bytes


class _Leaf(dict[Any, bytes]):
    """A leaf: a dict from key to value, and its keys in order in ``order``.

    A point lookup ends in one hash probe, which touches far less memory than
    a binary search over key objects scattered about the heap.
    """

    __slots__ = ("order",)

    order: list[Any]


def _leaf(order: list[Any], source: dict[Any, bytes]) -> _Leaf:
    """A new leaf holding ``order``'s keys with their values from ``source``."""
    leaf = _Leaf(zip(order, map(source.__getitem__, order), strict=True))
    leaf.order = order
    return leaf


def _empty_leaf() -> _Leaf:
    leaf = _Leaf()
    leaf.order = []
    return leaf


#: An inner node: ``(seps, children)``.
_Inner = tuple[list[Any], list[Any]]
#: A node: a leaf or an inner node (which one follows from its depth).
_Node = Any


def freeze_collector() -> None:
    """Collect once, then exempt every object alive now from later collections.

    Meant for node start-up after a state is loaded or recovered: the tree's
    lists are then never scanned again by the cyclic collector, while
    reference counting still frees them when they are replaced.
    """
    gc.collect()
    gc.freeze()


def _descend(root: _Node, depth: int, key: Key) -> tuple[list[_Inner], list[int], _Leaf]:
    """The inner nodes from the root to ``key``'s leaf, the child taken in each, and the leaf."""
    path: list[_Inner] = []
    where: list[int] = []
    node: Any = root
    for _ in range(depth):
        i = bisect_right(node[0], key)
        path.append(node)
        where.append(i)
        node = node[1][i]
    return path, where, node


def _bin_height(node: _Node, depth: int) -> int:
    """Height of ``node`` read as a binary search tree (see the module docstring)."""
    if depth == 0:
        return len(node).bit_length()
    here = len(node[0]).bit_length()
    kids = node[1]
    if depth == 1:
        return here + max(map(len, kids)).bit_length()
    return here + max(_bin_height(k, depth - 1) for k in kids)


class BTree:
    """Ordered key -> bytes map whose versions are cheap, immutable snapshots."""

    __slots__ = ("_state",)

    #: Most keys in a leaf, and most children of an inner node (at least 4).
    #: Wider nodes mean fewer levels but longer lists to copy per update (and
    #: a copy touches every object the list holds); both are class
    #: attributes so that tests can exercise deep trees of few keys.
    LEAF_MAX = 64
    INNER_MAX = 64

    _state: tuple[_Node, int, int]

    def __init__(self) -> None:
        self._state = (_empty_leaf(), 0, 0)

    # ---- updates -------------------------------------------------------

    def put(self, key: Key, value: bytes) -> bool:
        """Insert or replace; True if the key was new.

        Descends recording the path, builds a new leaf, then copies each
        ancestor's child list bottom-up (splitting full nodes on the way) and
        publishes the result with a single assignment.
        """
        root, depth, size = self._state
        path, where, node = _descend(root, depth, key)
        j = depth - 1
        new: _Node = _Leaf(node)
        new[key] = value
        if key in node:
            new.order = node.order  # the keys are unchanged: share them
            found = True
        else:
            found = False
            size += 1
            order = node.order.copy()
            order.insert(bisect_left(order, key), key)
            new.order = order
            if len(order) > self.LEAF_MAX:
                # Split the leaf and push splits up until a node has room.
                half = len(order) >> 1
                sep = order[half]
                left: _Node = _leaf(order[:half], new)
                right: _Node = _leaf(order[half:], new)
                inner_max = self.INNER_MAX
                while True:
                    if j < 0:
                        new = ([sep], [left, right])
                        depth += 1
                        break
                    seps, kids = path[j]
                    c = where[j]
                    j -= 1
                    ns = seps.copy()
                    ns.insert(c, sep)
                    nc = kids.copy()
                    nc[c] = left
                    nc.insert(c + 1, right)
                    if len(nc) <= inner_max:
                        new = (ns, nc)
                        break
                    half = len(nc) >> 1
                    sep = ns[half - 1]
                    left = (ns[: half - 1], nc[:half])
                    right = (ns[half:], nc[half:])
        while j >= 0:
            # No split here: copy the child list only, share the separators.
            seps, kids = path[j]
            nc = kids.copy()
            nc[where[j]] = new
            new = (seps, nc)
            j -= 1
        self._state = (new, depth, size)
        return not found

    def delete(self, key: Key) -> bool:
        """Remove key; True if it was present.  A miss allocates nothing.

        A node left less than half full is merged with a sibling, or shares
        that sibling's entries when the two would not fit in one node.
        """
        root, depth, size = self._state
        path, where, node = _descend(root, depth, key)
        if key not in node:
            return False
        order = node.order.copy()
        del order[bisect_left(order, key)]
        new: _Node = _Leaf(node)
        del new[key]
        new.order = order
        leaf_max = self.LEAF_MAX
        inner_max = self.INNER_MAX
        short = len(order) < leaf_max >> 1
        j = depth - 1
        while j >= 0:
            seps, kids = path[j]
            c = where[j]
            nc = kids.copy()
            if not short:
                nc[c] = new
                new = (seps, nc)
                j -= 1
                continue
            # Rejoin the short child with a neighbour: its left one if it has one.
            if c > 0:
                s = c - 1
                a, b = kids[s], new
            else:
                s = c
                a, b = new, kids[c + 1]
            ns = seps.copy()
            if j == depth - 1:  # the children are leaves
                both = _Leaf(a)
                both.update(b)
                ko = a.order + b.order
                if len(ko) <= leaf_max:
                    both.order = ko
                    nc[s : s + 2] = [both]
                    del ns[s]
                else:
                    half = len(ko) >> 1
                    nc[s] = _leaf(ko[:half], both)
                    nc[s + 1] = _leaf(ko[half:], both)
                    ns[s] = ko[half]
            else:
                cs = [*a[0], seps[s], *b[0]]
                cc = a[1] + b[1]
                if len(cc) <= inner_max:
                    nc[s : s + 2] = [(cs, cc)]
                    del ns[s]
                else:
                    half = len(cc) >> 1
                    nc[s] = (cs[: half - 1], cc[:half])
                    nc[s + 1] = (cs[half:], cc[half:])
                    ns[s] = cs[half - 1]
            new = (ns, nc)
            short = len(nc) < inner_max >> 1
            j -= 1
        if depth and len(new[1]) == 1:
            # The root was left with one child: that child is the new root.
            new = new[1][0]
            depth -= 1
        self._state = (new, depth, size - 1)
        return True

    # ---- point reads ---------------------------------------------------

    def get(self, key: Key, default: bytes | None = None) -> bytes | None:
        """Look up key: a C-speed bisect per inner level, then one hash probe."""
        node, depth, _ = self._state
        for _ in range(depth):
            node = node[1][bisect_right(node[0], key)]
        return node.get(key, default)

    def __contains__(self, key: object) -> bool:
        node, depth, _ = self._state
        try:
            for _ in range(depth):
                node = node[1][bisect_right(node[0], key)]
            return key in node
        except TypeError:  # a key of another type (or unhashable): not one of ours
            return False

    def size(self) -> int:
        """Number of keys, kept with the root so it is O(1) and never torn."""
        return self._state[2]

    def __len__(self) -> int:
        return self._state[2]

    def height(self) -> int:
        """Height as a binary search tree: 0 when empty, 1 for one key, ~log2(n).

        See the module docstring; O(n / LEAF_MAX).
        """
        root, depth, size = self._state
        return _bin_height(root, depth) if size else 0

    def depth(self) -> int:
        """Number of inner levels above the leaves (0 while the root is a leaf)."""
        return self._state[1]

    def first(self) -> tuple[Key, bytes] | None:
        """Smallest (key, value), or None when empty."""
        node, depth, size = self._state
        if not size:
            return None
        for _ in range(depth):
            node = node[1][0]
        k = node.order[0]
        return k, node[k]

    def last(self) -> tuple[Key, bytes] | None:
        """Largest (key, value), or None when empty."""
        node, depth, size = self._state
        if not size:
            return None
        for _ in range(depth):
            node = node[1][-1]
        k = node.order[-1]
        return k, node[k]

    # ---- ordered reads -------------------------------------------------
    # Each of these reads self._state once, so a concurrent writer cannot
    # make them observe a mix of two versions.

    def _leaves(self, start: Key | None) -> Iterator[tuple[list[Any], _Leaf, int]]:
        """Yield (keys in order, leaf, i) per leaf, ascending, from the leaf holding start.

        ``i`` is where the leaf's keys >= start begin (0 after the first leaf).
        Walks with an explicit stack of (children, next index), one per level.
        """
        node, depth, _ = self._state
        stack: list[tuple[list[Any], int]] = []
        for _ in range(depth):
            seps, kids = node
            c = 0 if start is None else bisect_right(seps, start)
            stack.append((kids, c + 1))
            node = kids[c]
        order = node.order
        yield order, node, (0 if start is None else bisect_left(order, start))
        while stack:
            kids, c = stack.pop()
            if c < len(kids):
                stack.append((kids, c + 1))
                node = kids[c]
                while len(stack) < depth:
                    kids = node[1]
                    stack.append((kids, 1))
                    node = kids[0]
                yield node.order, node, 0

    def __iter__(self) -> Iterator[Key]:
        """Keys ascending, lazily, over the version current when iteration starts."""
        for order, _leaf, _i in self._leaves(None):
            yield from order

    def iter_items(self, start: Key | None = None) -> Iterator[tuple[Key, bytes]]:
        """Lazily yield (key, value) ascending from the first key >= start.

        Pins the version at the first next(), so the stream is one consistent version.
        """
        for order, leaf, i in self._leaves(start):
            ks = order[i:] if i else order
            yield from zip(ks, map(leaf.__getitem__, ks), strict=True)

    def _all_leaves(self) -> list[_Leaf]:
        """Every leaf, left to right (a whole-tree scan; no generator per item)."""
        node, depth, _ = self._state
        level = [node]
        for _ in range(depth):
            nxt: list[_Node] = []
            for n in level:
                nxt += n[1]
            level = nxt
        return level

    def keys(self) -> list[Key]:
        """All keys ascending."""
        out: list[Key] = []
        for leaf in self._all_leaves():
            out += leaf.order
        return out

    def values(self) -> list[bytes]:
        """All values in key order."""
        out: list[bytes] = []
        for leaf in self._all_leaves():
            out += map(leaf.__getitem__, leaf.order)
        return out

    def listing(
        self, values: bool, max_bytes: int, overhead: int = 0, start: Key | None = None,
        stop: Key | None = None,
    ) -> list[Any] | None:
        """Keys (or values) with start <= key < stop, in key order; None once their
        sizes pass ``max_bytes``.

        Each item costs its length plus ``overhead``.  Counted leaf by leaf as
        the list grows, so a refused listing stops having gathered no more
        than the bound and one leaf, not the whole tree.
        """
        out: list[Any] = []
        total = 0
        for order, leaf, i, end in self._spans(start, stop):
            ks = order if i == 0 and end == len(order) else order[i:end]
            items = list(map(leaf.__getitem__, ks)) if values else ks
            total += sum(map(len, items)) + overhead * len(items)
            if total > max_bytes:
                return None
            out += items
        return out

    def count(self, start: Key | None = None, stop: Key | None = None) -> int:
        """How many keys lie in start <= key < stop (the whole size is ``len``)."""
        return sum(end - i for _order, _leaf, i, end in self._spans(start, stop))

    def _spans(
        self, start: Key | None, stop: Key | None
    ) -> Iterator[tuple[list[Any], _Leaf, int, int]]:
        """Per leaf, the slice ``order[i:end]`` of its keys within start <= key < stop."""
        if start is not None and stop is not None and not start < stop:
            return
        for order, leaf, i in self._leaves(start):
            end = len(order)
            if stop is not None and end and not order[-1] < stop:
                yield order, leaf, i, bisect_left(order, stop, i)
                return
            yield order, leaf, i, end

    def items(self) -> list[tuple[Key, bytes]]:
        """All (key, value) pairs in key order."""
        out: list[tuple[Key, bytes]] = []
        for leaf in self._all_leaves():
            order = leaf.order
            out += zip(order, map(leaf.__getitem__, order), strict=True)
        return out

    def range(
        self, start: Key | None = None, stop: Key | None = None, limit: int | None = None
    ) -> list[tuple[Key, bytes]]:
        """Pairs with start <= key < stop (None = unbounded).

        At most ``limit`` pairs when limit is a positive int; None, 0 or a
        negative limit means no limit (0 is protobuf's "unset").
        """
        out: list[tuple[Key, bytes]] = []
        left = limit if limit is not None and limit > 0 else -1
        for order, leaf, i, end in self._spans(start, stop):
            if left >= 0 and end - i >= left:
                end = i + left
                left = 0
            elif left > 0:
                left -= end - i
            ks = order if i == 0 and end == len(order) else order[i:end]
            out += zip(ks, map(leaf.__getitem__, ks), strict=True)
            if not left:
                break
        return out

    # ---- snapshots and debugging ----------------------------------------

    @classmethod
    def from_sorted(cls, keys: Sequence[Key], values: Sequence[bytes]) -> BTree:
        """Build from strictly ascending keys and their values in O(n): a joiner's copy.

        Nodes are filled evenly and nearly full.  Two flat sequences rather
        than pairs: a million short-lived tuples would leave the heap
        fragmented for the life of the node.
        """
        n = len(keys)
        if n != len(values):
            raise ValueError(f"{n} keys but {len(values)} values")
        if not all(map(lt, islice(keys, 0, None), islice(keys, 1, None))):
            for i in range(1, n):
                if not keys[i - 1] < keys[i]:
                    raise ValueError(f"keys not strictly ascending at {keys[i]!r}")
        t = cls()
        if n == 0:
            return t
        level: list[_Node] = []
        firsts: list[Key] = []
        for a, b in _spans(n, cls.LEAF_MAX):
            leaf = _Leaf(zip(keys[a:b], values[a:b], strict=True))
            leaf.order = list(keys[a:b])
            level.append(leaf)
            firsts.append(keys[a])
        depth = 0
        while len(level) > 1:
            up: list[_Node] = []
            up_firsts: list[Key] = []
            for a, b in _spans(len(level), cls.INNER_MAX):
                up.append((firsts[a + 1 : b], level[a:b]))
                up_firsts.append(firsts[a])
            level, firsts = up, up_firsts
            depth += 1
        t._state = (level[0], depth, n)
        return t

    def copy(self) -> BTree:
        """O(1) snapshot: shares every node, which is safe because nodes never change."""
        t = type(self).__new__(type(self))
        t._state = self._state
        return t

    def check(self) -> None:
        """Raise AssertionError on the first broken invariant.

        Checks order, separators, node fill, equal leaf depth and the size.
        """
        root, depth, size = self._state
        kinds: set[type] = set()
        count = self._check(root, depth, None, None, True, kinds)
        if len(kinds) > 1:
            raise AssertionError(f"keys of several types: {sorted(k.__name__ for k in kinds)}")
        if count != size:
            raise AssertionError(f"stored size {size} != key count {count}")

    def _check(
        self, node: Any, depth: int, lo: Any, hi: Any, is_root: bool, kinds: set[type]
    ) -> int:
        keys: list[Any]
        if depth == 0:
            if type(node) is not _Leaf:
                raise AssertionError(f"depth violated: {type(node).__name__} where a leaf goes")
            keys = node.order
        else:
            if not (type(node) is tuple and len(node) == 2):
                raise AssertionError(f"depth violated: {type(node).__name__} where a node goes")
            keys, kids = node
            if not (type(keys) is list and type(kids) is list):
                raise AssertionError("an inner node's separators and children must be lists")
        for k in keys:
            kinds.add(type(k))
            if lo is not None and k < lo:
                raise AssertionError(f"order violated: key {k!r} is below {lo!r}")
            if hi is not None and not k < hi:
                raise AssertionError(f"order violated: key {k!r} is not below {hi!r}")
        for a, b in zip(keys, keys[1:], strict=False):
            if not a < b:
                raise AssertionError(f"order violated: {b!r} follows {a!r}")
        if depth == 0:
            n = len(keys)
            if len(node) != n or not all(map(node.__contains__, keys)):
                raise AssertionError(f"leaf's order ({n} keys) and dict ({len(node)}) differ")
            if not is_root and not self.LEAF_MAX >> 1 <= n <= self.LEAF_MAX:
                raise AssertionError(f"fill violated: leaf of {n} keys")
            if is_root and n > self.LEAF_MAX:
                raise AssertionError(f"fill violated: root leaf of {n} keys")
            return n
        want = _Leaf if depth == 1 else tuple
        for kid in kids:
            if type(kid) is not want:
                raise AssertionError(f"depth violated: {type(kid).__name__} where a node goes")
        c = len(kids)
        if len(keys) != c - 1:
            raise AssertionError(f"inner node has {len(keys)} separators for {c} children")
        least = 2 if is_root else self.INNER_MAX >> 1
        if not least <= c <= self.INNER_MAX:
            raise AssertionError(f"fill violated: inner node of {c} children")
        bounds = [lo, *keys, hi]
        return sum(
            self._check(kid, depth - 1, bounds[i], bounds[i + 1], False, kinds)
            for i, kid in enumerate(kids)
        )

    def __repr__(self) -> str:
        root, depth, size = self._state
        return f"<{type(self).__name__} size={size} depth={depth}>"


def _spans(n: int, most: int) -> list[tuple[int, int]]:
    """Split range(n) into the fewest runs of at most ``most``, as even as possible."""
    parts = -(-n // most)
    base, extra = divmod(n, parts)
    out = []
    a = 0
    for p in range(parts):
        b = a + base + (1 if p < extra else 0)
        out.append((a, b))
        a = b
    return out
