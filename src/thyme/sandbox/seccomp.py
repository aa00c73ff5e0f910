"""A seccomp filter for workers, built with libseccomp through ctypes.

Default allow, with an explicit deny list of the system calls that model code has no business making:
running programs (execve), new namespaces and mounts, tracing or reading other processes' memory, kernel
attack surface that sandboxes routinely close (bpf, perf_event_open, userfaultfd, io_uring, keyrings, module
and kexec loading), handle-based opens that bypass path checks, raising resource limits, injecting terminal
input (TIOCSTI), and socket() itself (only socketpair() remains, so no path or abstract Unix socket of the
host can be reached). Denied calls fail with EPERM (EAFNOSUPPORT for non-Unix sockets, ENOSYS for clone3 so
that libc falls back to clone, whose flags the filter can inspect).

Process creation: `session.fork()` needs the worker to fork, so with `forkable=True` plain fork/clone stays
allowed (children are contained by the process group kill and, where available, the pids cgroup); with
`forkable=False` only threads can be created.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
from functools import cache

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_NE, SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ = 1, 4, 7
CLONE_THREAD = 0x00010000
NAMESPACE_FLAGS = (
    0x00020000,
    0x02000000,
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
    0x00000080,
)
TIOCSTI = 0x5412

DENIED = (
    "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "unshare", "setns", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
    "swapoff", "acct", "quotactl", "syslog", "name_to_handle_at", "open_by_handle_at", "setrlimit",
    "iopl", "ioperm", "lookup_dcookie", "vhangup", "settimeofday", "clock_settime", "adjtimex",
    # New symlinks, FIFOs and device nodes: Landlock's policy grants none of them, and the filesystem view
    # (its stand-in) must refuse them too.
    "symlink", "symlinkat", "mknod", "mknodat",
)  # fmt: skip
PROCESS_CREATION = ("fork", "vfork")
# Changing metadata by path. Landlock does not cover it, so a worker running as the caller's own uid could
# chmod or touch any file of the caller's that it can name (~/.ssh, say). Denied when workers run as the
# caller's uid; under a root parent each worker has a uid of its own that owns nothing outside its outputs.
METADATA = (
    "chmod", "fchmodat", "fchmodat2", "chown", "lchown", "fchownat", "utime", "utimes", "utimensat",
    "futimesat", "setxattr", "lsetxattr", "removexattr", "lremovexattr",
)  # fmt: skip


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


class SeccompError(OSError):
    """libseccomp is missing or refused the filter."""


@cache
def _lib() -> ctypes.CDLL | None:
    # The zygote resolves this before forking: find_library runs helper programs, which workers cannot.
    for name in ("libseccomp.so.2", ctypes.util.find_library("seccomp")):
        try:
            lib = ctypes.CDLL(name, use_errno=True) if name else None
        except OSError:
            lib = None
        if lib is not None:
            break
    else:
        return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)
    ]  # fmt: skip
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def available() -> bool:
    return _lib() is not None


def _errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def install(forkable: bool, deny_metadata: bool = False) -> None:
    """Load the filter into the calling thread and every thread and process it creates afterwards."""
    lib = _lib()
    if lib is None:
        raise SeccompError(
            errno.ENOSYS, "libseccomp is not installed (Debian/Ubuntu: apt install libseccomp2)"
        )
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompError(errno.EINVAL, "seccomp_init failed")
    try:

        def rule(action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                return  # not a system call on this architecture
            array = (_ArgCmp * max(len(cmps), 1))(*(_ArgCmp(*c) for c in cmps))
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
            if rc < 0:
                raise SeccompError(-rc, f"seccomp rule for {name}: {errno.errorcode.get(-rc, rc)}")

        for name in DENIED + (METADATA if deny_metadata else ()):
            rule(_errno(errno.EPERM), name)
        rule(_errno(errno.ENOSYS), "clone3")
        for flag in NAMESPACE_FLAGS:
            rule(_errno(errno.EPERM), "clone", (0, SCMP_CMP_MASKED_EQ, flag, flag))
        if not forkable:
            for name in PROCESS_CREATION:
                rule(_errno(errno.EPERM), name)
            rule(_errno(errno.EPERM), "clone", (0, SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0))
        rule(_errno(errno.EAFNOSUPPORT), "socket", (0, SCMP_CMP_NE, socket.AF_UNIX, 0))
        # No new Unix sockets either: Landlock cannot stop connect() to a world-writable socket file (a
        # system bus, /dev/log). socketpair() stays allowed; the worker's own channels need nothing else.
        rule(_errno(errno.EPERM), "socket", (0, SCMP_CMP_EQ, socket.AF_UNIX, 0))
        # A datagram socketpair could still sendto() a host socket file by path; the worker never needs
        # one, nor connect() (socketpairs are born connected).
        rule(_errno(errno.EPERM), "socketpair", (1, SCMP_CMP_MASKED_EQ, 0xF, socket.SOCK_DGRAM))
        rule(_errno(errno.EPERM), "connect")
        rule(_errno(errno.EPERM), "prlimit64", (2, SCMP_CMP_NE, 0, 0))
        rule(_errno(errno.EPERM), "ioctl", (1, SCMP_CMP_EQ, TIOCSTI, 0))
        # Scheduling of other processes (same uid: the caller, a fork's parent): only the worker itself.
        rule(_errno(errno.EPERM), "setpriority", (1, SCMP_CMP_NE, 0, 0))
        rule(_errno(errno.EPERM), "ioprio_set", (1, SCMP_CMP_NE, 0, 0))
        for name in ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr"):
            rule(_errno(errno.EPERM), name, (0, SCMP_CMP_NE, 0, 0))
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise SeccompError(-rc, f"seccomp_load failed: {errno.errorcode.get(-rc, rc)}")
    finally:
        lib.seccomp_release(ctx)
