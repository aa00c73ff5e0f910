"""The worker: the process that runs model code for exactly one sandbox session.

A worker is forked by the zygote (`thyme.sandbox.zygote`) with numpy, PIL and cv2 already imported, so
starting one costs a fork, not an interpreter start. It closes every descriptor except its channel, applies
its resource limits, drops to an unprivileged uid (root parents), and then serves frames from the caller;
at `init` it confines itself with Landlock and seccomp before any model code can run:

    init  {inputs, output_dir, quota_dev, repairs, png_compress_level, ...} bind the session (once)
    run   {code, call, seal?}                           repair, compile, exec in the session namespace
    fork  {output_dir, forks_dir}                       branch: a child process continues with a copy
    renew {}                                            a single-threaded copy of this process takes over
    close {}                                            exit

Everything here runs in the same process as model code, so nothing the worker says is trusted by the caller:
the caller re-checks every path and caps every size (`thyme.sandbox.collector`).

A fork must stay out of its parent's reach, and Landlock only narrows: the fork's tree lies inside what the
parent may write. So the parent narrows too (`seal`), before its next code runs: one more layer that keeps
its own output directory and a fresh forks directory, without the forks made so far. A layer binds only the
thread that adds it, and no code of the session may run between the fork and the seal: interval timers are
disarmed when each call returns, and a process the kernel shows with more than one thread or a POSIX timer
is first replaced by a single-threaded copy (`renew`), which leaves those behind. With signal scoping
(Landlock ABI >= 6) the sealed parent can no longer signal its forks either: their domains are no longer
nested in its own.
"""

from __future__ import annotations

import builtins
import io
import linecache
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from thyme.sandbox import landlock, lineage, seccomp, wire
from thyme.sandbox.clamp import make_runtime_helpers
from thyme.sandbox.confine import (
    apply_limits,
    confine_session,
    drop_capabilities,
    drop_privileges,
)
from thyme.sandbox.repairs import REPAIR_NAMES, RepairContext, apply_repairs

MAX_REQUEST_BYTES = 16 << 20
MAX_LANDLOCK_LAYERS = 16  # the kernel's cap on stacked Landlock domains (LANDLOCK_MAX_NUM_LAYERS)
FORK_RETRY_S = 0.5  # how long a fork at the process limit waits for killed forks to finish exiting


