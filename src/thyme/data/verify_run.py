"""How `thyme data verify` runs over a data set: inputs checked, samples streamed, verdicts and report out.

`thyme.data.verify.verify_samples` wires these parts. The samples of the inputs are read one at a time
(`read_samples`), this shard's by position across all inputs (`Shard.owns`), ids recorded by an earlier run
skipped; `in_order` verifies them on a thread pool (each thread drives one sandbox worker through its own
session) with a bounded window of samples in flight, and yields the verdicts in input order, so memory
stays bounded whatever the size of the set. An accepted sample's images (its own, which were verified) are
copied into the store by the thread that verified it.

An output directory (`--out DIR`):

    DIR/samples.jsonl, DIR/images/    the accepted samples, images content-addressed (`thyme.data.store`)
    DIR/verify.jsonl                  one record per verified sample: id, ok, reason, detail, per-block checks
    DIR/report.json, DIR/report.md    totals of verify.jsonl (earlier runs included): acceptance, counts per
                                      reason; and this run's samples/s

With `--shard i/n` every file carries the shard's suffix, as the store's do (`verify-00003-of-00016.jsonl`,
`report-00003-of-00016.json`), so the jobs of an array share DIR without clashing. Verdicts are written in
batches (every 64 samples or 5 seconds, and at the end), the accepted samples before their records, so a
kill loses at most the last batch, which a re-run verifies again; a sample already in the store is not
stored twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import thyme
from thyme.data.sample import Sample, SampleError, read_samples
from thyme.data.store import SampleStore, Shard, sample_files
from thyme.data.verify import (
    ACCEPTED,
    REASONS,
    SampleCheck,
    VerifyConfig,
    last_line,
    precheck,
    user_images,
    verify_sample,
)
from thyme.files import atomic_write
from thyme.jsonl import JsonlRecords
from thyme.protocol import FeedbackPart, ImagePart

REPORT_SCHEMA = "thyme.verify-report/1"
FLUSH_EVERY = 64
FLUSH_SECONDS = 5.0


@dataclass(frozen=True)
class VerifySummary:
    """What one `verify_samples` call did, and the totals of this shard's records.

    verified: samples verified now, `reasons` their verdicts; totals: every record of this shard (earlier
    runs included) by reason. resumed: samples skipped as recorded by an earlier run; duplicates: samples
    whose id an earlier sample of this shard has (skipped); retry: samples the sandbox could not run (not
    recorded, so a re-run tries them again).
    """

    verified: int
    reasons: dict[str, int]
    totals: dict[str, int]
    elapsed_s: float
    samples_path: Path
    records_path: Path
    report_path: Path
    workers: int
    resumed: int = 0
    duplicates: int = 0
    retry: int = 0

    @property
    def accepted(self) -> int:
        return sum(self.reasons.get(reason, 0) for reason in ACCEPTED)

    @property
    def samples_per_s(self) -> float:
        return self.verified / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def total_records(self) -> int:
        return sum(self.totals.values())

    @property
    def total_accepted(self) -> int:
        return sum(self.totals.get(reason, 0) for reason in ACCEPTED)


def check_inputs(inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> list[Path]:
    """The inputs, resolved, once each exists, its first sample reads and none is an output of `out_dir`.

    Raises FileNotFoundError or ValueError (one line saying what to change), or SampleError (file:line).
    """
    if not inputs:
        raise ValueError("give at least one INPUT: a samples file or directory")
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a directory for the verified samples")
    outputs = set(sample_files(out)) if out.is_dir() else set()
    paths = []
    for raw in inputs:
        path = Path(raw).resolve()
        if not path.exists():
            raise FileNotFoundError(f"{raw} does not exist; give a samples file or directory")
        if path == out or path in outputs:
            raise ValueError(f"{raw} is an output of --out {out_dir}; write the verified set elsewhere")
        next(iter(read_samples(path)), None)  # a file of another kind fails here, before the sandbox starts
        paths.append(path)
    return paths


def count_samples(paths: Sequence[Path], shard: Shard) -> int | None:
    """How many samples this shard owns, counted from lines without parsing them; None when an input is a
    directory of trajectories (a progress bar then shows a count without an end)."""
    total = 0
    for path in paths:
        if path.name == "trajectory.json":
            total += 1
            continue
        files = sample_files(path) if path.is_dir() else [path]
        if not files:
            return None
        for file in files:
            with file.open("rb") as fh:
                total += sum(1 for line in fh if line.strip())
    return len(range(shard.index, total, shard.count))


class VerifyOutput:
    """The files of one shard in an output directory, with batched, durable writes."""

    def __init__(self, out_dir: str | os.PathLike[str], shard: Shard) -> None:
        self.shard = shard
        self.store = SampleStore(out_dir, shard=shard)
        self.records = JsonlRecords(self.store.directory / shard.file("verify", ".jsonl"))
        self.report_path = self.store.directory / shard.file("report", ".json")
        self._rows: list = []
        self._records: list[dict[str, Any]] = []
        self._last = time.monotonic()

    def load(self) -> tuple[Counter[str], set[str]]:
        """Earlier runs' verdicts: the count of each reason, and the ids recorded."""
        earlier = self.records.load()
        return Counter(str(r.get("reason")) for r in earlier.values()), set(earlier)

    def add(self, check: SampleCheck, stored) -> None:
        """Queue a verdict (and the accepted sample, already in the store's images); written in batches."""
        if stored is not None:
            self._rows.append(stored)
        self._records.append(check.to_record())
        if len(self._records) >= FLUSH_EVERY or time.monotonic() - self._last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            self.store.append(self._rows)
        if self._records:
            self.records.append_many(self._records)
        self._rows, self._records, self._last = [], [], time.monotonic()

    def write_report(
        self, summary: VerifySummary, config: VerifyConfig, inputs: Sequence[Path], isolation: Sequence[str]
    ) -> None:
        """`report.json` and `report.md` (this shard's names), each replaced atomically."""
        report = build_report(summary, config, inputs, self.shard, isolation)
        atomic_write(self.report_path, json.dumps(report, indent=2) + "\n")
        atomic_write(self.report_path.with_suffix(".md"), render_markdown(report))


