"""twistd dropin: ``twistd -n kvnode``."""

from twisted.application.service import ServiceMaker

kvnode = ServiceMaker(
    "kvtwist node",
    "kvtwist.tap",
    "A kvtwist key-value node (standalone, or a chain member with --zk).",
    "kvnode",
)