class CappedText(io.TextIOBase):
    """A write-only text stream that keeps the first `limit` characters and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        room = self.limit - self.size
        if room > 0:
            self.parts.append(s[:room])
            self.size += min(len(s), room)
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)

    def getvalue(self) -> str:
        return "".join(self.parts)


def set_png_compression(level: int) -> None:
    """Make `level` the zlib level of PNGs saved without an explicit `compress_level` (or `optimize`).

    Wraps PIL's registered PNG writers in this process only: a call that names its own level keeps it.
    """
    from PIL import Image

    for table in (Image.SAVE, Image.SAVE_ALL):
        writer = table.get("PNG")
        if writer is None:
            continue
        inner = getattr(writer, "__wrapped__", writer)

        def tuned(im: Any, fp: Any, filename: Any, _inner: Any = inner) -> None:
            if not im.encoderinfo.get("optimize"):
                im.encoderinfo.setdefault("compress_level", level)
            _inner(im, fp, filename)

        tuned.__wrapped__ = inner  # type: ignore[attr-defined]
        table["PNG"] = tuned


@dataclass
class SessionState:
    """What a worker remembers between calls: the namespace and where the session lives."""

    inputs: list[str] = field(default_factory=list)
    output_dir: str = ""
    repairs: tuple[str, ...] = REPAIR_NAMES
    max_stdout: int = 65536
    namespace: dict[str, Any] = field(default_factory=dict)
    fired: list[str] = field(default_factory=list)
    landlocked: bool = False
    layers: int = 0  # Landlock layers this process is under
    branches: list[int] = field(default_factory=list)  # forks this process made, to reap once they die
    cells: dict[str, list[str]] = field(default_factory=dict)  # "<cell N>" -> the lines executed (repaired)

    def reap_branches(self) -> None:
        """Collect the forks of this session that were killed: a dead child stays a zombie until its parent
        waits for it, and zombies count against the process limit (RLIMIT_NPROC, pids.max) like the living.
        A pid that is not our child (any more: after `renew`, or reaped by the session's code) is dropped."""
        alive = []
        for pid in self.branches:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    alive.append(pid)
            except ChildProcessError:
                pass
        self.branches = alive

    def bind(self, msg: dict[str, Any]) -> dict[str, bool]:
        """Take the session's identity and confine this process to it; returns the layers enforced."""
        self.inputs = [str(p) for p in msg["inputs"]]
        self.output_dir = str(msg["output_dir"])
        enforced: dict[str, bool] = {}
        if msg.get("landlock"):
            enforced = confine_session(self.inputs, [self.output_dir, str(msg["forks_dir"])])
            self.landlocked, self.layers = True, 1
        if msg.get("view_dev") is not None:  # the zygote's filesystem view is what this process sees
            landlock.set_no_new_privs()  # what Landlock would have set first
            enforced["filesystem"] = os.stat("/").st_dev == msg["view_dev"]
        if msg.get("quota_dev") is not None:  # the capped tmpfs the caller holds is what this process sees
            enforced["disk_quota"] = os.stat(self.output_dir).st_dev == msg["quota_dev"]
        if msg.get("seccomp"):
            seccomp.install(
                forkable=bool(msg.get("forkable", True)), deny_metadata=bool(msg.get("deny_metadata"))
            )
            enforced["seccomp"] = True
        self.repairs = tuple(msg.get("repairs", REPAIR_NAMES))
        self.max_stdout = int(msg.get("max_stdout", self.max_stdout))
        level = msg.get("png_compress_level")
        if level is not None:
            set_png_compression(int(level))
        os.chdir(self.output_dir)
        self.namespace = {"__name__": "__main__", "__builtins__": builtins}
        self.namespace.update(make_runtime_helpers(self.fired.append))
        self.namespace.update(
            image_path=self.inputs[0] if self.inputs else None,
            image_paths=list(self.inputs),
            output_dir=self.output_dir,
        )
        tempfile.tempdir = self.output_dir
        return enforced

    def narrow(self, forks_dir: str) -> None:
        """One more Landlock layer: write only the output directory and `forks_dir` from now on."""
        if self.landlocked:
            confine_session(self.inputs, [self.output_dir, forks_dir])
            self.layers += 1


def run_code(state: SessionState, code: str, call: int) -> dict[str, Any]:
    """Repair, compile and execute one block; return the (untrusted) reply frame."""
    state.fired.clear()
    ctx = RepairContext(
        input_paths=tuple(state.inputs),
        output_dir=state.output_dir,
        bound_names=frozenset(state.namespace),
    )
    outcome = apply_repairs(code, ctx, state.repairs)
    for name in getattr(outcome, "needs", ()):
        if name not in state.namespace:
            state.namespace[name] = __import__(name)
    out, err = CappedText(state.max_stdout), CappedText(state.max_stdout)
    filename = f"<cell {call}>"
    error = None
    before = state.namespace.get("processed_path")
    saved = sys.stdout, sys.stderr
    # Tracebacks quote the model's own lines (`shown`), never a repair's rewrite of them.
    shown = outcome.shown if outcome.shown is not None else outcome.code
    linecache.cache[filename] = (len(shown), None, shown.splitlines(True), filename)
    state.cells[filename] = outcome.code.splitlines()
    try:
        compiled = compile(outcome.code, filename, "exec")
    except (SyntaxError, ValueError) as exc:
        error = _format_error(exc, state.cells)
    else:
        sys.stdout, sys.stderr = out, err
        try:
            exec(compiled, state.namespace)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                error = f"SystemExit: {exc.code}"
        except BaseException as exc:
            error = _format_error(exc, state.cells)
        finally:
            sys.stdout, sys.stderr = saved
    # Only a processed_path (re)assigned by this block names its output; a stale one from an earlier
    # block would otherwise hand the model its previous image again.
    after = state.namespace.get("processed_path")
    repairs = [name for name in REPAIR_NAMES if name in outcome.applied or name in state.fired]
    return {
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
        "truncated": bool(out.dropped),
        "error": error,
        "repairs": repairs,
        "processed": _processed_paths(after) if after is not before else [],
    }


def _format_error(exc: BaseException, cells: dict[str, list[str]]) -> str:
    """A traceback restricted to the model's own frames, as the model should see it: each line quoted as the
    model wrote it (linecache holds that), without carets where a repair rewrote the line (their columns
    are the rewrite's)."""
    frames = []
    for f in traceback.extract_tb(exc.__traceback__):
        if not f.filename.startswith("<cell "):
            continue
        if _rewritten(cells, f.filename, f.lineno):
            f = traceback.FrameSummary(f.filename, f.lineno, f.name, line=f.line)
        frames.append(f)
    if isinstance(exc, SyntaxError) and _rewritten(cells, exc.filename, exc.lineno):
        exc.text, exc.offset = linecache.getline(exc.filename, exc.lineno), None
    lines = []
    if frames:
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_list(frames))
    lines.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(lines).rstrip()


