"""Unprivileged uids for a root parent's workers, leased machine-wide so no two live workers share one.

Under a root parent every worker drops to a uid of its own (`confine.drop_privileges`). The uids come from
a range that no distribution or systemd component hands out (systemd's UIDS-GIDS table lists
1879048192-2147483647 as unused; its dynamic users, 61184-65519, and container ranges lie below it).

The range is cut into blocks. A `UidPool` leases whole blocks by holding an exclusive `flock` on one lock
file per block in a root-only directory, so that two Sandboxes on one machine (an eval run beside a
`thyme sandbox serve`, eight rollout processes on one node) never hand out the same uid; the kernel drops
the lock when the process dies, so a crashed run frees its blocks by itself. Inside its blocks the pool
gives each new worker a free uid, first-in first-out, so a uid is reused as late as possible. A fork runs
as its parent's uid (it is a copy of the parent's process and holds no capability to change it): it
retains the uid, which goes back to the free list when the last process of the lineage is killed.

Because a lineage's uid is its own, it also names everything the lineage's code started: before a uid goes
back to the free list, the pool's `reaper` kills every process still running as it, wherever it fled (a
new session, a reparented orphan, a fork loop), on a background thread. A uid whose reaping failed is
never handed out again.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import logging
import os
import pathlib
import stat
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from thyme.sandbox.process import SandboxError

UID_BASE = 1_900_000_000  # inside systemd's unused 1879048192-2147483647
UID_COUNT = 1 << 16
BLOCK_SIZE = 256

log = logging.getLogger(__name__)


def default_lease_dir() -> pathlib.Path:
    """Where the block locks live: one place per machine, so that every Sandbox on it agrees."""
    run = pathlib.Path("/run")
    if run.is_dir() and os.access(run, os.W_OK):
        return run / "thyme-sandbox-uids"
    return pathlib.Path(tempfile.gettempdir()) / "thyme-sandbox-uids"


class UidPool:
    """Hands out uids from machine-wide leased blocks; thread-safe. `close()` gives the blocks back.

    `reaper(uid)`, when given, kills every process running as `uid`; it runs before the uid is free again.
    """

    def __init__(
        self,
        lease_dir: pathlib.Path | None = None,
        base: int = UID_BASE,
        count: int = UID_COUNT,
        block: int = BLOCK_SIZE,
        reaper: Callable[[int], None] | None = None,
    ) -> None:
        if count % block:
            raise ValueError(f"count ({count}) must be a multiple of block ({block})")
        self.lease_dir = _safe_dir(lease_dir or default_lease_dir())
        self.base, self.count, self.block = base, count, block
        self._lock = threading.Lock()
        self._free: collections.deque[int] = collections.deque()
        self._refs: dict[int, int] = {}  # uid -> live processes running as it
        self._leases: dict[int, int] = {}  # block index -> descriptor holding its flock
        self._closed = False
        self._reaper = reaper
        self._reaping = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="thyme-uid-reaper") if reaper else None
        )

    @property
    def in_use(self) -> int:
        with self._lock:
            return len(self._refs)

    @property
    def blocks(self) -> tuple[int, ...]:
        """The indices of the blocks this pool holds."""
        with self._lock:
            return tuple(sorted(self._leases))

    def acquire(self) -> int:
        """A uid that no live process of any Sandbox on this machine runs as."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this UidPool is closed")
            if not self._free:
                self._lease_block()
            uid = self._free.popleft()
            self._refs[uid] = 1
            return uid

    def retain(self, uid: int) -> None:
        """One more process runs as `uid` (a fork of a worker that has it)."""
        with self._lock:
            if uid not in self._refs:
                raise ValueError(f"uid {uid} is not handed out by this pool")
            self._refs[uid] += 1

    def release(self, uid: int) -> None:
        """One process running as `uid` was killed; the last one puts it back at the end of the free list."""
        with self._lock:
            if uid not in self._refs:
                return  # not ours, or already back
            left = self._refs[uid] - 1
            if left > 0:
                self._refs[uid] = left
                return
            del self._refs[uid]
            if self._reaping is None:
                self._free_up(uid)
            elif not self._closed:
                self._reaping.submit(self._reap, uid)

    def _reap(self, uid: int) -> None:
        try:
            self._reaper(uid)  # type: ignore[misc]
        except Exception as exc:  # the uid stays out of the free list: something may still run as it
            log.warning("sandbox uid %d retired: its leftover processes could not be killed (%s)", uid, exc)
            return
        with self._lock:
            self._free_up(uid)

    def _free_up(self, uid: int) -> None:
        if not self._closed and (uid - self.base) // self.block in self._leases:
            self._free.append(uid)

    def close(self) -> None:
        """Finish the pending reaps, then give every block back (call once no worker runs any more)."""
        with self._lock:
            self._closed = True  # nothing new is handed out or queued; queued reaps still run
            self._free.clear()
        if self._reaping is not None:
            self._reaping.shutdown(wait=True)
        with self._lock:
            leases, self._leases = self._leases, {}
        for fd in leases.values():
            os.close(fd)  # closing the only descriptor drops the flock

    def _lease_block(self) -> None:
        """Take the first block no other pool holds (called with the lock held)."""
        for index in range(self.count // self.block):
            if index in self._leases:
                continue
            path = self.lease_dir / f"block-{index:05d}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # another Sandbox on this machine holds it
                raise
            self._leases[index] = fd
            first = self.base + index * self.block
            self._free.extend(range(first, first + self.block))
            return
        raise SandboxError(
            f"all {self.count} sandbox uids ({self.base}-{self.base + self.count - 1}) are in use on this "
            f"machine (leases in {self.lease_dir}); close other Sandboxes or sessions and try again"
        )


def _safe_dir(path: pathlib.Path) -> pathlib.Path:
    """Make `path` (mode 0700) or check that it is a directory only this uid can write to; anyone else
    able to hold its lock files could make two Sandboxes share a uid."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SandboxError(
            f"{path} is not a directory that only uid {os.geteuid()} can write to, so sandbox uid leases "
            "cannot be trusted there; remove it and start again"
        )
    return path
