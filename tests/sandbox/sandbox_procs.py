"""Process checks the sandbox tests share: is a pid alive, wait until some are gone, who runs as a uid."""

from __future__ import annotations

import os
import time


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is neither a zombie nor dead."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read
        return False


def wait_dead(pids: set[int], within: float = 5.0) -> set[int]:
    """Wait up to `within` seconds for `pids` to die; returns those still alive."""
    deadline = time.monotonic() + within
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if pid_alive(p)}
        time.sleep(0.02)
    return pids


def uid_processes(uid: int) -> set[int]:
    """Live processes whose real uid is `uid`."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid and fields["State"].split()[0] not in ("Z", "X"):
            found.add(int(entry))
    return found
