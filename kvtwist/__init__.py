"""kvtwist: a chain-replicated key-value store on Twisted."""

from importlib import metadata


def _version() -> str:
    """The installed distribution's version: one source of truth, pyproject.toml."""
    try:
        return metadata.version("kvtwist")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


__version__ = _version()
