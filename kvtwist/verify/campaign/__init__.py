"""The parts of a ``kvtwist-torture`` campaign, one module per job; ``kvtwist.verify.torture``
composes them.

- ``cluster``: ZooKeeper, the proxy and the nodes under test, and the chain ZooKeeper lists;
- ``clients``: the workload processes whose history is checked;
- ``watch``: nodes that exit by themselves or stay outside the chain, and their replacements;
- ``log``: the events and the progress line;
- ``ending``: healing, the liveness probe, settling, the final reads, the findings;
- ``verdict``: the checks the findings must pass;
- ``report``: report.json, the timeline and the summary line.
"""
