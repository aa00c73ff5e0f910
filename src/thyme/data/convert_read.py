"""Where `thyme data convert` reads its rows: parquet files by batches, JSONL files by lines, in input order.

An input is a `.parquet` or `.jsonl` file, or a directory searched recursively for them (sorted). Each file
has one layout (`thyme.data.released`: "sft" or "rl"), read from its columns (parquet schema, or the first
JSONL object) unless `--layout` names it, and one split: `--split`, else the file name without its shard
suffix (`2round-00000-of-00003.parquet` is "2round"), else its folder's name (`2round/0000.parquet`).

Memory stays bounded: parquet is read BATCH_ROWS rows at a time (pyarrow decodes one row group at a time,
so a row group is the high-water mark), JSONL one line at a time. Positions count rows across all inputs
in order; a shard keeps the positions p with p % n == i and `--limit N` the first N positions, so the
shards of one command are disjoint and together complete. Rows another shard owns are never decoded
(parquet: only the owned rows of a batch are taken; JSONL: their lines are not parsed). A JSONL line that
is not a JSON object comes back with `error` set, for a per-row rejection rather than a failed run.

    files = open_inputs([Path("Thyme-SFT/data")], layout="auto")
    total = count_rows(files, shard, limit)
    for raw in iter_rows(files, shard=shard, limit=limit): raw.position, raw.where, raw.data or raw.error
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from thyme.data.released import LAYOUTS, Layout
from thyme.data.store import Shard

BATCH_ROWS = 16  # rows decoded at a time: a released row holds several base64 images
SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl"}
_SHARD_SUFFIX = re.compile(r"[-_.]?\d{3,}-of-\d{3,}$")
_SPLIT_CHARS = re.compile(r"[^\w.-]+")
_LAYOUT_COLUMNS = {"sft": ("question", "response"), "rl": ("messages", "solution")}
_PEEK_LINES = 100


class InputError(ValueError):
    """An input that cannot be read as asked; one line naming the file and the fix."""


@dataclass(frozen=True)
class InputFile:
    path: Path
    kind: Literal["parquet", "jsonl"]
    layout: Layout
    split: str


@dataclass(frozen=True)
class RawRow:
    """One row as read. data: the row by column; error: why a JSONL line is not a row (data is then {} and
    `line` holds the line)."""

    position: int
    file: InputFile
    where: str
    data: dict[str, Any]
    error: str | None = None
    line: bytes = b""


def open_inputs(inputs: Sequence[Path], *, layout: str = "auto", split: str | None = None) -> list[InputFile]:
    """The data files of the inputs, each with its layout and split; InputError (one line) when an input is
    missing, holds no data files, or has columns of neither layout."""
    if layout not in ("auto", *LAYOUTS):
        raise InputError(f"--layout {layout!r}: choose auto, {' or '.join(LAYOUTS)}")
    files: list[InputFile] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError(
                f"{raw} does not exist; give parquet or JSONL files of Thyme rows, or their folder"
            )
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"{raw} holds no .parquet or .jsonl files")
        elif path.suffix in SUFFIXES:
            found = [path]
        else:
            raise InputError(f"{raw}: not a .parquet or .jsonl file; give those or their folder")
        for file in found:
            kind = SUFFIXES[file.suffix]
            columns = _parquet_columns(file) if kind == "parquet" else _jsonl_keys(file)
            chosen = layout if layout != "auto" else detect_layout(columns)
            if chosen is None:
                raise InputError(
                    f"{file}: columns {', '.join(sorted(columns)) or '(none)'} are neither Thyme-SFT "
                    "(image, question, response) nor Thyme-RL (messages, images, solution, question)"
                )
            files.append(InputFile(file, kind, chosen, split or infer_split(file)))
    return files


def detect_layout(columns: Sequence[str] | set[str]) -> Layout | None:
    """ "sft" or "rl" from a row's column names; None when they fit neither."""
    for name, needed in _LAYOUT_COLUMNS.items():
        if all(c in columns for c in needed):
            return name  # type: ignore[return-value]
    return None


