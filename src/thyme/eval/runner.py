"""Run one task through an agent: many trajectories in flight, one durable result line per sample, resumable.

    result = run_eval(get_task("vstar"), agent, data=Path("VStarBench.tsv"), out_dir=Path("runs/vstar"))
    result.accuracy, result.scored, result.sandbox_share

Layout of `out_dir` (one task per directory; `mode` is "tools" or "direct"):

    cache/                          images the loader materialised (shared by both modes)
    <mode>/protocol.json            the protocol card (`thyme.eval.card`)
    <mode>/results.jsonl            one complete JSON line per scored sample, in completion order
    <mode>/runs.jsonl               one line per invocation: wall time, sandbox and generation busy time
    <mode>/trajectories/<id>/       trajectory.json, images/, index.html

Durability: a sample's trajectory is saved first, then its line is appended with one write, flushed and
fsynced, so a line on disk means the sample is done. A kill can at worst leave a torn last line; the next
run drops it (and says so) and re-runs that sample. Re-running with the same `out_dir` skips every id already
in results.jsonl, so nothing is lost or counted twice; it is refused when the stored card differs in
anything that changes a number (`ProtocolMismatch`), unless `force`.

Throughput: local batched backends (`backend.batched`) run `Agent.run_batch` with `concurrency` trajectories
open at once (one batched `generate()` per round, the round's code run concurrently in the sandbox pool, a
new sample starting as soon as one ends); HTTP backends run `Agent.arun` with `concurrency` requests in
flight. Either way each sample is written the moment it finishes; a kill loses only those in flight.
Samples whose run failed in the backend or the sandbox (final reason "error") are not written: they are
reported in `EvalResult.errors` and run again on resume; a long streak of them stops the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thyme.agent import Agent, InputError, Task, Trajectory
from thyme.eval.card import build_card, conflicts, now, read_card, write_card
from thyme.eval.judge import score_with_judge
from thyme.eval.task import EvalSample, TaskSpec
from thyme.jsonl import JsonlRecords, append_lines

log = logging.getLogger(__name__)

MODES = ("tools", "direct")
# The fields of a result line besides id, category, question and answer, as they are for a sample that
# produced no trajectory (an unusable input).
EMPTY_RECORD: dict[str, Any] = {
    "prediction": None,
    "score": 0.0,
    "judged": False,
    "response": None,
    "reason": None,
    "fallback_from": None,
    "steps": 0,
    "tool_calls": 0,
    "code_ok": 0,
    "code_total": 0,
    "repairs": [],
    "tokens": {"prompt": 0, "completion": 0},
    "timings": {},
    "trajectory": None,
    "error": None,
}
# Progress callback: (samples scored so far, samples selected, sum of their scores).
Progress = Callable[[int, int, float], None]


class ProtocolMismatch(RuntimeError):
    """The output directory holds results of a different protocol; the message says how to proceed."""


class EvalAborted(RuntimeError):
    """Too many samples in a row failed in the backend or the sandbox (an endpoint went away, say)."""


@dataclass(frozen=True)
class EvalResult:
    """One mode of one task, as it stands on disk after this call.

    total: samples selected (after --limit); scored: of those, how many have a result line; new: scored by
    this call. accuracy: mean score of the scored ones. errors: (id, message) of samples that failed in the
    backend or sandbox during this call (not written; a re-run retries them). sandbox_share: sandbox seconds
    summed over this call's trajectories / wall time; generation_share: wall time during which the model was
    generating (overlapping calls counted once) / wall time.
    """

    task: str
    mode: str
    directory: Path
    total: int
    scored: int
    new: int
    accuracy: float
    wall_s: float
    sandbox_share: float
    generation_share: float
    errors: list[tuple[str, str]] = field(default_factory=list)


def run_eval(
    task: TaskSpec,
    agent: Agent,
    *,
    data: Path | None,
    out_dir: Path,
    limit: int | None = None,
    tools: bool = True,
    concurrency: int = 8,
    judge=None,
    progress: Progress | None = None,
    force: bool = False,
) -> EvalResult:
    """Evaluate `task` with `agent` into `out_dir/<mode>`, resuming whatever is already there.

    limit: the first `limit` samples in file order. judge: a `thyme.eval.judge.Judge`, asked when the task's
    metric can use one and its rules reject a prediction (`score_with_judge`).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    mode = "tools" if tools else "direct"
    directory = Path(out_dir) / mode
    directory.mkdir(parents=True, exist_ok=True)
    results = JsonlRecords(directory / "results.jsonl")
    card = build_card(task, agent, data=data, tools=tools, judge=judge)
    card["run"]["limit"] = limit
    _check_card(directory, card, results, force)
    samples = select_samples(task, data, Path(out_dir) / "cache", limit)
    done = results.load()
    selected = {s.id for s in samples}
    writer = _Writer(task, agent, directory, results, judge, progress, len(samples), concurrency)
    writer.scored = {i: r["score"] for i, r in done.items() if i in selected}
    writer.report()
    pending = [s for s in samples if s.id not in done]
    clock = _BusyClock()
    started, stamp = time.perf_counter(), now()
    backend = agent.backend
    agent.backend = _TimedBackend(backend, clock)
    try:
        if backend.batched:
            _run_batched(agent, task, pending, tools, concurrency, writer)
        else:
            asyncio.run(_run_async(agent, task, pending, tools, concurrency, writer))
    finally:
        agent.backend = backend
        wall = time.perf_counter() - started
        append_lines(
            directory / "runs.jsonl",
            [
                {
                    "started": stamp,
                    "wall_s": wall,
                    "samples": writer.new,
                    "sandbox_s": writer.sandbox_s,
                    "generation_busy_s": clock.busy,
                    "concurrency": concurrency,
                    "errors": len(writer.errors),
                }
            ],
        )
    scores = list(writer.scored.values())
    return EvalResult(
        task=task.name,
        mode=mode,
        directory=directory,
        total=len(samples),
        scored=len(scores),
        new=writer.new,
        accuracy=sum(scores) / len(scores) if scores else 0.0,
        wall_s=wall,
        sandbox_share=writer.sandbox_s / wall if wall > 0 else 0.0,
        generation_share=clock.busy / wall if wall > 0 else 0.0,
        errors=writer.errors,
    )


