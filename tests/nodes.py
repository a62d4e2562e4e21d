"""Real ``twistd -n kvnode`` processes for integration tests (see kvtwist.procs)."""

from __future__ import annotations

from kvtwist.procs import (
    PACKAGE_ROOT,
    TWISTD,
    NodeProcess,
    RawClient,
    dump,
    free_port,
    node_env,
    port_open,
    wait_for,
)

ROOT = PACKAGE_ROOT


def env() -> dict[str, str]:
    return node_env()


__all__ = [
    "ROOT",
    "TWISTD",
    "NodeProcess",
    "RawClient",
    "dump",
    "env",
    "free_port",
    "port_open",
    "wait_for",
]
