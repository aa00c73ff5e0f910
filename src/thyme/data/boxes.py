"""`thyme data from-boxes`: grounding rows become verified crop-and-zoom trajectories, plus augmentations.

    thyme data from-boxes rows.jsonl --out data/boxes [--preset default|released] [--augment rotate,contrast]
        [--zoom 2] [--margin 16] [--shard i/n] [--seed 0] [--limit N]

Each row of a JSONL, CSV or TSV file (`thyme.data.rows`) holds `image`, `question`, `answer` and `box`
([x1, y1, x2, y2] in pixels; a box whose values are all <= 1 is read as fractions of the image size, and the
summary says how many were) and optionally `id`. Every row gives a "zoom" sample: reasoning words, one code
block that crops the box with `--margin` px around it and enlarges it `--zoom` times, the sandbox output,
and the answer. `--augment rotate` adds a sample whose image is turned by 90/180/270 degrees and whose code
turns it back first; `--augment contrast` one whose image is washed out and whose code stretches it first
(`thyme.data.box_drafts`). Each variant's code runs in the real sandbox and is checked by the toy world's
`run_gold` (the produced crop equals the one computed here, the window holds the box, the turn parses back)
before anything is written; the prompt is `user_parts` of the chosen preset, as the agent loop builds it.

Output (`thyme.data.store`): DIR/samples.jsonl (or a shard file), DIR/images/ (content-addressed: the input
images, transformed inputs and crops), and DIR/rejected.jsonl (one line per row that could not be used, with
the reason). Sample ids are `<row id>-<variant>`; everything random follows from (row id, --seed, variant).
Re-running the same command resumes: rows already written or rejected are skipped (delete rejected.jsonl to
try those again). Rows run concurrently in the sandbox pool and are written in file order.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from thyme.data.box_drafts import AUGMENTATIONS, VARIANTS, box_values, build_variant, pixel_box
from thyme.data.rows import Row, RowError, RowRejected, read_rows
from thyme.data.sample import Region, Sample, SampleError, split_response
from thyme.data.store import SampleStore, Shard
from thyme.errors import first_line
from thyme.jsonl import JsonlRecords

PRESETS = ("default", "released")


@dataclass(frozen=True)
class BoxesConfig:
    """How rows become samples.

    preset:  the prompt preset of the user turn ("default", or "released": the prompt states the image
             path and size, and the code assigns that path to `image_path` first, as the released data does).
    augment: extra variants per row, from AUGMENTATIONS ("rotate", "contrast").
    zoom:    how many times the crop is enlarged (1-8; lowered for crops that would exceed 4096 px).
    margin:  px added around the box before cropping (crops are at least 64 px a side).
    seed:    with the row id, fixes every random choice; limit: the first N rows of the file only.
    shard:   this job's share of the rows; workers: rows in flight (default 2 per core, at most 8).
    """

    preset: str = "default"
    augment: tuple[str, ...] = ()
    zoom: float = 2.0
    margin: int = 16
    seed: int = 0
    limit: int | None = None
    shard: Shard = field(default_factory=Shard)
    workers: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "augment", tuple(dict.fromkeys(self.augment)))
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"--augment {','.join(unknown)}: choose from {','.join(AUGMENTATIONS)}")
        if not 1 <= self.zoom <= 8:
            raise ValueError(f"--zoom {self.zoom}: use a factor from 1 to 8")
        if self.margin < 0:
            raise ValueError(f"--margin {self.margin}: use 0 or more pixels")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit {self.limit}: use 1 or more rows")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers={self.workers}: use 1 or more")

    @property
    def variants(self) -> tuple[str, ...]:
        return ("zoom", *self.augment)


@dataclass(frozen=True)
class BoxesResult:
    """What one call did.

    rows: rows this shard owns; resumed: of those, rows an earlier run had written or rejected.
    written: samples written now, by variant; rejected: rows rejected now, by cause; duplicates: rows whose
    id an earlier row of the file already has; normalised: rows whose box was read as fractions.
    """

    rows: int
    resumed: int
    written: dict[str, int]
    rejected: dict[str, int]
    duplicates: int
    normalised: int
    samples_path: Path
    rejected_path: Path

    @property
    def samples(self) -> int:
        return sum(self.written.values())


@dataclass
class _Outcome:
    """One row once processed: its samples, or why it was rejected, or that it was done already."""

    id: str
    row: Row
    samples: list[Sample] = field(default_factory=list)
    rejected: RowRejected | None = None
    resumed: bool = False
    normalised: bool = False


def from_boxes(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: BoxesConfig | None = None,
    *,
    sandbox=None,
    on_row: Callable[[], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> BoxesResult:
    """Turn the rows of `input_path` into samples in `out_dir` (see the module docstring).

    sandbox: a running `thyme.sandbox.Sandbox` to use; by default one is started and closed.
    on_start(rows): called once the rows are read; on_row(): after each row (progress bars).
    Raises RowError for a file or row that cannot be read (before any work) and SandboxError when the
    sandbox fails (rows written so far are kept).
    """
    config = config or BoxesConfig()
    rows, boxes = read_box_rows(input_path, config.limit)
    owned = [row for position, row in enumerate(rows) if config.shard.owns(position)]
    if on_start is not None:
        on_start(len(owned))
    store = SampleStore(out_dir, shard=config.shard)
    rejects = JsonlRecords(store.directory / config.shard.filename.replace("samples", "rejected", 1))
    done, rejected_before = store.done_ids(), set(rejects.load())
    own_sandbox = sandbox is None
    if own_sandbox:
        from thyme.sandbox import Sandbox, SandboxConfig

        sandbox = Sandbox(SandboxConfig(timeout_s=60))
    builder = _RowBuilder(config, store, sandbox, done, rejected_before)
    written: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    resumed = duplicates = normalised = 0
    seen: set[str] = set()
    try:
        for outcome in _in_order(owned, boxes, builder, config.workers):
            if outcome.resumed:
                resumed += 1
            elif outcome.id in seen:
                duplicates += 1
            elif outcome.rejected is not None:
                kind = outcome.rejected.kind
                rejects.append({"id": outcome.id, "where": outcome.row.where, "kind": kind,
                                "reason": str(outcome.rejected)})  # fmt: skip
                rejected[kind] += 1
            else:
                store.append(outcome.samples)
                written.update(s.meta["variant"] for s in outcome.samples)
            seen.add(outcome.id)
            normalised += outcome.normalised
            if on_row is not None:
                on_row()
    finally:
        if own_sandbox:
            sandbox.close()
    return BoxesResult(len(owned), resumed, dict(written), dict(rejected), duplicates, normalised,
                       store.path, rejects.path)  # fmt: skip


def read_box_rows(path: str | os.PathLike[str], limit: int | None = None):
    """The rows (the first `limit`) and their boxes by `row.where`; RowError names a bad row."""
    rows = read_rows(path, extra=("box",), limit=limit)
    boxes = {}
    for row in rows:
        try:
            boxes[row.where] = box_values(row.fields["box"])
        except ValueError as exc:
            raise RowError(f"{row.where}: {exc}") from None
    return rows, boxes


def _in_order(rows: list[Row], boxes, builder: _RowBuilder, workers: int | None):
    """Outcomes in file order, rows built on threads (a bounded window ahead)."""
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    pending = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="from-boxes") as pool:
        try:
            submitted = 0
            for index in range(len(rows)):
                while submitted < len(rows) and submitted - index < 2 * workers:
                    row = rows[submitted]
                    pending[submitted] = pool.submit(builder.build, row, boxes[row.where])
                    submitted += 1
                yield pending.pop(index).result()
        finally:
            for future in pending.values():
                future.cancel()


class _RowBuilder:
    """Builds one row's samples (thread-safe: every row has its own sessions and generators)."""

    def __init__(self, config: BoxesConfig, store: SampleStore, sandbox, done: set[str], rejected: set[str]):
        from thyme.protocol import get_preset

        self.config, self.store, self.sandbox = config, store, sandbox
        self.preset = get_preset(config.preset)
        self.done, self.rejected = done, rejected

    def build(self, row: Row, box: tuple[float, ...]) -> _Outcome:
        try:
            row_id = row.id
        except RowError as exc:  # no id and an unreadable image: the row is known by its place in the file
            if row.where in self.rejected:
                return _Outcome(row.where, row, resumed=True)
            return _Outcome(row.where, row, rejected=RowRejected("image", str(exc)))
        todo = [v for v in self.config.variants if f"{row_id}-{v}" not in self.done]
        if row_id in self.rejected or not todo:
            return _Outcome(row_id, row, resumed=True)
        try:
            with Image.open(row.image) as img:
                img.load()
                image = img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return _Outcome(row_id, row, rejected=RowRejected("image", f"cannot read {row.image} ({exc})"))
        outcome = _Outcome(row_id, row)
        try:
            pixels, outcome.normalised = pixel_box(box, image.size)
            original = self.store.add_image(row.image)
            outcome.samples = [self._sample(row, row_id, name, image, original, pixels) for name in todo]
        except RowRejected as exc:
            outcome.rejected, outcome.samples = exc, []
        return outcome

    def _sample(self, row: Row, row_id: str, name: str, image, original: Path, box) -> Sample:
        from thyme.agent.episode import Prompt, user_parts
        from thyme.data.toyworld.gold import GoldVerificationError, run_gold

        rng = np.random.default_rng([self.config.seed, _number(row_id), VARIANTS.index(name)])
        variant = build_variant(name, rng, image, row.question, row.answer, box,
                                zoom=self.config.zoom, margin=self.config.margin)  # fmt: skip
        stored = original if name == "zoom" else self._store_transformed(variant.image, original)
        source_path = f"/mnt/data/{stored.name}" if self.preset.needs_image_path else None
        with Image.open(stored) as decoded:
            draft = variant.draft(decoded, source_path)
            size = decoded.size
        try:
            with self.sandbox.session(inputs=[stored]) as session, tempfile.TemporaryDirectory() as scratch:
                gold = run_gold(draft, session, Path(scratch))
                fed = [self.store.add_image(path) for path in gold.images]
        except GoldVerificationError as exc:
            raise RowRejected("verification", f"{name}: {exc}") from None
        parts, _ = user_parts(self.preset, Prompt(row.question, stored, size, f"/mnt/data/{stored.name}"))
        try:
            assistant = split_response(gold.response, fed)
        except SampleError as exc:  # an answer the turn cannot hold (an <image> tag in it, say)
            raise RowRejected("verification", f"{name}: {exc}") from None
        return Sample(
            id=f"{row_id}-{name}",
            system=self.preset.system,
            user=parts,
            assistant=assistant,
            answer=row.answer,
            origin="boxes",
            regions=(Region(0, variant.region, 1),),
            meta={**variant.meta, "row": row_id, "seed": self.config.seed, "preset": self.preset.name},
        )

    def _store_transformed(self, image: Image.Image, original: Path) -> Path:
        """A transformed input in the store: JPEG (quality 95) for JPEG sources, else PNG (lossless)."""
        import io

        buffer = io.BytesIO()
        if original.suffix == ".jpg":
            image.save(buffer, format="JPEG", quality=95)
        else:
            image.save(buffer, format="PNG", compress_level=1)
        return self.store.add_image(buffer.getvalue())


