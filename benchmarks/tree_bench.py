"""Benchmark 1: the tree alone — cost per operation against size, and height.

For each size n and key order (random: keys inserted and looked up in a
shuffled order; sequential: in ascending order) it builds a tree of n keys and
reports, in nanoseconds per operation:

* ``insert``: the inserts that take the tree from n/2 to n keys;
* ``get``: lookups of existing keys (in that order), on the full tree;
* ``replace``: puts over existing keys (path copy, no rebalancing);
* ``delete`` and ``insert_full``: a tenth of the keys (random ones, or the
  last ones in sequential order) deleted from the full tree and put back, so
  each of these runs on a tree of 0.9n to n keys.

Small trees are rebuilt and re-measured until enough operations were timed,
so every figure averages at least ``--min-ops`` operations.  Also reported:
the height at n (``BTree.height``: the tree read as a binary search tree)
against the AVL bound ``1.4405 * log2(n + 2) - 0.3277``, and
the resident memory the largest random tree added, per key.

    python benchmarks/tree_bench.py --sizes 1000,10000,100000,1000000 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kvtwist.bench.workload import key_name  # noqa: E402
from kvtwist.tree import BTree  # noqa: E402

VALUE = b"v" * 32


def avl_bound(n: int) -> float:
    """The maximum height of an AVL tree with n nodes (Knuth)."""
    return 1.4405 * math.log2(n + 2) - 0.3277


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(n: int, order: str, min_ops: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    keys = [key_name(i) for i in range(n)]
    if order == "random":
        rng.shuffle(keys)
    half = n // 2
    lookups = keys[:]
    if order == "random":
        rng.shuffle(lookups)
    t_ins = t_get = t_rep = 0.0
    n_ins = n_get = n_rep = 0
    tree = BTree()
    height = 0
    gc.collect()
    while n_ins < min_ops or n_get < min_ops or n_rep < min_ops:
        tree = BTree()
        put = tree.put
        for k in keys[:half]:
            put(k, VALUE)
        second = keys[half:]
        t0 = time.perf_counter()
        for k in second:
            put(k, VALUE)
        t_ins += time.perf_counter() - t0
        n_ins += len(second)
        get = tree.get
        t0 = time.perf_counter()
        for k in lookups:
            get(k)
        t_get += time.perf_counter() - t0
        n_get += len(lookups)
        value2 = b"w" * 32
        t0 = time.perf_counter()
        for k in lookups:
            put(k, value2)
        t_rep += time.perf_counter() - t0
        n_rep += len(lookups)
        height = tree.height()
    assert len(tree) == n
    t_del, n_del, t_full, n_full = churn(tree, keys, order, min_ops, rng)
    assert len(tree) == n
    return {
        "n": n,
        "order": order,
        "insert_ns": t_ins / n_ins * 1e9,
        "get_ns": t_get / n_get * 1e9,
        "replace_ns": t_rep / n_rep * 1e9,
        "delete_ns": t_del / n_del * 1e9,
        "insert_full_ns": t_full / n_full * 1e9,
        "ops_timed": {
            "insert": n_ins,
            "get": n_get,
            "replace": n_rep,
            "delete": n_del,
            "insert_full": n_full,
        },
        "height": height,
        "avl_bound": avl_bound(n),
        "log2_n": math.log2(n),
    }


def churn(
    tree: BTree, keys: list[str], order: str, min_ops: int, rng: random.Random
) -> tuple[float, int, float, int]:
    """Delete a tenth of the keys and put them back until min_ops of each were timed.

    Returns (delete seconds, deletes, insert seconds, inserts).
    """
    m = max(1, len(keys) // 10)
    t_del = t_ins = 0.0
    done = 0
    while done < min_ops:
        victims = keys[-m:] if order == "sequential" else rng.sample(keys, m)
        delete, put = tree.delete, tree.put
        t0 = time.perf_counter()
        for k in victims:
            delete(k)
        t_del += time.perf_counter() - t0
        t0 = time.perf_counter()
        for k in victims:
            put(k, VALUE)
        t_ins += time.perf_counter() - t0
        done += m
    return t_del, done, t_ins, done


def tree_memory(n: int, seed: int) -> dict[str, Any]:
    """RSS the tree adds per key (random insertion order, 16-byte keys, 32-byte values)."""
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    gc.collect()
    before = rss_bytes()
    tree = BTree()
    for i in order:
        tree.put(key_name(i), bytes(bytearray(VALUE)))  # a value object per key, as in a node
    gc.collect()
    after = rss_bytes()
    del order
    per_key = (after - before) / n
    return {
        "n": n,
        "rss_delta_bytes": after - before,
        "per_key_bytes": per_key,
        "raw_bytes_per_key": 16 + 32,
        "overhead_per_key_bytes": per_key - 48,
        "height": tree.height(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000,1000000")
    p.add_argument("--orders", default="random,sequential")
    p.add_argument("--min-ops", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--memory", action="store_true", help="also measure RSS per key at max size")
    p.add_argument("--json", help="write results here")
    p.add_argument("--no-gc", action="store_true", help="run with the cyclic collector off")
    args = p.parse_args(argv)
    if args.no_gc:
        gc.disable()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for order in args.orders.split(","):
        for n in sizes:
            row = measure(n, order, args.min_ops, args.seed)
            rows.append(row)
            print(
                f"{order:10s} n={n:>8d}  insert {row['insert_ns']:7.0f} ns  "
                f"get {row['get_ns']:7.0f} ns  replace {row['replace_ns']:7.0f} ns  "
                f"delete {row['delete_ns']:7.0f} ns  insert at n {row['insert_full_ns']:7.0f} ns  "
                f"height {row['height']} (AVL bound {row['avl_bound']:.1f})",
                flush=True,
            )
    out: dict[str, Any] = {"rows": rows}
    if args.memory:
        out["memory"] = tree_memory(max(sizes), args.seed)
        m = out["memory"]
        print(
            f"tree memory at n={m['n']}: {m['per_key_bytes']:.0f} B/key "
            f"({m['overhead_per_key_bytes']:.0f} B over the raw 48)",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
