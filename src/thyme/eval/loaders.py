"""Read benchmark files users already have into `EvalSample`s, with images written once into a cache.

Three sources:
- VLMEvalKit TSV files (`VStarBench.tsv`, `hr_bench_4k.tsv`, `MME-RealWorld.tsv`, `MathVista_MINI.tsv`...):
  columns index, image (base64), question, answer, optional A..Z options, hint, category, l2-category and
  benchmark extras. As in VLMEvalKit, an `image` cell of 64 characters or fewer is the index of another row
  holding the same image, a cell like "['...', '...']" holds several images, rows without an image are
  skipped (with one warning), and a file with `image_path` but no `image` column names image files beside it.
- HF datasets on disk: a parquet file, a directory of them (one split; a directory holding several splits
  needs `split` or a narrower path), or a `datasets.save_to_disk` directory (its Arrow files are read with
  pyarrow; `datasets` itself is not needed). Images are {"bytes", "path"} structs, raw bytes, base64 text or
  paths relative to the data. Needs `pip install pyarrow`.
- The toy world: DIR/samples.jsonl written by `thyme synth` (one JSON object per line: id, task, split, seed,
  image relative to DIR, question, answer, category, difficulty, optional choices, gold, direct, meta).

Files are streamed (a TSV can be several GB), images are decoded into `cache_dir` under content-addressed
names (`decoded/ab/abcdef....png`, written atomically, reused across runs), and every problem names the file
and the row. A file that cannot be read as a benchmark (missing columns, a torn row) stops the load. An image
that does not decode fully (not base64, not an image, a truncated JPEG) is that sample's error: the sample is
kept with `error` set and no image, so the runner scores it 0 as an input error and never sends it to the
model, and the benchmark keeps its size. Every image is decoded to the last pixel once, when it enters the
cache (PIL's `verify()` alone lets a truncated JPEG through); the cache holds only images that passed.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import hashlib
import io
import json
import logging
import re
import string
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from thyme.errors import image_error
from thyme.eval.task import EvalSample
from thyme.files import atomic_write
from thyme.protocol.choices import normalize_options

log = logging.getLogger(__name__)

_REF_MAX_CHARS = 64  # VLMEvalKit: an image cell this short is another row's index, not base64
_BATCH_ROWS = 8  # parquet/arrow rows decoded at a time: benchmark images can be tens of MB each
_OPTION_MARK_RE = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):])\s*")


class DataError(ValueError):
    """A benchmark file cannot be read as asked; the message names the file, the row and the fix."""


class ImageError(DataError):
    """One row's image cannot be decoded; that sample becomes an input error, the load goes on."""


@dataclass(frozen=True)
class Columns:
    """Where a benchmark keeps each field: candidate column names, the first one present wins.

    options:  a column holding all options as a list (parquet) or list text (TSV), used when the file has no
              A..Z columns. Items may carry "(A) " / "A. " marks; they are removed.
    id:       when no candidate exists, the row number is the id (stable only while the file is unchanged).
    """

    id: tuple[str, ...] = ("index", "id", "question_id", "pid", "idx")
    question: tuple[str, ...] = ("question",)
    answer: tuple[str, ...] = ("answer",)
    image: tuple[str, ...] = ("image", "decoded_image", "images")
    category: tuple[str, ...] = ("category",)
    hint: tuple[str, ...] = ("hint",)
    options: tuple[str, ...] = ("options", "choices", "multi-choice options")