def _number(text: str) -> int:
    """A 64-bit number from a string (a row id), for seeding."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


# -- the command ------------------------------------------------------------------------------------------
def from_boxes_command(
    input_path: Path, out: Path, config_args: dict, *, allow_weak_isolation: bool = False, console=None
) -> int:
    """`thyme data from-boxes` with a progress bar and a summary; the exit status: 0 done, 1 the sandbox
    failed or was interrupted, 2 bad arguments or input."""
    from rich.console import Console

    from thyme.progress import item_progress
    from thyme.sandbox import Sandbox, SandboxConfig, SandboxError

    console = console or Console(stderr=True, highlight=False)

    def fail(message: str, status: int = 2) -> int:
        console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        return status

    try:
        config = BoxesConfig(**config_args)
        read_box_rows(input_path, config.limit)  # a bad file fails before the sandbox starts
    except (ValueError, RowError) as exc:
        return fail(str(exc))
    try:
        sandbox = Sandbox(SandboxConfig(timeout_s=60, allow_weak_isolation=allow_weak_isolation))
    except SandboxError as exc:
        return fail(f"{first_line(exc)} (or pass --allow-weak-isolation)", 1)
    try:
        with sandbox, item_progress(console, "from-boxes", unit="rows") as (progress, bar):
            result = from_boxes(
                input_path, out, config, sandbox=sandbox,
                on_start=lambda total: progress.update(bar, total=total),
                on_row=lambda: progress.advance(bar),
            )  # fmt: skip
    except RowError as exc:
        return fail(str(exc))
    except SandboxError as exc:
        return fail(
            f"the sandbox failed: {first_line(exc)}; the samples so far are kept, run again to resume", 1
        )
    except KeyboardInterrupt:
        return fail("interrupted; the samples so far are kept; run the same command again to resume", 130)
    _summary(result, console)
    return 0


def _summary(result: BoxesResult, console) -> None:
    variants = ", ".join(f"{name} {count}" for name, count in sorted(result.written.items())) or "none"
    console.print(
        f"wrote {result.samples} samples ({variants}) from {_rows(result.rows)} to {result.samples_path}",
        markup=False,
    )
    if result.resumed:
        console.print(f"{_rows(result.resumed)} done by an earlier run and skipped", markup=False)
    if result.rejected:
        causes = ", ".join(f"{kind} {count}" for kind, count in sorted(result.rejected.items()))
        console.print(
            f"{_rows(sum(result.rejected.values()))} rejected ({causes}); reasons in {result.rejected_path}",
            markup=False,
        )
    if result.duplicates:
        console.print(f"{_rows(result.duplicates)} repeat an earlier row's id, skipped", markup=False)
    if result.normalised:
        console.print(
            f"note: {_rows(result.normalised)} had every box value <= 1; read as fractions of the image size",
            markup=False,
        )


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def register(app) -> None:
    """Add `from-boxes` to the `thyme data` group."""
    import typer

    @app.command("from-boxes")
    def from_boxes_cli(
        input_path: Path = typer.Argument(
            ...,
            metavar="INPUT",
            help="JSONL, CSV or TSV rows: image, question, answer, box [x1, y1, x2, y2], optional id.",
        ),
        out: Path = typer.Option(..., "--out", help="Output directory (samples, images, rejected rows)."),
        preset: str = typer.Option("default", help="Prompt preset: default | released."),
        augment: str = typer.Option("", help="Extra variants, comma-separated: rotate,contrast."),
        zoom: float = typer.Option(2.0, help="How many times the crop is enlarged (1-8)."),
        margin: int = typer.Option(16, help="Pixels of margin around the box."),
        shard: str = typer.Option(None, help="This job's share of the rows, i/n (e.g. 0/8)."),
        seed: int = typer.Option(0, help="Seed of every random choice (with the row id)."),
        limit: int = typer.Option(None, help="Only the first N rows of the file."),
        allow_weak_isolation: bool = typer.Option(
            False, "--allow-weak-isolation", help="Run even where a sandbox confinement layer is missing."
        ),
    ) -> None:
        """Crop-and-zoom trajectories (verified in the sandbox) from grounding rows, plus augmentations."""
        try:
            args = dict(
                preset=preset,
                augment=tuple(a.strip() for a in augment.split(",") if a.strip()),
                zoom=zoom, margin=margin, seed=seed, limit=limit, shard=Shard.parse(shard),
            )  # fmt: skip
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        raise typer.Exit(from_boxes_command(input_path, out, args, allow_weak_isolation=allow_weak_isolation))
