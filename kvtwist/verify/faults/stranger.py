"""The stranger fault: a process without the cluster key speaking the chain protocol
to every member (kvtwist.verify.stranger)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

from kvtwist.procs import node_env
from kvtwist.verify.faults.base import Active, Healthy

if TYPE_CHECKING:
    from kvtwist.verify.nemesis import Nemesis


def stranger(nem: Nemesis, healthy: Healthy) -> Active:
    members = nem.w.members()
    n = nem.counts.get("stranger", 0) + 1
    log = nem.w.report_dir / f"stranger-{n}.log"
    command = [
        sys.executable,
        "-m",
        "kvtwist.verify.stranger",
        "--config",
        str(nem.w.config()),
        "--keys",
        str(nem.w.keys),
        "--seed",
        str(nem.w.seed * 1000 + n),
    ]
    for name, port in members:
        command += ["--member", f"{name}={port}"]
    err = open(log, "wb")  # noqa: SIM115 (closed when the process ends)
    proc = subprocess.Popen(
        command,
        env=node_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=err,
        start_new_session=True,
    )
    nem.w.event("stranger", f"stranger #{n} at {len(members)} members")

    def over(now: float) -> bool:
        return proc.poll() is not None

    def collect() -> None:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0].decode(errors="replace").strip().splitlines()
        err.close()
        try:
            result = json.loads(out[-1])
        except (IndexError, ValueError):
            result = {"attempts": [], "accepted": 0, "error": f"no summary (see {log.name})"}
        nem.w.stranger_results.append(result)
        nem.w.event(
            "stranger-end",
            f"stranger #{n}: {result['accepted']} of {len(result['attempts'])} attempts accepted",
        )

    return Active("stranger", [], False, poll=over, finish=collect)
