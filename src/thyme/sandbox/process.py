"""Process plumbing on the caller's side: starting the zygote and holding workers by pidfd.

A `WorkerHandle` is the caller's grip on one worker: its channel and a pidfd. Signals go through the pidfd,
so a recycled pid can never make us kill an unrelated process, and the pidfd doubles as the "died"
descriptor that the channel watches while waiting for a reply. An `OutputMount` is the caller's grip on a
session's size-capped output tmpfs, which lives in the zygote's mount namespace: a descriptor of its root,
through which the caller reads what the worker wrote (the host path shows only the empty mount point).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from thyme.sandbox import wire
from thyme.sandbox.cgroups import WorkerCgroup
from thyme.sandbox.lineage import FoundingFailed, Lineage
from thyme.sandbox.lineage import receive as receive_lineage

if TYPE_CHECKING:
    from thyme.sandbox.uids import UidPool

MAX_REPLY_BYTES = 32 << 20
ZYGOTE_START_TIMEOUT_S = 60.0

# The zygote's whole environment: thread caps for the numeric libraries and where to import thyme from.
# Nothing of the caller's environment (API keys, tokens, proxies) is passed on.
_THREAD_CAPS = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
    "LANG": "C.UTF-8",
}


class SandboxError(RuntimeError):
    """The sandbox itself failed (it could not start a worker); not an error of the model's code."""


