"""`thyme data verify` (library): re-run every code block of every sample and keep the samples whose code does
what they claim.

A sample's assistant turn claims, after each `<code>` block, what the sandbox returned: images, printed text,
an error, or nothing. `verify_sample` runs the blocks in order in one fresh sandbox session opened on the
sample's user images (variables carry from block to block, as in the agent loop) and compares each result
with its claim, stopping at the first block that does not match:

1. the block runs (else `code_failed`), or, when the claim is an error, fails with the same exception type
   (else `error_differs`); a block that passes the time limit is `timeout`;
2. it produces as many images as claimed (`image_count`);
3. each image looks like the claimed one (`image_differs`; the measure: `thyme.data.verify_compare`);
4. printed text (or error text) equals the claimed text (`text_differs`).

The code is what the loop would run (`thyme.protocol.pending_code` on the turn so far) and the re-run is
rendered by `thyme.protocol.render_result`, the definitions the loop used when the sample was recorded.
A turn whose code blocks and outputs do not pair up is `malformed`, a missing or undecodable image
`unreadable`; a sample with no code block is accepted as `no_code`.

`verify_samples` streams samples from files (`read_samples`: our JSONL, store directories, `thyme synth`
directories, trajectories), in bounded memory, through one shared `Sandbox` with several samples in flight on
threads, and writes into an output directory (`thyme.data.verify_run` has the flow and the layout):
the accepted samples with their images (a `SampleStore`), one record per sample in `verify.jsonl`, and
`report.json` / `report.md`. A re-run skips ids already recorded; `Shard` splits the inputs by position.

    with Sandbox() as sandbox, sandbox.session(inputs=user_images(sample)) as session:
        check = verify_sample(sample, session, VerifyConfig())     # check.ok, check.reason, check.detail
    summary = verify_samples(["toy/zoom"], "verified/", shard=Shard.parse("0/4"))
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from thyme.data.sample import Sample
from thyme.data.store import Shard
from thyme.data.verify_compare import (
    DEFAULT_IMAGE_THRESHOLD,
    TEXT_RULES,
    ImageUnreadable,
    exception_name,
    same_exception,
    same_shape,
    texts_match,
    thumb_distance,
    thumbnail,
)
from thyme.protocol import (
    IMAGE_PLACEHOLDER,
    SANDBOX_CLOSE,
    SANDBOX_OPEN,
    FeedbackPart,
    ImagePart,
    TextPart,
    flatten_parts,
    pending_code,
    render_result,
)

Reason = Literal[
    "ok",
    "no_code",
    "code_failed",
    "error_differs",
    "timeout",
    "image_count",
    "image_differs",
    "text_differs",
    "malformed",
    "unreadable",
    "sandbox_failed",
]
REASONS: tuple[str, ...] = get_args(Reason)
ACCEPTED: tuple[str, ...] = ("ok", "no_code")


@dataclass(frozen=True)
class VerifyConfig:
    """How strictly a re-run must match its claim, and how the sandbox runs it.

    image_threshold: largest accepted image distance (0 same look, 1 opposite); the default accepts
                     re-encoding and resampling and rejects a different crop (`verify_compare`).
    text_rule:       "numeric": numbers compare within `rel_tol` (integers exactly), the rest exactly;
                     "exact": equal text. Both collapse runs of whitespace first.
    rel_tol:         relative tolerance of non-integer printed numbers.
    timeout_s:       wall-clock limit of one block; memory_mb: a sandbox worker's address space.
    workers:         samples in flight at once (threads, each driving one sandbox worker); None: two per
                     core, at most 64.
    allow_weak_isolation: run even where a sandbox confinement layer is missing on this machine.
    """

    image_threshold: float = DEFAULT_IMAGE_THRESHOLD
    text_rule: str = "numeric"
    rel_tol: float = 1e-6
    timeout_s: float = 30.0
    memory_mb: int = 4096
    workers: int | None = None
    allow_weak_isolation: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.image_threshold <= 1:
            raise ValueError(
                f"--threshold {self.image_threshold}: use an image distance in (0, 1], "
                f"e.g. the default {DEFAULT_IMAGE_THRESHOLD}"
            )
        if self.text_rule not in TEXT_RULES:
            raise ValueError(f"text_rule={self.text_rule!r}: choose one of {', '.join(TEXT_RULES)}")
        if not 0 <= self.rel_tol < 1:
            raise ValueError(f"rel_tol={self.rel_tol}: use a relative tolerance in [0, 1), e.g. 1e-6")
        if not self.timeout_s > 0:
            raise ValueError(f"--timeout {self.timeout_s}: use a positive number of seconds")
        if self.memory_mb < 256:
            raise ValueError(f"memory_mb={self.memory_mb}: use at least 256 (MiB) for numpy and PIL")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers {self.workers}: use 1 or more")

    @property
    def n_workers(self) -> int:
        return self.workers or min(64, 2 * (os.cpu_count() or 1))

    def sandbox_config(self):
        """The shared sandbox's `SandboxConfig`: a warm worker per sample in flight (at most 16 waiting)."""
        from thyme.sandbox import SandboxConfig

        return SandboxConfig(
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            pool_size=min(self.n_workers, 16),
            allow_weak_isolation=self.allow_weak_isolation,
        )


