"""Profile a standalone node under kvtwist-bench load with py-spy.

    .venv/bin/pip install py-spy
    .venv/bin/python benchmarks/profile_node.py --workload get --connections 4 --pipeline 32

Starts a ``twistd -n kvnode`` process, preloads ``--keys`` keys, runs the bench
and samples the node meanwhile (``py-spy record --format raw``), then prints
where each thread spent its samples: the share of the reactor thread in each
function (inclusive and self) and of every other thread.  ``--raw FILE`` keeps
the collapsed stacks for a flame graph.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kvtwist.procs import NodeProcess  # noqa: E402


def summarize(raw: Path, top: int = 30) -> str:
    threads: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    main_total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_text)
        frames = stack.split(";")
        thread = frames[0]
        threads[thread] += n
        if "MainThread" not in thread:
            continue
        main_total += n
        self_[frames[-1]] += n
        for f in set(frames[1:]):
            incl[f] += n
    total = sum(threads.values()) or 1
    out = [f"{total} samples; by thread:"]
    for t, c in threads.most_common():
        out.append(f"  {c / total:6.1%}  {t}")
    out.append(f"reactor thread, inclusive (of its {main_total} samples):")
    for f, c in incl.most_common(top):
        out.append(f"  {c / max(1, main_total):6.1%}  {f}")
    out.append("reactor thread, self:")
    for f, c in self_.most_common(top):
        out.append(f"  {c / max(1, main_total):6.1%}  {f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="get", choices=("get", "put", "mixed"))
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--pipeline", type=int, default=32)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--raw", help="keep py-spy's collapsed stacks here")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("node_args", nargs="*", help="extra kvnode options (after --)")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        p.error("py-spy not found: .venv/bin/pip install py-spy")
    bench = [sys.executable, "-m", "kvtwist.bench.cli"]
    node = NodeProcess(args=args.node_args).start()
    try:
        subprocess.run(
            [
                *bench,
                "--target",
                node.address,
                "--workload",
                "put",
                "--key-dist",
                "sequential",
                "--keys",
                str(args.keys),
                "--requests",
                str(args.keys),
                "--connections",
                "4",
                "--pipeline",
                "32",
                "--quiet",
                "--progress",
                "never",
            ],
            check=False,
            cwd=ROOT,
        )
        load = subprocess.Popen(
            [
                *bench,
                "--target",
                node.address,
                "--workload",
                args.workload,
                "--keys",
                str(args.keys),
                "--connections",
                str(args.connections),
                "--pipeline",
                str(args.pipeline),
                "--duration",
                str(args.duration + 2),
                "--progress",
                "never",
            ],
            cwd=ROOT,
        )
        raw = Path(args.raw) if args.raw else Path(tempfile.mkdtemp()) / "node.txt"
        assert node.proc is not None
        subprocess.run(
            [
                spy,
                "record",
                "-p",
                str(node.proc.pid),
                "-d",
                str(int(args.duration)),
                "-r",
                str(args.rate),
                "-f",
                "raw",
                "-o",
                str(raw),
                "--threads",
                "--nonblocking",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        load.wait()
        print(summarize(raw, args.top))
    finally:
        node.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
