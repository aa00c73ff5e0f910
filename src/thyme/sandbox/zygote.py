"""The zygote: a clean interpreter that imported the heavy libraries once and forks workers on request.

The caller starts it as a fresh process (`python -m thyme.sandbox.zygote FD ROOT`) with an empty environment,
stdin from /dev/null and its own session, so it holds none of the caller's memory, secrets or descriptors.
It never runs model code itself. It enters the namespaces its workers share (`thyme.sandbox.confine`),
including a private mount namespace for the size-capped output directories of the sessions below ROOT.
Protocol on its control socket (FD):

    {"ready", "namespaces", "quota_error", "view_dev", "view_error", "lineage_error", "mounter"}
                                                                           (+ the mounter's socket)
                                                                           the greeting, once
    {"op": "spawn", "limits": {...}}  ->  {"pid": N} + one descriptor: the caller's end of the new worker
                                          (with limits["lineage"] its first frame founds a lineage:
                                          `thyme.sandbox.lineage`); {"error": "..."} when the fork failed
    {"op": "reap", "uid": N}          ->  {"ok": true} once every process running as the worker uid N is
                                          killed (root parents; N must lie in the sandbox's uid range)

The mounts are made by the mounter, a child forked right after the namespaces were entered (so it lives in
the workers' mount namespace), because a mount must not wait behind the fork of a worker. On its socket:

    {"op": "mount", "path", "size_mb", "files"}  ->  {"ok": true, "dev": N} + a descriptor of the tmpfs root
                                                     (or {"ok": false, "error": "..."})
    {"op": "umount", "trashed"} + that descriptor  ->  no reply; the tmpfs is detached, and its mount point
                                                     (moved by the caller to ROOT/trash/<trashed>) removed

The zygote is a child subreaper and ignores SIGCHLD, so finished workers and their orphans are reaped by
the kernel. When the caller goes away (end of stream on the control socket) the zygote kills its whole
process group, workers included, so no model code outlives the sandbox that owns it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys

PR_SET_CHILD_SUBREAPER = 36


def preload() -> None:
    """Import what model code uses, once, so every forked worker starts warm."""
    import base64  # noqa: F401
    import collections  # noqa: F401
    import fractions  # noqa: F401
    import itertools  # noqa: F401
    import json  # noqa: F401
    import math  # noqa: F401
    import random  # noqa: F401
    import re  # noqa: F401
    import statistics  # noqa: F401

    import cv2
    import numpy  # noqa: F401
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps  # noqa: F401

    import thyme.sandbox.worker  # noqa: F401
    from thyme.sandbox import seccomp

    seccomp.available()  # load libseccomp now: workers cannot search for it once confined

    cv2.setNumThreads(1)
    Image.init()


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except OSError:
        pass


def spawn(ctl: socket.socket, limits: dict, mount_error: str | None) -> None:
    """Fork a worker and hand the caller its channel. A fork the kernel refuses (the user's process limit,
    no memory) is answered with an error, and the zygote goes on serving: the caller decides whether to free
    processes and ask again."""
    from thyme.sandbox import wire, worker

    theirs, mine = socket.socketpair()
    try:
        pid = os.fork()
    except OSError as exc:
        theirs.close()
        mine.close()
        print(f"thyme sandbox zygote: could not fork a worker: {exc}", file=sys.stderr, flush=True)
        wire.send_frame(ctl, {"error": f"could not fork a worker: {exc}"})
        return
    if pid == 0:
        try:
            ctl.close()
            theirs.close()
            worker.serve(mine, limits, mount_error)
        finally:
            os._exit(0)
    mine.close()
    wire.send_frame(ctl, {"pid": pid}, fds=(theirs.fileno(),))
    theirs.close()


def reap(ctl: socket.socket, uid: object) -> None:
    """Kill every process that runs as the worker uid `uid`, whatever process group or session it fled to.

    The zygote (root, single-threaded) takes `uid` as its real and effective uid for one call, keeping 0 as
    its saved uid (the way back). With a non-root effective uid it holds no effective capability, so
    kill(-1, SIGKILL) reaches exactly the processes of `uid` (and never the zygote itself). The kernel sends
    it under the task-list lock, and a process with SIGKILL pending can no longer fork, so a fork loop
    cannot outrun it. No fork, no exec: microseconds. Only uids of the sandbox's own range are accepted:
    the same call as root, or as a real user, would kill far more.
    """
    from thyme.sandbox import wire
    from thyme.sandbox.uids import UID_BASE, UID_COUNT

    if not isinstance(uid, int) or not UID_BASE <= uid < UID_BASE + UID_COUNT or os.getuid() != 0:
        wire.send_frame(ctl, {"ok": False, "error": f"refusing to reap uid {uid!r}: not a sandbox uid here"})
        return
    try:
        os.setresuid(uid, uid, 0)
        try:
            with contextlib.suppress(ProcessLookupError):  # ESRCH: nothing left to kill
                os.kill(-1, signal.SIGKILL)
        finally:
            os.setresuid(0, 0, 0)
    except OSError as exc:
        wire.send_frame(ctl, {"ok": False, "error": f"could not reap uid {uid}: {exc}"})
        return
    wire.send_frame(ctl, {"ok": True})


def start_mounter(ctl: socket.socket, root: str) -> tuple[int, socket.socket]:
    """Fork the mounter; returns its pid and the caller's end of its socket."""
    theirs, mine = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            ctl.close()
            theirs.close()
            serve_mounts(mine, root)
        finally:
            os._exit(0)
    mine.close()
    return pid, theirs


