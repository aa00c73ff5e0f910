"""Process checks the sandbox tests share: is a pid alive, wait until some are gone, who runs as a uid, which
processes are a session's lineage, and the outer process limit that bounds an attack if the sandbox fails."""

from __future__ import annotations

import contextlib
import os
import resource
import time


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is neither a zombie nor dead."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read
        return False


def wait_dead(pids: set[int], within: float = 5.0) -> set[int]:
    """Wait up to `within` seconds for `pids` to die; returns those still alive."""
    deadline = time.monotonic() + within
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if pid_alive(p)}
        time.sleep(0.02)
    return pids


def uid_processes(uid: int) -> set[int]:
    """Live processes whose real uid is `uid`."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid and fields["State"].split()[0] not in ("Z", "X"):
            found.add(int(entry))
    return found


def uid_tasks_with_zombies(uid: int) -> set[int]:
    """Processes whose real uid is `uid`, zombies too (RLIMIT_NPROC counts them until they are reaped)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    uid_line = next(line for line in f if line.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            if int(uid_line.split()[1]) == uid:
                found.add(int(entry))
    return found


def user_tasks(uid: int) -> int:
    """Processes and threads whose real uid is `uid` (what the kernel's RLIMIT_NPROC counts for it)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                continue
    return count


def pid_namespace_processes(ns_inode: int) -> set[int]:
    """Live processes in the PID namespace whose inode is `ns_inode`."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/pid").st_ino == ns_inode and pid_alive(int(entry)):
                    found.add(int(entry))
            except OSError:
                continue
    return found


class LineageWatch:
    """Every live process of one session's lineage, seen from outside: the processes of its uid (a root
    parent's lineages have one each) or of its PID namespace (an ordinary user's). Holding the namespace open
    keeps its inode number from going to a new namespace while the test looks."""

    def __init__(self, session) -> None:
        handle = session._handle
        self.uid = handle.uid
        self._ns_fd = None
        if self.uid is None:
            self._ns_fd = os.open(f"/proc/{handle.pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            self.ns_inode = os.fstat(self._ns_fd).st_ino
            assert self.ns_inode != os.stat("/proc/self/ns/pid").st_ino, "the worker shares our PID namespace"

    def processes(self) -> set[int]:
        if self.uid is not None:
            return uid_processes(self.uid)
        return pid_namespace_processes(self.ns_inode)

    def close(self) -> None:
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None


@contextlib.contextmanager
def process_limit(room: int):
    """The outer safety net: this process's soft RLIMIT_NPROC leaves `room` more processes and threads of
    this user (root is not counted; its workers, which are not root, are held to it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    bound = room if os.geteuid() == 0 else user_tasks(os.getuid()) + room
    if hard != resource.RLIM_INFINITY:
        bound = min(bound, hard)
    resource.setrlimit(resource.RLIMIT_NPROC, (bound, hard))  # the soft limit: seccomp keeps it from rising
    try:
        yield bound
    finally:
        resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))
