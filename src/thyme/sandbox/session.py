"""`Session`: one episode's sandbox state, living in its own worker process.

Variables persist across `run` calls of a session (one namespace, so functions see top-level names).
`fork()` branches the state copy-on-write into an independent session (the N samples of a GRPO group).
A call that times out or crashes kills the worker and returns an error result; the next call transparently
starts a fresh worker and says so with `restarted=True`. Sessions never share state or output directories.

With the `disk_quota` layer, the output directory (a fork's too) is a tmpfs of its own, capped at `output_mb`
and `output_files`, that the zygote mounts where the workers see it; this process reads it through a
descriptor (`output_view`), since on the host `output_dir` stays an empty mount point.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from thyme.sandbox import wire
from thyme.sandbox.collector import Collector
from thyme.sandbox.process import OutputMount, SandboxError, WorkerHandle, Zygote, peer_pid
from thyme.sandbox.repairs import REPAIR_NAMES
from thyme.sandbox.result import ExecutionResult

if TYPE_CHECKING:
    from thyme.sandbox.core import Sandbox

FORK_TIMEOUT_S = 10.0
LOST_STATE = "the session's variables are lost; the next block starts from a fresh interpreter"


class SessionBusy(RuntimeError):
    """Two calls were made on one session at the same time; use one session per trajectory."""


@dataclass
class Home:
    """A session's directories, with its output quota mounted; the pool thread makes some ahead of time."""

    path: pathlib.Path
    mount: OutputMount | None  # None without the disk_quota layer

    @classmethod
    def make(cls, sandbox: Sandbox, path: pathlib.Path, zygote: Zygote) -> Home:
        """Create `path`, its out/ and forks/, and its images directory; mount out/ for `zygote`'s workers."""
        # Modes set exactly: a umask (027, say) would take the bits a root parent's workers, each under a uid
        # of its own, need to walk down to their directory.
        path.mkdir(mode=0o711)
        path.chmod(0o711)
        (path / "out").mkdir(mode=0o700)
        (path / "forks").mkdir(mode=0o711)  # forks live below their parent so Landlock layers can nest
        (path / "forks").chmod(0o711)
        # Collected images live outside every worker's writable tree (a parent may write into its forks).
        (sandbox.images_root / path.name).mkdir(mode=0o700)
        if not sandbox.disk_quota:
            return cls(path, None)
        try:
            mount = zygote.mount(path / "out", sandbox.config.output_mb, sandbox.config.output_files)
        except SandboxError:
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(sandbox.images_root / path.name, ignore_errors=True)
            raise
        return cls(path, mount)