@dataclass(frozen=True)
class BlockCheck:
    """How one code block's re-run compared with its claim.

    index: the block's place in the turn (0-based); reason: "ok" or why it does not match; detail: one line.
    distances: the image distance of each produced image to its claimed one, as far as compared.
    """

    index: int
    reason: Reason
    detail: str = ""
    claimed_images: int = 0
    produced_images: int = 0
    distances: tuple[float, ...] = ()
    repairs: tuple[str, ...] = ()
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reason == "ok"

    def to_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record.update(
            distances=[round(d, 4) for d in self.distances],
            repairs=list(self.repairs),
            duration_s=round(self.duration_s, 4),
        )
        return record


@dataclass(frozen=True)
class SampleCheck:
    """The verdict on one sample: accepted ("ok", "no_code") or the reason of its first failing block."""

    id: str
    reason: Reason
    detail: str = ""
    blocks: tuple[BlockCheck, ...] = ()
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reason in ACCEPTED

    def to_record(self) -> dict[str, Any]:
        """One line of `verify.jsonl`."""
        return {
            "id": self.id,
            "ok": self.ok,
            "reason": self.reason,
            "detail": self.detail,
            "blocks": [b.to_dict() for b in self.blocks],
            "duration_s": round(self.duration_s, 4),
        }


@dataclass(frozen=True)
class Claim:
    """One code block and what the sample says the sandbox returned for it (images, or else the text)."""

    code: str
    images: tuple[Path, ...]
    text: str


class MalformedSample(ValueError):
    """The turn's code blocks and sandbox outputs do not pair up as the agent loop writes them."""


# -- one sample -------------------------------------------------------------------------------------------
def claims(sample: Sample) -> list[Claim]:
    """Each code block the loop would have run, with the sandbox output that follows it in the sample."""
    found: list[Claim] = []
    text = ""  # the turn so far, as the parser reads it
    pieces = iter(sample.assistant)
    for piece in pieces:
        if not (piece.source == "sandbox" and _is_tag(piece.part, SANDBOX_OPEN)):
            text += flatten_parts([piece.part], IMAGE_PLACEHOLDER)
            continue
        block = pending_code(text)
        if block is None:
            raise MalformedSample(f"sandbox output {len(found) + 1} follows no complete code block")
        body: list[FeedbackPart] = []
        for inner in pieces:
            if inner.source == "sandbox" and _is_tag(inner.part, SANDBOX_CLOSE):
                break
            body.append(inner.part)
        else:
            raise MalformedSample(f"sandbox output {len(found) + 1} is never closed")
        images = tuple(p.path for p in body if isinstance(p, ImagePart))
        texts = [p.text for p in body if isinstance(p, TextPart)]
        if images and any(t.strip() for t in texts):
            raise MalformedSample(f"sandbox output {len(found) + 1} holds both images and text")
        found.append(Claim(block.code, images, "".join(texts)))
        text += flatten_parts([TextPart(SANDBOX_OPEN), *body, TextPart(SANDBOX_CLOSE)], IMAGE_PLACEHOLDER)
    if pending_code(text) is not None:
        raise MalformedSample(f"code block {len(found) + 1} has no sandbox output after it")
    return found


