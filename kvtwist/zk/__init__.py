"""The ZooKeeper adapter shared by chain nodes and clients.

kazoo is blocking and calls back on its own threads; everything here hands
Twisted code only Deferreds and reactor-thread callbacks.  The kazoo traps this
package is built around:

* A connection-state listener runs on kazoo's connection thread and must not
  block or call ZooKeeper (that deadlocks), so the listener only hops to the
  reactor with ``callFromThread`` and all work is started from there
  (:mod:`~kvtwist.zk.session`).
* Watches are one-shot and can be lost across SUSPENDED -> CONNECTED (kazoo
  fires and forgets them when the connection drops), so the membership is
  re-read, and the watch re-armed, after every watch event and every reconnect
  (:mod:`~kvtwist.zk.members`).
* Ephemeral nodes die with the session (LOST) and are not recreated for us:
  whoever registered must register again when ``on_state`` says "lost"
  (:mod:`~kvtwist.zk.records`).

The pieces, each with one job, and :class:`ZooKeeper` composed of them:

* :mod:`~kvtwist.zk.session`: the KazooClient, start/stop/drop/resume, state
  events, the negotiated session timeout (the one hook into kazoo's internals);
* :mod:`~kvtwist.zk.members`: membership reads and the watch;
* :mod:`~kvtwist.zk.records`: the root, registration, the chain record, the
  waiting list;
* :mod:`~kvtwist.zk.locks`: the join lock;
* :mod:`~kvtwist.zk.probes`: the lease probes;
* :mod:`~kvtwist.zk.acl`: the ACLs ``--zk-auth`` creates and checks.

The chain layout and its values (:class:`Member`, :class:`Membership`, the
address format) are in :mod:`kvtwist.membership`; the lease arithmetic is
:class:`kvtwist.lease.Lease`.  This package holds only the I/O.
"""

from __future__ import annotations

import logging

from kvtwist.zk.acl import digest_acl, open_to_writes
from kvtwist.zk.adapter import ZooKeeper
from kvtwist.zk.records import RegistrationRaced
from kvtwist.zk.session import (
    RESUME_FIRST_DELAY,
    RESUME_MAX_DELAY,
    RESUME_TIMEOUT,
    hook_negotiated_timeout,
)

__all__ = [
    "RESUME_FIRST_DELAY",
    "RESUME_MAX_DELAY",
    "RESUME_TIMEOUT",
    "RegistrationRaced",
    "ZooKeeper",
    "digest_acl",
    "hook_negotiated_timeout",
    "open_to_writes",
]

# kazoo logs every connection attempt at INFO; keep it to warnings unless the
# application configured the "kazoo" logger itself.
if logging.getLogger("kazoo").level == logging.NOTSET:
    logging.getLogger("kazoo").setLevel(logging.WARNING)
