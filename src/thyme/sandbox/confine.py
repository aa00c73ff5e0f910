"""Kernel confinement applied by the zygote and the workers (the layers `thyme sandbox check` reports).

- `enter_namespaces()` (zygote, once): a private network namespace (no interface is up, so no TCP, UDP, raw
  or netlink traffic reaches anything) and a private IPC namespace, inherited by every worker. As root this
  needs no user namespace; as an ordinary user a user namespace maps the caller's uid to itself first.
- `apply_limits()` (worker, at fork): rlimits for address space, CPU seconds, file size, open files, no core.
- `apply_limits()` (worker, at fork): rlimits on address space, CPU seconds, file size, open files; no core.
  the inputs, write the session's output tree, nothing else.
What is not here yet: an unprivileged uid under a root parent, seccomp, cgroups. `layers.py` reports them as
missing rather than pretending.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from collections.abc import Iterable
from typing import Any

from thyme.sandbox import landlock

CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUSER = 0x40000000, 0x08000000, 0x10000000
RUNTIME_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/dev/urandom", "/dev/zero")
RUNTIME_RW_FILES = ("/dev/null",)
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32")

_libc = ctypes.CDLL(None, use_errno=True)


def enter_namespaces() -> list[str]:
    """Unshare network and IPC (with a user namespace when not root); returns the namespaces entered."""
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        if _libc.unshare(CLONE_NEWNET | CLONE_NEWIPC) == 0:
            return ["net", "ipc"]
        return []
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC) != 0:
        return []
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    except OSError:
        return ["user", "net", "ipc"]  # entered, but ids unmapped: still isolated, only less convenient
    return ["user", "net", "ipc"]


def apply_limits(limits: dict[str, Any]) -> None:
    """Resource limits that hold from the first line of model code on (lowered, never raised)."""
    settings = {
        resource.RLIMIT_AS: int(limits.get("memory_mb") or 0) << 20,
        resource.RLIMIT_CPU: int(limits.get("cpu_s") or 0),
        resource.RLIMIT_FSIZE: int(limits.get("file_mb") or 0) << 20,
        resource.RLIMIT_NOFILE: int(limits.get("open_files") or 0),
        resource.RLIMIT_CORE: 0,
    }
    for which, value in settings.items():
        if value or which == resource.RLIMIT_CORE:
            _, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(which, (value, value))


def runtime_read_dirs() -> list[str]:
    """Directories model code may read: the interpreter, its libraries, system libraries and fonts."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *SYSTEM_DIRS}
    dirs.update(p for p in sys.path if p and os.path.isdir(p))
    dirs.update(os.path.realpath(p) for p in list(dirs))
    return sorted(d for d in dirs if os.path.isdir(d) and d != "/")


def confine_session(inputs: Iterable[str], write_dirs: Iterable[str]) -> dict[str, bool]:
    """Landlock this worker: read the runtime and `inputs`, write `write_dirs`. Idempotent to stack."""
    return landlock.restrict(
        read_dirs=runtime_read_dirs(),
        read_files=[*RUNTIME_FILES, *inputs],
        write_dirs=list(write_dirs),
        rw_files=RUNTIME_RW_FILES,
    )
