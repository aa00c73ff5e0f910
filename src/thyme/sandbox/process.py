"""Process plumbing on the caller's side: starting the zygote and holding workers by pidfd.

A `WorkerHandle` is the caller's grip on one worker: its channel and a pidfd. Signals go through the pidfd,
so a recycled pid can never make us kill an unrelated process, and the pidfd doubles as the "died"
descriptor that the channel watches while waiting for a reply.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass

from thyme.sandbox import wire
from thyme.sandbox.cgroups import WorkerCgroup

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

    @classmethod
    def adopt(cls, sock: socket.socket, pid: int) -> WorkerHandle:
        pidfd = _pidfd_open(pid)
        return cls(pid=pid, channel=wire.Channel(sock, MAX_REPLY_BYTES, death_fd=pidfd), pidfd=pidfd)

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


class Zygote:
    """The warm interpreter that forks workers; see `thyme.sandbox.zygote`."""

    def __init__(self, log_path: pathlib.Path, namespaces: bool = True) -> None:
        self._lock = threading.Lock()
        self.log_path = log_path
        ours, theirs = socket.socketpair()
        src_root = str(pathlib.Path(__file__).resolve().parents[2])
        env = dict(_THREAD_CAPS, PYTHONPATH=src_root)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-s", "-m", "thyme.sandbox.zygote", str(theirs.fileno())]
                + (["--namespaces"] if namespaces else []),
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
            hello, _ = wire.recv_frame_blocking(self.sock, 1 << 16)
        except (OSError, wire.WireError) as exc:
            self.close()
            raise SandboxError(
                f"the sandbox zygote did not start ({exc}); see {log_path} for its error output"
            ) from None
        if not hello.get("ready"):
            self.close()
            raise SandboxError(f"the sandbox zygote sent an unexpected greeting; see {log_path}")
        self.namespaces: list[str] = [str(n) for n in hello.get("namespaces", [])]
        self.sock.settimeout(10.0)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, limits: dict) -> WorkerHandle:
        with self._lock:
            try:
                wire.send_frame(self.sock, {"op": "spawn", "limits": limits})
                reply, fds = wire.recv_frame_blocking(self.sock, 1 << 16)
            except (OSError, wire.WireError) as exc:
                raise SandboxError(
                    f"the sandbox zygote stopped answering ({exc}); see {self.log_path}"
                ) from None
        if len(fds) != 1 or not isinstance(reply.get("pid"), int):
            for fd in fds:
                os.close(fd)
            raise SandboxError("the sandbox zygote sent a malformed spawn reply")
        handle = WorkerHandle.adopt(socket.socket(fileno=fds[0]), reply["pid"])
        handle.uid = limits.get("uid")
        return handle

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