# -- the image cache ---------------------------------------------------------------------------------------
class ImageCache:
    """Image bytes that decode fully, stored once under their SHA-256 (`cache_dir/decoded/ab/abcdef...<ext>`),
    written atomically. Files are checked when they enter the cache, so a cached file is trusted; the
    `decoded` folder keeps them apart from caches written before images were decoded in full."""

    def __init__(self, cache_dir: Path) -> None:
        self.root = Path(cache_dir) / "decoded"
        self._known: set[Path] = set()

    def put(self, data: bytes, where: str) -> Path:
        """The cached file for `data`; ImageError naming `where` (file and row) when it does not decode."""
        fmt = check_decodes(io.BytesIO(data), where)
        digest = hashlib.sha256(data).hexdigest()
        ext = {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt)
        path = self.root / digest[:2] / f"{digest}.{ext}"
        if path not in self._known and not path.exists():
            atomic_write(path, data)
        self._known.add(path)
        return path

    def put_base64(self, text: str, where: str) -> Path:
        return self.put(decode_base64(text, where), where)


def check_decodes(source: Path | io.BytesIO, where: str) -> str:
    """The image's format ("png", "jpeg"...) once every pixel has decoded; ImageError naming `where` for
    data that is no image or stops early (a truncated JPEG passes PIL's `verify()`, not `load()`)."""
    try:
        with Image.open(source) as img:
            fmt = (img.format or "img").lower()
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(
            f"{where}: the image is not a readable image file ({image_error(exc)}); re-download the file"
        ) from None
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        with Image.open(source) as img:
            img.load()
    except Exception as exc:  # PIL raises many types for truncated or corrupt data
        raise ImageError(
            f"{where}: the image is corrupt ({image_error(exc)}); re-download the file"
        ) from None
    return fmt