def user_images(sample: Sample) -> list[Path]:
    """The sample's user images: the inputs of its sandbox session (`image_path` is the first)."""
    return [part.path for part in sample.user if isinstance(part, ImagePart)]


def precheck(sample: Sample) -> SampleCheck | None:
    """The verdict when no code needs to run (no code, a malformed turn, an unreadable image), else None."""
    from PIL import Image

    try:
        if not claims(sample):
            return SampleCheck(sample.id, "no_code", "no code block")
    except MalformedSample as exc:
        return SampleCheck(sample.id, "malformed", str(exc))
    for path in (*user_images(sample), *sample.images):
        try:
            with Image.open(path):
                pass
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return SampleCheck(sample.id, "unreadable", f"cannot read image {path} ({exc})")
    return None


def verify_sample(sample: Sample, session, config: VerifyConfig) -> SampleCheck:
    """Re-run the sample's code in `session` (fresh, opened on `user_images(sample)`) and compare.

    Raises `thyme.sandbox.SandboxError` when the sandbox itself fails (no verdict on the sample).
    """
    started = time.perf_counter()
    early = precheck(sample)
    if early is not None:
        return early
    blocks: list[BlockCheck] = []
    for index, claim in enumerate(claims(sample)):
        blocks.append(check_block(index, claim, session.run(claim.code), config))
        if not blocks[-1].ok:
            break
    last = blocks[-1]
    detail = "" if last.ok else f"block {last.index + 1}: {last.detail}"
    return SampleCheck(sample.id, last.reason, detail, tuple(blocks), time.perf_counter() - started)


def check_block(index: int, claim: Claim, result, config: VerifyConfig) -> BlockCheck:
    """Compare one `ExecutionResult` with its claim (the checks of the module docstring, in order)."""
    parts = render_result(result)
    produced = [p.path for p in parts if isinstance(p, ImagePart)]
    text = "".join(p.text for p in parts[1:-1] if isinstance(p, TextPart))
    info = dict(
        index=index,
        claimed_images=len(claim.images),
        produced_images=len(produced),
        repairs=tuple(result.repairs),
        duration_s=result.duration_s,
    )

    def verdict(reason: Reason, detail: str = "") -> BlockCheck:
        return BlockCheck(reason=reason, detail=detail, **info)

    if result.timed_out:
        return verdict("timeout", f"passed the {config.timeout_s:g} s limit")
    same_text = not claim.images and texts_match(
        claim.text, text, rule=config.text_rule, rel_tol=config.rel_tol
    )
    claimed_error = None if claim.images else exception_name(claim.text)
    if not result.ok:
        raised = exception_name(result.error)
        if same_text or (claimed_error and raised and same_exception(claimed_error, raised)):
            return verdict("ok", f"raised {raised or 'an error'} as claimed")
        if claimed_error is None:
            return verdict("code_failed", last_line(result.error))
        return verdict(
            "error_differs",
            f"the sample claims {claimed_error}, the re-run raised {raised or last_line(result.error)}",
        )
    if len(produced) != len(claim.images):
        return verdict(
            "image_count", f"produced {len(produced)} images, the sample claims {len(claim.images)}"
        )
    if claim.images:
        return _check_images(claim.images, produced, config, info)
    if same_text:
        return verdict("ok")
    if claimed_error is not None:
        return verdict("error_differs", f"the sample claims {claimed_error}, the re-run raised nothing")
    return verdict("text_differs", f"printed {_clip(text)!r}, the sample claims {_clip(claim.text)!r}")


