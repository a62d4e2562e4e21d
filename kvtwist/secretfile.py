"""Secrets read from files: the cluster key, the client token.

The node, the client shell and the admin all load one, so the checks live
here, apart from the chain and the client that use them: a secret file must
exist, be private to its owner and hold enough bytes to be worth guessing.
"""

from __future__ import annotations

import os
import stat

MIN_SECRET_BYTES = 16


class KeyFileError(ValueError):
    """A secret file (cluster key, client token) is unusable; one line for the operator."""


def load_secret(path: str, what: str, min_bytes: int = MIN_SECRET_BYTES) -> bytes:
    """Read a shared secret, refusing files that are missing, short or open to others.

    One trailing newline is dropped, so ``openssl rand -hex 32 > FILE`` works.
    ``what`` names the secret in the messages ("cluster key", "token").
    """
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except OSError as e:
        raise KeyFileError(f"{what} file {path}: {e.strerror}") from None
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{what} file {path} is accessible by others "
            f"(mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it"
        )
    key = data.removesuffix(b"\n").removesuffix(b"\r")
    if not key:
        raise KeyFileError(f"{what} file {path} is empty")
    if len(key) < min_bytes:
        raise KeyFileError(
            f"{what} file {path} holds {len(key)} bytes; at least {min_bytes} needed"
        )
    return key