def _rewritten(cells: dict[str, list[str]], filename: str | None, lineno: int | None) -> bool:
    """Whether a repair changed line `lineno` of the cell `filename` (the executed line differs from the
    model's, which linecache holds)."""
    executed = cells.get(filename or "")
    if executed is None or not lineno or lineno > len(executed):
        return False
    return executed[lineno - 1] != linecache.getline(filename, lineno).rstrip("\r\n")


def _processed_paths(value: Any) -> list[str]:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [
            os.fspath(v) if isinstance(v, os.PathLike) else v
            for v in value[:64]
            if isinstance(v, (str, os.PathLike))
        ]
    return []


def branch(
    sock: socket.socket, hello: dict[str, Any], prepare: Callable[[], None], isolate: bool = True
) -> tuple[socket.socket | None, int]:
    """Fork this process. The child runs `prepare()`, then hands the caller one end of a fresh socket pair
    with `hello` over the inherited channel and keeps the other; it returns (its new channel, 0). The
    parent returns (None, the child's pid) once the child has finished talking, so that the two never
    interleave frames on the shared channel.

    The caller learns the child's pid from that socket's kernel credentials, not from anything the child
    says. With `isolate` everything else the child inherited is closed too: a descriptor the session's code
    kept (a dup of the parent's channel, say) must not let a new session talk on its parent's behalf.
    """
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:
        os.close(r)
        mine, theirs = socket.socketpair()
        prepare()
        wire.send_frame(sock, hello, fds=(theirs.fileno(),))
        theirs.close()
        sock.close()
        if isolate:
            isolate_descriptors(mine.fileno())  # closing w releases the parent
        else:
            os.close(w)
        return mine, 0
    os.close(w)
    os.read(r, 1)
    os.close(r)
    return None, pid


def fork_session(
    sock: socket.socket, state: SessionState, new_output_dir: str, forks_dir: str
) -> socket.socket | None:
    """Branch this session. Returns the child's new channel in the child, None in the parent."""
    if state.landlocked and state.layers >= MAX_LANDLOCK_LAYERS:
        refusal = (
            f"this session carries {state.layers} Landlock layers (one more for each fork in its history) "
            f"and the kernel stacks at most {MAX_LANDLOCK_LAYERS}; fork a session with a shorter history"
        )
        wire.send_frame(sock, {"refused": refusal})
        return None

    state.reap_branches()

    def prepare() -> None:
        state.branches = []  # the parent's forks are not this branch's children
        _copy_outputs(state.output_dir, new_output_dir)
        _rebase(state, new_output_dir)
        state.narrow(forks_dir)  # from now on this branch writes only its own tree

    deadline = time.monotonic() + FORK_RETRY_S
    while True:
        try:
            mine, pid = branch(sock, {"forked": True}, prepare)
            break
        except BlockingIOError as exc:  # at the process limit: forks just closed may still be exiting
            if not state.branches or time.monotonic() > deadline:
                wire.send_frame(sock, {"refused": _no_fork(exc)})
                return None
            time.sleep(0.01)
            state.reap_branches()
        except OSError as exc:
            wire.send_frame(sock, {"refused": _no_fork(exc)})
            return None
    if mine is None:
        state.branches.append(pid)
        wire.send_frame(sock, {"ok": True, "child": pid})
    return mine


def renew(sock: socket.socket) -> socket.socket:
    """Hand the session over to a single-threaded copy of this process, then exit (see the module doc).
    The copy keeps the files the session's code holds open; only the old channel goes."""
    try:
        mine, _pid = branch(sock, {"renewed": True}, lambda: None, isolate=False)
    except OSError as exc:
        wire.send_frame(sock, {"refused": _no_fork(exc)})
        return sock
    if mine is not None:
        return mine
    wire.send_frame(sock, {"ok": True})
    os._exit(0)