def infer_split(path: Path) -> str:
    """The split a file holds, from its name (shard suffix dropped) or, for a bare number, its folder."""
    stem = _SHARD_SUFFIX.sub("", path.stem)
    if not stem or stem.isdigit():
        stem = path.parent.name
    return _SPLIT_CHARS.sub("_", stem).strip("_") or "rows"


def count_rows(files: Sequence[InputFile], shard: Shard, limit: int | None) -> int:
    """How many rows this shard owns (parquet: from the footers; JSONL: non-empty lines, not parsed)."""
    total = 0
    for file in files:
        if file.kind == "parquet":
            total += _parquet_file(file.path).metadata.num_rows
        else:
            with file.path.open("rb") as fh:
                total += sum(1 for line in fh if line.strip())
    if limit is not None:
        total = min(total, limit)
    return len(range(shard.index, total, shard.count))


def iter_rows(files: Sequence[InputFile], *, shard: Shard, limit: int | None = None) -> Iterator[RawRow]:
    """This shard's rows of the files, in order (see the module docstring)."""
    start = 0
    for file in files:
        if limit is not None and start >= limit:
            return
        reader = _parquet_rows if file.kind == "parquet" else _jsonl_rows
        start += yield from reader(file, start, shard, limit)


# -- parquet ----------------------------------------------------------------------------------------------
def _parquet_file(path: Path):
    try:
        import pyarrow.parquet
    except ImportError:
        raise InputError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    try:
        # pre_buffer (pyarrow's default) would read the whole file into memory before the first batch.
        return pyarrow.parquet.ParquetFile(path, pre_buffer=False)
    except Exception as exc:  # ArrowInvalid, OSError...: not a parquet file
        raise InputError(f"{path} is not a readable parquet file ({str(exc).strip()[:200]})") from None


def _parquet_columns(path: Path) -> set[str]:
    return set(_parquet_file(path).schema_arrow.names)


def _parquet_rows(file: InputFile, start: int, shard: Shard, limit: int | None) -> Iterator[RawRow]:
    """The owned rows of one parquet file; returns how many rows it read."""
    import pyarrow

    offset = 0
    for batch in _parquet_file(file.path).iter_batches(batch_size=BATCH_ROWS):
        owned = [
            j
            for j in range(batch.num_rows)
            if shard.owns(start + offset + j) and (limit is None or start + offset + j < limit)
        ]
        if owned:
            rows = batch.take(pyarrow.array(owned, type=pyarrow.int64())).to_pylist()
            for j, data in zip(owned, rows, strict=True):
                yield RawRow(start + offset + j, file, f"{file.path.name}: row {offset + j + 1}", data)
        offset += batch.num_rows
        if limit is not None and start + offset >= limit:
            break
    return offset


# -- JSONL ------------------------------------------------------------------------------------------------
def _jsonl_keys(path: Path) -> set[str]:
    """The keys of the first JSON object among the first lines (a corrupt first line is skipped)."""
    with path.open("rb") as fh:
        for number, line in enumerate(fh):
            if number >= _PEEK_LINES:
                break
            try:
                data = json.loads(line) if line.strip() else None
            except ValueError:
                continue
            if isinstance(data, dict):
                return set(data)
    raise InputError(f"{path} holds no JSON object in its first {_PEEK_LINES} lines; write one row per line")


def _jsonl_rows(file: InputFile, start: int, shard: Shard, limit: int | None) -> Iterator[RawRow]:
    """The owned rows of one JSONL file; returns how many rows (non-empty lines) it read."""
    offset = 0
    with file.path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            position = start + offset
            if limit is not None and position >= limit:
                break
            offset += 1
            if not shard.owns(position):
                continue
            where = f"{file.path.name}:{number}"
            try:
                data = json.loads(line)
            except ValueError as exc:
                yield RawRow(position, file, where, {}, f"the line is not JSON ({exc})", line)
                continue
            if isinstance(data, dict):
                yield RawRow(position, file, where, data)
            else:
                yield RawRow(position, file, where, {}, "the line is not a JSON object", line)
    return offset
