"""Kernel confinement applied by the zygote and the workers (the layers `thyme sandbox check` reports).

- `enter_namespaces()` (zygote, once): a private network namespace (no interface is up, so no TCP, UDP, raw
  or netlink traffic reaches anything) and a private IPC namespace, inherited by every worker. As root this
  needs no user namespace; as an ordinary user a user namespace maps the caller's uid to itself first.
- `enter_mount_namespace()` (zygote, once): a private mount namespace shared by the zygote and its workers.
  Under a root parent it keeps the runtime reachable by unprivileged uids (`enter_runtime_view`). In it the
  zygote mounts each session's output directory as a tmpfs capped in bytes and inodes (`mount_output`): the
  disk quota. Workers live in the same namespace, forks included, so a mount made for a fork's directory is
  where the fork writes. The host never sees these mounts, and the kernel drops them with the namespace.
- `apply_limits()` (worker, at fork): rlimits on address space, CPU seconds, file size, open files; no core.
- `drop_privileges()` (worker, at fork, root parents only): an unprivileged uid with no capabilities.
- `confine_session()` (worker, at bind, before any model code): no_new_privs and Landlock: read the runtime
  and the inputs, write the session's output tree, nothing else.
seccomp (`seccomp.py`) is installed right after Landlock; cgroups (`cgroups.py`) are set up by the caller.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import sys
from collections.abc import Iterable, Iterator
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
        # Counted per uid and user namespace, so it caps a worker's lineage only where that uid is its own
        # (root parents) or the lineage has a user namespace of its own (ordinary users: sandbox.lineage).
        resource.RLIMIT_NPROC: int(limits.get("processes") or 0),
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


# -- an unprivileged uid under a root parent ---------------------------------------------------------------
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 16384, 1 << 18
MNT_DETACH = 2


def _traversable(path: str) -> bool:
    """Whether a user other than the owner can walk down to `path` (o+x on every ancestor, o+rx on it)."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        st = os.stat(os.sep.join(parts[:i]) or os.sep)
        if not st.st_mode & 0o001:
            return False
    return bool(os.stat(path).st_mode & 0o004)