def decode_base64(text: str, where: str) -> bytes:
    """Strict base64 (a `data:` URL prefix and line breaks allowed); DataError naming `where` otherwise."""
    s = text.strip()
    if s.startswith("data:") and "," in s:
        s = s.split(",", 1)[1]
    try:
        return base64.b64decode("".join(s.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(
            f"{where}: the image is not valid base64 ({exc}); the file is corrupt or truncated"
        ) from None


# -- entry points ------------------------------------------------------------------------------------------
def load_table(
    data: Path | None,
    cache_dir: Path,
    *,
    columns: Columns = Columns(),
    split: str | None = None,
    data_hint: str = "",
) -> Iterator[EvalSample]:
    """Samples of a VLMEvalKit TSV, a parquet file or directory, or a `save_to_disk` directory."""
    hint = f"; expected {data_hint}" if data_hint else ""
    if data is None:
        raise DataError(f"this task reads a benchmark file: pass --data{hint}")
    path = Path(data)
    if not path.exists():
        raise DataError(f"{path} does not exist{hint}")
    cache = ImageCache(cache_dir)
    is_tsv = path.is_file() and path.suffix.lower() in (".tsv", ".txt")
    rows = _tsv_rows(path, cache) if is_tsv else _arrow_rows(path, split)
    return _samples(path, rows, columns, cache)


def load_toyworld(data: Path | None, cache_dir: Path, *, kind: str) -> Iterator[EvalSample]:
    """The `kind` samples (zoom, compute...) of DIR/samples.jsonl (or that file itself).

    Images stay where `thyme synth` wrote them; meta keeps split, seed, difficulty and the sample's meta (the
    gold and direct trajectories are training data and are left out). A `task` of "toyworld_zoom" counts as
    "zoom".
    """
    del cache_dir  # toy-world images are files already
    if data is None:
        raise DataError(
            f"toyworld_{kind} reads samples written by `thyme synth --task {kind} --n N --seed S --out DIR`: "
            "pass --data DIR"
        )
    path = Path(data)
    jsonl = path / "samples.jsonl" if path.is_dir() else path
    if not jsonl.is_file():
        raise DataError(f"{jsonl} does not exist; write it with `thyme synth --task {kind} --out {path}`")
    return _toyworld_samples(jsonl, kind)


def _toyworld_samples(jsonl: Path, kind: str) -> Iterator[EvalSample]:
    root, seen_tasks, found = jsonl.parent, set(), 0
    with jsonl.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{jsonl}:{lineno}"
            try:
                rec = json.loads(line)
                task = str(rec["task"]).removeprefix("toyworld_")
                seen_tasks.add(task)
                if task != kind:
                    continue
                image = root / rec["image"] if rec.get("image") else None
                sample = EvalSample(
                    id=str(rec["id"]),
                    question=str(rec["question"]),
                    answer=str(rec["answer"]),
                    image=image,
                    choices=normalize_options(rec["choices"]) if rec.get("choices") else None,
                    category=str(rec.get("category") or ""),
                    meta={k: rec[k] for k in ("split", "seed", "difficulty", "meta") if k in rec},
                )
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise DataError(f"{where}: not a toy-world sample ({type(exc).__name__}: {exc})") from None
            if image is not None and not image.is_file():
                raise DataError(
                    f"{where}: image {image} is missing; regenerate the directory with thyme synth"
                )
            found += 1
            yield sample
    if not found:
        raise DataError(
            f"{jsonl} has no {kind!r} samples (tasks in it: {', '.join(sorted(seen_tasks)) or 'none'}); "
            f"write them with `thyme synth --task {kind}`"
        )


# -- VLMEvalKit TSV ----------------------------------------------------------------------------------------
Rows = Iterable[tuple[str, dict[str, Any]]]  # (where: file and row, for errors; the row by column name)


def _tsv_rows(path: Path, cache: ImageCache) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows with "image" replaced by a list of cached paths; streamed, never loaded whole.

    A row whose image is another row's index waits (without any image data) until that row has been read,
    so such rows may come out later than their place in the file.
    """
    # Base64 images exceed csv's 128 KiB default field limit; the limit is process-wide, raising it is safe.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    by_index: dict[str, list[Path] | ImageError] = {}  # row index -> its decoded images, or why not
    waiting: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # image index -> rows that reference it
    skipped = 0
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if not header:
            raise DataError(f"{path} is empty; re-download it")
        has_image, has_path = "image" in header, "image_path" in header
        if "index" not in header or not (has_image or has_path):
            need = "index" if "index" not in header else "image (or image_path)"
            raise DataError(f"{path}: no {need!r} column; the file has columns: {', '.join(header)}")
        for rownum, cells in enumerate(reader, 1):
            if not any(cells):
                continue
            row = dict(zip(header, cells, strict=False))  # a length mismatch is reported below
            where = f"{path}: row {rownum} (index {row.get('index', '?')})"
            if len(cells) != len(header):
                raise DataError(f"{where}: {len(cells)} cells for {len(header)} columns; the file is corrupt")
            cell = row.get("image", "").strip()
            if not cell and has_path and row["image_path"].strip():
                row["image"] = [_relative_image(path.parent, p, where) for p in list_cell(row["image_path"])]
            elif not cell:
                skipped += 1
                continue
            elif len(cell) <= _REF_MAX_CHARS:
                if cell not in by_index:
                    waiting.setdefault(cell, []).append((where, row))
                    continue
                row["image"] = by_index[cell]
            else:
                try:
                    row["image"] = [cache.put_base64(item, where) for item in list_cell(cell)]
                except ImageError as exc:
                    row["image"] = exc  # this row's error, and that of rows that reference its image
                by_index[row["index"]] = row["image"]
            yield where, row
            for ref_where, ref_row in waiting.pop(row["index"], []):
                ref_row["image"] = row["image"]
                yield ref_where, ref_row
    if skipped:
        log.warning("%s: skipped %d row(s) without an image, as VLMEvalKit does", path, skipped)
    for ref, rows in waiting.items():
        raise DataError(
            f"{rows[0][0]} takes its image from index {ref!r}, but no row with that index has an image; "
            "the file is incomplete"
        )


def list_cell(cell: str) -> list[str]:
    """A cell holding one value, or several as a Python list literal ("['a', 'b']")."""
    s = cell.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            items = ast.literal_eval(s)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return [s]
        if isinstance(items, list):
            return [str(item) for item in items]
    return [s]


def _relative_image(root: Path, name: str, where: str) -> Path:
    """An image file named by the data (beside it, or absolute); decoded in full, as cached images are."""
    path = Path(name) if Path(name).is_absolute() else root / name
    if not path.is_file():
        raise DataError(f"{where}: image file {path} is missing; keep the images beside the data file")
    check_decodes(path, where)
    return path


# -- parquet and Arrow -------------------------------------------------------------------------------------
def _arrow_rows(path: Path, split: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of parquet or Arrow data, a few at a time (benchmark images can be tens of MB each)."""
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    rownum = 0
    for file in _data_files(path, split):
        for batch in _batches(file, pyarrow):
            for row in batch.to_pylist():
                rownum += 1
                yield f"{file}: row {rownum}", row


def _batches(file: Path, pyarrow: Any) -> Iterator[Any]:
    if file.suffix == ".parquet":
        yield from pyarrow.parquet.ParquetFile(file).iter_batches(batch_size=_BATCH_ROWS)
        return
    try:  # datasets writes the Arrow streaming format; accept the file format too
        reader = pyarrow.ipc.open_stream(file)
    except pyarrow.ArrowInvalid:
        reader = pyarrow.ipc.open_file(file)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
        return
    yield from reader


def _data_files(path: Path, split: str | None) -> list[Path]:
    """The parquet/Arrow files of one split under `path`; DataError listing the splits when it is unclear."""
    if path.is_file():
        if path.suffix not in (".parquet", ".arrow"):
            raise DataError(f"{path}: not a .tsv, .parquet or .arrow file; pass one of those or a directory")
        return [path]
    splits_file = path / "dataset_dict.json"  # a save_to_disk DatasetDict: one directory per split
    if splits_file.is_file():
        names = [str(s) for s in json.loads(splits_file.read_text()).get("splits", [])]
        chosen = split if split in names else (names[0] if len(names) == 1 else None)
        if chosen is None:
            raise DataError(f"{path} holds splits {', '.join(names)}; pass one, e.g. {path / names[0]}")
        return _data_files(path / chosen, None)
    state = path / "state.json"  # a save_to_disk Dataset lists its Arrow files in order
    if state.is_file():
        listed = [path / f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
        if listed:
            return listed
    files = sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".arrow") and p.is_file())
    if not files:
        raise DataError(f"{path} holds no .parquet or .arrow files; pass a benchmark file or its directory")
    # Hub layouts name the split in the file (data/testmini-00000-of-00001.parquet) or the folder
    # (testmini/0000.parquet): files of one split share both.
    groups: dict[str, list[Path]] = {}
    for file in files:
        folder = file.parent.relative_to(path).as_posix()
        groups.setdefault(f"{folder}/{file.stem.split('-')[0]}".lstrip("./"), []).append(file)
    if len(groups) == 1:
        return files
    matching = [key for key in groups if split is not None and split in key.split("/")]
    if len(matching) == 1:
        return groups[matching[0]]
    raise DataError(
        f"{path} holds several splits ({', '.join(sorted(groups))}); pass one split's file or directory"
    )


# -- rows to samples ---------------------------------------------------------------------------------------
def _samples(path: Path, rows: Rows, columns: Columns, cache: ImageCache) -> Iterator[EvalSample]:
    seen: set[str] = set()
    names: dict[str, str | None] | None = None
    skipped = 0
    for number, (where, row) in enumerate(rows):
        if names is None:
            names = _resolve_columns(path, row, columns)
        error = None
        try:
            images = _image_paths(row[names["image"]], path.parent, cache, where)
        except ImageError as exc:
            images, error = [], str(exc)
        if not images and error is None:
            skipped += 1
            continue
        sample = _to_sample(number, row, names, images, error)
        if sample.id in seen:
            raise DataError(
                f"{where} repeats id {sample.id!r}; ids must be unique (they are the resume keys)"
            )
        seen.add(sample.id)
        yield sample
    if skipped:
        log.warning("%s: skipped %d row(s) without an image", path, skipped)


def _resolve_columns(path: Path, row: Mapping[str, Any], columns: Columns) -> dict[str, str | None]:
    """Which column plays each role (None: absent); DataError naming the columns there are."""
    names: dict[str, str | None] = {}
    for role in ("id", "question", "answer", "image", "category", "hint", "options"):
        present = [c for c in getattr(columns, role) if c in row]
        if role == "image":  # prefer a column holding image data over one holding file names
            present.sort(key=lambda c: not _is_image_data(row[c]))
        names[role] = present[0] if present else None
        if names[role] is None and role in ("question", "answer", "image"):
            raise DataError(
                f"{path}: no {role} column (looked for {', '.join(getattr(columns, role))}); the file has "
                f"columns: {', '.join(row)}"
            )
    return names


def _is_image_data(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray)):
        return True
    if isinstance(value, dict):
        return "bytes" in value or "path" in value
    if isinstance(value, list) and value:
        return all(_is_image_data(v) or isinstance(v, Path) for v in value)
    return False


