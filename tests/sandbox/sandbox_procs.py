"""Process checks the sandbox tests share: is a pid still running, and wait until some are gone."""

from __future__ import annotations

import time


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_dead(pids: set[int], within: float = 5.0) -> set[int]:
    """Wait up to `within` seconds for `pids` to die; returns those still alive."""
    deadline = time.monotonic() + within
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if pid_alive(p)}
        time.sleep(0.02)
    return pids
