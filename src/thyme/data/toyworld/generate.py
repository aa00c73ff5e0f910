"""Write a toy-world data set: images, `samples.jsonl` and `manifest.json`, verified and deterministic.

    manifest = generate("zoom", 200, seed=0, out_dir=Path("toy/zoom"), level="colour")

Sample i of a run has the seed `SPLITS[split] + seed + i`; everything about it (level, image, question,
gold code, answer) follows from that seed alone, so the same arguments give byte-identical files, and a
sample can be regenerated from its `seed` field. Train and test seeds live in disjoint ranges of
`SPLIT_SPAN` seeds each.

Every gold trajectory runs in one shared sandbox (a session per sample, several samples in flight on
threads) and is checked by `thyme.data.toyworld.gold`; a sample that fails raises, naming its seed, and
nothing is written. Files appear atomically: the run writes into a staging directory inside `out_dir` and
moves the finished files into place at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import thyme
from thyme.data.toyworld.base import TaskDef, knobs_dict
from thyme.data.toyworld.gold import GoldVerificationError, direct_response, run_gold
from thyme.data.toyworld.tasks import get_task
from thyme.errors import needs_argument, suggest
from thyme.files import check_out_dir

SPLIT_SPAN = 10**9
SPLITS: dict[str, int] = {"train": 0, "test": SPLIT_SPAN}
GENERATOR_VERSION = "2"  # bump whenever the same arguments would give different files
OUTPUTS = ("images", "samples.jsonl", "manifest.json")
STAGING_PREFIX = ".synth-"


def seed_range(split: str, seed: int, n: int) -> range:
    """The sample seeds of a run; they stay inside the split's own range of SPLIT_SPAN seeds."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if n < 1:
        raise ValueError(f"n={n}: generate at least one sample")
    if seed < 0 or seed + n > SPLIT_SPAN:
        raise ValueError(
            f"seed={seed}, n={n}: a split's seeds run from 0 to {SPLIT_SPAN - 1} (seed + n <= {SPLIT_SPAN}), "
            "so that train and test never share a sample"
        )
    start = SPLITS[split] + seed
    return range(start, start + n)


def sample_id(task: str, sample_seed: int) -> str:
    return f"{task}-{sample_seed:09d}"


@dataclass(frozen=True)
class Manifest:
    """What a run wrote, with what, and the hash of its samples (`DIR/manifest.json`)."""

    task: str
    split: str
    seed: int
    n: int
    level: str | None
    knobs: dict[str, dict[str, Any]]
    categories: dict[str, int]
    seeds: list[int]
    verified: bool
    generator_version: str
    package_version: str
    samples_sha256: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2) + "\n"


def rng_for(task: str, sample_seed: int) -> np.random.Generator:
    """The random stream of one sample: its seed and the task name (so tasks never share a stream)."""
    return np.random.default_rng([sample_seed, zlib.crc32(task.encode())])


def draft_sample(spec: TaskDef, sample_seed: int, level: str | None = None, knobs: Any = None):
    """(category, knobs, Draft) of one sample: `level`, custom `knobs`, or the levels in turn by seed."""
    if knobs is not None:
        category = "custom"
    else:
        category = level if level is not None else list(spec.levels)[sample_seed % len(spec.levels)]
        knobs = spec.knobs_for(category)
    return category, knobs, spec.make(rng_for(spec.name, sample_seed), knobs)


