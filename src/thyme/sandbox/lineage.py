"""Lineages for ordinary users: a user and a PID namespace per session lineage, so that the processes model
code starts are capped and never outlive it, without root and without cgroups.

A lineage is a session and every fork made from it (a GRPO group). Under a root parent each lineage has a uid
of its own (`thyme.sandbox.uids`), which caps and reaps it. An ordinary user has one uid for everything, so
each lineage gets two namespaces instead. A fresh worker, before it serves anything (`found`):

1. unshares a user namespace (the caller's uid and gid mapped to themselves) and a PID namespace for its
   children;
2. clones the namespace's init with CLONE_PARENT | CLONE_PIDFD: pid 1 there, a child of the zygote (not of
   the worker, so model code's `os.wait()` never sees it), which holds nothing and only waits to be killed;
3. hands the caller a pidfd of that init as its first frame (`receive`), then sets its rlimits.

    zygote ─┬─ worker (its own pid as before; user namespace L)   ─── its processes and forks: in PID ns P
            └─ init of P (pid 1 there; user namespace L)

- Processes. Since Linux 5.14 `RLIMIT_NPROC` is counted per user namespace: the worker's limit of
  `max_processes` holds the whole lineage (the worker, the init, its forks, the processes and threads they
  start), while the caller's other processes do not count. A fork bomb stops there.
- Nothing outlives the lineage. Every process the worker starts, and every fork, lives in P; when P's init
  dies the kernel kills every process in P, wherever it fled (a new session, a new process group, a
  reforking chain). Model code cannot leave P (seccomp denies unshare, setns and namespace clone flags).
  The caller kills the init once the last worker of the lineage is killed (`Lineage.release`), so closing a
  parent session keeps its forks, and what they started, alive until they close too. Orphans in P are
  reparented to the init, which ignores SIGCHLD, so the kernel reaps them at once.
- Pids. A session's own worker keeps the pid the caller sees, and so do the pids `os.fork()` returns to it;
  a fork's worker and every process started below a worker see the pids of P (`host_pid` translates).

What it does not give: a memory budget. No namespace counts memory; only a memory cgroup can. Without one,
each process of a lineage has its own address-space limit (`memory_mb`), so a lineage may map up to
`max_processes` times that.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable

from thyme.sandbox import wire

CLONE_NEWUSER, CLONE_NEWPID = 0x10000000, 0x20000000
CLONE_PARENT, CLONE_PIDFD = 0x00008000, 0x00001000
SYS_CLONE3 = 435  # one number on every architecture (new system calls share the table)
HELLO_TIMEOUT_S = 10.0

_libc = ctypes.CDLL(None, use_errno=True)


class _CloneArgs(ctypes.Structure):
    _fields_ = [  # struct clone_args, as far as CLONE_ARGS_SIZE_VER0 (64 bytes)
        ("flags", ctypes.c_uint64),
        ("pidfd", ctypes.c_uint64),
        ("child_tid", ctypes.c_uint64),
        ("parent_tid", ctypes.c_uint64),
        ("exit_signal", ctypes.c_uint64),
        ("stack", ctypes.c_uint64),
        ("stack_size", ctypes.c_uint64),
        ("tls", ctypes.c_uint64),
    ]


# -- the worker's side -----------------------------------------------------------------------------------
def enter(uid: int, gid: int) -> None:
    """Unshare a user namespace (`uid` and `gid` mapped to themselves) and a PID namespace for the children
    of this process. Raises OSError when the kernel refuses."""
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWPID) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(user, pid): {os.strerror(err)}")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _clone_init(init: Callable[[], None]) -> tuple[int, int]:
    """Start the PID namespace's init as a sibling of this process (CLONE_PARENT): (its pid, a pidfd). The
    child runs `init()`, which never returns; it starts as a copy of this single-threaded process, as fork
    would make it, without Python's after-fork hooks, which it does not need for what it does."""
    pidfd = ctypes.c_int(-1)
    args = _CloneArgs(flags=CLONE_PARENT | CLONE_PIDFD, pidfd=ctypes.addressof(pidfd))
    pid = _libc.syscall(SYS_CLONE3, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        init()
        os._exit(0)
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"clone3 (the lineage's init): {os.strerror(err)}")
    return pid, pidfd.value


