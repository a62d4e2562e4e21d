"""In-memory stand-ins shared by the unit tests: a coordinator and a chain of nodes.

:mod:`tests.fakes.coordinator` answers what a replica asks of ZooKeeper from
a znode list in memory; :mod:`tests.fakes.chain` wires replicas together with
iosim pumps on one clock.  mypy checks this package (pyproject.toml), so a
fake that stops matching :class:`kvtwist.coordinator.Coordinator` fails it.
"""
