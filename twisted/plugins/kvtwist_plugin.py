"""twistd dropin: ``twistd -n kvnode``."""

from importlib import metadata

from twisted.application.service import ServiceMaker


class _NodeMaker(ServiceMaker):
    @property
    def options(self) -> type:
        base = super().options

        class Options(base):  # type: ignore[misc, valid-type]
            def opt_version(self) -> None:
                """Display kvtwist's and Twisted's versions and exit."""
                try:
                    version = metadata.version("kvtwist")
                except metadata.PackageNotFoundError:
                    version = "unknown (not installed)"
                print("kvtwist version:", version)
                super().opt_version()

        return Options


kvnode = _NodeMaker(
    "kvtwist node",
    "kvtwist.tap",
    "A kvtwist key-value node (standalone, or a chain member with --zk).",
    "kvnode",
)