def _check_images(
    claimed: Sequence[Path], produced: Sequence[Path], config: VerifyConfig, info
) -> BlockCheck:
    distances: list[float] = []
    for number, (want, got) in enumerate(zip(claimed, produced, strict=True), 1):
        try:
            want_thumb, want_size = thumbnail(want)
        except ImageUnreadable as exc:
            return BlockCheck(reason="unreadable", detail=f"claimed image {number}: {exc}", **info)
        try:
            got_thumb, got_size = thumbnail(got)
        except ImageUnreadable as exc:  # the collector only passes images PIL opens; kept as a verdict anyway
            return BlockCheck(reason="image_differs", detail=f"produced image {number}: {exc}", **info)
        if not same_shape(want_size, got_size):
            return BlockCheck(
                reason="image_differs",
                distances=tuple(distances),
                detail=f"image {number} is {got_size[0]}x{got_size[1]}, the claimed one is "
                f"{want_size[0]}x{want_size[1]} (another shape)",
                **info,
            )
        distances.append(thumb_distance(want_thumb, got_thumb))
        if distances[-1] > config.image_threshold:
            return BlockCheck(
                reason="image_differs",
                distances=tuple(distances),
                detail=f"image {number} is at distance {distances[-1]:.3f} from the claimed one "
                f"(threshold {config.image_threshold:g})",
                **info,
            )
    return BlockCheck(reason="ok", distances=tuple(distances), **info)


def _is_tag(part: FeedbackPart, tag: str) -> bool:
    return isinstance(part, TextPart) and part.text == tag


def last_line(error: str | None) -> str:
    lines = (error or "").strip().splitlines()
    return _clip(lines[-1]) if lines else "no error text"


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- a data set -------------------------------------------------------------------------------------------
def verify_samples(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    shard: Shard | None = None,
    config: VerifyConfig | None = None,
    sandbox=None,
    on_progress: Callable[[SampleCheck | None], None] | None = None,
):
    """Verify this shard's samples of `inputs` into `out_dir`; returns a `VerifySummary`.

    sandbox:     a running `thyme.sandbox.Sandbox` to use; by default one is started (and closed).
    on_progress: called once per sample of the shard, with its verdict, or None when it was skipped
                 (recorded by an earlier run, or a repeated id).
    Raises FileNotFoundError/ValueError/SampleError for bad inputs before anything runs, SampleError for a
    corrupt row met later (the verdicts so far are written first; a re-run resumes), and SandboxError when
    the sandbox cannot start.
    """
    from thyme.data.verify_run import Verifier, VerifyOutput, VerifySummary, check_inputs, in_order, owned

    config = config or VerifyConfig()
    shard = shard or Shard()
    paths = check_inputs(inputs, out_dir)
    output = VerifyOutput(out_dir, shard)
    totals, done = output.load()
    stored = output.store.done_ids()
    own_sandbox = sandbox is None
    if own_sandbox:
        from thyme.sandbox import Sandbox

        sandbox = Sandbox(config.sandbox_config())
    run: Counter[str] = Counter()
    skipped = {"resumed": 0, "duplicates": 0, "retry": 0}
    started = time.perf_counter()
    try:
        todo = owned(paths, shard, done, skipped, on_progress)
        work = Verifier(sandbox, config, output.store, stored)
        for check, kept in in_order(todo, work.verify, config.n_workers):
            if check.reason == "sandbox_failed":  # not a verdict: left unrecorded, so a re-run tries again
                skipped["retry"] += 1
            else:
                output.add(check, kept)
                run[check.reason] += 1
            if on_progress is not None:
                on_progress(check)
    finally:
        output.flush()
        if own_sandbox:
            sandbox.close()
    totals.update(run)
    summary = VerifySummary(
        verified=sum(run.values()),
        reasons=dict(run),
        totals=dict(totals),
        elapsed_s=time.perf_counter() - started,
        samples_path=output.store.path,
        records_path=output.records.path,
        report_path=output.report_path,
        workers=config.n_workers,
        **skipped,
    )
    output.write_report(summary, config, paths, sandbox.isolation)
    return summary
