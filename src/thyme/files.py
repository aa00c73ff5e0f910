"""Files that appear whole or not at all: write to a temporary file beside the target, then rename.

A reader (a resumed run, a report, another shard) never sees half a file, and a kill leaves at most a
hidden temporary file, removed on the way out when the write fails.

    atomic_write(out / "report.json", json.dumps(report))       # text or bytes
    atomic_copy(src, out / "images" / "000.png")
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, fsync: bool = False) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically, creating its directory; `fsync` makes it durable
    before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy the file `src` to `dst` atomically."""
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def check_out_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """`path` as a Path when it is a directory or can become one; a one-line ValueError naming the file in
    the way (`path` itself or one of its parents) otherwise. Commands call it before any slow work."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists():
            if parent.is_dir():
                return path
            where = "is a file" if parent == path else f"is inside {parent}, which is a file"
            raise ValueError(f"{option} {path} {where}; give a directory")
    return path
