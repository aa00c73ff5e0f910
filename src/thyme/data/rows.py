"""The rows users bring to the data tools: an image, a question, an answer, and whatever else the tool needs.

`thyme data from-boxes` and `thyme data distill` read the same kind of file, so they read it here:

- JSONL: one object per line;
- CSV or TSV (by extension): a header row, then one row per line; a cell holding a list or an object
  (a box, choices) is written as JSON ("[10, 20, 110, 80]").

Every row needs `image` (a path relative to the file, or absolute), `question` and `answer`; `id` is
optional. A row's id is its `id` when given, else the first 16 hex digits of the sha256 of the image's
bytes and the question, so the same row gets the same id on every run and in every shard (resume keys).
Problems are one line naming the file and the row: `RowError("boxes.jsonl:7: ...")`.

    rows = read_rows(Path("boxes.jsonl"), extra=("box",))
    for row in rows:
        row.id, row.image, row.question, row.answer, row.fields["box"]
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED = ("image", "question", "answer")
_DELIMITERS = {".csv": ",", ".tsv": "\t"}


class RowError(ValueError):
    """A row (or the file) cannot be used; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Row:
    """One input row.

    image:  the image file, resolved against the input file's directory.
    given_id: the row's own `id`, when it has one.
    fields: every field of the row as read (JSON cells of CSV/TSV decoded).
    where:  "file:line", for messages.
    """

    image: Path
    question: str
    answer: str
    given_id: str | None
    where: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The row's stable id (its own, else a hash of the image bytes and the question)."""
        if self.given_id is not None:
            return self.given_id
        return content_id(self.image, self.question)


def content_id(image: Path, question: str) -> str:
    """16 hex digits of sha256(image bytes, NUL, question): a stable id for a row without one."""
    try:
        data = Path(image).read_bytes()
    except OSError as exc:
        raise RowError(f"cannot read image {image} ({exc.strerror or exc})") from None
    return hashlib.sha256(data + b"\0" + question.encode("utf-8")).hexdigest()[:16]


def read_rows(path: str | Path, *, extra: Sequence[str] = (), limit: int | None = None) -> list[Row]:
    """The rows of a JSONL, CSV or TSV file (the first `limit`), checked for the fields every tool needs.

    extra: further fields every row must have (e.g. "box"). Given ids must be unique. Images are not opened
    here (the tools do, row by row), so a file of many rows is read quickly.
    """
    path = Path(path)
    if not path.is_file():
        raise RowError(f"{path} does not exist; pass a JSONL, CSV or TSV file of rows")
    if limit is not None and limit < 1:
        raise RowError(f"--limit must be >= 1, got {limit}")
    rows: list[Row] = []
    seen: dict[str, str] = {}
    for where, data in _records(path):
        if limit is not None and len(rows) >= limit:
            break
        row = _row(path.parent, where, data, extra)
        if row.given_id is not None:
            if row.given_id in seen:
                raise RowError(f"{where}: id {row.given_id!r} was already used at {seen[row.given_id]}")
            seen[row.given_id] = where
        rows.append(row)
    if not rows:
        raise RowError(f"{path} holds no rows")
    return rows


def _records(path: Path):
    """(where, dict) per non-empty row of the file."""
    delimiter = _DELIMITERS.get(path.suffix.lower())
    with path.open(encoding="utf-8", newline="" if delimiter else None) as fh:
        if delimiter is None:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path.name}:{number}"
                try:
                    data = json.loads(line)
                except ValueError as exc:
                    raise RowError(
                        f"{where}: not a JSON object ({exc.msg}); write one object per line"
                    ) from None
                if not isinstance(data, dict):
                    raise RowError(f"{where}: not a JSON object; write one object per line")
                yield where, data
            return
        reader = csv.DictReader(fh, delimiter=delimiter)
        for number, record in enumerate(reader, 2):
            if not any((v or "").strip() for v in record.values() if isinstance(v, str)):
                continue
            yield f"{path.name}:{number}", {k: _cell(v) for k, v in record.items() if k is not None}


def _cell(value: Any) -> Any:
    """A CSV/TSV cell: JSON lists and objects decoded, anything else kept as text."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _row(root: Path, where: str, data: Mapping[str, Any], extra: Sequence[str]) -> Row:
    missing = [name for name in (*REQUIRED, *extra) if data.get(name) in (None, "")]
    if missing:
        raise RowError(
            f"{where}: missing {', '.join(missing)} (a row needs {', '.join((*REQUIRED, *extra))})"
        )
    for name in ("image", "question"):
        if not isinstance(data[name], str):
            raise RowError(f"{where}: {name} must be a string, got {type(data[name]).__name__}")
    answer = data["answer"]
    if isinstance(answer, (dict, list)):
        raise RowError(f"{where}: answer must be a string or a number, got {type(answer).__name__}")
    if not data["question"].strip():
        raise RowError(f"{where}: the question is empty")
    image = Path(data["image"]).expanduser()
    image = image if image.is_absolute() else root / image
    given = data.get("id")
    given_id = None if given in (None, "") else str(given)
    return Row(image, data["question"], str(answer).strip(), given_id, where, dict(data))


class RowRejected(ValueError):
    """An input row that cannot become a sample; `kind` names the cause for the summary."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
