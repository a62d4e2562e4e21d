"""An in-memory disk that forgets what was not synced and fails on cue.

The model: a file's bytes become durable at its fsync; a name (create, rename,
remove) becomes durable at an fsync of its directory.  ``crash()`` throws away
everything else, as a power cut would.  Directories themselves are durable at
once.  Faults are armed per operation ("write", "fsync", "truncate", "create",
"rename", "remove", "fsync_dir") and fire on the Nth call from then on.
``crash_after(n)`` kills the "process" at the nth changing call from then on:
that call and every later one raise ``Crashed`` until ``crash()``.
"""

from __future__ import annotations

import errno
import os
import posixpath
import threading
from dataclasses import dataclass


class Crashed(Exception):
    """The simulated process died at this disk call; nothing after it happens."""


class _Inode:
    __slots__ = ("data", "synced")

    def __init__(self, data: bytes = b"", synced: bytes = b"") -> None:
        self.data = bytearray(data)
        self.synced = synced


@dataclass
class _Fault:
    countdown: int
    err: int
    times: int | None
    partial: bool


class FakeFile:
    def __init__(self, disk: FakeDisk, path: str, inode: _Inode) -> None:
        self.disk = disk
        self.path = path
        self.inode = inode
        self.closed = False

    def _check(self) -> None:
        if self.closed:
            raise ValueError(f"{self.path} is closed")

    def write(self, data: bytes) -> None:
        self._check()
        self.disk._tick()
        fault = self.disk._fault("write", self.path)
        if fault is not None:
            err, partial = fault
            if partial:
                self.inode.data += data[: len(data) // 2]
            raise OSError(err, os.strerror(err), self.path)
        self.inode.data += data
        self.disk.bytes_written += len(data)

    def fsync(self) -> None:
        self._check()
        self.disk._tick()
        self.disk._wait_fsync()
        fault = self.disk._fault("fsync", self.path)
        if fault is not None:
            raise OSError(fault[0], os.strerror(fault[0]), self.path)
        self.inode.synced = bytes(self.inode.data)
        self.disk.fsyncs += 1

    def truncate(self, size: int) -> None:
        self._check()
        self.disk._tick()
        fault = self.disk._fault("truncate", self.path)
        if fault is not None:
            raise OSError(fault[0], os.strerror(fault[0]), self.path)
        del self.inode.data[size:]

    def close(self) -> None:
        self.closed = True


class FakeLock:
    def __init__(self, disk: FakeDisk, path: str) -> None:
        self.disk = disk
        self.path = path

    def close(self) -> None:
        self.disk._locks.discard(self.path)


class FakeDisk:
    """Implements the ``Disk`` protocol in memory; safe to use from several threads."""

    def __init__(self) -> None:
        self._mutex = threading.RLock()
        self._dirs: set[str] = {"/"}
        self._names: dict[str, _Inode] = {}
        self._durable: dict[str, _Inode] = {}
        self._locks: set[str] = set()
        self._faults: dict[str, list[_Fault]] = {}
        self._hold = False
        self._gate = threading.Condition(self._mutex)
        #: set while some caller is blocked in a held-back fsync
        self.fsync_waiting = threading.Event()
        self.fsyncs = 0
        self.bytes_written = 0
        self._crash_in: int | None = None

    # fault injection

    def fail(
        self,
        op: str,
        err: int = errno.EIO,
        nth: int = 1,
        times: int | None = 1,
        partial: bool = False,
    ) -> None:
        """Make the ``nth`` next call of ``op`` raise OSError(err), for ``times`` calls.

        ``times=None`` fails every call from then on; ``partial`` lets a failing
        write put half of its bytes down first, as a full disk may.
        """
        with self._mutex:
            self._faults.setdefault(op, []).append(_Fault(nth, err, times, partial))

    def crash_after(self, n: int) -> None:
        """Die at the ``n``th changing call from now (1: the very next one)."""
        with self._mutex:
            self._crash_in = n

    def _tick(self) -> None:
        with self._mutex:
            if self._crash_in is not None:
                self._crash_in -= 1
                if self._crash_in <= 0:
                    self._crash_in = 0
                    raise Crashed("simulated crash")

    def heal(self) -> None:
        """Disarm every fault."""
        with self._mutex:
            self._faults.clear()

    def _fault(self, op: str, path: str) -> tuple[int, bool] | None:
        with self._mutex:
            for f in self._faults.get(op, []):
                f.countdown -= 1
                if f.countdown <= 0:
                    if f.times is not None:
                        f.times -= 1
                        if f.times <= 0:
                            self._faults[op].remove(f)
                    return f.err, f.partial
            return None

    def _raise_if(self, op: str, path: str) -> None:
        fault = self._fault(op, path)
        if fault is not None:
            raise OSError(fault[0], os.strerror(fault[0]), path)

    # held-back fsync

    def hold_fsync(self) -> None:
        """From now on fsync blocks (its bytes stay unsynced) until ``release_fsync``."""
        with self._mutex:
            self._hold = True

    def release_fsync(self) -> None:
        with self._mutex:
            self._hold = False
            self._gate.notify_all()

    def _wait_fsync(self) -> None:
        with self._mutex:
            while self._hold:
                self.fsync_waiting.set()
                self._gate.wait()
            self.fsync_waiting.clear()

    # crashes

    def crash(self) -> None:
        """Lose every unsynced byte and every name whose directory was not synced.

        Open files and locks belong to the dead process: they are dropped too.
        """
        with self._mutex:
            fresh: dict[int, _Inode] = {}
            names: dict[str, _Inode] = {}
            for path, inode in self._durable.items():
                new = fresh.get(id(inode))
                if new is None:
                    new = fresh[id(inode)] = _Inode(inode.synced, inode.synced)
                names[path] = new
            self._names = names
            self._durable = dict(names)
            self._locks.clear()
            self._crash_in = None
            self._hold = False
            self._gate.notify_all()

    # inspection, for tests

    def contents(self, path: str) -> bytes:
        with self._mutex:
            return bytes(self._names[self._norm(path)].data)

    def synced(self, path: str) -> bytes:
        """The bytes of ``path`` that a crash now would keep."""
        with self._mutex:
            return self._names[self._norm(path)].synced

    def put(self, path: str, data: bytes) -> None:
        """Overwrite a file's bytes durably (to plant corruption)."""
        with self._mutex:
            p = self._norm(path)
            inode = self._names.get(p)
            if inode is None:
                inode = self._names[p] = self._durable[p] = _Inode()
            inode.data = bytearray(data)
            inode.synced = bytes(data)

    # the Disk protocol

    @staticmethod
    def _norm(path: str) -> str:
        return posixpath.normpath(posixpath.join("/", path))

    def _parent_exists(self, p: str) -> None:
        if posixpath.dirname(p) not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", p)

    def open_append(self, path: str) -> FakeFile:
        with self._mutex:
            p = self._norm(path)
            inode = self._names.get(p)
            if inode is None:
                self._tick()
                self._raise_if("create", p)
                self._parent_exists(p)
                inode = self._names[p] = _Inode()
            return FakeFile(self, p, inode)

    def create(self, path: str) -> FakeFile:
        with self._mutex:
            p = self._norm(path)
            self._tick()
            self._raise_if("create", p)
            self._parent_exists(p)
            inode = self._names.get(p)
            if inode is None:
                inode = self._names[p] = _Inode()
            del inode.data[:]
            return FakeFile(self, p, inode)

    def _get(self, p: str) -> _Inode:
        inode = self._names.get(p)
        if inode is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", p)
        return inode

    def read(self, path: str, length: int = -1) -> bytes:
        with self._mutex:
            data = self._get(self._norm(path)).data
            return bytes(data if length < 0 else data[:length])

    def size(self, path: str) -> int:
        with self._mutex:
            return len(self._get(self._norm(path)).data)

    def rename(self, src: str, dst: str) -> None:
        with self._mutex:
            s, d = self._norm(src), self._norm(dst)
            self._tick()
            self._raise_if("rename", s)
            inode = self._get(s)
            self._parent_exists(d)
            del self._names[s]
            self._names[d] = inode

    def remove(self, path: str) -> None:
        with self._mutex:
            p = self._norm(path)
            self._tick()
            self._raise_if("remove", p)
            self._get(p)
            del self._names[p]

    def listdir(self, path: str) -> list[str]:
        with self._mutex:
            p = self._norm(path)
            if p not in self._dirs:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", p)
            names = [posixpath.basename(n) for n in self._names if posixpath.dirname(n) == p]
            names += [posixpath.basename(n) for n in self._dirs if posixpath.dirname(n) == p]
            return sorted(n for n in names if n)

    def makedirs(self, path: str) -> None:
        with self._mutex:
            p = self._norm(path)
            while p not in self._dirs:
                self._dirs.add(p)
                p = posixpath.dirname(p)

    def fsync_dir(self, path: str) -> None:
        with self._mutex:
            p = self._norm(path)
            self._tick()
            self._raise_if("fsync_dir", p)
            for n in [n for n in self._durable if posixpath.dirname(n) == p]:
                del self._durable[n]
            for n, inode in self._names.items():
                if posixpath.dirname(n) == p:
                    self._durable[n] = inode

    def exists(self, path: str) -> bool:
        with self._mutex:
            p = self._norm(path)
            return p in self._names or p in self._dirs

    def lock(self, path: str) -> FakeLock:
        with self._mutex:
            p = self._norm(path)
            if p in self._locks:
                raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable", p)
            if p not in self._names:
                self._parent_exists(p)
                self._names[p] = self._durable[p] = _Inode()
            self._locks.add(p)
            return FakeLock(self, p)


__all__ = ["Crashed", "FakeDisk", "FakeFile"]