class Session:
    """A sandbox episode. Create it with `Sandbox.session(inputs=[...])`, use it as a context manager."""

    def __init__(
        self, sandbox: Sandbox, inputs: tuple[str, ...], home: Home, stage_inputs: bool = True
    ) -> None:
        self._sandbox = sandbox
        self.home = home.path
        self.output_dir = home.path / "out"
        self.images_dir = sandbox.images_root / home.path.name
        self.forks_dir = home.path / "forks"
        # Workers that dropped to their own uid may not be able to read the caller's files where they are:
        # give them read-only copies inside the session directory. `inputs` are the paths code sees.
        self.inputs = self._stage(inputs) if stage_inputs and sandbox.drop_uid else inputs
        self._mount = home.mount
        view = home.mount.view if home.mount is not None else None
        self._collector = Collector(
            self.output_dir, self.images_dir, sandbox.config, sandbox.watcher, view=view
        )
        self._handle: WorkerHandle | None = None
        self._lock = threading.Lock()
        self._calls = 0
        self._lost_state = False
        self.closed = False
        self._parent: Session | None = None
        self._open_forks = 0  # forks live in this session's directory, so it stays until they close
        self._forks_lock = threading.Lock()
        self._nonce = ""
        self._enclosing: Future | None = None  # a fork's cgroup placement, still running (see _settle)
        # Sealing a parent off its forks (see `fork`): whether the worker may have anything of the session's
        # code still able to run (threads, timers), and the forks directory it narrows to at its next call.
        self._quiescent = False
        self._seal_dir: pathlib.Path | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def _stage(self, inputs: tuple[str, ...]) -> tuple[str, ...]:
        staged = self.home / "inputs"
        staged.mkdir(mode=0o755)
        staged.chmod(0o755)  # whatever the umask
        copies = []
        for i, src in enumerate(inputs):
            dest = staged / (f"{i}_{os.path.basename(src)}" if len(inputs) > 1 else os.path.basename(src))
            shutil.copyfile(src, dest)
            dest.chmod(0o444)
            copies.append(str(dest))
        return tuple(copies)

    @property
    def output_view(self) -> pathlib.Path:
        """Where this process reads the session's outputs: the tmpfs the worker writes into (through a
        descriptor of its root) with the disk quota, else `output_dir` itself."""
        return self._mount.view if self._mount is not None else self.output_dir

    def _remount_outputs(self, zygote: Zygote | None) -> None:
        """After a zygote restart: a fresh output tmpfs where the new zygote's workers see it (the old one,
        with its files, went with the old mount namespace)."""
        if self._mount is None or zygote is None or self._mount.zygote is zygote:
            return  # (a worker that does not see the tmpfs fails the check at init)
        cfg, old = self._sandbox.config, self._mount
        self._mount = zygote.mount(self.output_dir, cfg.output_mb, cfg.output_files)
        old.release()
        self._collector.close()
        self._collector = Collector(
            self.output_dir, self.images_dir, cfg, self._sandbox.watcher, view=self._mount.view
        )

    def _hand_over(self, uid: int | None) -> None:
        """Give the worker's uid ownership of this session's writable tree."""
        if uid is None:
            return
        os.chown(self.forks_dir, uid, uid)  # only the directory: the forks inside keep their own owners
        staged = self.home / "inputs"
        if self._sandbox.fs_view and staged.is_dir():  # no Landlock: file permissions keep others out
            os.chown(staged, uid, uid)
            staged.chmod(0o500)
        tree = self.output_view  # the host's mount point stays ours: the zygote mounts only over its own
        os.chown(tree, uid, uid)
        for dirpath, dirnames, filenames in os.walk(tree):
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)

    def _bind(self, handle: WorkerHandle) -> None:
        cfg = self._sandbox.config
        try:
            self._remount_outputs(handle.zygote)
        except SandboxError:
            handle.kill()
            raise
        self._hand_over(handle.uid)
        try:
            handle.channel.send(
                {
                    "op": "init",
                    "inputs": list(self.inputs),
                    "output_dir": str(self.output_dir),
                    "repairs": list(cfg.repairs),
                    "max_stdout": cfg.max_stdout_chars,
                    "png_compress_level": cfg.png_compress_level,
                    "landlock": self._sandbox.landlock,
                    "view_dev": handle.zygote.view_dev if self._sandbox.fs_view and handle.zygote else None,
                    "seccomp": self._sandbox.seccomp,
                    "forkable": cfg.forkable,
                    "deny_metadata": not self._sandbox.drop_uid,
                    "forks_dir": str(self.forks_dir),
                    "quota_dev": self._mount.dev if self._mount is not None else None,
                }
            )
            reply = handle.channel.recv(time.monotonic() + FORK_TIMEOUT_S)
        except wire.WireError as exc:
            handle.kill()
            raise SandboxError(f"a sandbox worker failed to start a session: {exc}") from None
        if reply.get("ok") is not True:
            handle.kill()
            raise SandboxError(f"a sandbox worker could not start a session: {reply.get('error', 'refused')}")
        enforced = reply.get("enforced")
        sb = self._sandbox
        layers = {
            "filesystem": sb.landlock or sb.fs_view,
            "seccomp": sb.seccomp,
            "disk_quota": self._mount is not None,
        }
        expected = [key for key, on in layers.items() if on]
        if (
            not isinstance(enforced, dict)
            or any(enforced.get(key) is not True for key in expected)
            or (handle.uid is not None and enforced.get("uid") != handle.uid)
        ):
            handle.kill()
            raise SandboxError(
                "a sandbox worker did not confirm its confinement layers; refusing to run code"
            )
        self._handle = handle

    def _settle(self) -> None:
        """Wait until a fork's cgroup placement is done; its process runs nothing before (errors raise)."""
        pending, self._enclosing = self._enclosing, None
        if pending is not None:
            try:
                pending.result()
            except SandboxError:
                self._handle = None  # enclose() killed the worker; the next call starts a fresh one
                raise

    def _ensure_worker(self) -> bool:
        """Make sure a live worker is bound; True when a fresh one replaced a dead one."""
        if self.closed:
            raise RuntimeError("this sandbox session is closed; open a new one with sandbox.session(...)")
        self._settle()
        if self._handle is not None:
            return False
        if self._seal_dir is not None:  # a fresh worker starts narrowed, without the forks made so far
            self.forks_dir, self._seal_dir = self._seal_dir, None
        try:
            self._bind(self._sandbox._take_worker())
        except SandboxError:  # a pooled worker that died while waiting: one retry with a fresh fork
            self._bind(self._sandbox._spawn())
        self._quiescent = True  # a fresh worker has run no code of the session
        restarted, self._lost_state = self._lost_state, False
        return restarted

    def _discard_worker(self) -> None:
        if self._handle is not None:
            self._handle.kill()
            self._handle = None
            self._lost_state = True

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            with contextlib.suppress(Exception):  # the worker is killed below either way
                self._settle()  # a placement still running would otherwise leave a cgroup behind
            if self._handle is not None:
                with contextlib.suppress(wire.WireError):
                    self._handle.channel.send({"op": "close"})
                self._handle.kill()
                self._handle = None
            self._sandbox._forget(self)
            self._collector.close()
            if self._mount is not None:
                self._mount.release(self._trash_mount_point())
        self._release()

    def _trash_mount_point(self) -> str | None:
        """Move out/ to the sandbox's trash: removing a mount point detaches its mount at once, which waits
        for an RCU grace period (milliseconds on a busy machine); the mounter does that in the background."""
        try:
            os.rename(self.output_dir, self._sandbox._trash / self.home.name)
        except OSError:
            return None
        return self.home.name

    def _release(self) -> None:
        """Delete the session's directory once its forks are closed too. The collected images are kept:
        results handed to the caller stay readable until the Sandbox closes (or `discard_images()`)."""
        with self._forks_lock:
            if not self.closed or self._open_forks:
                return
        shutil.rmtree(self.home, ignore_errors=True)
        parent, self._parent = self._parent, None
        if parent is not None:
            with parent._forks_lock:
                parent._open_forks -= 1
            parent._release()

    def discard_images(self) -> None:
        """Delete the images this session returned (for long-lived sandboxes that keep their own copies)."""
        shutil.rmtree(self.images_dir, ignore_errors=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running code --------------------------------------------------------------------------------
    def run(self, code: str) -> ExecutionResult:
        """Run one code block in this session and collect what it produced."""
        with self._exclusive():
            start, restarted = time.monotonic(), self._ensure_worker()
            handle = self._send_run(code)
            try:
                reply = handle.channel.recv(start + self._sandbox.config.timeout_s)
            except wire.WireError as exc:
                return self._failed(exc, start, restarted)
            return self._finish(reply, start, restarted)

    async def arun(self, code: str) -> ExecutionResult:
        """`run` for asyncio: many sessions can wait on their workers concurrently in one thread."""
        with self._exclusive():
            start, restarted = time.monotonic(), self._ensure_worker()
            handle = self._send_run(code)
            try:
                reply = await handle.channel.arecv(start + self._sandbox.config.timeout_s)
            except wire.WireError as exc:
                return self._failed(exc, start, restarted)
            return self._finish(reply, start, restarted)

    @contextlib.contextmanager
    def _exclusive(self):
        if not self._lock.acquire(blocking=False):
            raise SessionBusy(
                "this sandbox session is already running a call; use one session per trajectory"
            )
        try:
            yield
        finally:
            self._lock.release()

    def _send_run(self, code: str) -> WorkerHandle:
        if not isinstance(code, str):
            raise TypeError(f"session.run expects the code as str, got {type(code).__name__}")
        assert self._handle is not None
        self._calls += 1
        msg = {"op": "run", "code": code, "call": self._calls}
        if self._seal_dir is not None:  # forked since the last call: the worker narrows before the code runs
            msg["seal"] = str(self._seal_dir)
            self.forks_dir, self._seal_dir = self._seal_dir, None
        self._quiescent = False
        with contextlib.suppress(wire.WireError):  # a dead worker shows up as PeerDied on receive
            self._nonce = msg["nonce"] = secrets.token_hex(8)
            self._handle.channel.send(msg)
        return self._handle

    def _failed(self, exc: wire.WireError, start: float, restarted: bool) -> ExecutionResult:
        self._discard_worker()
        timeout = self._sandbox.config.timeout_s
        if isinstance(exc, wire.Deadline):
            error = f"TimeoutError: the code ran longer than {timeout:g} s and was stopped; {LOST_STATE}"
        elif isinstance(exc, wire.PeerDied):
            error = f"SandboxCrash: the process running the code died (crash, os._exit or kill); {LOST_STATE}"
        else:
            error = f"SandboxProtocolError: the worker sent a malformed reply ({exc}); {LOST_STATE}"
        return ExecutionResult(
            error=error,
            timed_out=isinstance(exc, wire.Deadline),
            duration_s=time.monotonic() - start,
            restarted=restarted,
        )

    def _finish(self, reply: dict[str, Any], start: float, restarted: bool) -> ExecutionResult:
        cfg = self._sandbox.config
        stdout, stderr, error = reply.get("stdout"), reply.get("stderr"), reply.get("error")
        processed, repairs = reply.get("processed"), reply.get("repairs")
        if not (
            isinstance(stdout, str)
            and isinstance(stderr, str)
            and (error is None or isinstance(error, str))
            and isinstance(processed, list)
            and isinstance(repairs, list)
        ):
            return self._failed(wire.WireError("fields of the wrong type"), start, restarted)
        if reply.get("nonce") != self._nonce:  # a frame the code forged on its own channel is not a reply
            return self._failed(wire.WireError("a frame that does not answer this call"), start, restarted)
        collected = self._collector.collect(self._calls, processed, stdout)
        if collected.rejected and error is None:
            error = "\n".join(collected.rejected)
        return ExecutionResult(
            stdout=stdout[: cfg.max_stdout_chars],
            stderr=stderr[: cfg.max_stdout_chars],
            error=error[: cfg.max_stdout_chars] if error is not None else None,
            truncated=reply.get("truncated") is True or len(stdout) > cfg.max_stdout_chars,
            images=collected.images,
            repairs=[name for name in REPAIR_NAMES if name in repairs],
            rejected=collected.rejected,
            restarted=restarted,
            duration_s=time.monotonic() - start,
            output_full=self._mount is not None and self._mount.full(),
        )

    # -- branching -----------------------------------------------------------------------------------
    def fork(self) -> Session:
        """An independent copy of this session's state (copy-on-write, in a new process).

        Neither side can reach the other afterwards (where Landlock is active): the fork writes only its own
        tree, and this session narrows to its own output and a fresh forks directory before its next call
        runs, so later code here cannot read, change or signal the fork. Threads and timers this session's
        code left running end here (they do not survive in the fork either): a worker with more than one
        thread or a POSIX timer is replaced by a single-threaded copy first. Forks in a row cost this
        session one Landlock layer in all.
        """
        if not self._sandbox.config.forkable:
            raise RuntimeError("this Sandbox has forkable=False; create it with SandboxConfig(forkable=True)")
        with self._exclusive():
            self._ensure_worker()
            if not (self._quiescent or self._idle()):
                self._renew()
            assert self._handle is not None
            zygote = self._handle.zygote  # the branch lives in its parent's mount namespace
            if zygote is None:
                raise SandboxError("a sandbox worker came from no zygote; cannot fork it")
            home = Home.make(self._sandbox, self._sandbox._new_home(self.forks_dir), zygote)
            child = Session(self._sandbox, self.inputs, home, stage_inputs=False)
            try:
                child._hand_over(self._handle.uid)
            except OSError:
                child.close()
                raise
            try:
                announce, handle = self._request_branch(
                    {"op": "fork", "output_dir": str(child.output_dir), "forks_dir": str(child.forks_dir)},
                    "forked",
                )
            except wire.WireError as exc:
                self._discard_worker()
                child.close()
                raise SandboxError(f"forking the session failed: {exc}") from None
            if isinstance(announce.get("refused"), str):
                child.close()
                raise SandboxError(f"cannot fork: {announce['refused'][:500]}")
            if handle is None:
                child.close()
                if announce.get("ok") is True:  # the parent is fine; only the new branch failed to start
                    raise SandboxError("forking the session failed: the new branch died while starting")
                self._discard_worker()
                raise SandboxError("forking the session failed: the worker answered out of protocol")
            child._handle = handle
            child._handle.share_lineage(self._handle)  # a fork keeps its parent's uid and namespaces
            child._handle.zygote = self._handle.zygote
            child._enclosing = self._sandbox.enclose_later(child._handle)
            child._calls = self._calls
            child._quiescent = True  # a single-threaded copy that has run nothing yet
            child._parent = self
            with self._forks_lock:
                self._open_forks += 1
            child._collector.mark_all_seen()
            self._sandbox._adopt(child)
            if self._seal_dir is None:  # where this session's later forks go; its next call narrows to it
                self._seal_dir = self._sandbox._new_home(self.forks_dir)
                self._seal_dir.mkdir(mode=0o711)
                self._seal_dir.chmod(0o711)  # whatever the umask
                if self._handle.uid is not None:
                    os.chown(self._seal_dir, self._handle.uid, self._handle.uid)
            return child

    def _request_branch(self, msg: dict[str, Any], hello: str) -> tuple[dict[str, Any], WorkerHandle | None]:
        """Send a fork or renew request and read the answer: the new process announces itself (`hello`)
        with one end of its own socket, whose kernel credentials name its pid, then the worker
        acknowledges. Returns the first frame and the new process's handle, or None for any other answer
        (descriptors that came along are closed). Raises `wire.WireError` when the channel fails."""
        assert self._handle is not None
        channel = self._handle.channel
        channel.send(msg)
        deadline = time.monotonic() + FORK_TIMEOUT_S
        announce = channel.recv(deadline)
        fds = channel.take_fds()
        try:
            done = channel.recv(deadline) if announce.get(hello) is True else announce
        except wire.WireError:
            _close_all(fds)
            raise
        if announce.get(hello) is not True or done.get("ok") is not True or len(fds) != 1:
            _close_all(fds)
            return announce, None
        sock = socket.socket(fileno=fds[0])
        return announce, WorkerHandle.adopt(sock, peer_pid(sock))

    def _idle(self) -> bool:
        """Whether no code of the session can run in the worker until its next call, as the kernel reports
        it: one thread and no POSIX timer (the worker disarms interval timers when each call returns)."""
        assert self._handle is not None
        proc = f"/proc/{self._handle.pid}"
        try:
            with open(f"{proc}/status") as status, open(f"{proc}/timers") as timers:
                threads = next((line.split()[1] for line in status if line.startswith("Threads:")), "")
                return threads == "1" and not timers.read().strip()
        except OSError:
            return False

    def _renew(self) -> None:
        """Replace the worker by a single-threaded copy of itself (same state, cgroup and uid); the old
        process exits, taking along any thread or timer the session's code started."""
        self._settle()  # the copy inherits the cgroup, so the placement must be done
        old = self._handle
        assert old is not None
        try:
            announce, new = self._request_branch({"op": "renew"}, "renewed")
        except wire.WireError as exc:
            self._discard_worker()
            raise SandboxError(f"forking the session failed: its worker did not renew ({exc})") from None
        if new is None:
            if isinstance(announce.get("refused"), str):  # the worker is fine; it could not fork
                raise SandboxError(f"cannot fork: {announce['refused'][:500]}")
            self._discard_worker()
            raise SandboxError("forking the session failed: the worker answered out of protocol")
        new.uid, new.uid_pool, new.zygote, new.cgroup = old.uid, old.uid_pool, old.zygote, old.cgroup
        new.lineage = old.lineage
        old.cgroup = old.uid_pool = old.lineage = None  # the copy holds them now: kill the old process alone
        old.kill()
        self._handle = new


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
