"""Recovery time of a data directory: a snapshot of N keys plus a log after it.

    .venv/bin/python -m benchmarks.recovery_bench [--keys 1000000] [--log 100000]

Builds the directory with 16-byte keys and 32-byte values (the snapshot is
written at N, then ``--log`` overwrites and inserts are logged after it), then
times ``DataDir.open()`` and reports disk bytes per key.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import tempfile
import time

from kvtwist.storage import DataDir, FsyncPolicy, LogRecord
from kvtwist.tree import BTree


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def build(path: str, n: int, log: int, rng: random.Random) -> None:
    keys = sorted({f"{rng.getrandbits(64):016x}".encode() for _ in range(n + n // 100)})[:n]
    values = [rng.randbytes(32) for _ in keys]
    dd = DataDir(path, fsync=FsyncPolicy.ALWAYS)
    dd.open()
    shuffled = list(range(n))
    rng.shuffle(shuffled)
    for i in range(0, n, 2000):
        first = dd.last_seq + 1
        batch = shuffled[i : i + 2000]
        dd.append(
            [LogRecord(first + j, True, keys[k], values[k], epoch=1) for j, k in enumerate(batch)]
        )
    seq = dd.begin_snapshot()
    dd.write_snapshot(seq, BTree.from_sorted(keys, values), dd.epochs, [])
    for i in range(0, log, 2000):
        first = dd.last_seq + 1
        dd.append(
            [
                LogRecord(first + j, True, rng.choice(keys), rng.randbytes(32), epoch=2)
                for j in range(min(2000, log - i))
            ]
        )
    dd.close()


def measure(keys: int, log: int, runs: int, parent: str | None = None) -> dict[str, float]:
    """Build a directory of ``keys`` keys plus ``log`` logged writes; time its recovery."""
    parent = tempfile.mkdtemp(dir=parent)
    path = os.path.join(parent, "data")
    try:
        t0 = time.perf_counter()
        build(path, keys, log, random.Random(1))
        out: dict[str, float] = {"build_s": time.perf_counter() - t0, "keys": keys, "log": log}
        snap = du(os.path.join(path, "snap"))
        newest = max(os.listdir(os.path.join(path, "snap")))
        out["snapshot_bytes_per_key"] = os.path.getsize(os.path.join(path, "snap", newest)) / keys
        out["dir_bytes_per_key"] = (snap + du(os.path.join(path, "wal"))) / keys
        times = []
        for _ in range(runs):
            gc.collect()
            dd = DataDir(path)
            t0 = time.perf_counter()
            r = dd.open()
            times.append(time.perf_counter() - t0)
            dd.close()
            del r
        out["recovery_s"] = min(times)
        out["recovery_max_s"] = max(times)
        return out
    finally:
        shutil.rmtree(parent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--log", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="parent directory (default: a temp dir)")
    args = ap.parse_args()
    r = measure(args.keys, args.log, args.runs, args.dir)
    print(f"built in {r['build_s']:.1f} s")
    print(
        f"disk: snapshot {r['snapshot_bytes_per_key']:.1f} B/key; whole directory"
        f" {r['dir_bytes_per_key']:.1f} B/key (the log still holds everything since the"
        " previous snapshot)"
    )
    print(f"open(): {r['recovery_s']:.2f} s best, {r['recovery_max_s']:.2f} s worst of {args.runs}")


if __name__ == "__main__":
    main()
