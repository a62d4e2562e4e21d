"""``twistd kvnode --config FILE``: the node's options from a TOML file.

Keys are the long option names (``port = 9000``, ``zk = "127.0.0.1:2181"``,
``in-memory = true``).  The command line wins over the file and the file over
the defaults: the file's values are put in place before the command line is
parsed over them.  A key that is no option, or one that would hold a secret
in the file itself, ends the node with one line and exit status 2, as a bad
``--zk`` does: a typo in a config file must not start a node that differs
from the one its operator wrote down.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable, Sequence
from typing import Any

#: exit status of a usage error (as for a --zk that does not parse)
USAGE = 2

#: keys that would carry a secret inline -> the option that reads it from a file
SECRET_KEYS = {
    "zk-auth": "zk-auth-file",
    "cluster-key": "cluster-key-file",
    "auth-token": "auth-token-file",
    "token": "auth-token-file",
    "password": "zk-auth-file",
}


class ConfigError(ValueError):
    """The config file cannot be used; one line for the operator."""


def config_path(argv: Sequence[str]) -> str | None:
    """The FILE of ``--config FILE`` or ``--config=FILE`` in ``argv``, if any."""
    for i, arg in enumerate(argv):
        if arg == "--":
            return None
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a file")
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def load(
    path: str,
    parameters: dict[str, Callable[[str], Any] | None],
    flags: Sequence[str],
) -> dict[str, Any]:
    """The option values the file at ``path`` sets, checked and converted.

    ``parameters`` maps each option taking a value to its converter (None:
    kept as a string), ``flags`` names the options that are on or off.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: not TOML: {e}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECRET_KEYS:
            raise ConfigError(
                f"config file {path}: {key!r} would hold a secret in the file; "
                f"put it in a file of its own (mode 600) and name that with "
                f"{SECRET_KEYS[key]!r}"
            )
        if key == "config":
            raise ConfigError(f"config file {path}: 'config' cannot name another file")
        if key in flags:
            if not isinstance(value, bool):
                raise ConfigError(f"config file {path}: {key!r} is a flag: true or false")
            out[key] = 1 if value else 0
        elif key in parameters:
            out[key] = _convert(path, key, value, parameters[key])
        else:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
    return out


def _convert(path: str, key: str, value: Any, convert: Callable[[str], Any] | None) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"config file {path}: {key!r} must be a string or a number")
    if convert is None:
        if not isinstance(value, str):
            raise ConfigError(f"config file {path}: {key!r} must be a string (in quotes)")
        return value
    try:
        return convert(str(value))
    except Exception as e:  # the converters raise UsageError or ValueError
        raise ConfigError(f"config file {path}: {key!r}: {e}") from None


def fail(e: ConfigError) -> None:
    """End with one line and the usage status, before anything starts."""
    print(f"kvtwist: {e}", file=sys.stderr)
    raise SystemExit(USAGE)
