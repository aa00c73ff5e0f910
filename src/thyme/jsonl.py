"""Durable JSONL files: complete lines only, appended with one write each, resumable after a kill.

Long jobs (evaluation, data conversion, verification, distillation) write one JSON object per finished item
and re-read the file to skip what is done. A kill can leave at most a torn last line: `load` drops it (and
cuts it off the file, so the next append starts on a fresh line), and that item simply runs again.

    records = JsonlRecords(out / "results.jsonl")
    done = records.load()                      # {id: record}
    records.append({"id": "a", ...})           # flushed and fsynced before returning
    records.append_many(rows)                  # one write and one fsync for many lines
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class JsonlRecords:
    """A JSONL file of records keyed by their "id" field, read line by line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self, *, repair: bool = True) -> dict[str, dict[str, Any]]:
        """The records on disk by id. A torn last line (a kill mid-write) is ignored, and with `repair` cut
        off the file (and logged) so that the next append starts on a fresh line."""
        if not self.path.is_file():
            return {}
        if repair:
            self._repair()
        records: dict[str, dict[str, Any]] = {}
        for record in self._records():
            if record["id"] in records:
                log.warning("%s: id %r appears twice; the first line counts", self.path, record["id"])
                continue
            records[record["id"]] = record
        return records

    def ids(self) -> set[str]:
        """The ids on disk (memory holds the ids, not the records); a torn last line is cut off first."""
        if not self.path.is_file():
            return set()
        self._repair()
        return {record["id"] for record in self._records()}

    def append(self, record: dict[str, Any]) -> None:
        append_lines(self.path, [record])

    def append_many(self, records: Iterable[dict[str, Any]]) -> None:
        append_lines(self.path, records)

    def _records(self) -> Iterator[dict[str, Any]]:
        """Every complete line's record, in order (a last line without its newline is not complete)."""
        with self.path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.endswith(b"\n") or not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    raise ValueError(
                        f"{self.path} line {number} is not JSON; delete that line to redo its item"
                    ) from None

    def _repair(self) -> None:
        """Cut a torn last line off the file (logged), so the next append starts on a fresh line."""
        with self.path.open("r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            end = size
            while end > 0:  # back to just after the last newline, in blocks
                start = max(0, end - 65536)
                fh.seek(start)
                cut = fh.read(end - start).rfind(b"\n")
                if cut >= 0:
                    end = start + cut + 1
                    break
                end = start
            if end == size:
                return
            log.warning(
                "%s: dropped a torn last line (%d bytes, an interrupted write); that item runs again",
                self.path,
                size - end,
            )
            fh.truncate(end)
            os.fsync(fh.fileno())


def append_lines(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Complete lines in one write, flushed and fsynced before returning (nothing written for no records)."""
    data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
    if not data:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