def select_samples(task: TaskSpec, data: Path | None, cache_dir: Path, limit: int | None) -> list[EvalSample]:
    """The first `limit` samples in file order (only those are materialised); ids must be unique."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    samples = list(itertools.islice(task.load(data, cache_dir), limit))
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise ValueError(f"task {task.name}: sample id {sample.id!r} occurs twice; ids must be unique")
        seen.add(sample.id)
    return samples


def _check_card(directory: Path, card: dict[str, Any], results: JsonlRecords, force: bool) -> None:
    """Write the card, or check the stored one: same protocol resumes, another is refused unless forced."""
    path = directory / "protocol.json"
    if not path.is_file():
        if results.path.is_file() and results.path.stat().st_size > 0 and not force:
            raise ProtocolMismatch(
                f"{results.path} has results but no protocol.json, so they cannot be checked; use a new "
                "--out or pass --force to add to them"
            )
        write_card(path, card)
        return
    old = read_card(path)
    diffs = conflicts(old, card)
    if diffs and not force:
        raise ProtocolMismatch(
            f"{directory} holds results of another protocol ({'; '.join(diffs)}); use a new --out, or pass "
            "--force to mix them"
        )
    if diffs:
        log.warning("continuing %s under a different protocol (--force): %s", directory, "; ".join(diffs))
        card["run"]["previous"] = old
        write_card(path, card)
        return
    resume: dict[str, Any] = {"at": card["run"]["started"], "limit": card["run"]["limit"]}
    if old.get("environment") != card["environment"]:
        resume["environment"] = card["environment"]
    old["run"].setdefault("resumed", []).append(resume)
    write_card(path, old)


# -- scoring and writing one sample ---------------------------------------------------------------------
class _Writer:
    """Scores finished trajectories, saves them, appends their lines, and keeps the running totals."""

    def __init__(self, task, agent, directory, results, judge, progress, total, concurrency) -> None:
        self.task, self.agent, self.directory, self.results = task, agent, directory, results
        self.judge = judge
        self.progress = progress
        self.total = total
        self.scored: dict[str, float] = {}
        self.new = 0
        self.sandbox_s = 0.0
        self.errors: list[tuple[str, str]] = []
        self.streak = 0
        self.max_streak = max(8, concurrency)

    def report(self) -> None:
        if self.progress is not None:
            self.progress(len(self.scored), self.total, sum(self.scored.values()))

    def done(self, sample: EvalSample, traj: Trajectory) -> None:
        final = traj.final
        self.sandbox_s += traj.timings.get("sandbox_s", 0.0)
        if final is None or final.reason == "error":
            message = traj.error or "the run ended without a result"
            self.errors.append((sample.id, message))
            self.streak += 1
            log.warning("sample %s failed (%s); a re-run retries it", sample.id, message)
            if self.streak >= self.max_streak:
                raise EvalAborted(f"{self.streak} samples in a row failed; the last: {message}")
            return
        self.streak = 0
        prediction = self.task.extract(traj.answer, sample)
        score, judged = score_with_judge(self.task, self.judge, prediction, sample)
        folder = self.directory / "trajectories" / trajectory_dirname(sample.id)
        shutil.rmtree(folder, ignore_errors=True)  # a sample killed before its line was written
        traj.save(folder)
        traj.to_html(folder / "index.html")
        self._forget_artifacts(traj)
        obs = traj.observations
        self._write(
            sample,
            prediction=prediction,
            score=score,
            judged=judged,
            response=traj.answer,
            reason=final.reason,
            fallback_from=final.extra.get("fallback_from"),
            steps=traj.steps,
            tool_calls=final.tool_calls,
            code_ok=sum(o.ok for o in obs),
            code_total=len(obs),
            repairs=traj.repairs,
            tokens=traj.tokens,
            timings=traj.timings,
            trajectory=folder.relative_to(self.directory).as_posix(),
            error=traj.error,
        )

    def input_error(self, sample: EvalSample, message: str) -> None:
        """The sample's own input is unusable (a missing or corrupt image): scored 0, and said why."""
        log.warning("sample %s: %s", sample.id, message)
        self._write(sample, reason="input_error", error=message)

    def _write(self, sample: EvalSample, **fields: Any) -> None:
        """Append the sample's complete line (every key present, the defaults for a run that never was)."""
        record = {
            "id": sample.id,
            "category": sample.category,
            "question": self.task.prompt(sample),
            "answer": sample.answer,
            "meta": record_meta(sample.meta),
            **EMPTY_RECORD,
            **fields,
        }
        self.results.append(record)
        self.scored[record["id"]] = record["score"]
        self.new += 1
        self.report()

    def _forget_artifacts(self, traj: Trajectory) -> None:
        """The saved copy is the record; the agent's per-trajectory scratch copy can go (long runs)."""
        root = traj.root
        if root is not None and Path(root).resolve().parent == Path(self.agent.artifacts_dir).resolve():
            shutil.rmtree(root, ignore_errors=True)


