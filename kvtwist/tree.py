"""A persistent (path-copying) B+tree mapping keys to ``bytes`` values.

Why a B+tree and not a binary tree: in CPython the cost of a lookup in a large
tree is dominated by pointer chasing (a cache miss per node and per key) and
by interpreted work per level.  A node here holds up to ``LEAF_MAX`` keys in a
sorted list searched with ``bisect`` (C speed), so a lookup in 10^6 keys
walks four or five nodes instead of some twenty-five, and an update copies
those few nodes' lists instead of allocating a fresh object per level.  It
also keeps the cyclic collector's work small: a million keys make about
sixty thousand tracked containers, not a million.

Shape.  Leaves hold ``(keys, values)``: two parallel lists, keys strictly
ascending.  Inner nodes hold ``(seps, children)`` with
``len(seps) == len(children) - 1``; every key under ``children[i]`` is at
least ``seps[i - 1]`` and below ``seps[i]``.  Every leaf is at the same depth,
and every node but the root is at least half full, so put, get and delete are
O(log n).  Keys are compared only with ``<`` and ``==``, so any totally
ordered type works (``str`` or ``bytes``); one tree should hold one type.

Persistence.  Nodes (tuples and the lists in them) are never mutated once a
published root can reach them: an update copies the lists on its search path,
shares everything else, and publishes the new version by assigning
``_state``, one ``(root, depth, size)`` tuple.  That buys what the server
needs:

* a reader (in any thread) that grabs ``_state`` once can traverse it while a
  writer keeps updating, with no locks and no torn views, and ``len()`` always
  matches the version it goes with;
* ``copy()`` is O(1), so "the state as of op N" or a state-transfer stream is
  just a saved ``_state``.

Concurrency contract: one writer at a time per tree object (the store's
writer thread); readers may use the tree, or a ``copy()`` of it, from any
thread.  Every read method looks at ``_state`` exactly once.

``height()``: the original protocol reports the height of a binary search
tree, and a wide node is a binary search too (``bisect`` over its sorted
list).  So the height reported is the most key comparisons a lookup makes:
the sum, along the worst root-to-leaf path, of the depth of each node's
binary search (``ceil(log2(f + 1))`` over ``f`` keys or separators).  It is
0 for an empty tree, 1 for one key, and about ``log2(n)`` like a balanced
binary tree's, and it is O(n / LEAF_MAX) to compute.

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
from operator import itemgetter, lt
from typing import Any

__all__ = ["AVLTree", "BTree", "Key", "freeze_collector"]

#: The key type callers use.  The tree itself only compares keys with < and
#: ==, so changing this alias is all a change of key type needs here.
Key = str

#: A node: ``(keys, values)`` for a leaf, ``(seps, children)`` inside.
_Node = tuple[list[Any], list[Any]]

_first = itemgetter(0)


def freeze_collector() -> None:
    """Collect once, then exempt every object alive now from later collections.

    Meant for node start-up after a state is loaded or recovered: the tree's
    lists are then never scanned again by the cyclic collector, while
    reference counting still frees them when they are replaced.
    """
    gc.collect()
    gc.freeze()


def _cmp_height(node: _Node, depth: int) -> int:
    """Most comparisons a lookup makes below ``node`` (see the module docstring)."""
    here = len(node[0]).bit_length()
    if depth == 0:
        return here
    kids = node[1]
    if depth == 1:
        return here + max(map(len, map(_first, kids))).bit_length()
    return here + max(_cmp_height(k, depth - 1) for k in kids)


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
        self._state = (([], []), 0, 0)

    # ---- updates -------------------------------------------------------

    def put(self, key: Key, value: bytes) -> bool:
        """Insert or replace; True if the key was new.

        Descends recording the path, builds a new leaf, then copies each
        ancestor's child list bottom-up (splitting full nodes on the way) and
        publishes the result with a single assignment.
        """
        root, depth, size = self._state
        path: list[_Node] = []
        where: list[int] = []
        node = root
        for _ in range(depth):
            i = bisect_right(node[0], key)
            path.append(node)
            where.append(i)
            node = node[1][i]
        keys, vals = node
        i = bisect_left(keys, key)
        j = depth - 1
        if i < len(keys) and keys[i] == key:
            nv = vals.copy()
            nv[i] = value
            new: _Node = (keys, nv)  # the keys are unchanged: share them
            found = True
        else:
            found = False
            size += 1
            nk = keys.copy()
            nk.insert(i, key)
            nv = vals.copy()
            nv.insert(i, value)
            new = (nk, nv)
            if len(nk) > self.LEAF_MAX:
                # Split the leaf and push splits up until a node has room.
                half = len(nk) >> 1
                sep = nk[half]
                left: _Node = (nk[:half], nv[:half])
                right: _Node = (nk[half:], nv[half:])
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
        path: list[_Node] = []
        where: list[int] = []
        node = root
        for _ in range(depth):
            i = bisect_right(node[0], key)
            path.append(node)
            where.append(i)
            node = node[1][i]
        keys, vals = node
        i = bisect_left(keys, key)
        if i == len(keys) or not keys[i] == key:
            return False
        nk = keys.copy()
        del nk[i]
        nv = vals.copy()
        del nv[i]
        new: _Node = (nk, nv)
        leaf_max = self.LEAF_MAX
        inner_max = self.INNER_MAX
        short = len(nk) < leaf_max >> 1
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
                ck = a[0] + b[0]
                cv = a[1] + b[1]
                if len(ck) <= leaf_max:
                    nc[s : s + 2] = [(ck, cv)]
                    del ns[s]
                else:
                    half = len(ck) >> 1
                    nc[s] = (ck[:half], cv[:half])
                    nc[s + 1] = (ck[half:], cv[half:])
                    ns[s] = ck[half]
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
        """Look up key: one C-speed bisect per level, no Python calls of its own."""
        node, depth, _ = self._state
        for _ in range(depth):
            node = node[1][bisect_right(node[0], key)]
        keys = node[0]
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return node[1][i]
        return default

    def __contains__(self, key: object) -> bool:
        node, depth, _ = self._state
        try:
            for _ in range(depth):
                node = node[1][bisect_right(node[0], key)]
            keys = node[0]
            i = bisect_left(keys, key)
        except TypeError:  # a key of another type: not one of ours
            return False
        return i < len(keys) and keys[i] == key

    def size(self) -> int:
        """Number of keys, kept with the root so it is O(1) and never torn."""
        return self._state[2]

    def __len__(self) -> int:
        return self._state[2]

    def height(self) -> int:
        """Most key comparisons a lookup makes: 0 when empty, 1 for one key, ~log2(n).

        See the module docstring; O(n / LEAF_MAX).
        """
        root, depth, size = self._state
        return _cmp_height(root, depth) if size else 0

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
        return node[0][0], node[1][0]

    def last(self) -> tuple[Key, bytes] | None:
        """Largest (key, value), or None when empty."""
        node, depth, size = self._state
        if not size:
            return None
        for _ in range(depth):
            node = node[1][-1]
        return node[0][-1], node[1][-1]

    # ---- ordered reads -------------------------------------------------
    # Each of these reads self._state once, so a concurrent writer cannot
    # make them observe a mix of two versions.

    def _leaves(self, start: Key | None) -> Iterator[tuple[list[Any], list[Any], int]]:
        """Yield (keys, values, i) per leaf, ascending, from the leaf holding start.

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
        keys = node[0]
        yield keys, node[1], (0 if start is None else bisect_left(keys, start))
        while stack:
            kids, c = stack.pop()
            if c < len(kids):
                stack.append((kids, c + 1))
                node = kids[c]
                while len(stack) < depth:
                    kids = node[1]
                    stack.append((kids, 1))
                    node = kids[0]
                yield node[0], node[1], 0

    def __iter__(self) -> Iterator[Key]:
        """Keys ascending, lazily, over the version current when iteration starts."""
        for keys, _values, _i in self._leaves(None):
            yield from keys

    def iter_items(self, start: Key | None = None) -> Iterator[tuple[Key, bytes]]:
        """Lazily yield (key, value) ascending from the first key >= start.

        Pins the version at the first next(), so the stream is one consistent version.
        """
        for keys, vals, i in self._leaves(start):
            if i:
                yield from zip(islice(keys, i, None), islice(vals, i, None), strict=True)
            else:
                yield from zip(keys, vals, strict=True)

    def _all_leaves(self) -> list[_Node]:
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
            out += leaf[0]
        return out

    def values(self) -> list[bytes]:
        """All values in key order."""
        out: list[bytes] = []
        for leaf in self._all_leaves():
            out += leaf[1]
        return out

    def items(self) -> list[tuple[Key, bytes]]:
        """All (key, value) pairs in key order."""
        out: list[tuple[Key, bytes]] = []
        for keys, vals in self._all_leaves():
            out += zip(keys, vals, strict=True)
        return out

    def range(
        self, start: Key | None = None, stop: Key | None = None, limit: int | None = None
    ) -> list[tuple[Key, bytes]]:
        """Pairs with start <= key < stop (None = unbounded).

        At most ``limit`` pairs when limit is a positive int; None, 0 or a
        negative limit means no limit (0 is protobuf's "unset").
        """
        out: list[tuple[Key, bytes]] = []
        if start is not None and stop is not None and not start < stop:
            return out
        left = limit if limit is not None and limit > 0 else -1
        for keys, vals, i in self._leaves(start):
            end = len(keys)
            last = False
            if stop is not None and end and not keys[-1] < stop:
                end = bisect_left(keys, stop, i)
                last = True
            if left >= 0 and end - i >= left:
                end = i + left
                last = True
            if i == 0 and end == len(keys):
                out += zip(keys, vals, strict=True)
            else:
                out += zip(keys[i:end], vals[i:end], strict=True)
            if last:
                break
            if left > 0:
                left -= end - i
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
            level.append((list(keys[a:b]), list(values[a:b])))
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
        if not (type(node) is tuple and len(node) == 2):
            raise AssertionError(f"depth violated: {type(node).__name__} where a node goes")
        keys, kids = node
        if not (type(keys) is list and type(kids) is list):
            raise AssertionError("a node's keys and entries must be lists")
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
            for v in kids:
                if type(v) is tuple:
                    raise AssertionError("depth violated: a node where a value goes")
            n = len(keys)
            if n != len(kids):
                raise AssertionError(f"leaf has {n} keys but {len(kids)} values")
            if not is_root and not self.LEAF_MAX >> 1 <= n <= self.LEAF_MAX:
                raise AssertionError(f"fill violated: leaf of {n} keys")
            if is_root and n > self.LEAF_MAX:
                raise AssertionError(f"fill violated: root leaf of {n} keys")
            return n
        for kid in kids:
            if type(kid) is not tuple:
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


#: The name callers import; the structure behind it is now a B+tree.
AVLTree = BTree
