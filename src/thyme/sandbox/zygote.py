"""The zygote: a clean interpreter that imported the heavy libraries once and forks workers on request.

The caller starts it as a fresh process (`python -m thyme.sandbox.zygote FD`) with an empty environment,
stdin from /dev/null and its own session, so it holds none of the caller's memory, secrets or descriptors.
It never runs model code itself. Protocol on its control socket (FD):

    {"op": "spawn", "limits": {...}}  ->  {"pid": N} + one descriptor: the caller's end of the new worker

The zygote is a child subreaper and ignores SIGCHLD, so finished workers and their orphans are reaped by
the kernel. When the caller goes away (end of stream on the control socket) the zygote kills its whole
process group, workers included, so no model code outlives the sandbox that owns it.
"""

from __future__ import annotations

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


def spawn(ctl: socket.socket, limits: dict) -> None:
    from thyme.sandbox import worker

    theirs, mine = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            ctl.close()
            theirs.close()
            worker.serve(mine, limits)
        finally:
            os._exit(0)
    mine.close()
    from thyme.sandbox import wire

    wire.send_frame(ctl, {"pid": pid}, fds=(theirs.fileno(),))
    theirs.close()


def main() -> None:
    from thyme.sandbox import wire

    ctl = socket.socket(fileno=int(sys.argv[1]))  # argv: FD [--namespaces]
    _become_subreaper()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    preload()
    from thyme.sandbox.confine import enter_namespaces

    namespaces = enter_namespaces() if "--namespaces" in sys.argv else []
    wire.send_frame(ctl, {"ready": True, "pid": os.getpid(), "namespaces": namespaces})
    while True:
        try:
            msg, fds = wire.recv_frame_blocking(ctl, 1 << 20)
        except (wire.WireError, OSError):
            break
        for fd in fds:
            os.close(fd)
        if msg.get("op") != "spawn":
            break
        spawn(ctl, dict(msg.get("limits") or {}))
    os.killpg(0, signal.SIGKILL)


if __name__ == "__main__":
    main()
