"""Faults of ZooKeeper itself: paused, or killed and restarted on its data."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kvtwist.verify.faults.base import Active, Healthy

if TYPE_CHECKING:
    from kvtwist.verify.nemesis import Nemesis

ZK_PAUSE_SESSIONS = (1.5, 3.0)
ZK_DOWN_SECONDS = (1.0, 4.0)


def zk_pause(nem: Nemesis, healthy: Healthy) -> Active:
    zk = nem.w.zk
    assert zk is not None
    seconds = nem.sessions(ZK_PAUSE_SESSIONS)
    zk.pause()
    nem.w.event("zk-pause", f"pause ZooKeeper {seconds:.1f}s", seconds=round(seconds, 3))

    def resume() -> None:
        zk.resume()
        nem.w.event("resume", "resume ZooKeeper")

    return Active("zk-pause", [], True, end_at=time.monotonic() + seconds, finish=resume)


def zk_restart(nem: Nemesis, healthy: Healthy) -> Active:
    zk = nem.w.zk
    assert zk is not None
    seconds = nem.rng.uniform(*ZK_DOWN_SECONDS)
    zk.kill()
    nem.w.event(
        "zk-restart", f"kill ZooKeeper, restart in {seconds:.1f}s", seconds=round(seconds, 3)
    )

    def restart() -> None:
        zk.restart()
        nem.w.event("restart", "ZooKeeper restarted")

    return Active("zk-restart", [], True, end_at=time.monotonic() + seconds, finish=restart)
