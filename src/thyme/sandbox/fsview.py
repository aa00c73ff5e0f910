"""The filesystem view: Landlock's stand-in for root parents on kernels without it (Linux < 5.13, or Landlock
left out of the LSM list), and on request (`SandboxConfig(filesystem="view")`).

The zygote, in its private mount namespace and before any worker exists, builds a new root: a small tmpfs
holding bind mounts of exactly what Landlock would let model code read (the Python runtime and the system
libraries, read-only; `/etc/ld.so.cache`, `/etc/localtime`, `/dev/urandom`, `/dev/zero` read-only;
`/dev/null`), plus the sandbox's own directory tree. It then pivots into it and detaches the old root, so
no path leads to anything else: not `/etc`, `/home`, `/tmp`, `/proc` or the caller's files. Every worker
is forked into this view, and every later output mount (the mounter is forked after the pivot) lands in it.

What keeps sessions apart inside the sandbox tree is then the kernel's file permissions: under a root
parent each lineage runs as a uid of its own (`thyme.sandbox.uids`) and owns only its own directories, all
closed to the others. New symlinks, FIFOs and device nodes are refused by seccomp, as Landlock's policy
refuses them; sockets are (`thyme.sandbox.seccomp`), and signals cannot cross uids. What the view does not
do, and Landlock does: keep a session out of its own forks, which share its uid (after a restart the
parent has a fresh uid, and is out again). Without a uid per lineage (an ordinary user) the permissions
would not separate sessions at all, so the view is only offered to root parents; an ordinary user without
Landlock gets a clear refusal instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

from thyme.sandbox.confine import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    RUNTIME_FILES,
    RUNTIME_RW_FILES,
    _libc,
    _mount,
    runtime_read_dirs,
)

MS_REMOUNT = 32
VIEW_DIR = "view"  # below the sandbox root: where the new root is mounted (an empty directory on the host)
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}


def enter_view(sandbox_root: str) -> int:
    """Pivot this process's private mount namespace into the view; returns the st_dev of its root, which
    workers compare with their own `/` to confirm they are inside. Must run as root, before any worker."""
    number = PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(f"the pivot_root system call number is not known for {platform.machine()}")
    new_root = os.path.join(sandbox_root, VIEW_DIR)
    with contextlib.suppress(FileExistsError):  # a restarted zygote: only root can write the sandbox root
        os.mkdir(new_root, 0o700)
    _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096")
    binds: list[tuple[str, bool, bool]] = [(d, True, False) for d in runtime_read_dirs()]
    binds += [(f, False, False) for f in RUNTIME_FILES] + [(f, False, True) for f in RUNTIME_RW_FILES]
    bound: list[str] = []
    for source, is_dir, writable in sorted(binds):
        if not os.path.exists(source) or any(_below(source, done) for done in bound):
            continue  # covered by a directory bound already (making its mount point would write there)
        _bind(source, new_root, is_dir, writable, recursive=True)
        bound.append(source)
    _bind(sandbox_root, new_root, True, writable=True, recursive=False)  # not the view's own mount
    _close_skeleton(new_root)
    _remount(new_root, MS_RDONLY | MS_NOSUID | MS_NODEV)  # nothing more is created in the view's root
    os.chdir(new_root)
    _libc.syscall.restype = ctypes.c_long
    if _libc.syscall(ctypes.c_long(number), b".", b".") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pivot_root: {os.strerror(err)}")
    if _libc.umount2(b".", MNT_DETACH) != 0:  # the old root, stacked under the new one
        err = ctypes.get_errno()
        raise OSError(err, f"detaching the old root: {os.strerror(err)}")
    os.chdir("/")
    return os.stat("/").st_dev


def _close_skeleton(new_root: str) -> None:
    """The view's own directories (`/`, `/root` above a Python kept there...) may be walked through but
    not listed, as under Landlock; the bound trees below keep their own modes."""
    dev = os.stat(new_root).st_dev
    for dirpath, dirnames, _files in os.walk(new_root):
        os.chmod(dirpath, 0o711)
        dirnames[:] = [d for d in dirnames if os.stat(os.path.join(dirpath, d)).st_dev == dev]


def _below(path: str, directory: str) -> bool:
    """`path` is `directory` or lies under it."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _bind(source: str, new_root: str, is_dir: bool, writable: bool, recursive: bool) -> None:
    """Bind `source` at the same path below `new_root`, read-only unless `writable` (submounts too)."""
    target = new_root + source
    if is_dir:
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        with open(target, "a"):
            pass
    _mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    # Device files (/dev/null, /dev/urandom) must keep working, so nodev only on directories.
    flags = MS_NOSUID | (MS_NODEV if is_dir else 0) | (0 if writable else MS_RDONLY)
    for point in _mount_points(target) if recursive else [target]:
        _remount(point, flags)


def _remount(target: str, flags: int) -> None:
    _mount(None, target, None, MS_BIND | MS_REMOUNT | flags)


def _mount_points(top: str) -> list[str]:
    """`top` and every mount below it, from /proc/self/mountinfo (read before the pivot)."""
    points = [top]
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point != top and _below(point, top):
                points.append(point)
    return points
