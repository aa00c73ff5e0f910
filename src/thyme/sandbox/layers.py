"""The confinement layers of the sandbox, and which of them are active on this machine.

Each layer is reported honestly: `active` is True only when the code that enforces it exists and the
kernel supports it here. The layers that the kernel-confinement work adds (namespaces, Landlock, seccomp,
cgroups, an unprivileged uid) are listed as missing until they are built, so `thyme sandbox check` never
claims more than the sandbox does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layer:
    name: str
    active: bool
    detail: str


def detect_layers() -> tuple[Layer, ...]:
    """The layers as they apply to workers started on this machine now."""
    return (
        Layer(
            "process",
            True,
            "out-of-process worker forked from a fresh zygote; empty environment, inherited descriptors "
            "closed, stdin /dev/null, own session",
        ),
        Layer("rlimits", True, "address-space cap (memory_mb), no core dumps"),
        Layer("wall_clock", True, "SIGKILL through a pidfd when timeout_s passes, also for C loops"),
        Layer(
            "collector", True, "outputs opened without following links, size/pixel/aspect caps, copied out"
        ),
        Layer("uid", False, "not implemented yet: workers run as the caller's uid"),
        Layer("namespaces", False, "not implemented yet: no user/network/IPC namespaces"),
        Layer("landlock", False, "not implemented yet: the filesystem is not restricted"),
        Layer("seccomp", False, "not implemented yet: no system-call filter"),
        Layer("cgroup", False, "not implemented yet: no memory/pids cgroup"),
    )
