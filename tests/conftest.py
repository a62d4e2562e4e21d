"""The unit and the integration suite, for pytest.

Every test is marked ``unit`` or ``integration``:

* ``pytest -m unit``: tests that run in memory (StringTransport,
  MemoryReactorClock, iosim pumps, the fakes, pure functions), in well under a
  minute;
* ``pytest -m integration``: tests that start processes: ``twistd`` nodes,
  ZooKeeper, the campaign, the shell, the admin, ``protoc`` or any other
  program, and talk to them over real sockets;
* plain ``pytest`` runs both.

The integration tests are listed below, by module (every test in it) or by
class; every other test is a unit test.  The list is kept honest by a check
rather than by care: a test marked ``unit`` that starts a process (seen by an
audit hook on ``subprocess.Popen``, ``os.posix_spawn``, ``os.fork``,
``os.exec*``, ``os.system``, which is what the subprocess module, Twisted's
``spawnProcess`` and ``kvtwist.procs`` come down to) fails, with a message
saying to list it here.  A process is the one thing every integration test
has, whatever it imports: run alone, the unit suite cannot reach a node or a
ZooKeeper without starting one.  Sockets a test opens to itself (a proxy
thread, a TLS handshake over loopback in its own reactor) start nothing and
stay unit tests.  An entry naming a class its module no longer has is an
error too (and so is one naming a module that is gone), so that a renamed
class is not quietly moved into the unit suite.

``trial tests`` ignores this file and runs everything.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest

# module -> the classes in it that start processes; None: the whole module.
INTEGRATION: dict[str, frozenset[str] | None] = {
    "test_admin": None,
    "test_admin_cluster": frozenset({"AdminClusterTests"}),
    "test_admin_move": None,
    "test_backup_proc": None,
    "test_bench": frozenset({"BenchRunTests", "ReferenceServerTests", "ChainTargetTests"}),
    "test_bench_keys": frozenset({"KeyPrefixTests", "HelpTests"}),
    "test_blocking": None,
    "test_chain": None,
    "test_cluster_server": None,
    "test_cluster_move": None,
    "test_cluster_split": None,
    "test_cluster_balance": None,
    "test_cluster_metrics": None,
    "test_torture_cluster": None,
    "test_client_token": frozenset({"ShellTokenTests"}),
    "test_clock_step": None,
    "test_cluster": frozenset({"ClusterTests"}),
    "test_cluster_zk": frozenset({"ClusterStoreTests", "ClusterClientTests"}),
    "test_durability": None,
    "test_foreign_chain": None,
    "test_hostile": frozenset({"HostileTests"}),
    "test_joining_proc": None,
    "test_jsonlog": frozenset({"NodeJSONLogTests"}),
    "test_link_faults": None,
    "test_linksec_proc": frozenset({"KeyedChainProcessTests"}),
    "test_nemesis": frozenset({"ProxyProcess", "WallClockTests"}),
    "test_monitoring_proc": None,
    "test_node": None,
    "test_partition_proc": None,
    "test_plugin": None,
    "test_resp_chain": None,
    "test_resp_tools": None,
    "test_shards_demo": None,
    "test_quiet_logs": frozenset({"NodeWithoutZooKeeperTests"}),
    "test_sdnotify": frozenset({"NotifyProcessTests"}),
    "test_statuspage_proc": frozenset({"StatusPageBrowserTests"}),
    "test_shell": frozenset(
        {"ShellTests", "StdinArgumentTests", "StartupTests", "InteractiveTests"}
    ),
    "test_tls": frozenset({"NodeTLSTests", "PlainNodeTests", "ChainTLSTests"}),
    "test_torture": None,
    "test_verify": frozenset({"Files"}),
    "test_wire": frozenset({"ProtoSyncTests"}),
    "test_zk": frozenset({"ZooKeeperTests"}),
    "test_zk_acl": frozenset({"AdapterACLTests", "NodeACLTests", "AdminACLTests"}),
    "test_zkserver": frozenset({"RestartOnSameData"}),
}

_SPAWN_EVENTS = frozenset(
    {"subprocess.Popen", "os.posix_spawn", "os.fork", "os.forkpty", "os.exec", "os.system"}
)


def is_integration(module: str, cls: str | None) -> bool:
    """Whether the test in class ``cls`` of test module ``module`` is an integration test."""
    if module not in INTEGRATION:
        return False
    classes = INTEGRATION[module]
    return classes is None or cls in classes


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seen: dict[str, set[str]] = {}
    for item in items:
        module = cls = None
        if isinstance(item, pytest.Function):
            module = item.module.__name__.rpartition(".")[2] if item.module else None
            cls = item.cls.__name__ if item.cls else None
        if module is None:
            raise pytest.UsageError(f"{item.nodeid}: not a test function of a module")
        seen.setdefault(module, set()).add(cls or "")
        if is_integration(module, cls):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)
    here = Path(__file__).parent
    stale = [module for module in INTEGRATION if not (here / f"{module}.py").is_file()]
    stale += [
        f"{module}.{name}"
        for module, classes in INTEGRATION.items()
        if classes is not None and module in seen
        for name in sorted(classes - seen[module])
    ]
    if stale:
        raise pytest.UsageError(
            "tests/conftest.py lists integration tests that do not exist: " + ", ".join(stale)
        )


# The unit test running now (set from its setup to the end of its teardown), and
# what it started.
_unit_test: list[pytest.Item] = []
_started: list[str] = []
_lock = threading.Lock()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in _SPAWN_EVENTS and _unit_test:
        what = args[0] if args else ""
        with _lock:
            _started.append(f"{event} {what!r}")


sys.addaudithook(_audit)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("unit") is not None:
        with _lock:
            _started.clear()
        _unit_test[:] = [item]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Any:
    result = yield
    if _unit_test and _unit_test[0] is item:
        _unit_test.clear()
        with _lock:
            started, _started[:] = list(_started), []
        if started:
            pytest.fail(
                f"{item.nodeid} is marked unit but started a process "
                f"({'; '.join(started[:3])}): list its class as integration in "
                "tests/conftest.py",
                pytrace=False,
            )
    return result