class ForkFailed(SandboxError):
    """The zygote is alive but could not fork a worker (a process limit, no memory): freeing processes and
    asking again may help."""


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process that created the peer end, as the kernel recorded it (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return pid


@dataclass
class WorkerHandle:
    pid: int
    channel: wire.Channel
    pidfd: int | None
    cgroup: WorkerCgroup | None = None
    uid: int | None = None  # the unprivileged uid the worker dropped to (root parents only)
    uid_pool: UidPool | None = None  # who gets `uid` back once this process is killed
    zygote: Zygote | None = None  # whose mount namespace the worker lives in
    lineage: Lineage | None = None  # the user and PID namespaces of its lineage (ordinary users)

    @classmethod
    def adopt(cls, sock: socket.socket, pid: int) -> WorkerHandle:
        pidfd = _pidfd_open(pid)
        return cls(pid=pid, channel=wire.Channel(sock, MAX_REPLY_BYTES, death_fd=pidfd), pidfd=pidfd)

    def share_lineage(self, parent: WorkerHandle) -> None:
        """This process is a fork of `parent`'s: it runs as its uid and lives in its namespaces. Hold both
        (the uid, the lineage's init) until this process is killed too."""
        self.uid, self.uid_pool, self.lineage = parent.uid, parent.uid_pool, parent.lineage
        if self.uid_pool is not None and self.uid is not None:
            self.uid_pool.retain(self.uid)
        if self.lineage is not None:
            self.lineage.retain()

    def kill(self) -> None:
        """SIGKILL the worker (idempotent) and release the descriptors."""
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            os.close(self.pidfd)
            self.pidfd = None
            self.channel.death_fd = None
        with contextlib.suppress(OSError):
            self.channel.close()
        if self.cgroup is not None:  # whatever model code started dies with the worker
            self.cgroup.kill_all()
            self.cgroup = None
        if self.uid_pool is not None and self.uid is not None:
            self.uid_pool.release(self.uid)
            self.uid_pool = None
        if self.lineage is not None:  # the last worker of a lineage takes everything in it along
            self.lineage.release()
            self.lineage = None


@dataclass
class OutputMount:
    """A session's output tmpfs (capped in bytes and entries), mounted by `zygote` for its workers."""

    fd: int  # the tmpfs root, opened in the zygote's mount namespace
    dev: int
    zygote: Zygote

    @property
    def view(self) -> pathlib.Path:
        """The output tree as this process reads it."""
        return pathlib.Path(f"/proc/self/fd/{self.fd}")

    def full(self) -> bool:
        """No byte or no entry left: writes there fail with ENOSPC until files are deleted."""
        st = os.fstatvfs(self.fd)
        return st.f_bavail == 0 or st.f_favail == 0

    def release(self, trashed: str | None = None) -> None:
        """Detach the tmpfs (its files go with it) and remove its mount point if it was moved to the trash
        under that name; idempotent."""
        if self.fd >= 0:
            self.zygote.unmount(self.fd, trashed)
            os.close(self.fd)
            self.fd = -1


class Zygote:
    """The warm interpreter that forks workers and mounts output quotas; see `thyme.sandbox.zygote`."""

    def __init__(
        self,
        log_path: pathlib.Path,
        root: pathlib.Path,
        namespaces: bool = True,
        view: bool = False,
        lineage: bool = False,
    ) -> None:
        self._lock = threading.Lock()
        self._mounter: socket.socket | None = None  # the zygote's child that mounts output quotas
        self._mounter_lock = threading.Lock()
        self.mounter_pid: int | None = None
        self.log_path = log_path
        ours, theirs = socket.socketpair()
        src_root = str(pathlib.Path(__file__).resolve().parents[2])
        env = dict(_THREAD_CAPS, PYTHONPATH=src_root)
        with open(log_path, "ab") as log:
            os.fchmod(log.fileno(), 0o600)  # the sandbox root is open to the workers' uids (by name)
            self.proc = subprocess.Popen(
                [sys.executable, "-s", "-m", "thyme.sandbox.zygote", str(theirs.fileno()), str(root)]
                + (["--namespaces"] if namespaces else [])
                + (["--view"] if view else [])
                + (["--lineage"] if lineage else []),
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )
        theirs.close()
        self.sock = ours
        self.sock.settimeout(ZYGOTE_START_TIMEOUT_S)
        try:
            hello, fds = wire.recv_frame_blocking(self.sock, 1 << 16)
        except (OSError, wire.WireError) as exc:
            self.close()
            raise SandboxError(self.note(f"the sandbox zygote did not start ({exc})")) from None
        if not hello.get("ready"):
            self.close()
            raise SandboxError(self.note("the sandbox zygote sent an unexpected greeting"))
        self.namespaces: list[str] = [str(n) for n in hello.get("namespaces", [])]
        quota_error = hello.get("quota_error")
        self.quota_error: str | None = None if quota_error is None else str(quota_error)
        # With the filesystem view: the st_dev of its root, which each worker checks, or why it failed.
        view_dev, view_error = hello.get("view_dev"), hello.get("view_error")
        self.view_dev: int | None = view_dev if isinstance(view_dev, int) else None
        self.view_error: str | None = None if view_error is None else str(view_error)
        # With lineages asked for: None when the zygote can make them, else why not.
        lineage_error = hello.get("lineage_error")
        self.lineage_error: str | None = None if lineage_error is None else str(lineage_error)
        # Mounts go to the mounter, so that they never wait behind the fork of a worker.
        if fds and quota_error is None and isinstance(hello.get("mounter"), int):
            self._mounter, self.mounter_pid = socket.socket(fileno=fds.pop()), hello["mounter"]
        for fd in fds:
            os.close(fd)
        self.sock.settimeout(10.0)
        if self._mounter is not None:
            self._mounter.settimeout(10.0)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def note(self, problem: str) -> str:
        """Append `problem` (and the zygote's exit status, once it has one) to the zygote's log, and return
        it with a pointer there: the log is kept when the Sandbox closes, so the path stays valid."""
        status = self.proc.poll() if hasattr(self, "proc") else None
        if status is not None:
            problem += f" (exit status {status})" if status >= 0 else f" (killed by signal {-status})"
        with contextlib.suppress(OSError), open(self.log_path, "a") as log:
            log.write(f"thyme sandbox: {problem}\n")
        return f"{problem}; see {self.log_path}"

    def _ask(self, request: dict) -> tuple[dict, list[int]]:
        """One request and its reply (with the descriptors that came along) on the control socket."""
        with self._lock:
            try:
                wire.send_frame(self.sock, request)
                return wire.recv_frame_blocking(self.sock, 1 << 16)
            except (OSError, wire.WireError) as exc:
                raise SandboxError(self.note(f"the sandbox zygote stopped answering ({exc})")) from None

    def spawn(self, limits: dict) -> WorkerHandle:
        reply, fds = self._ask({"op": "spawn", "limits": limits})
        if isinstance(reply.get("error"), str) and not fds:
            raise ForkFailed(self.note(f"the sandbox zygote {reply['error'][:300]}"))
        if len(fds) != 1 or not isinstance(reply.get("pid"), int):
            for fd in fds:
                os.close(fd)
            raise SandboxError(self.note("the sandbox zygote sent a malformed spawn reply"))
        sock = socket.socket(fileno=fds[0])
        lineage = None
        if limits.get("lineage"):  # the process forked founds a lineage; its worker answers from inside
            founding = wire.Channel(sock, MAX_REPLY_BYTES)
            try:
                sock, lineage = receive_lineage(founding)
            except (wire.WireError, FoundingFailed) as exc:
                problem = self.note(f"a sandbox worker could not found its lineage ({exc})")
                refused = isinstance(exc, FoundingFailed) and exc.errno in (errno.EAGAIN, errno.ENOMEM)
                raise (ForkFailed if refused else SandboxError)(problem) from None
            finally:
                founding.close()
        handle = WorkerHandle.adopt(sock, reply["pid"] if lineage is None else peer_pid(sock))
        handle.uid = limits.get("uid")
        handle.zygote = self
        handle.lineage = lineage
        return handle

    def reap(self, uid: int) -> None:
        """Kill every process running as the worker uid `uid` (see `thyme.sandbox.zygote.reap`)."""
        reply, fds = self._ask({"op": "reap", "uid": uid})
        for fd in fds:
            os.close(fd)
        if reply.get("ok") is not True:
            error = reply.get("error", "bad reply")
            raise SandboxError(f"could not kill the processes of uid {uid}: {error}")

    def mount(self, path: pathlib.Path, size_mb: int, files: int) -> OutputMount:
        """Mount a capped tmpfs over the output directory `path`, where this zygote's workers see it."""
        if self._mounter is None:
            raise SandboxError(f"the disk quota is not available here: {self.quota_error}")
        with self._mounter_lock:
            try:
                wire.send_frame(
                    self._mounter, {"op": "mount", "path": str(path), "size_mb": size_mb, "files": files}
                )
                reply, fds = wire.recv_frame_blocking(self._mounter, 1 << 16)
            except (OSError, wire.WireError) as exc:
                problem = f"the sandbox zygote's mounter stopped answering ({exc})"
                raise SandboxError(self.note(problem)) from None
        if reply.get("ok") is not True or len(fds) != 1 or not isinstance(reply.get("dev"), int):
            for fd in fds:
                os.close(fd)
            raise SandboxError(f"could not mount the disk quota of {path}: {reply.get('error', 'bad reply')}")
        return OutputMount(fds[0], reply["dev"], self)

    def unmount(self, fd: int, trashed: str | None = None) -> None:
        """Ask the mounter to detach the tmpfs whose root `fd` is, in the background (no reply; a dead
        zygote took it along), and to remove its mount point from the trash."""
        if self._mounter is not None:
            with self._mounter_lock, contextlib.suppress(OSError):
                wire.send_frame(self._mounter, {"op": "umount", "trashed": trashed}, fds=(fd,))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        if self._mounter is not None:
            with self._mounter_lock:
                self._mounter.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
