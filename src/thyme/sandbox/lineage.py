"""Lineages for ordinary users: a user and a PID namespace per session lineage, so that the processes model
code starts are capped and never outlive it, without root and without cgroups.

A lineage is a session and every fork made from it (a GRPO group). Under a root parent each lineage has a uid
of its own (`thyme.sandbox.uids`), which caps and reaps it. An ordinary user has one uid for everything, so
each lineage gets two namespaces instead. The process the zygote forks for a new worker (`found`):

1. unshares a user namespace (the caller's uid and gid mapped to themselves) and a PID namespace, and forks
   the namespace's init (pid 1 there), then exits: the init is reparented to the zygote (a subreaper);
2. the init forks the worker (pid 2), and from then on holds nothing, lets the kernel reap orphans (it
   ignores SIGCHLD) and waits until it is killed or the namespace is empty;
3. the worker makes a fresh socket pair, whose kernel credentials tell the caller its pid, and sends one end
   with a pidfd of the init as its first frame on the channel the zygote made (`receive`); then it sets its
   rlimits and serves on the new socket.

    zygote ── helper (exits) ┄┄ init: pid 1 of the lineage's PID namespace ── worker: pid 2 ── forks, ...

(The worker must live inside the PID namespace: a process whose children would land in another PID
namespace than its own cannot start threads.)

- Processes. Since Linux 5.14 `RLIMIT_NPROC` is counted per user namespace: the worker's limit of
  `max_processes` holds the whole lineage (the init, the worker, its forks, the processes and threads they
  start), while the caller's other processes do not count. A fork bomb stops there.
- Nothing outlives the lineage. When the init dies the kernel kills every process in its namespace,
  wherever it fled (a new session, a new process group, a reforking chain), and model code cannot leave it
  (seccomp denies unshare, setns and namespace clone flags). The caller kills the init once the last
  worker of the lineage is killed (`Lineage.release`), so closing a parent session keeps its forks, and what
  they started, alive until they close too.
- Pids. Code in a lineage sees the namespace's pids (its worker is pid 2): `host_pid` translates a pid it
  printed into the caller's.

What it does not give: a memory budget. No namespace counts memory; only a memory cgroup can. Without one,
each process of a lineage has its own address-space limit (`memory_mb`), so a lineage may map up to
`max_processes` times that.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

from thyme.sandbox import wire

CLONE_NEWUSER, CLONE_NEWPID = 0x10000000, 0x20000000
HELLO_TIMEOUT_S = 10.0

_libc = ctypes.CDLL(None, use_errno=True)


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


def _init(drop_capabilities: Callable[[], None]) -> None:
    """Pid 1 of the lineage's namespace: hold nothing and wait. SIGCHLD is ignored, so the kernel reaps every
    child (the worker, reparented forks and orphans) at once, and wait() returns ECHILD only when the
    namespace is empty: then the lineage is over anyway. Usually the caller kills it first."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # nothing runs here; no capability is needed for waiting
        drop_capabilities()
    os.closerange(0, 1 << 16)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue


def found(channel: socket.socket, drop_capabilities: Callable[[], None]) -> socket.socket:
    """Make this fresh worker process the first of a lineage (see the module doc). Returns, in the lineage's
    worker only, the socket it serves on from now on; every other process of the chain ends or waits here.
    Must run before the worker's rlimits are set: a user namespace takes its creator's process limit as its
    own ceiling."""

    def fail(exc: OSError) -> None:
        with contextlib.suppress(OSError):
            wire.send_frame(channel, {"lineage_error": str(exc)[:500], "errno": exc.errno})
        os._exit(0)

    try:
        enter(os.getuid(), os.getgid())
        gone_r, gone_w = os.pipe()  # closed when the helper exits: the helper and the worker never coexist
        if os.fork() != 0:
            os._exit(0)  # the helper's part is done; the init is reparented to the zygote
    except OSError as exc:
        fail(exc)
    os.close(gone_w)
    os.read(gone_r, 1)  # end of file once the helper is gone, so the lineage never holds three processes
    os.close(gone_r)
    try:  # the init
        worker = os.fork()
    except OSError as exc:
        fail(exc)
    if worker != 0:
        _init(drop_capabilities)
    try:  # the worker: pid 2, a child of the init
        pidfd = os.pidfd_open(1)
        mine, theirs = socket.socketpair()
        wire.send_frame(channel, {"lineage": True}, fds=(theirs.fileno(), pidfd))
    except OSError as exc:
        fail(exc)
    os.close(pidfd)
    theirs.close()
    channel.close()
    return mine


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

    def __init__(self, pidfd: int) -> None:
        self.pidfd: int | None = pidfd
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


class FoundingFailed(Exception):
    """A lineage could not be founded; `errno` is the kernel's answer where one failed (EAGAIN: a process
    limit), else None."""

    def __init__(self, reason: str, errno: int | None = None) -> None:
        super().__init__(reason)
        self.errno = errno


def receive(channel: wire.Channel) -> tuple[socket.socket, Lineage]:
    """Read a fresh worker's first frame (see `found`) on the channel the zygote made: the socket the worker
    serves on from now on, and its lineage. Raises `FoundingFailed` saying why not (a `wire.WireError` when
    nothing came). The worker has run no model code yet, so what it says here is its own."""
    hello = channel.recv(time.monotonic() + HELLO_TIMEOUT_S)
    fds = channel.take_fds()
    if hello.get("lineage") is True and len(fds) == 2:
        return socket.socket(fileno=fds[0]), Lineage(fds[1])
    for fd in fds:
        os.close(fd)
    errno = hello.get("errno")
    reason = str(hello.get("lineage_error") or "a malformed first frame")[:500]
    raise FoundingFailed(reason, errno if isinstance(errno, int) else None)


def host_pid(member: int, inner: int) -> int | None:
    """The pid, as this process sees it, of what code running in the process `member` calls `inner` (a pid
    it printed): translated through `member`'s PID namespace, or `inner` itself where `member` shares ours
    (a root parent's workers). None when no such process lives."""
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
