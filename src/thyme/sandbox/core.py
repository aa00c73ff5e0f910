"""`Sandbox`: owns the zygote, a pool of warm workers, and the directory tree of its sessions.

    with Sandbox(SandboxConfig(timeout_s=10)) as sandbox:
        with sandbox.session(inputs=["photo.jpg"]) as session:
            result = session.run("from PIL import Image\\nprint(Image.open(image_path).size)")

Model code never runs in the caller's process: each session is a worker forked from a zygote interpreter
that was started fresh (not forked from the caller) and imported numpy, PIL and cv2 once. A background
thread keeps `config.pool_size` workers forked and waiting, and as many session directories made (with
their output quota mounted), so a session starts with one round trip.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import shutil
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

from thyme.errors import needs_argument, suggest
from thyme.sandbox import landlock
from thyme.sandbox.cgroups import Cgroups
from thyme.sandbox.config import SandboxConfig
from thyme.sandbox.confine import TRASH_DIR
from thyme.sandbox.layers import Layer, detect_layers, missing_required
from thyme.sandbox.process import ForkFailed, SandboxError, WorkerHandle, Zygote
from thyme.sandbox.session import Home, Session
from thyme.sandbox.uids import UidPool
from thyme.sandbox.watch import Watcher


class Sandbox:
    """A pool of sandbox workers. Thread-safe; use as a context manager or call `close()`."""

    def __init__(self, config: SandboxConfig | None = None, **overrides: object) -> None:
        if config is not None and overrides:
            raise TypeError("pass either a SandboxConfig or keyword fields, not both")
        self.config = config if config is not None else SandboxConfig(**overrides)  # type: ignore[arg-type]
        if self.config.root_dir is not None:
            self.config.root_dir.mkdir(parents=True, exist_ok=True)
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="thyme-sandbox-", dir=self.config.root_dir))
        # Beside the root, not in it: a log that an error names must outlive the Sandbox (see `close`).
        self.zygote_log = self.root.with_name(self.root.name + "-zygote.log")
        # Under a root parent every worker drops to a uid of its own, leased machine-wide; they must be
        # able to walk down to their session directory (but not list the others).
        self.drop_uid = os.geteuid() == 0
        self.uids: UidPool | None = None
        if self.drop_uid:
            self.root.chmod(0o711)
            try:
                self.uids = UidPool(reaper=self._reap_uid)
            except (SandboxError, OSError):
                shutil.rmtree(self.root, ignore_errors=True)
                raise
        self.watcher = Watcher()  # one inotify descriptor for the output trees of all sessions
        self.images_root = self.root / "images"  # the caller's copies of collected images, per session
        self.images_root.mkdir(mode=0o700)
        self._trash = self.root / TRASH_DIR  # mount points of closed sessions, until the mounter removes them
        self._trash.mkdir(mode=0o700)
        cfg = self.config
        self._limits = {
            "memory_mb": cfg.memory_mb,
            "cpu_s": cfg.cpu_s,
            "file_mb": cfg.file_mb,
            "open_files": cfg.open_files,
        }
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._pool: list[WorkerHandle] = []
        self._homes: list[Home] = []  # session directories made ahead, output quotas mounted
        self._encloser = ThreadPoolExecutor(max_workers=2, thread_name_prefix="thyme-cgroup")
        self._wanted = threading.Condition(self._lock)
        self._closed = False
        # Landlock confines the files model code sees; where the kernel lacks it, a root parent's zygote
        # builds the filesystem view instead (thyme.sandbox.fsview).
        self._view = cfg.filesystem == "view" or (
            cfg.filesystem == "auto" and landlock.abi_version() == 0 and self.drop_uid
        )
        # An ordinary user's lineages get a user and a PID namespace each (thyme.sandbox.lineage); a root
        # parent's are held by their uid (the reaper) and cgroups.
        self._lineage = not self.drop_uid
        try:
            self._zygote = self._start_zygote()
        except BaseException:  # it could not start, or SIGTERM / Ctrl-C came while it started
            self._closed = True
            self.watcher.close()
            self._release_uids()
            shutil.rmtree(self.root, ignore_errors=True)
            self._drop_log()
            raise
        self._cgroups, cgroup_detail = Cgroups.create(self.root.name)
        if self.uids is not None and self._cgroups is None:  # a lineage's uid is its own: cap it there
            self._limits["processes"] = cfg.max_processes
        lineage_error = self._zygote.lineage_error if self._lineage else None
        if self._lineage and lineage_error is None:  # counted in the lineage's own user namespace
            self._limits["lineage"] = True
            self._limits["processes"] = cfg.max_processes
        self.layers: tuple[Layer, ...] = detect_layers(
            self._zygote.namespaces,
            cfg.forkable,
            self._cgroups is not None,
            cgroup_detail,
            self.drop_uid,
            self._zygote.quota_error,
            self._view,
            self._zygote.view_error,
            lineage=self._lineage,
            lineage_error=lineage_error,
        )
        missing = missing_required(self.layers)
        if missing and not cfg.allow_weak_isolation:
            self._zygote.close()
            if self._cgroups is not None:
                self._cgroups.close()
            self.watcher.close()
            self._release_uids()
            shutil.rmtree(self.root, ignore_errors=True)
            self._drop_log()
            self._closed = True
            names = ", ".join(layer.name for layer in missing)
            problem = f"sandbox layer(s) missing on this machine: {names} ({missing[0].detail})"
            advice = f"{suggest('allow_weak_isolation')} to run with weaker confinement"
            raise needs_argument(SandboxError(f"{problem}; {advice}"), "allow_weak_isolation")
        active = set(self.isolation)
        self.landlock, self.seccomp = "landlock" in active, "seccomp" in active
        self.fs_view, self.disk_quota = "fs_view" in active, "disk_quota" in active
        self._refiller = threading.Thread(target=self._refill_loop, name="thyme-sandbox-pool", daemon=True)
        self._refiller.start()

    @property
    def isolation(self) -> tuple[str, ...]:
        """Names of the confinement layers active for this sandbox's workers."""
        return tuple(layer.name for layer in self.layers if layer.active)

    # -- sessions ------------------------------------------------------------------------------------
    def session(self, inputs: list[str | os.PathLike] | tuple = ()) -> Session:
        """Open an episode whose code sees `inputs` (image files); `image_path` is the first one."""
        paths = []
        for p in inputs:
            path = pathlib.Path(p).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"sandbox input {str(p)!r} is not a readable file; pass image paths")
            paths.append(str(path))
        home = self._take_home()
        try:
            session = Session(self, tuple(paths), home)
        except BaseException:  # the inputs could not be staged
            _discard(home)
            shutil.rmtree(home.path, ignore_errors=True)
            shutil.rmtree(self.images_root / home.path.name, ignore_errors=True)
            raise
        try:
            session._ensure_worker()
        except BaseException:
            session.close()
            raise
        self._adopt(session)
        return session

    def _new_home(self, parent: pathlib.Path) -> pathlib.Path:
        """A fresh session directory under `parent` (the sandbox root, or the forks/ of a session)."""
        if self._closed:
            raise RuntimeError("this Sandbox is closed")
        return parent / f"s{next(self._ids):06d}"

    def _adopt(self, session: Session) -> None:
        with self._lock:
            self._sessions.add(session)

    def _forget(self, session: Session) -> None:
        with self._lock:
            self._sessions.discard(session)

    # -- the warm pool -------------------------------------------------------------------------------
    def _take_home(self) -> Home:
        with self._lock:
            if self._closed:
                raise RuntimeError("this Sandbox is closed")
            home = self._homes.pop() if self._homes else None
            self._wanted.notify()
        if home is not None:
            return home
        try:
            return Home.make(self, self._new_home(self.root), self._zygote)
        except SandboxError:  # the zygote (and its mounter) died: once more with a fresh one
            return Home.make(self, self._new_home(self.root), self._live_zygote())

    def _live_zygote(self) -> Zygote:
        """The zygote, restarted first if it died (once per death; a failing start raises)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this Sandbox is closed")
            if not self._zygote.alive:
                self._zygote.close()
                self._zygote = self._start_zygote()
            return self._zygote

    def _start_zygote(self) -> Zygote:
        return Zygote(self.zygote_log, self.root, view=self._view, lineage=self._lineage)

    def _take_worker(self) -> WorkerHandle:
        with self._lock:
            if self._closed:
                raise RuntimeError("this Sandbox is closed")
            handle = self._pool.pop() if self._pool else None
            self._wanted.notify()
        return handle if handle is not None else self._spawn()

    def _spawn(self, make_room: bool = True) -> WorkerHandle:
        """A fresh worker. After a failed fork `make_room` lets it kill the idle pool (a caller waiting for a
        session); the pool thread itself only backs off."""
        limits = dict(self._limits)
        if self.uids is not None:
            limits["uid"] = self.uids.acquire()
        try:
            try:
                handle = self._zygote.spawn(limits)
            except SandboxError as failure:  # make room or restart a dead zygote, then give up loudly
                handle = self._spawn_again(failure, limits, make_room)
        except BaseException:
            if self.uids is not None:
                self.uids.release(limits["uid"])
            raise
        handle.uid_pool = self.uids
        self.enclose(handle)
        return handle

    def _spawn_again(self, failure: SandboxError, limits: dict, make_room: bool) -> WorkerHandle:
        """The pool survives what one session did: after a failed spawn, a zygote that died is restarted
        (its process group, every lineage included, is killed with it) and asked once more. One that is
        alive but could not fork (the user's process limit, no memory) first gets room, when `make_room`:
        the workers waiting in the pool are killed, each with its lineage, and it is asked again every
        20 ms for up to a second (killed processes count against the limit until the kernel reaps them;
        the pool thread may take the room meanwhile, so the pool is emptied again in every round)."""
        if not isinstance(failure, ForkFailed):
            return self._live_zygote().spawn(limits)
        if not make_room:
            raise failure
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            with self._lock:  # each round: the pool thread may have used the room for a worker meanwhile
                idle, self._pool = self._pool, []
                if idle:
                    self._wanted.notify()  # the pool is short again
            for handle in idle:
                handle.kill()
            time.sleep(0.02)
            try:
                return self._live_zygote().spawn(limits)
            except ForkFailed as again:
                failure = again
        raise failure

    def enclose(self, handle: WorkerHandle) -> None:
        """Move a fresh worker (or fork) into its own cgroup before it runs any model code."""
        if self._cgroups is None:
            return
        try:
            handle.cgroup = self._cgroups.worker(self.config.memory_mb, self.config.max_processes)
            with self._lock:
                self._wanted.notify()  # the pool thread makes the next group ahead
            handle.cgroup.add(handle.pid)
        except OSError as exc:
            with contextlib.suppress(OSError):  # it may be gone already (killed while being placed)
                handle.kill()
            raise SandboxError(f"could not put a sandbox worker into its cgroup: {exc}") from None

    def enclose_later(self, handle: WorkerHandle) -> Future | None:
        """`enclose` on a helper thread: moving a process into a cgroup takes an RCU grace period (often
        milliseconds, on cgroup v1 up to ~15 ms under load), which a fork need not wait for. The session
        waits for the returned future before the process runs anything (`Session._settle`)."""
        if self._cgroups is None:
            return None
        return self._encloser.submit(self.enclose, handle)

    def _stocked(self, size: int) -> bool:
        """The pool holds `size` workers, session directories and (where used) cgroups."""
        cgroups_ok = self._cgroups is None or self._cgroups.ready >= size
        return len(self._pool) >= size and len(self._homes) >= size and cgroups_ok

    def _refill_loop(self) -> None:
        size, backoff = self.config.pool_size, 0.0
        while True:
            with self._lock:
                while not self._closed and (backoff or self._stocked(size)):
                    self._wanted.wait(timeout=backoff or None)
                    backoff = 0.0  # waited out (or woken by a taker): try again
                if self._closed:
                    return
                worker = len(self._pool) < size
                home = not worker and len(self._homes) < size
            try:
                if not worker and not home:  # only cgroups are short
                    self._cgroups.prepare(self.config.memory_mb, self.config.max_processes)
                    continue
                if worker:
                    made: WorkerHandle | Home = self._spawn(make_room=False)
                else:
                    made = Home.make(self, self._new_home(self.root), self._live_zygote())
            except (SandboxError, RuntimeError, OSError):
                # Takers make their own and report the error where it happens; the pool tries again later
                # (the zygote may be restarted, processes freed), so one bad moment does not empty it.
                backoff = 1.0
                continue
            with self._lock:
                if not self._closed:
                    if isinstance(made, WorkerHandle):
                        self._pool.append(made)
                    else:
                        self._homes.append(made)
                    continue
            _discard(made)
            return

    # -- teardown ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill every worker and the zygote, and delete all session directories."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wanted.notify_all()
            pool, self._pool = self._pool, []
            homes, self._homes = self._homes, []
            sessions = list(self._sessions)
        for session in sessions:
            with contextlib.suppress(Exception):
                session.close()
        for made in [*pool, *homes]:
            _discard(made)
        self._encloser.shutdown(wait=True)
        self._release_uids()  # reaps what the sessions left behind, so before the zygote goes
        self._zygote.close()
        self._refiller.join(timeout=5)
        if self._cgroups is not None:
            self._cgroups.close()
        self.watcher.close()
        shutil.rmtree(self.root, ignore_errors=True)
        self._drop_log()

    def _drop_log(self) -> None:
        """Remove the zygote's log unless something was written there (an error names it, so it stays)."""
        with contextlib.suppress(OSError):
            if self.zygote_log.stat().st_size == 0:
                self.zygote_log.unlink()

    def _reap_uid(self, uid: int) -> None:
        """Kill whatever still runs as the worker uid `uid` (the pool's reaper thread calls this)."""
        zygote = self._zygote
        if not zygote.alive and not self._closed:
            zygote = self._live_zygote()
        zygote.reap(uid)

    def _release_uids(self) -> None:
        """Finish reaping and give the leased uid blocks back to the machine (every worker is dead)."""
        if self.uids is not None:
            self.uids.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed:
                self.close()


def _discard(made: WorkerHandle | Home) -> None:
    """Let go of what the pool thread made and nobody took (the directories go with the sandbox root)."""
    if isinstance(made, WorkerHandle):
        made.kill()
    elif made.mount is not None:
        made.mount.release()
