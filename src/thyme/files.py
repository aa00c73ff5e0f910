"""Files that appear whole or not at all: write to a temporary file beside the target, then rename.

A reader (a resumed run, a report, another shard) never sees half a file, and a kill leaves at most a
hidden temporary file, removed on the way out when the write fails. What lands is the user's to keep, so
it gets the user's umask like any file they create (`tempfile.mkstemp`/`mkdtemp` would make it 0600/0700):

    atomic_write(out / "report.json", json.dumps(report))       # text or bytes
    atomic_copy(src, out / "images" / "000.png")
    staging = staging_dir(out.parent, out.name)                 # filled, then renamed to `out`
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, fsync: bool = False) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically, creating its directory; `fsync` makes it durable
    before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _hidden_file(path)
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
    fd, tmp = _hidden_file(dst)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def staging_dir(parent: str | os.PathLike[str], name: str) -> Path:
    """A new empty hidden directory `parent/.name.XXXX` (mode 0777 less the umask) to fill and then rename
    into place as `parent/name`."""
    for _ in range(100):
        path = Path(parent) / f".{name}.{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free staging name for {name} in {parent}")


def umask() -> int:
    """The process's umask, read without changing it (Linux reports it in /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(current)
    return current


def give_umask(root: str | os.PathLike[str]) -> None:
    """Give `root` and everything below it the modes the user's umask gives new files and directories (for
    files a library wrote 0600, like safetensors' weights)."""
    mask = umask()
    for path in [Path(root), *Path(root).rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _hidden_file(path: Path) -> tuple[int, Path]:
    """A new hidden file beside `path`, open for writing, mode 0666 less the umask (the kernel applies it)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


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
