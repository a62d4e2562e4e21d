"""A persistent (path-copying) AVL tree mapping ``bytes`` keys to ``bytes`` values.

Keys order bytewise (``bytes`` comparison), as the original C server orders them.

Nodes are never mutated once they are reachable from a published root: every
update builds fresh nodes along the search path and then swaps the tree's root
reference.  That buys three things the server needs:

* a reader (in any thread) that grabs ``tree._root`` once can traverse it while
  a writer keeps updating, with no locks and no torn views;
* ``copy()`` is O(1), so "the state as of op N" or a state-transfer stream is
  just a saved root;
* the AVL balance bounds the depth to about ``1.44 * log2(n)``, so sorted key
  streams (``user00000``, ``user00001``, ...) no longer degrade into a list.

The module is pure Python and deliberately imports nothing from Twisted.

Concurrency contract: one writer at a time per ``AVLTree`` object (the reactor
thread).  Readers may use the tree, or a ``copy()`` of it, from other threads.
Every read method looks at ``_root`` exactly once, so it always sees one whole
version.  ``_root`` and ``_size`` are two separate attribute writes, though, so
a ``copy()`` or ``size()`` taken from another thread *during* a write may pair
a root with a size that is off by one; take snapshots in the writer's thread
when the size must be exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

__all__ = ["AVLTree", "Node"]


class Node:
    """An immutable tree node; slots keep 10^6 of them cheap (no per-node dict)."""

    __slots__ = ("key", "value", "left", "right", "height")

    key: bytes
    value: bytes
    left: Node | None
    right: Node | None
    height: int

    def __init__(
        self, key: bytes, value: bytes, left: Node | None, right: Node | None, height: int
    ) -> None:
        self.key = key
        self.value = value
        self.left = left
        self.right = right
        self.height = height

    def __repr__(self) -> str:
        return f"Node({self.key!r}, h={self.height})"


def _balance(key: bytes, value: bytes, left: Node | None, right: Node | None) -> Node:
    """Build a node over two subtrees whose heights differ by at most 2, rotating if needed.

    Only ever creates new nodes, so it is safe on subtrees shared with snapshots.
    """
    hl = left.height if left is not None else 0
    hr = right.height if right is not None else 0
    if hl > hr + 1:
        assert left is not None
        ll = left.left
        lr = left.right
        hll = ll.height if ll is not None else 0
        hlr = lr.height if lr is not None else 0
        if hll >= hlr:
            # Single right rotation.
            h = (hlr if hlr > hr else hr) + 1
            nr = Node(key, value, lr, right, h)
            return Node(left.key, left.value, ll, nr, (hll if hll > h else h) + 1)
        # Left-right double rotation: lr becomes the new root.
        assert lr is not None
        a = lr.left
        b = lr.right
        ha = a.height if a is not None else 0
        hb = b.height if b is not None else 0
        nl = Node(left.key, left.value, ll, a, (hll if hll > ha else ha) + 1)
        nr = Node(key, value, b, right, (hb if hb > hr else hr) + 1)
        h1 = nl.height
        h2 = nr.height
        return Node(lr.key, lr.value, nl, nr, (h1 if h1 > h2 else h2) + 1)
    if hr > hl + 1:
        assert right is not None
        rl = right.left
        rr = right.right
        hrl = rl.height if rl is not None else 0
        hrr = rr.height if rr is not None else 0
        if hrr >= hrl:
            # Single left rotation.
            h = (hl if hl > hrl else hrl) + 1
            nl = Node(key, value, left, rl, h)
            return Node(right.key, right.value, nl, rr, (h if h > hrr else hrr) + 1)
        # Right-left double rotation: rl becomes the new root.
        assert rl is not None
        a = rl.left
        b = rl.right
        ha = a.height if a is not None else 0
        hb = b.height if b is not None else 0
        nl = Node(key, value, left, a, (hl if hl > ha else ha) + 1)
        nr = Node(right.key, right.value, b, rr, (hb if hb > hrr else hrr) + 1)
        h1 = nl.height
        h2 = nr.height
        return Node(rl.key, rl.value, nl, nr, (h1 if h1 > h2 else h2) + 1)
    return Node(key, value, left, right, (hl if hl > hr else hr) + 1)


def _check(node: Node | None, lo: bytes | None, hi: bytes | None) -> tuple[int, int]:
    """Validate a subtree whose keys must lie strictly in (lo, hi); return (count, height)."""
    if node is None:
        return 0, 0
    key = node.key
    if not isinstance(key, bytes):
        raise AssertionError(f"key {key!r} is not bytes")
    if lo is not None and not lo < key:
        raise AssertionError(f"BST order violated: key {key!r} is not > {lo!r}")
    if hi is not None and not key < hi:
        raise AssertionError(f"BST order violated: key {key!r} is not < {hi!r}")
    nl, hl = _check(node.left, lo, key)
    nr, hr = _check(node.right, key, hi)
    if abs(hl - hr) > 1:
        raise AssertionError(
            f"AVL balance violated at {key!r}: left height {hl}, right height {hr}"
        )
    h = max(hl, hr) + 1
    if node.height != h:
        raise AssertionError(f"stored height {node.height} at {key!r}, actual {h}")
    return nl + nr + 1, h


class AVLTree:
    """Ordered bytes -> bytes map whose versions are cheap, immutable snapshots."""

    __slots__ = ("_root", "_size")

    _root: Node | None
    _size: int

    def __init__(self) -> None:
        self._root = None
        self._size = 0

    # ---- updates -------------------------------------------------------

    def put(self, key: bytes, value: bytes) -> bool:
        """Insert or replace; True if the key was new.

        Iterative descent records the path, then a fresh path is built bottom-up
        and published with a single root assignment.
        """
        path: list[Node] = []
        push = path.append
        node = self._root
        while node is not None:
            nk = node.key
            if key < nk:
                push(node)
                node = node.left
            elif nk < key:
                push(node)
                node = node.right
            else:
                break
        _Node = Node
        i = len(path) - 1
        if node is not None:
            # Replace: shape and heights are unchanged, copy the path verbatim.
            new = _Node(node.key, value, node.left, node.right, node.height)
            while i >= 0:
                p = path[i]
                if key < p.key:
                    new = _Node(p.key, p.value, new, p.right, p.height)
                else:
                    new = _Node(p.key, p.value, p.left, new, p.height)
                i -= 1
            self._root = new
            return False
        new = _Node(key, value, None, None, 1)
        while i >= 0:
            p = path[i]
            i -= 1
            pk = p.key
            if key < pk:
                r = p.right
                hr = r.height if r is not None else 0
                hn = new.height
                if hn > hr + 1:
                    new = _balance(pk, p.value, new, r)
                else:
                    new = _Node(pk, p.value, new, r, (hn if hn > hr else hr) + 1)
            else:
                left = p.left
                hl = left.height if left is not None else 0
                hn = new.height
                if hn > hl + 1:
                    new = _balance(pk, p.value, left, new)
                else:
                    new = _Node(pk, p.value, left, new, (hn if hn > hl else hl) + 1)
            if new.height == p.height:
                # Subtree height restored: ancestors only need plain copies.
                while i >= 0:
                    p = path[i]
                    if key < p.key:
                        new = _Node(p.key, p.value, new, p.right, p.height)
                    else:
                        new = _Node(p.key, p.value, p.left, new, p.height)
                    i -= 1
                break
        self._size += 1
        self._root = new
        return True

    def delete(self, key: bytes) -> bool:
        """Remove key; True if it was present.  A miss allocates nothing."""
        path: list[Node] = []
        push = path.append
        node = self._root
        while node is not None:
            nk = node.key
            if key < nk:
                push(node)
                node = node.left
            elif nk < key:
                push(node)
                node = node.right
            else:
                break
        if node is None:
            return False
        left = node.left
        right = node.right
        new: Node | None
        if left is None:
            new = right
        elif right is None:
            new = left
        else:
            # Two children: splice in the successor (min of the right subtree).
            spine: list[Node] = []
            m = right
            while m.left is not None:
                spine.append(m)
                m = m.left
            sub = m.right
            j = len(spine) - 1
            while j >= 0:
                s = spine[j]
                sub = _balance(s.key, s.value, sub, s.right)
                j -= 1
            new = _balance(m.key, m.value, left, sub)
        i = len(path) - 1
        while i >= 0:
            p = path[i]
            i -= 1
            if key < p.key:
                new = _balance(p.key, p.value, new, p.right)
            else:
                new = _balance(p.key, p.value, p.left, new)
            if new.height == p.height:
                # Height unchanged here, so no ancestor can need a rotation.
                while i >= 0:
                    p = path[i]
                    if key < p.key:
                        new = Node(p.key, p.value, new, p.right, p.height)
                    else:
                        new = Node(p.key, p.value, p.left, new, p.height)
                    i -= 1
                break
        self._size -= 1
        self._root = new
        return True

    # ---- point reads ---------------------------------------------------

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        """Look up key; iterative so the hot read path makes no Python calls."""
        node = self._root
        while node is not None:
            nk = node.key
            if key < nk:
                node = node.left
            elif nk < key:
                node = node.right
            else:
                return node.value
        return default

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes):
            return False
        node = self._root
        while node is not None:
            nk = node.key
            if key < nk:
                node = node.left
            elif nk < key:
                node = node.right
            else:
                return True
        return False

    def size(self) -> int:
        """Number of keys, kept as a counter so it is O(1)."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def height(self) -> int:
        """Height of the tree (0 when empty); O(1) because nodes store heights."""
        root = self._root
        return root.height if root is not None else 0

    def first(self) -> tuple[bytes, bytes] | None:
        """Smallest (key, value), or None when empty."""
        node = self._root
        if node is None:
            return None
        while node.left is not None:
            node = node.left
        return node.key, node.value

    def last(self) -> tuple[bytes, bytes] | None:
        """Largest (key, value), or None when empty."""
        node = self._root
        if node is None:
            return None
        while node.right is not None:
            node = node.right
        return node.key, node.value

    # ---- ordered reads -------------------------------------------------
    # Each of these reads self._root once, so a concurrent writer cannot make
    # them observe a mix of two versions.

    def __iter__(self) -> Iterator[bytes]:
        """Keys ascending, lazily, over the version current when iteration starts."""
        for key, _ in self.iter_items():
            yield key

    def iter_items(self, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Lazily yield (key, value) ascending from the first key >= start.

        Uses an explicit stack (depth <= tree height) rather than recursion, and
        pins the root at the first next() so the stream is one consistent version.
        """
        stack: list[Node] = []
        push = stack.append
        pop = stack.pop
        node = self._root
        if start is None:
            while node is not None:
                push(node)
                node = node.left
        else:
            # Only nodes >= start go on the stack; smaller ones are skipped rightwards.
            while node is not None:
                if node.key < start:
                    node = node.right
                else:
                    push(node)
                    node = node.left
        while stack:
            node = pop()
            yield node.key, node.value
            child = node.right
            while child is not None:
                push(child)
                child = child.left

    # Full scans use a recursive closure (depth = tree height, ~30 at 10^6 keys):
    # in CPython that is markedly faster than draining a generator.

    def keys(self) -> list[bytes]:
        """All keys ascending."""
        out: list[bytes] = []
        append = out.append

        def walk(n: Node) -> None:
            if n.left is not None:
                walk(n.left)
            append(n.key)
            if n.right is not None:
                walk(n.right)

        root = self._root
        if root is not None:
            walk(root)
        return out

    def values(self) -> list[bytes]:
        """All values in key order."""
        out: list[bytes] = []
        append = out.append

        def walk(n: Node) -> None:
            if n.left is not None:
                walk(n.left)
            append(n.value)
            if n.right is not None:
                walk(n.right)

        root = self._root
        if root is not None:
            walk(root)
        return out

    def items(self) -> list[tuple[bytes, bytes]]:
        """All (key, value) pairs in key order."""
        out: list[tuple[bytes, bytes]] = []
        append = out.append

        def walk(n: Node) -> None:
            if n.left is not None:
                walk(n.left)
            append((n.key, n.value))
            if n.right is not None:
                walk(n.right)

        root = self._root
        if root is not None:
            walk(root)
        return out

    def range(
        self, start: bytes | None = None, stop: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Pairs with start <= key < stop (None = unbounded).

        At most ``limit`` pairs when limit is a positive int; None, 0 or a
        negative limit means no limit (0 is protobuf's "unset").
        """
        out: list[tuple[bytes, bytes]] = []
        if start is not None and stop is not None and not start < stop:
            return out
        n = limit if limit is not None and limit > 0 else -1
        if n == -1 and stop is None:
            out.extend(self.iter_items(start))
            return out
        append = out.append
        for item in self.iter_items(start):
            if stop is not None and not item[0] < stop:
                break
            append(item)
            n -= 1
            if n == 0:
                break
        return out

    # ---- snapshots and debugging ----------------------------------------

    @classmethod
    def from_sorted(cls, keys: Sequence[bytes], values: Sequence[bytes]) -> AVLTree:
        """Build from strictly ascending keys and their values in O(n): a joiner's copy.

        Splitting at the middle gives a complete-as-possible tree, so heights
        differ by at most one everywhere and the result is a valid AVL tree.
        Two flat sequences rather than pairs: a million short-lived tuples would
        leave the heap fragmented for the life of the node.
        """
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        for i in range(1, len(keys)):
            if not keys[i - 1] < keys[i]:
                raise ValueError(f"keys not strictly ascending at {keys[i]!r}")

        def build(lo: int, hi: int) -> Node | None:
            if lo >= hi:
                return None
            mid = (lo + hi) // 2
            left = build(lo, mid)
            right = build(mid + 1, hi)
            lh = left.height if left is not None else 0
            rh = right.height if right is not None else 0
            return Node(keys[mid], values[mid], left, right, (lh if lh > rh else rh) + 1)

        t = cls()
        t._root = build(0, len(keys))
        t._size = len(keys)
        return t

    def copy(self) -> AVLTree:
        """O(1) snapshot: shares every node, which is safe because nodes never change."""
        t = AVLTree.__new__(AVLTree)
        t._root = self._root
        t._size = self._size
        return t

    def check(self) -> None:
        """Raise AssertionError on the first broken invariant (order, balance, heights, size)."""
        count, _ = _check(self._root, None, None)
        if count != self._size:
            raise AssertionError(f"stored size {self._size} != node count {count}")

    def __repr__(self) -> str:
        return f"<AVLTree size={self._size} height={self.height()}>"