def _image_paths(value: Any, root: Path, cache: ImageCache, where: str) -> list[Path]:
    """Files for an image cell: cached paths already, bytes, {"bytes", "path"}, base64 text or a path."""
    if value is None:
        return []
    if isinstance(value, ImageError):  # a TSV row whose image did not decode
        raise value
    if isinstance(value, Path):
        return [value]
    if isinstance(value, list):
        return [path for item in value for path in _image_paths(item, root, cache, where)]
    if isinstance(value, dict):
        if value.get("bytes"):
            return [cache.put(bytes(value["bytes"]), where)]
        if value.get("path"):
            return [_relative_image(root, str(value["path"]), where)]
        return []
    if isinstance(value, (bytes, bytearray)):
        return [cache.put(bytes(value), where)] if value else []
    text = str(value).strip()
    if not text:
        return []
    if len(text) <= _REF_MAX_CHARS or (root / text).is_file():
        return [_relative_image(root, text, where)]
    return [cache.put_base64(text, where)]


def _to_sample(
    number: int, row: dict[str, Any], names: Mapping[str, str | None], images: list[Path], error: str | None
) -> EvalSample:
    choices = {c: _text(row[c]) for c in string.ascii_uppercase if c in row and _text(row[c])}
    if not choices and names["options"]:
        choices = _options(row[names["options"]])
    used = {n for n in names.values() if n} | set(choices) | {"image_path"}
    meta = {k: v for k, v in row.items() if k not in used and _jsonable(v)}
    if len(images) > 1:
        meta["images"] = [str(p) for p in images]

    def field(role: str) -> str:
        name = names[role]
        return _text(row[name]) if name else ""

    return EvalSample(
        id=field("id") if names["id"] else str(number),
        question=field("question"),
        answer=field("answer"),
        image=images[0] if images else None,
        choices=choices or None,
        category=field("category"),
        hint=field("hint") or None,
        meta=meta,
        error=error,
    )


def _text(value: Any) -> str:
    """A cell as text; missing values (None, NaN, the empty cell, "nan") as ""."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    s = str(value).strip()
    return "" if s.lower() == "nan" else s


def _options(value: Any) -> dict[str, str]:
    """Options from a list, list text ("['(A) x', '(B) y']") or "(A) x" lines, marks removed, lettered A.."""
    if isinstance(value, str):
        items = list_cell(value)
        if len(items) == 1:
            items = [line for line in items[0].splitlines() if _OPTION_MARK_RE.match(line)]
    else:
        items = [str(v) for v in (value or [])]
    marks = [_OPTION_MARK_RE.match(item) for item in items]
    letters = [(m.group(1) or m.group(2)) if m else "" for m in marks]
    if items and "".join(letters) == string.ascii_uppercase[: len(items)]:
        items = [_OPTION_MARK_RE.sub("", item, count=1) for item in items]
    return {string.ascii_uppercase[i]: item.strip() for i, item in enumerate(items[:26])}


def _jsonable(value: Any) -> bool:
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False