def _no_fork(exc: OSError) -> str:
    limit = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    cap = f" (at most {limit} processes and threads)" if limit != resource.RLIM_INFINITY else ""
    return (
        f"the session's process could not fork: {exc.strerror or exc}; a session, its forks and the "
        f"processes they start share one process limit{cap}: close forks or raise max_processes"
    )


def _copy_outputs(src: str, dst: str) -> None:
    for entry in os.scandir(src):
        if entry.is_file(follow_symlinks=False):
            shutil.copyfile(entry.path, os.path.join(dst, entry.name), follow_symlinks=False)


def _rebase(state: SessionState, new_dir: str) -> None:
    """Point the branch at its own output directory, including string variables that named the old one."""
    old = state.output_dir
    state.output_dir = new_dir
    os.chdir(new_dir)

    def move(v: Any) -> Any:
        if isinstance(v, str) and (v == old or v.startswith(old + os.sep)):
            return new_dir + v[len(old) :]
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return [move(x) for x in v]
        return v

    for key, value in list(state.namespace.items()):
        state.namespace[key] = move(value)


def isolate_descriptors(keep: int) -> None:
    """Close everything inherited from the zygote except the channel; stdio becomes /dev/null."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.closerange(3, keep)
    os.closerange(keep + 1, _max_fd())


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def serve(sock: socket.socket, limits: dict[str, Any], mount_error: str | None = None) -> None:
    """The worker's main loop. Never returns: the process exits when the session ends.

    `mount_error` says why the zygote has no private mount namespace; under a root parent that namespace is
    what shows the runtime to the worker's unprivileged uid, so without it the worker refuses to serve.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    isolate_descriptors(sock.fileno())
    if limits.get("lineage"):  # an ordinary user's lineage: its own user and PID namespaces, first
        sock = lineage.found(sock, drop_capabilities)
    apply_limits(limits)
    setup_error = None
    if limits.get("uid") is not None:  # a root parent: become an unprivileged user
        try:
            if mount_error is not None:
                raise OSError(f"no private mount namespace to show it the runtime: {mount_error}")
            drop_privileges(int(limits["uid"]), int(limits["uid"]))
        except OSError as exc:
            setup_error = f"could not drop to an unprivileged uid: {exc}"
    try:
        drop_capabilities()
    except OSError as exc:
        setup_error = setup_error or f"could not drop capabilities: {exc}"
    state = SessionState()
    call = 0
    while True:
        try:
            msg, fds = wire.recv_frame_blocking(sock, MAX_REQUEST_BYTES)
        except (wire.WireError, OSError):
            os._exit(0)
        for fd in fds:
            os.close(fd)
        op = msg.get("op")
        if op == "init" and setup_error is not None:
            wire.send_frame(sock, {"ok": False, "error": setup_error})
            os._exit(0)
        if op == "init":
            try:
                enforced = state.bind(msg)
            except OSError as exc:
                wire.send_frame(sock, {"ok": False, "error": f"confinement failed: {exc}"})
                os._exit(0)
            enforced["uid"] = os.getuid()
            wire.send_frame(sock, {"ok": True, "pid": os.getpid(), "enforced": enforced})
        elif op == "run":
            if msg.get("seal"):  # the caller forked this session since its last call: narrow first
                try:
                    state.narrow(str(msg["seal"]))
                except OSError as exc:
                    wire.send_frame(sock, {"ok": False, "error": f"confinement failed: {exc}"})
                    os._exit(0)
            call = int(msg.get("call", call + 1))
            state.reap_branches()
            reply = run_code(state, str(msg["code"]), call)
            for timer in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
                signal.setitimer(timer, 0)  # no handler of the code fires between calls (see `renew`)
            reply["nonce"] = msg.get("nonce")
            wire.send_frame(sock, reply)
        elif op == "fork":
            child_sock = fork_session(sock, state, str(msg["output_dir"]), str(msg["forks_dir"]))
            if child_sock is not None:
                sock = child_sock
        elif op == "renew":
            sock = renew(sock)
        else:
            os._exit(0)