def _blocking_ancestor(path: str) -> str | None:
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        ancestor = os.sep.join(parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def enter_mount_namespace(sandbox_root: str, runtime_view: bool = True) -> str | None:
    """Give the zygote (and so every worker) a private mount namespace; None, or why it could not.

    As an ordinary user this works only inside the user namespace of `enter_namespaces`. Under a root parent
    the runtime is made reachable for the workers' uids here, once, instead of in every worker (unless
    `runtime_view` is False: the filesystem view, `thyme.sandbox.fsview`, does that itself).
    """
    if _libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        hint = "" if os.getuid() == 0 else " (an ordinary user needs a user namespace for it)"
        return f"unshare(CLONE_NEWNS): {os.strerror(err)}{hint}"
    try:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        if os.getuid() == 0 and runtime_view:
            enter_runtime_view([*runtime_read_dirs(), sandbox_root])
    except OSError as exc:
        return str(exc)
    return None


def enter_runtime_view(paths: Iterable[str]) -> None:
    """In the (private) mount namespace of the caller, make `paths` reachable by an unprivileged uid.

    Where an ancestor directory is closed to other users (a Python under /root, say), a tmpfs is mounted over
    that ancestor and only the needed directories are bind-mounted back into it. Nothing outside this mount
    namespace changes. Must run as root, before any uid is dropped.
    """
    hidden: dict[str, list[str]] = {}
    for path in paths:
        if os.path.isdir(path) and not _traversable(path):
            ancestor = _blocking_ancestor(path)
            if ancestor is not None:
                hidden.setdefault(ancestor, []).append(path)
    for ancestor, inside in sorted(hidden.items()):
        held = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in sorted(set(inside))]
        try:
            _mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
            for path, fd in held:
                os.makedirs(path, mode=0o755, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        finally:
            for _, fd in held:
                os.close(fd)


# -- the disk quota: one capped tmpfs per session output directory (zygote side) -----------------------
_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def mount_output(sandbox_root: str, path: str, size_mb: int, files: int) -> int:
    """Mount a tmpfs of `size_mb` MiB and `files` entries over the directory `path` below `sandbox_root`.

    Returns a descriptor of the tmpfs root, for the caller, who sees none of this namespace's mounts. The
    walk follows no symlink, and the directory and its parent must be this process's own and closed to
    others: a fork's directory sits in a tree its parent session's worker may write, but that worker can
    neither change what is inside the parent nor make a directory that passes this check.
    """
    parts = os.path.relpath(path, sandbox_root).split(os.sep)
    if any(part in ("", ".", "..") for part in parts):
        raise OSError(errno.EINVAL, f"{path} is not below the sandbox root")
    parent = _open_beneath(sandbox_root, parts[:-1])
    try:
        target = os.open(parts[-1], _DIR_PATH, dir_fd=parent)
        try:
            if not (_own(parent) and _own(target)):
                raise OSError(errno.EPERM, f"{path}: a directory on the way is not the sandbox's own")
            options = f"size={size_mb}m,nr_inodes={files + 1},mode=0700"  # the root directory is one inode
            with _inside(target):  # no /proc here in the filesystem view: mount on the cwd instead
                _mount("tmpfs", ".", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options)
        finally:
            os.close(target)
        # A lookup by name crosses into the mount just made (the O_PATH descriptor stays below it).
        top = os.open(parts[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        if os.fstat(top).st_dev == os.fstat(parent).st_dev:
            os.close(top)
            raise OSError(errno.EIO, f"{path}: the tmpfs mounted there is not in sight")
    finally:
        os.close(parent)
    return top


def _open_beneath(root: str, parts: list[str]) -> int:
    """An O_PATH descriptor of `root`/`parts`, following no symlink on the way."""
    fd = os.open(root, _DIR_PATH)
    for part in parts:
        try:
            below = os.open(part, _DIR_PATH, dir_fd=fd)
        finally:
            os.close(fd)
        fd = below
    return fd


def _own(fd: int) -> bool:
    st = os.fstat(fd)
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def unmount_output(fd: int) -> None:
    """Detach the tmpfs whose root `fd` is (a descriptor `mount_output` returned, handed back)."""
    with contextlib.suppress(OSError), _inside(fd):
        _libc.umount2(b".", MNT_DETACH)


@contextlib.contextmanager
def _inside(fd: int) -> Iterator[None]:
    """Work in the directory `fd` (a path "." names it exactly), then go back to the root."""
    os.fchdir(fd)
    try:
        yield
    finally:
        os.chdir("/")


# Below the sandbox root: the mount points of closed sessions, moved there by the caller, so that removing a
# session directory does not detach a mount on the caller's time; the mounter removes them once unmounted.
TRASH_DIR = "trash"


def remove_trashed(sandbox_root: str, name: str) -> None:
    """Remove the (unmounted, empty) mount point `name` from the trash directory, if it is one."""
    if name in ("", ".", "..") or os.sep in name:
        return
    with contextlib.suppress(OSError):
        trash = _open_beneath(sandbox_root, [TRASH_DIR])
        try:
            os.rmdir(name, dir_fd=trash)
        finally:
            os.close(trash)


def probe_output_mount(sandbox_root: str) -> str | None:
    """Whether `mount_output` works here (None) or why not; leaves nothing behind."""
    probe = os.path.join(sandbox_root, "quota-probe")
    try:
        os.mkdir(probe, 0o700)
        try:
            fd = mount_output(sandbox_root, probe, 1, 1)
            unmount_output(fd)
            os.close(fd)
        finally:
            os.rmdir(probe)
    except OSError as exc:
        return str(exc)
    return None


def drop_privileges(uid: int, gid: int) -> None:
    """Become `uid`/`gid` with no supplementary groups; every capability is lost with the uid change."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError(f"could not drop to uid {uid}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_capabilities() -> None:
    """Clear every capability set. Ordinary users need this too: inside the zygote's user namespace a worker
    would otherwise hold a full set there (seccomp and Landlock still bind it, but it has no use for one)."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
