"""Lineages for ordinary users: a user and a PID namespace per session lineage, so that model code's processes
are capped and never outlive it, without root and without cgroups.

A lineage is a session and every fork made from it (a GRPO group). Under a root parent each lineage has a uid
of its own (`thyme.sandbox.uids`), which caps and reaps it. An ordinary user has one uid for everything, so
the zygote gives each lineage two namespaces instead, entered by a short-lived helper it forks:

    zygote ── helper: unshare(user + pid), map the caller's uid and gid to themselves, fork
                └─ init (pid 1 of the new PID namespace; no capabilities, ignores SIGCHLD, waits)
                     └─ worker (pid 2; runs model code; its forks and their processes join the namespaces)

- Processes. Since Linux 5.14 `RLIMIT_NPROC` is counted per user namespace: the worker's limit of
  `max_processes` holds the whole lineage (init, the worker, its forks, their processes and threads), while
  the caller's own processes do not count. A fork bomb stops there.
- Nothing outlives the lineage. When the init of a PID namespace exits, the kernel kills every process in
  it, wherever it fled (a new session, a new process group, a reforking chain), and model code cannot leave
  the namespace (seccomp denies unshare and clone with namespace flags). The caller holds the init by a
  pidfd and kills it once the last worker of the lineage is killed (`Lineage.release`): closing a parent
  session keeps its forks, and what they started, alive until they close too.
- Orphans are reparented to the init, which ignores SIGCHLD, so the kernel reaps them at once (a zombie
  would go on counting against the lineage's limit).

What it does not give: a memory budget. No namespace counts memory; only a memory cgroup could, so without
one each process of the lineage has its own address-space limit (`memory_mb`), and a lineage may use up to
`max_processes` times that. Pids inside the namespace are not the caller's: `host_pid` translates them.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import os
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterable

CLONE_NEWUSER, CLONE_NEWPID = 0x10000000, 0x20000000
SPAWN_TIMEOUT_S = 10.0
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid

_libc = ctypes.CDLL(None, use_errno=True)


# -- the zygote's side -----------------------------------------------------------------------------------
def enter(uid: int, gid: int) -> None:
    """Unshare a user namespace (this process's uid and gid mapped to themselves) and a PID namespace whose
    first child becomes its init. Raises OSError when the kernel refuses."""
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWPID) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(user, pid): {os.strerror(err)}")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def probe() -> str | None:
    """Whether `enter` works here (None) or why not; a throwaway child tries it."""
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


def spawn(
    run_worker: Callable[[], None], drop_capabilities: Callable[[], None], inherited: Iterable[socket.socket]
) -> tuple[int, int, int]:
    """Fork a lineage (helper, init, worker) from the zygote; returns (worker pid, init pid, init pidfd) as
    the zygote sees them. `run_worker()` runs in the worker and never returns; `drop_capabilities()` runs
    in the init; the `inherited` sockets (the zygote's) are closed in the helper first. Raises OSError
    when a fork or the namespaces fail."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # the kernel stamps each message's sender
    helper = os.fork()
    if helper == 0:
        ours.close()
        for sock in inherited:
            sock.close()
        _helper(theirs, run_worker, drop_capabilities)
    theirs.close()
    try:
        return _collect(ours)
    finally:
        ours.close()


def _helper(
    report: socket.socket, run_worker: Callable[[], None], drop_capabilities: Callable[[], None]
) -> None:
    """The helper: enter the namespaces, fork the init, send its pidfd, exit."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the init's pid stays valid until this process exits
        enter(os.getuid(), os.getgid())
        init = os.fork()
        if init == 0:
            _init(report, run_worker, drop_capabilities)
        pidfd = os.pidfd_open(init)
        socket.send_fds(report, [b"init %d" % init], [pidfd])
    except OSError as exc:
        with contextlib.suppress(OSError):
            report.send(b"error " + str(exc).encode(errors="replace")[:500])
    os._exit(0)


def _init(
    report: socket.socket, run_worker: Callable[[], None], drop_capabilities: Callable[[], None]
) -> None:
    """Pid 1 of the lineage: fork the worker, then only wait. SIGCHLD is ignored, so every child (the
    worker, its forks, reparented orphans) is reaped by the kernel, and wait() returns ECHILD once the
    namespace is empty: then this process exits, which would have ended the namespace anyway."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    worker = os.fork()
    if worker == 0:
        report.send(b"worker")  # the zygote reads our pid, in its own namespace, from the credentials
        report.close()
        run_worker()
        os._exit(0)
    with contextlib.suppress(OSError):  # nothing runs here but wait(); the worker drops its own anyway
        drop_capabilities()
    os.closerange(0, _fd_limit())  # hold nothing: not the worker's channel, not the report socket
    while True:
        try:
            os.wait()
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue


def _fd_limit() -> int:
    return os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 1 << 16


def _collect(ours: socket.socket) -> tuple[int, int, int]:
    """Read the helper's and the worker's reports: (worker pid, init pid, init pidfd)."""
    ours.settimeout(SPAWN_TIMEOUT_S)
    worker = init = pidfd = None
    try:
        while worker is None or init is None:
            msg, ancdata, _flags, _addr = ours.recvmsg(
                600, socket.CMSG_SPACE(_CREDS.size) + socket.CMSG_SPACE(4 * 4)
            )
            if not msg:
                raise OSError("the lineage helper ended before its worker started")
            fds, sender = [], None
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
                elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    sender = _CREDS.unpack(data[: _CREDS.size])[0]
            if msg.startswith(b"error "):
                raise OSError(msg[6:].decode(errors="replace"))
            if msg.startswith(b"init ") and len(fds) == 1 and pidfd is None:
                init, pidfd = int(msg[5:]), fds.pop()
            elif msg == b"worker" and sender:
                worker = sender
            for fd in fds:
                os.close(fd)
    except (OSError, ValueError):
        if pidfd is not None:  # a half-made lineage: its init takes whatever started along
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        raise
    return worker, init, pidfd


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

    @property
    def ended(self) -> bool:
        return self.pidfd is None


def host_pid(member: int, inner: int) -> int | None:
    """The pid, as this process sees it, of the process that sees itself as `inner` in the PID namespace of
    the process `member` (say, a pid that model code printed); `inner` itself where `member` shares our
    namespace. None when no such process lives."""
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