_SCALARS = (str, int, float, bool)


def record_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a sample's meta its result line keeps: scalars and lists of scalars (a POPE row's
    splits, which the benchmark metrics count it in)."""
    return {
        k: v
        for k, v in meta.items()
        if isinstance(v, _SCALARS) or (isinstance(v, list) and all(isinstance(x, _SCALARS) for x in v))
    }


def trajectory_dirname(sample_id: str) -> str:
    """A directory name for an id: the id itself when it is a safe name, else a cleaned form plus a hash."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)[:80]
    if clean == sample_id and clean not in (".", ".."):
        return clean
    return f"{clean}-{hashlib.sha1(sample_id.encode('utf-8')).hexdigest()[:10]}"


# -- drivers --------------------------------------------------------------------------------------------
def _usable(sample: EvalSample, writer: _Writer) -> bool:
    if sample.error is not None:  # found while loading (an image that does not decode fully)
        writer.input_error(sample, sample.error)
        return False
    if sample.image is not None and not Path(sample.image).is_file():
        writer.input_error(sample, f"image {sample.image} does not exist")
        return False
    return True


def _run_batched(agent, task, pending, tools, concurrency, writer) -> None:
    """Up to `concurrency` trajectories in lock-step rounds; each sample is written the moment it ends."""
    usable = [s for s in pending if _usable(s, writer)]
    agent.run_batch(
        [Task(task.prompt(s), s.image) for s in usable],
        tools=tools,
        max_batch=concurrency,
        on_done=lambda i, traj: writer.done(usable[i], traj),
        on_input_error=lambda i, exc: writer.input_error(usable[i], str(exc)),
    )


async def _run_async(agent, task, pending, tools, concurrency, writer) -> None:
    """`concurrency` trajectories in flight; each sample is written the moment it finishes."""
    gate = asyncio.Semaphore(concurrency)

    async def one(sample: EvalSample) -> None:
        if not _usable(sample, writer):
            return
        async with gate:
            try:
                traj = await agent.arun(sample.image, task.prompt(sample), tools=tools)
            except InputError as exc:
                writer.input_error(sample, str(exc))
                return
        writer.done(sample, traj)

    await asyncio.gather(*(one(s) for s in pending))


# -- timing ---------------------------------------------------------------------------------------------
class _BusyClock:
    """Wall time during which at least one call is in flight (overlapping calls count once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._since = 0.0
        self.busy = 0.0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            if self._active == 0:
                self._since = time.perf_counter()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self.busy += time.perf_counter() - self._since


class _TimedBackend:
    """The agent's backend, with the time spent generating measured (every other attribute passes through).

    Batched backends give every row of a batch the whole batch's duration, so summing per-trajectory
    generation times would count one `generate()` once per row; the clock counts it once.
    """

    def __init__(self, inner, clock: _BusyClock) -> None:
        self._inner = inner
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def generate(self, requests):
        with self._clock.running():
            return self._inner.generate(requests)

    async def agenerate(self, request):
        with self._clock.running():
            return await self._inner.agenerate(request)
