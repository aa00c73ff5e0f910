"""inotify (ctypes): which files in the output directories changed since the collector last looked.

Without it the collector re-lists and stats every file of a session's output tree after every call, a cost
that grows with the files an episode leaves behind. The kernel queues an event in the writer's own system
call, so once a worker has replied, every change it made is already in the queue. One inotify descriptor
serves a whole Sandbox (one per session would exhaust descriptors under load); events are dispatched to the
session they belong to. When anything is lost (queue overflow, no watch left) the collector is told to fall
back to a full scan, so the answer is never wrong, only slower.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from dataclasses import dataclass, field

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x4, 0x8, 0x80, 0x100
IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x4000, 0x8000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Changes:
    """What one watched tree reported: relative paths that changed, new directories, or 'rescan'."""

    paths: set[str] = field(default_factory=set)
    new_dirs: set[str] = field(default_factory=set)
    rescan: bool = False


class Watcher:
    """One inotify instance for many output trees, keyed by an owner token (a session's collector)."""

    def __init__(self) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        self._lock = threading.Lock()
        self._where: dict[int, tuple[object, str]] = {}  # wd -> (owner, directory relative to its root)
        self._roots: dict[object, str] = {}
        self._changes: dict[object, Changes] = {}

    @property
    def usable(self) -> bool:
        return self.fd >= 0

    def watch(self, owner: object, root: str, rel: str = "") -> bool:
        """Watch `root/rel` for `owner`; False when the kernel refuses (the owner must scan instead)."""
        if not self.usable:
            return False
        wd = _libc.inotify_add_watch(self.fd, os.path.join(root, rel).encode(), MASK)
        if wd < 0:
            return False
        with self._lock:
            self._where[wd] = (owner, rel)
            self._roots[owner] = root
            self._changes.setdefault(owner, Changes())
        return True

    def forget(self, owner: object) -> None:
        with self._lock:
            for wd in [wd for wd, (o, _) in self._where.items() if o is owner]:
                _libc.inotify_rm_watch(self.fd, wd)
                del self._where[wd]
            self._roots.pop(owner, None)
            self._changes.pop(owner, None)

    def take(self, owner: object) -> Changes:
        """Everything reported for `owner` since the last call (after reading the kernel's queue)."""
        self._drain()
        with self._lock:
            changes = self._changes.get(owner)
            self._changes[owner] = Changes()
        return changes if changes is not None else Changes(rescan=True)

    def _drain(self) -> None:
        # Reading and dispatching are one step under the lock: otherwise another thread could find the
        # queue empty while this one still holds its events, and miss a file its worker just wrote.
        with self._lock:
            while True:
                try:
                    data = os.read(self.fd, 1 << 16)
                except BlockingIOError:
                    return
                self._dispatch(data)

    def _dispatch(self, data: bytes) -> None:
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                for changes in self._changes.values():
                    changes.rescan = True
                continue
            owner, rel = self._where.get(wd, (None, ""))
            if owner is None:
                continue
            if mask & IN_IGNORED:  # the directory went away
                del self._where[wd]
                continue
            if not name:  # an event about the watched directory itself (its owner or mode changed)
                continue
            path = os.path.join(rel, os.fsdecode(name))
            changes = self._changes.setdefault(owner, Changes())
            if not mask & IN_ISDIR:
                changes.paths.add(path)
            elif mask & (IN_CREATE | IN_MOVED_TO):
                changes.new_dirs.add(path)

    def close(self) -> None:
        if self.usable:
            os.close(self.fd)
            self.fd = -1