def serve_mounts(sock: socket.socket, root: str) -> None:
    from thyme.sandbox import confine, wire

    while True:
        try:
            msg, fds = wire.recv_frame_blocking(sock, 1 << 16)
        except (wire.WireError, OSError):
            return
        op = msg.get("op")
        for fd in fds:
            if op == "umount":
                confine.unmount_output(fd)
            os.close(fd)
        if op == "umount" and isinstance(msg.get("trashed"), str):
            confine.remove_trashed(root, msg["trashed"])
        elif op == "mount":
            try:
                fd = confine.mount_output(root, str(msg["path"]), int(msg["size_mb"]), int(msg["files"]))
            except (OSError, KeyError, TypeError, ValueError) as exc:
                wire.send_frame(sock, {"ok": False, "error": str(exc)})
                continue
            wire.send_frame(sock, {"ok": True, "dev": os.fstat(fd).st_dev}, fds=(fd,))
            os.close(fd)
        elif op != "umount":
            return


def _enter_view(root: str, mount_error: str | None) -> tuple[int | None, str | None]:
    """The filesystem view (`thyme.sandbox.fsview`): its root's st_dev, or why it could not be made."""
    if mount_error is not None:
        return None, f"no private mount namespace to build it in: {mount_error}"
    if os.getuid() != 0:
        return None, "it needs a root parent: only a uid per session keeps sessions apart inside it"
    from thyme.sandbox import fsview

    try:
        return fsview.enter_view(root), None
    except OSError as exc:
        return None, str(exc)


def main() -> None:
    from thyme.sandbox import wire

    ctl = socket.socket(fileno=int(sys.argv[1]))  # argv: FD ROOT [--namespaces] [--view] [--lineage]
    root = sys.argv[2]
    _become_subreaper()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    preload()
    from thyme.sandbox import confine

    namespaces = confine.enter_namespaces() if "--namespaces" in sys.argv else []
    lineage_error = None
    if "--lineage" in sys.argv:  # a user and a PID namespace per lineage (ordinary users)
        from thyme.sandbox import lineage

        lineage_error = lineage.probe()
    view = "--view" in sys.argv
    mount_error = confine.enter_mount_namespace(root, runtime_view=not view)
    if mount_error is None:
        namespaces.append("mnt")
    view_dev, view_error = None, None
    if view:
        view_dev, view_error = _enter_view(root, mount_error)
    quota_error = mount_error or confine.probe_output_mount(root)
    hello = {
        "ready": True,
        "pid": os.getpid(),
        "namespaces": namespaces,
        "quota_error": quota_error,
        "view_dev": view_dev,
        "view_error": view_error,
        "lineage_error": lineage_error,
    }
    if quota_error is None:
        hello["mounter"], mounter = start_mounter(ctl, root)
        wire.send_frame(ctl, hello, fds=(mounter.fileno(),))
        mounter.close()
    else:
        wire.send_frame(ctl, hello)
    while True:
        try:
            msg, fds = wire.recv_frame_blocking(ctl, 1 << 20)
        except (wire.WireError, OSError):
            break
        for fd in fds:
            os.close(fd)
        if msg.get("op") == "spawn":
            spawn(ctl, dict(msg.get("limits") or {}), mount_error)
        elif msg.get("op") == "reap":
            reap(ctl, msg.get("uid"))
        else:
            break
    os.killpg(0, signal.SIGKILL)  # the workers, and the mounter: it never left this process group


if __name__ == "__main__":
    main()