def _init(drop_capabilities: Callable[[], None]) -> None:
    """Pid 1 of the lineage's namespace: hold nothing, let the kernel reap orphans, wait to be killed."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # nothing runs here; no capability is needed for waiting
        drop_capabilities()
    os.closerange(0, 1 << 16)
    while True:
        signal.pause()


def found(channel_fd: int, drop_capabilities: Callable[[], None]) -> None:
    """Make this fresh worker the first of a lineage and send the caller its init's pidfd (as the first
    frame on the channel): {"lineage": pid} + the pidfd, or {"lineage_error": why}. Must run before the
    worker's rlimits are set: a user namespace takes its creator's process limit as its own ceiling."""
    import socket

    sock = socket.socket(fileno=os.dup(channel_fd))
    try:
        try:
            enter(os.getuid(), os.getgid())
            pid, pidfd = _clone_init(lambda: _init(drop_capabilities))
        except OSError as exc:
            wire.send_frame(sock, {"lineage_error": str(exc)[:500]})
            os._exit(0)
        wire.send_frame(sock, {"lineage": pid}, fds=(pidfd,))
        os.close(pidfd)
    finally:
        sock.close()


def probe() -> str | None:
    """Whether a lineage can be founded here (None) or why not: a throwaway child tries the namespaces."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            enter(os.getuid(), os.getgid())
            os.write(w, b"ok")
        except OSError as exc:
            os.write(w, str(exc).encode()[:500] or b"failed")
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read().decode(errors="replace")
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return None if answer == "ok" else answer or "the probe died"


# -- the caller's side -----------------------------------------------------------------------------------
class Lineage:
    """The caller's grip on one lineage's init: a pidfd, and how many of its workers are alive. The last
    `release` kills the init, and the kernel then kills every process left in the namespace."""

    def __init__(self, pidfd: int, pid: int) -> None:
        self.pidfd: int | None = pidfd
        self.pid = pid
        self._refs = 1
        self._lock = threading.Lock()

    def retain(self) -> None:
        """One more worker (a fork) lives in this lineage."""
        with self._lock:
            if self.pidfd is None:
                raise RuntimeError("this lineage has ended")
            self._refs += 1

    def release(self) -> None:
        """One worker of the lineage was killed; the last one ends the lineage."""
        with self._lock:
            self._refs -= 1
            if self._refs > 0 or self.pidfd is None:
                return
            pidfd, self.pidfd = self.pidfd, None
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)


def receive(channel: wire.Channel) -> Lineage:
    """Read a fresh worker's first frame (see `found`): its lineage, or a `wire.WireError` saying why not.
    The worker has run no model code yet, so what it says here is its own."""
    hello = channel.recv(time.monotonic() + HELLO_TIMEOUT_S)
    fds = channel.take_fds()
    if isinstance(hello.get("lineage"), int) and len(fds) == 1:
        return Lineage(fds[0], hello["lineage"])
    for fd in fds:
        os.close(fd)
    raise wire.WireError(str(hello.get("lineage_error") or "a malformed first frame")[:500])


def host_pid(member: int, inner: int) -> int | None:
    """The pid, as this process sees it, of what code running in the process `member` calls `inner` (a pid
    it printed): translated through `member`'s PID namespace, or `inner` itself where `member` shares ours
    (a session's own worker). None when no such process lives."""
    try:
        target = os.stat(f"/proc/{member}/ns/pid").st_ino
    except OSError:
        return None
    if target == os.stat("/proc/self/ns/pid").st_ino:
        return inner
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, StopIteration):
            if os.stat(f"/proc/{entry}/ns/pid").st_ino != target:
                continue
            with open(f"/proc/{entry}/status") as f:
                nspid = next(line for line in f if line.startswith("NSpid:")).split()[1:]
            if int(nspid[-1]) == inner:
                return int(entry)
    return None