def build_report(summary: VerifySummary, config: VerifyConfig, inputs, shard: Shard, isolation) -> dict:
    total, accepted = summary.total_records, summary.total_accepted
    return {
        "schema": REPORT_SCHEMA,
        "package_version": thyme.__version__,
        "inputs": [str(p) for p in inputs],
        "shard": f"{shard.index}/{shard.count}",
        "config": dataclasses.asdict(config),
        "isolation": list(isolation),
        "samples": total,
        "accepted": accepted,
        "rejected": total - accepted,
        "acceptance_rate": round(accepted / total, 4) if total else None,
        "reasons": {r: summary.totals[r] for r in REASONS if summary.totals.get(r)},
        "run": {
            "verified": summary.verified,
            "accepted": summary.accepted,
            "resumed": summary.resumed,
            "duplicates": summary.duplicates,
            "retry": summary.retry,
            "elapsed_s": round(summary.elapsed_s, 2),
            "samples_per_s": round(summary.samples_per_s, 2),
            "workers": summary.workers,
        },
        "files": {"samples": summary.samples_path.name, "records": summary.records_path.name},
    }


def render_markdown(report: dict) -> str:
    rate, run, config, files = report["acceptance_rate"], report["run"], report["config"], report["files"]
    layers = ", ".join(report["isolation"]) or "n/a"
    lines = [
        f"# thyme data verify (shard {report['shard']})",
        "",
        f"Inputs: {', '.join(report['inputs'])}",
        f"Accepted {report['accepted']} of {report['samples']} samples"
        + (f" ({100 * rate:.1f}%)" if rate is not None else "")
        + f"; the accepted set is `{files['samples']}`, every verdict in `{files['records']}`.",
        "",
        "| reason | samples |",
        "|---|---|",
        *(f"| {reason} | {count} |" for reason, count in report["reasons"].items()),
        "",
        f"This run: {run['verified']} samples verified in {run['elapsed_s']} s "
        f"({run['samples_per_s']} samples/s, {run['workers']} workers); {run['resumed']} already recorded, "
        f"{run['duplicates']} repeated ids, {run['retry']} left for a re-run (sandbox failures).",
        f"Image threshold {config['image_threshold']}, text rule {config['text_rule']}, "
        f"timeout {config['timeout_s']} s; sandbox layers: {layers}.",
    ]
    return "\n".join(lines) + "\n"


# -- the flow: samples in, verdicts out ----------------------------------------------------------------
class Verifier:
    """Verifies one sample on a worker thread and copies an accepted one into the store."""

    def __init__(self, sandbox, config: VerifyConfig, store: SampleStore, stored: set[str]) -> None:
        self.sandbox, self.config, self.store, self.stored = sandbox, config, store, stored

    def verify(self, sample: Sample) -> tuple[SampleCheck, Sample | None]:
        from thyme.sandbox import SandboxError

        check = precheck(sample)
        if check is None:
            try:
                with self.sandbox.session(inputs=user_images(sample)) as session:
                    check = verify_sample(sample, session, self.config)
            except SandboxError as exc:
                return SampleCheck(sample.id, "sandbox_failed", last_line(str(exc))), None
        if not check.ok or sample.id in self.stored:  # stored by a run killed before it wrote the verdict
            return check, None
        return check, _into_store(sample, self.store)


def _into_store(sample: Sample, store: SampleStore) -> Sample:
    """The sample with every image copied into the store (its own, claimed images: they were verified)."""

    def move(part: FeedbackPart) -> FeedbackPart:
        return ImagePart(store.add_image(part.path)) if isinstance(part, ImagePart) else part

    return dataclasses.replace(
        sample,
        user=tuple(move(p) for p in sample.user),
        assistant=tuple(dataclasses.replace(p, part=move(p.part)) for p in sample.assistant),
    )


def owned(paths: Sequence[Path], shard: Shard, recorded: set[str], skipped: dict[str, int], on_progress):
    """This shard's samples still to verify, in input order (positions count across all inputs)."""
    seen: set[str] = set()
    position = 0
    for path in paths:
        for sample in read_samples(path):
            if shard.owns(position):
                if sample.id in recorded or sample.id in seen:
                    skipped["resumed" if sample.id in recorded else "duplicates"] += 1
                    if on_progress is not None:
                        on_progress(None)
                else:
                    seen.add(sample.id)
                    yield sample
            position += 1


def in_order(samples: Iterator[Sample], verify, workers: int):
    """(check, stored sample) in input order, verified on threads with a bounded window ahead. A corrupt
    row stops the reading; the samples already in flight are still yielded before its SampleError."""
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="thyme-verify") as pool:
        try:
            failure: SampleError | None = None
            try:
                for sample in samples:
                    pending.append(pool.submit(verify, sample))
                    while len(pending) >= 2 * workers:
                        yield pending.popleft().result()
            except SampleError as exc:
                failure = exc
            while pending:
                yield pending.popleft().result()
            if failure is not None:
                raise failure
        finally:
            for future in pending:
                future.cancel()