def generate(
    task: str,
    n: int,
    seed: int,
    out_dir: str | os.PathLike[str],
    *,
    split: str = "train",
    level: str | None = None,
    knobs: Any = None,
    verify: bool = True,
    sandbox=None,
    overwrite: bool = False,
    workers: int | None = None,
    on_sample: Callable[[], None] | None = None,
) -> Manifest:
    """Generate `n` samples of `task` into `out_dir` and return the manifest.

    level:    one of the task's levels; None cycles through all of them (by sample seed).
    knobs:    a custom knobs instance of the task (category "custom"); excludes `level`.
    verify:   run every gold trajectory in the sandbox and check it (False: outputs computed here).
    sandbox:  a `thyme.sandbox.Sandbox` to use; one is started (and closed) when verify and None.
    workers:  samples in flight at once (threads); default twice the CPU count, at most 8.
    on_sample: called once per sample written (progress bars).
    """
    spec = check_request(task, n, seed, out_dir, split=split, level=level, knobs=knobs, overwrite=overwrite)
    seeds = seed_range(split, seed, n)
    out = Path(out_dir)
    _claim(out, overwrite)
    own_sandbox = verify and sandbox is None
    if own_sandbox:
        from thyme.sandbox import Sandbox, SandboxConfig

        sandbox = Sandbox(SandboxConfig(timeout_s=60))
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        (staging / "images").mkdir()
        used, categories = _write_samples(
            spec, seeds, staging, level, knobs, sandbox if verify else None, split, workers, on_sample
        )
        digest = hashlib.sha256((staging / "samples.jsonl").read_bytes()).hexdigest()
        manifest = Manifest(
            task=task,
            split=split,
            seed=seed,
            n=n,
            level=level,
            knobs=used,
            categories=categories,
            seeds=[seeds.start, seeds.stop - 1],
            verified=verify,
            generator_version=GENERATOR_VERSION,
            package_version=thyme.__version__,
            samples_sha256=digest,
        )
        (staging / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
        _publish(staging, out)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if own_sandbox:
            sandbox.close()


def check_request(
    task: str,
    n: int,
    seed: int,
    out_dir: str | os.PathLike[str],
    *,
    split: str = "train",
    level: str | None = None,
    knobs: Any = None,
    overwrite: bool = False,
) -> TaskDef:
    """Check the arguments of `generate` before anything runs; returns the task (ValueError, TypeError or
    FileExistsError otherwise, each saying what to change)."""
    spec = get_task(task)
    seed_range(split, seed, n)
    if knobs is not None and level is not None:
        raise ValueError("pass either level= or knobs=, not both")
    if knobs is not None and not isinstance(knobs, spec.knobs):
        raise TypeError(f"knobs for {task!r} must be a {spec.knobs.__name__}, got {type(knobs).__name__}")
    if level is not None:
        spec.knobs_for(level)
    out = check_out_dir(out_dir)
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        shown = f"{', '.join(entries[:3])}{'...' if len(entries) > 3 else ''}"
        message = f"{out} is not empty ({shown}); choose an empty directory or {suggest('overwrite')}"
        raise needs_argument(FileExistsError(message), "overwrite")
    return spec


def _claim(out: Path, overwrite: bool) -> None:
    """Create `out` (checked by `check_request`) and clear this generator's leftovers of killed runs."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)


def _publish(staging: Path, out: Path) -> None:
    """Move the finished files into `out` (one os.replace each), replacing this generator's earlier ones."""
    shutil.rmtree(out / "images", ignore_errors=True)
    for name in OUTPUTS:
        os.replace(staging / name, out / name)


def _write_samples(
    spec, seeds: range, staging, level, knobs, sandbox, split, workers, on_sample
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Build samples on threads (a bounded window ahead), write `samples.jsonl` in seed order; return the
    knobs and the sample count of each category."""
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    used: dict[str, dict[str, Any]] = {}
    categories: Counter[str] = Counter()
    pending: dict[int, Any] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="toyworld")
    try:
        with open(staging / "samples.jsonl", "w", encoding="utf-8", newline="\n") as lines:
            submitted = 0
            for written in range(len(seeds)):
                while submitted < len(seeds) and submitted - written < 2 * workers:
                    pending[submitted] = pool.submit(
                        build_sample, spec, seeds[submitted], staging, level, knobs, sandbox, split
                    )
                    submitted += 1
                row, knob_values = pending.pop(written).result()
                used.setdefault(row["category"], knob_values)
                categories[row["category"]] += 1
                lines.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
                if on_sample is not None:
                    on_sample()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return dict(sorted(used.items())), dict(sorted(categories.items()))


def build_sample(spec: TaskDef, sample_seed: int, staging: Path, level, knobs, sandbox, split: str):
    """Draft, run, check and store one sample; returns its JSON row and its knobs as a dict."""
    category, knobs, draft = draft_sample(spec, sample_seed, level, knobs)
    ident = sample_id(spec.name, sample_seed)
    image_rel = f"images/{ident}.png"
    image_file = staging / image_rel
    draft.image.save(image_file)
    try:
        if sandbox is None:
            with tempfile.TemporaryDirectory(prefix="thyme-toyworld-") as scratch:
                gold = run_gold(draft, None, Path(scratch))
                fed_back = _keep(gold.images, staging, ident)
        else:
            with sandbox.session(inputs=[image_file]) as session:
                gold = run_gold(draft, session, staging)
                fed_back = _keep(gold.images, staging, ident)
        direct = direct_response(draft)
    except GoldVerificationError as exc:
        raise GoldVerificationError(f"{ident} (seed {sample_seed}, level {category!r}): {exc}") from None
    knob_values = knobs_dict(knobs)
    row = {
        "id": ident,
        "task": spec.name,
        "split": split,
        "seed": sample_seed,
        "image": image_rel,
        "question": draft.question,
        "answer": draft.answer,
        "category": category,
        "difficulty": knob_values,
        "choices": None,
        "gold": {"response": gold.response, "images": [image_rel, *fed_back]},
        "direct": {"response": direct},
        "meta": draft.meta,
    }
    return row, knob_values


def _keep(images: list[Path], staging: Path, ident: str) -> list[str]:
    """Copy fed-back images next to the sample's image; their paths relative to the output directory."""
    kept = []
    for number, source in enumerate(images, start=1):
        rel = f"images/{ident}-{number}.png"
        shutil.copyfile(source, staging / rel)
        kept.append(rel)
    return kept
