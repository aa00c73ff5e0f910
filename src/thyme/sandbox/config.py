"""`SandboxConfig`: every knob of the sandbox in one frozen, validated dataclass.

Defaults follow what the released Thyme model needs (REFERENCE.md section 1-2): enough time and memory for
image code on multi-megapixel inputs, the aspect-ratio rejection at 200, and all repair passes on.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from thyme.errors import FieldError
from thyme.sandbox.repairs import REPAIR_NAMES

FILESYSTEMS = ("auto", "landlock", "view")


@dataclass(frozen=True)
class SandboxConfig:
    """How sessions are run and what their outputs may be.

    timeout_s:           wall-clock limit of one `run` call; the worker is killed when it passes.
    memory_mb:           address-space limit of a worker process (and of each process its code starts); with
                         a memory cgroup also the limit of each worker's whole process tree.
    pool_size:           workers kept forked and waiting, so that a session starts without a fork.
    max_stdout_chars:    printed text kept per call (the rest is dropped and `truncated` is set).
    max_images_per_call: images collected from one call; further ones are listed in `rejected`.
    max_image_bytes:     size cap of one output file.
    max_image_pixels:    pixel cap of one output image (decompression bombs are refused unread).
    max_aspect_ratio:    images whose long/short side ratio exceeds this are refused (the reference: 200).
    repairs:             names of the enabled repair passes (see `thyme.sandbox.repairs.REPAIR_NAMES`).
    root_dir:            where session directories live; a private temporary directory when None.
    cpu_s:               CPU seconds one worker may use over its whole life (RLIMIT_CPU).
    file_mb:             largest file a worker may write (RLIMIT_FSIZE).
    output_mb:           disk quota of one session's output directory, its own tmpfs: the bytes live in RAM
                         (charged to the worker's memory cgroup) and writes beyond it fail with ENOSPC. Each
                         fork has a quota of its own. Enforced where the `disk_quota` layer is active.
    output_files:        files and directories one session's output directory may hold (ENOSPC beyond).
    open_files:          descriptors a worker may hold (RLIMIT_NOFILE).
    max_processes:       processes and threads one worker's tree may hold (pids cgroup, where available).
                         Without a cgroup it caps a whole lineage, a session and its forks together, with
                         RLIMIT_NPROC: on the lineage's own uid (root parents) or in its own user namespace
                         (ordinary users; the lineage's init counts too).
    png_compress_level:  zlib level (0-9) of PNGs that model code saves without choosing one; None keeps
                         PIL's 6. Saved images are read once, for the next model turn, so the default is 1,
                         the level OpenCV's `imwrite` uses too: the same pixels (PNG is lossless) at a
                         fraction of the cost. A 256x256 crop of a photo saves in 4.5 ms instead of 11 ms.
    filesystem:          what confines the files model code sees: "landlock", "view" (a root parent's
                         mount-namespace view, `thyme.sandbox.fsview`: Landlock's stand-in on kernels
                         without it), or "auto" (Landlock where the kernel has it, else the view for
                         root parents). A forced choice that this machine cannot honour is missing.
    forkable:            allow `session.fork()`. It needs the worker to fork, so seccomp then allows plain
                         process creation to model code too; False denies everything but threads.
    allow_weak_isolation: run even when a confinement layer this build enforces is missing on the machine
                         (Landlock, namespaces). Off by default: a missing layer is an error that says which.
    """

    timeout_s: float = 30.0
    memory_mb: int = 4096
    pool_size: int = 2
    max_stdout_chars: int = 65536
    max_images_per_call: int = 8
    max_image_bytes: int = 64 << 20
    max_image_pixels: int = 50_000_000
    max_aspect_ratio: float = 200.0
    repairs: tuple[str, ...] = REPAIR_NAMES
    root_dir: pathlib.Path | None = None
    cpu_s: int = 3600
    file_mb: int = 512
    output_mb: int = 256
    output_files: int = 4096
    open_files: int = 256
    max_processes: int = 64
    png_compress_level: int | None = 1
    filesystem: str = "auto"
    forkable: bool = True
    allow_weak_isolation: bool = False

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            problem = f"must be > 0 seconds, got {self.timeout_s!r}"
            raise FieldError("SandboxConfig.timeout_s", "timeout_s", problem)
        if self.memory_mb < 256:
            raise ValueError(
                f"SandboxConfig.memory_mb={self.memory_mb} is too small for numpy/PIL/cv2; use >= 256 (MiB)"
            )
        if self.pool_size < 0:
            raise ValueError(f"SandboxConfig.pool_size must be >= 0, got {self.pool_size}")
        for name in (
            "max_stdout_chars",
            "max_images_per_call",
            "max_image_bytes",
            "max_image_pixels",
            "cpu_s",
            "file_mb",
            "max_processes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"SandboxConfig.{name} must be a positive number, got {getattr(self, name)}")
        if self.output_mb < 1:
            raise ValueError(
                f"SandboxConfig.output_mb={self.output_mb}: the output quota needs >= 1 (MiB per session)"
            )
        if self.output_files < 8:
            raise ValueError(
                f"SandboxConfig.output_files={self.output_files} leaves no room for a few images and "
                "temporary files; use >= 8"
            )
        if self.open_files < 32:
            raise ValueError(f"SandboxConfig.open_files={self.open_files} is too few for Python; use >= 32")
        if self.png_compress_level is not None and not 0 <= self.png_compress_level <= 9:
            raise ValueError(
                f"SandboxConfig.png_compress_level={self.png_compress_level!r}: use a zlib level 0-9, "
                "or None for PIL's default"
            )
        if self.filesystem not in FILESYSTEMS:
            problem = f"{self.filesystem!r} is not one of {', '.join(FILESYSTEMS)}"
            raise FieldError("SandboxConfig.filesystem", "filesystem", problem)
        if self.max_aspect_ratio < 1:
            raise ValueError(f"SandboxConfig.max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")
        unknown = sorted(set(self.repairs) - set(REPAIR_NAMES))
        if unknown:
            raise ValueError(
                f"SandboxConfig.repairs has unknown pass(es) {unknown}; "
                f"valid names: {', '.join(REPAIR_NAMES)}"
            )
        if isinstance(self.repairs, (list, set, frozenset)):
            object.__setattr__(self, "repairs", tuple(self.repairs))
        if self.root_dir is not None:
            object.__setattr__(self, "root_dir", pathlib.Path(self.root_dir))
