"""`thyme data convert` (library): released Thyme data (SFT and RL layouts) in, our samples out.

    config = ConvertConfig(shard=Shard.parse("0/4"))
    summary = convert([Path("Thyme-SFT/data")], Path("data/thyme-sft"), config)
    summary.written, summary.rejected, summary.rows_per_s

Rows are read in bounded memory by `thyme.data.convert_read` (parquet by batches, JSONL by lines; this
shard's positions only) and each becomes a sample by `thyme.data.released` (which holds the conversion
decisions: the canonical image path, the checks, the ids). The output directory (`thyme.data.store`):

    DIR/samples.jsonl, DIR/images/    the samples, images content-addressed (shard files with --shard)
    DIR/convert.jsonl                 one record per input row: id, ok, reason ("ok", "image_count",
                                      "bad_image", "malformed"), detail (one line), where (file and row)

With `--shard i/n` the records carry the shard's suffix too (`convert-00003-of-00016.jsonl`), so the jobs of
an array share DIR. Samples and records are written in batches (every 64 rows or 5 seconds, at the end, and
when the run stops early), the samples first; a re-run skips every id already recorded or written (a row
whose sample was written just before a kill gets its record then), and a row repeating an earlier row's
content (same id) is skipped as a duplicate. Only images of accepted rows are stored.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thyme.data.convert_read import RawRow, count_rows, iter_rows, open_inputs
from thyme.data.released import LAYOUTS, ReleasedRow, row_to_sample
from thyme.data.rows import RowRejected
from thyme.data.sample import Sample
from thyme.data.store import SampleStore, Shard
from thyme.errors import first_line
from thyme.jsonl import JsonlRecords

FLUSH_EVERY = 64
FLUSH_SECONDS = 5.0
_SPLIT_NAME = re.compile(r"[\w.-]+")


@dataclass(frozen=True)
class ConvertConfig:
    """How the inputs are read.

    layout: "auto" (from each file's columns), "sft" or "rl". split: the id prefix and `meta.split` of every
    row (None: from each file's name). shard: this job's share of the rows, by position across all inputs.
    limit: only the first N rows of the inputs (before sharding, so the shards still split the same rows).
    """

    layout: str = "auto"
    split: str | None = None
    shard: Shard = field(default_factory=Shard)
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in ("auto", *LAYOUTS):
            raise ValueError(f"--layout {self.layout!r}: choose auto, {' or '.join(LAYOUTS)}")
        if self.split is not None and not _SPLIT_NAME.fullmatch(self.split):
            raise ValueError(f"--split {self.split!r}: use letters, digits, '_', '-' or '.' (e.g. 2round)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit {self.limit}: use 1 or more rows")


@dataclass(frozen=True)
class ConvertSummary:
    """What one `convert` call did.

    rows: rows of this shard handled now; written + sum(rejected) + resumed + duplicates == rows.
    resumed: rows recorded or written by an earlier run (skipped); duplicates: rows with the id of an
    earlier row of this run (skipped, not recorded twice).
    """

    rows: int
    written: int
    rejected: dict[str, int]
    resumed: int
    duplicates: int
    elapsed_s: float
    samples_path: Path
    records_path: Path

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0


def convert(
    inputs: Sequence[str | Path],
    out: str | Path,
    config: ConvertConfig = ConvertConfig(),
    *,
    on_start: Callable[[int], None] | None = None,
    on_row: Callable[[str], None] | None = None,
) -> ConvertSummary:
    """Convert the inputs into `out` (see the module docstring).

    on_start(total): once, with the number of rows this shard owns. on_row(outcome): after each row, with
    "ok", a rejection reason, "resumed" or "duplicate".
    Raises `thyme.data.convert_read.InputError` (before anything is written) for inputs that cannot be read.
    """
    files = open_inputs([Path(p) for p in inputs], layout=config.layout, split=config.split)
    total = count_rows(files, config.shard, config.limit)
    output = _Output(Path(out), config.shard)
    if on_start is not None:
        on_start(total)
    tally: Counter[str] = Counter()
    started = time.perf_counter()
    try:
        for raw in iter_rows(files, shard=config.shard, limit=config.limit):
            outcome = output.handle(raw)
            tally[outcome] += 1
            if on_row is not None:
                on_row(outcome)
    finally:
        output.flush()
    elapsed = time.perf_counter() - started
    skipped = ("ok", "resumed", "duplicate")
    return ConvertSummary(
        rows=sum(tally.values()),
        written=tally["ok"],
        rejected={reason: n for reason, n in sorted(tally.items()) if reason not in skipped},
        resumed=tally["resumed"],
        duplicates=tally["duplicate"],
        elapsed_s=elapsed,
        samples_path=output.store.path,
        records_path=output.records.path,
    )


class _Output:
    """This shard's samples and records in DIR, the ids already done, and the batch being written."""

    def __init__(self, out: Path, shard: Shard) -> None:
        self.store = SampleStore(out, shard=shard)
        self.records = JsonlRecords(self.store.directory / shard.file("convert", ".jsonl"))
        recorded = set(self.records.load())
        self.written_only = self.store.done_ids() - recorded  # written just before a kill, not recorded
        self.done = recorded | self.written_only
        self.seen: set[str] = set()
        self._samples: list[Sample] = []
        self._records: list[dict[str, Any]] = []
        self._last = time.monotonic()

    def handle(self, raw: RawRow) -> str:
        """Convert (or skip) one row; returns its outcome."""
        row = None
        if raw.error is None:
            row = ReleasedRow(raw.data, raw.file.layout, raw.file.split, raw.where, raw.file.path.parent)
            row_id = row.id
        else:
            row_id = f"{raw.file.split}-{hashlib.sha256(raw.line).hexdigest()[:16]}"
        if row_id in self.done:
            if row_id in self.written_only:
                self.written_only.discard(row_id)
                self._record(row_id, raw.where, "ok", "")
            return "resumed"
        if row_id in self.seen:
            return "duplicate"
        self.seen.add(row_id)
        try:
            if row is None:
                raise RowRejected("malformed", raw.error or "unreadable row")
            sample = row_to_sample(row, self.store)
        except RowRejected as exc:
            self._record(row_id, raw.where, exc.kind, first_line(exc))
            return exc.kind
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a value of an unexpected shape
            self._record(row_id, raw.where, "malformed", f"{type(exc).__name__}: {first_line(exc)}")
            return "malformed"
        self._samples.append(sample)
        self._record(row_id, raw.where, "ok", "")
        return "ok"

    def _record(self, row_id: str, where: str, reason: str, detail: str) -> None:
        self._records.append(
            {"id": row_id, "ok": reason == "ok", "reason": reason, "detail": detail, "where": where}
        )
        if len(self._records) >= FLUSH_EVERY or time.monotonic() - self._last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the batch: samples first, then their records (a kill in between is mended on resume)."""
        if self._samples:
            self.store.append(self._samples)
        if self._records:
            self.records.append_many(self._records)
        self._samples, self._records, self._last = [], [], time.monotonic()
