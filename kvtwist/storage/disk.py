"""Every file operation the storage layer makes, behind one seam.

``RealDisk`` maps them onto ``os``; ``FakeDisk`` (fakedisk.py) keeps files in
memory and can lose unsynced bytes or fail on cue, so crash and error paths are
tested without a real disk.
"""

from __future__ import annotations

import fcntl
import os
from typing import Protocol


class DiskFile(Protocol):
    """A file open for writing at its end."""

    def write(self, data: bytes) -> None: ...

    def fsync(self) -> None: ...

    def truncate(self, size: int) -> None: ...

    def close(self) -> None: ...


class DiskLock(Protocol):
    def close(self) -> None: ...


class Disk(Protocol):
    """File operations; every method raises OSError as ``os`` would."""

    def open_append(self, path: str) -> DiskFile:
        """Open for appending, creating the file if it is missing."""
        ...

    def create(self, path: str) -> DiskFile:
        """Create (or empty) a file and open it for writing."""
        ...

    def read(self, path: str, length: int = -1) -> bytes:
        """The first ``length`` bytes (the whole file when -1), in one large read."""
        ...

    def size(self, path: str) -> int: ...

    def rename(self, src: str, dst: str) -> None: ...

    def remove(self, path: str) -> None: ...

    def listdir(self, path: str) -> list[str]: ...

    def makedirs(self, path: str) -> None: ...

    def fsync_dir(self, path: str) -> None:
        """Make the directory's entries (creates, renames, removes) durable."""
        ...

    def exists(self, path: str) -> bool: ...

    def lock(self, path: str) -> DiskLock:
        """Take an exclusive lock on ``path`` (created if missing) without waiting.

        Raises BlockingIOError when another holder has it.
        """
        ...


class RealFile:
    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def fsync(self) -> None:
        os.fsync(self.fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class RealLock:
    """An flock held on an open descriptor: the kernel drops it if the process dies."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)  # closing the descriptor releases the flock


class RealDisk:
    def open_append(self, path: str) -> DiskFile:
        return RealFile(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644))

    def create(self, path: str) -> DiskFile:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        return RealFile(os.open(path, flags, 0o644))

    def read(self, path: str, length: int = -1) -> bytes:
        with open(path, "rb", buffering=0) as f:
            if length >= 0:
                return f.read(length)
            size = os.fstat(f.fileno()).st_size
            data = f.read(size)  # one read the size of the file, not a growing buffer
            rest = f.read()
            return data + rest if rest else data

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def lock(self, path: str) -> DiskLock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        return RealLock(fd)


__all__ = ["Disk", "DiskFile", "DiskLock", "RealDisk"]
