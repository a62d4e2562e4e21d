"""Run redis-py's own tests against the RESP port of a real kvtwist node.

    python scripts/redis_py_suite.py REDIS_PY_SOURCE [-k EXPR] [-- PYTEST_ARGS...]

REDIS_PY_SOURCE is an unpacked redis-py source tree (``pip download redis
--no-binary :all: --no-deps``, then unpack it), whose version should match
the redis-py installed here.  The script starts one ``twistd -n kvnode`` in
memory with ``--resp-port`` and ``--resp-allow-flush`` (redis-py's fixtures
FLUSHDB after each test) on 127.0.0.1, runs that tree's
``tests/test_commands.py`` and ``tests/test_pipeline.py`` with
``--redis-url`` pointing at it, selected by ``-k`` (by default the tests of
the commands kvtwist supports, see ``SUPPORTED``) and by redis-py's marks
for a standalone server (``MARKS``), and stops the node.  The
exit status is pytest's.  docs/redis.md reports what passes and why the rest
fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from kvtwist.procs import NodeProcess, free_port

#: The -k expression of the tests of what kvtwist supports: strings, keys,
#: transactions, pipelines and the connection and server commands it answers.
SUPPORTED = " or ".join(
    f"test_{name}"
    for name in (
        "get", "set", "setnx", "getset", "getdel", "mget", "mset", "msetnx", "delete",
        "del", "unlink", "exists", "rename", "keys", "scan", "strlen", "append",
        "getrange", "setrange", "substr", "incr", "decr", "incrby", "decrby",
        "incrbyfloat", "type", "dbsize", "echo", "ping", "time", "client_setname",
        "client_getname", "client_id", "client_list", "client_info", "client_setinfo",
        "select", "info", "command_count", "wait", "flushdb", "flushall", "watch",
        "unwatch", "multi", "exec", "discard", "pipeline", "transaction",
    )
)
SUITES = ("tests/test_commands.py", "tests/test_pipeline.py")
#: redis-py's own marks for a standalone server without modules or TLS.
MARKS = "not onlycluster and not redismod and not ssl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="an unpacked redis-py source tree")
    parser.add_argument("-k", default=SUPPORTED, help="pytest's -k (default: SUPPORTED)")
    args, more = parser.parse_known_args(argv)
    if more[:1] == ["--"]:
        more = more[1:]
    source = args.source.resolve()
    if not (source / "tests" / "conftest.py").is_file():
        parser.error(f"{source} holds no tests/conftest.py: not a redis-py source tree")
    resp = free_port()
    node = NodeProcess(args=["--in-memory", "--resp-port", str(resp), "--resp-allow-flush"])
    node.start()
    try:
        return subprocess.call(
            [
                sys.executable, "-m", "pytest", *SUITES,
                "--redis-url", f"redis://127.0.0.1:{resp}/0",
                "-k", args.k, "-m", MARKS, "-p", "no:cacheprovider", "-o", "addopts=",
                *more,
            ],
            cwd=source,
        )
    finally:
        node.stop()
        node.cleanup()


if __name__ == "__main__":
    sys.exit(main())
