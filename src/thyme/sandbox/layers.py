"""The confinement layers of the sandbox, and which of them are active on this machine.

Each layer is reported honestly: `active` is True only when the code that enforces it exists and the kernel
supports it here. `required` layers are the ones this build enforces everywhere; when one is missing the
sandbox refuses to start unless the user passes `allow_weak_isolation=True`. cgroups are reported but not
required, because an ordinary user usually cannot create them (lineages, user and PID namespaces per
session lineage, contain an ordinary user's processes instead); nor is the disk quota, which needs a mount
namespace the zygote may mount in (root, or an ordinary user with user namespaces). What no layer covers is
said in the README, so `thyme sandbox check` never claims more than the sandbox does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from thyme.sandbox import landlock, seccomp
from thyme.sandbox.uids import UID_BASE, UID_COUNT

# Layers this build enforces and therefore refuses to run without (unless allow_weak_isolation).
REQUIRED = ("landlock", "namespaces", "seccomp", "uid")  # fs_view stands in for landlock where it is used


@dataclass(frozen=True)
class Layer:
    name: str
    active: bool
    detail: str
    required: bool = False


def detect_layers(
    namespaces: list[str],
    forkable: bool,
    cgroups: bool,
    cgroup_detail: str,
    drop_uid: bool,
    quota_error: str | None,
    view: bool = False,
    view_error: str | None = None,
    lineage: bool = False,
    lineage_error: str | None = None,
) -> tuple[Layer, ...]:
    """The layers that apply to workers of a zygote that entered `namespaces` (and could mount output
    quotas unless `quota_error` says why not). With `view` the zygote was asked for the filesystem view,
    which it entered unless `view_error` says why not; with `lineage`, a user and a PID namespace per
    lineage, which it makes unless `lineage_error` says why not."""
    lineages = lineage and lineage_error is None
    abi = landlock.abi_version()
    if view:
        ll_detail = "not used: the filesystem view confines files instead (filesystem='view' or no Landlock)"
    elif abi:
        ll_detail = (
            f"ABI {abi}: read-only runtime and inputs, read-write output tree only"
            + ("; TCP bind/connect denied" if abi >= 4 else "; TCP not covered (ABI < 4)")
            + ("; signals and abstract sockets scoped" if abi >= 6 else "")
        )
    else:
        ll_detail = (
            "missing: the kernel has no Landlock (needs Linux >= 5.13 with landlock in the LSM list); "
            "a root parent would use the filesystem view instead"
        )
    if not view:
        view_detail = "not used: Landlock confines files" if abi else "missing: it needs a root parent"
    elif view_error is None:
        view_detail = (
            "root parent without Landlock: the zygote pivoted into a tmpfs root holding only the runtime "
            "(read-only) and the sandbox tree, where each session's uid owns only its own directories"
        )
    else:
        view_detail = f"missing: {view_error}"

    ns_detail = (
        f"private {', '.join(namespaces)} namespace(s): no network interface, no shared IPC"
        if "net" in namespaces
        else "missing: could not unshare network/IPC namespaces (user namespaces disabled?)"
    )
    return (
        Layer(
            "process",
            True,
            "out-of-process worker forked from a fresh zygote; empty environment, inherited descriptors "
            "closed, stdin /dev/null, own session",
        ),
        Layer(
            "rlimits",
            True,
            "address space, CPU seconds, file size, open files; no core dumps"
            + (
                "; processes and threads (RLIMIT_NPROC on the lineage's own uid, as no cgroup counts them)"
                if drop_uid and not cgroups
                else "; processes and threads of a lineage (RLIMIT_NPROC, counted in its own user namespace)"
                if lineages
                else ""
            ),
        ),
        Layer("wall_clock", True, "SIGKILL through a pidfd when timeout_s passes, also for C loops"),
        Layer(
            "collector", True, "outputs opened without following links, size/pixel/aspect caps, copied out"
        ),
        Layer(
            "no_new_privs",
            abi > 0 or (view and view_error is None),
            "set before Landlock (or, in the filesystem view, before seccomp); setuid binaries cannot gain "
            "privileges",
        ),
        Layer("landlock", abi > 0 and not view, ll_detail, required=not view),
        Layer("fs_view", view and view_error is None, view_detail, required=view),
        Layer("namespaces", "net" in namespaces, ns_detail, required=True),
        Layer(
            "uid",
            True,
            f"root parent: each worker drops to a uid no other live worker on this machine has "
            f"({UID_BASE}-{UID_BASE + UID_COUNT - 1}, leased in blocks), no capabilities; "
            "it sees the runtime through a private mount namespace"
            if drop_uid
            else f"the caller is unprivileged (uid {os.getuid()}); workers run as that uid",
            required=True,
        ),
        Layer(
            "seccomp",
            seccomp.available(),
            (
                "deny list: exec, namespaces and mounts, ptrace, bpf, io_uring, keyrings, handle opens, "
                "rlimit changes, TIOCSTI, non-Unix sockets; "
                + ("fork allowed for session.fork()" if forkable else "threads only (forkable=False)")
            )
            if seccomp.available()
            else "missing: libseccomp is not installed (Debian/Ubuntu: apt install libseccomp2)",
            required=True,
        ),
        Layer(
            "cgroup",
            cgroups,
            f"{cgroup_detail}: per-worker memory and pids limits; the whole process tree is killed at the end"
            if cgroups
            else f"missing: {cgroup_detail}; rlimits still cap each process",
        ),
        Layer(
            "reaper",
            drop_uid,
            "root parent: a worker lineage's uid is its own, so once its last process is killed every "
            "process still running as that uid is killed too (kill(-1) from that uid), wherever it fled"
            if drop_uid
            else "not used: workers share the caller's uid; the lineage layer holds what they start"
            if lineages
            else "missing: workers share the caller's uid; processes model code starts die with their "
            "cgroup where there is one, else when the sandbox closes (unless they left its process group)",
        ),
        Layer(
            "lineage",
            lineages,
            "a user and a PID namespace per lineage (a session and its forks): max_processes caps its "
            "processes and threads, and when its last worker is killed its init goes, taking every process "
            "in it along, wherever it fled; memory stays capped per process (memory_mb each)"
            if lineages
            else "not used: a root parent's lineages are held by their uid (reaper) and cgroups"
            if not lineage
            else f"missing: {lineage_error}; processes model code starts are neither capped nor killed with "
            "their session",
        ),
        Layer(
            "disk_quota",
            quota_error is None,
            "each session and each fork writes into its own tmpfs of output_mb MiB and output_files entries "
            "(nosuid, nodev, noexec) in the workers' mount namespace; beyond it writes fail with ENOSPC"
            if quota_error is None
            else f"missing: {quota_error}; file_mb caps each file, but not their total or their number",
        ),
    )


def missing_required(layers: tuple[Layer, ...]) -> list[Layer]:
    return [layer for layer in layers if layer.required and not layer.active]
