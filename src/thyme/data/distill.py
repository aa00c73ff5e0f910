"""Distillation by rejection sampling: a teacher behind an OpenAI-compatible endpoint runs the agent loop on
your questions, and the trajectories whose code ran and whose answer is right become training samples.

    thyme data distill questions.jsonl --base-url http://gpu-box:8000/v1 --model Qwen2.5-VL-72B --out data/d
        [--attempts 4] [--temperature 0.7] [--concurrency 8] [--preset P] [--max-steps 5]
        [--judge-url U --judge-model M] [--shard i/n] [--limit N] [--require-code/--allow-direct]

Each row (`thyme.data.rows`: JSONL, CSV or TSV) holds `image`, `question`, `answer`, optionally `id` and
`choices` (a list, or {letter: text}; the question is then wrapped as the evaluation wraps MCQs). Every
question gets up to `--attempts` runs of the same agent loop `thyme run` uses (`thyme.agent.Agent` with the
openai backend, sampling at `--temperature` so attempts differ, no direct-answer fallback). The first
attempt that passes is kept; an attempt is rejected, for one reason, when

    error      the backend or the sandbox failed (the question is not recorded: a re-run retries it);
    no_answer  the turn ended without an answer (step cap, length, repetition, context);
    code_failed a code block raised or timed out;
    no_code    it wrote no code (unless --allow-direct);
    wrong      the answer does not match the gold by the evaluation's rules (`thyme.eval.scoring`: MCQ
               letters, yes/no, numbers, boxes by IoU, normalised text, math equivalence), nor, with a
               judge, by the judge (`thyme.eval.judge`, asked only when the rules say no).

A kept trajectory becomes a sample with `Sample.from_trajectory`; its user image and fed-back images are
copied into the store's content-addressed files, and, for presets that state the image path (released),
the sandbox's path is replaced by `/mnt/data/<file>` in the prompt and the code. Every recorded question
has one line in DIR/distill.jsonl (kept, attempts, the reason of each rejection): the resume key. Re-running
the same command skips recorded questions. The endpoint is checked before any work.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thyme.data.distill_checks import REASONS, Question, portable, read_questions, rejection
from thyme.data.rows import RowError
from thyme.data.sample import Sample
from thyme.data.store import SampleStore, Shard
from thyme.errors import first_line
from thyme.jsonl import JsonlRecords


class DistillAborted(RuntimeError):
    """Too many questions in a row failed in the backend or the sandbox (the endpoint went away, say)."""


@dataclass(frozen=True)
class DistillConfig:
    """How questions are sampled and judged.

    attempts:     runs per question at most; temperature: the teacher's sampling temperature.
    concurrency:  questions in flight at once (each runs its attempts one after another).
    preset:       prompt preset (None: the model's default, as `thyme run` chooses it).
    max_steps:    generation rounds per trajectory; max_new_tokens: tokens per round.
    require_code: reject trajectories without a code call (False: --allow-direct).
    limit, shard: the first N questions of the file; this job's share of them.
    """

    attempts: int = 4
    temperature: float = 0.7
    concurrency: int = 8
    preset: str | None = None
    max_steps: int = 5
    max_new_tokens: int = 2048
    require_code: bool = True
    limit: int | None = None
    shard: Shard = field(default_factory=Shard)

    def __post_init__(self) -> None:
        from thyme.protocol import PRESETS

        if self.attempts < 1:
            raise ValueError(f"--attempts {self.attempts}: use 1 or more")
        if self.temperature < 0:
            raise ValueError(f"--temperature {self.temperature}: use 0 or more (above 0 so attempts differ)")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency {self.concurrency}: use 1 or more")
        if self.preset is not None and not (self.preset in PRESETS and PRESETS[self.preset].tools):
            tools = sorted(name for name, p in PRESETS.items() if p.tools)
            raise ValueError(
                f"--preset {self.preset!r}: choose a preset that invites code: {', '.join(tools)}"
            )
        if self.max_steps < 1:
            raise ValueError(f"--max-steps {self.max_steps}: use 1 or more")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit {self.limit}: use 1 or more questions")

    def agent_config(self):
        """The loop's config: sampled, no fallback (a fallback answer is not part of the tool turn)."""
        from thyme.agent import AgentConfig, SamplingParams

        sampling = SamplingParams(temperature=self.temperature, max_new_tokens=self.max_new_tokens)
        return AgentConfig(preset=self.preset, max_steps=self.max_steps, fallback=False, sampling=sampling)


@dataclass(frozen=True)
class DistillResult:
    """This shard's outcome file summed up (earlier runs included), plus what this call did.

    total: questions this shard owns; recorded: of those with an outcome line; kept: of those kept.
    attempts: attempts of the recorded questions; rejections: rejected attempts by reason.
    new: questions recorded by this call; errors: (id, message) of questions that failed in the backend
    or sandbox in this call (not recorded, retried on the next run).
    """

    total: int
    recorded: int
    kept: int
    attempts: int
    rejections: dict[str, int]
    new: int
    errors: list[tuple[str, str]]
    samples_path: Path
    outcomes_path: Path


def distill(
    questions_path: str | Path,
    out_dir: str | Path,
    config: DistillConfig,
    agent,
    *,
    judge=None,
    on_start: Callable[[int], None] | None = None,
    on_question: Callable[[], None] | None = None,
) -> DistillResult:
    """Distil the questions of `questions_path` into `out_dir` with `agent` (see the module docstring).

    agent: a `thyme.agent.Agent` with an HTTP backend (its endpoint is checked first: EndpointError or
    ModelNotFoundError before any work). judge: a `thyme.eval.judge.Judge`, asked when the rules say no.
    Raises RowError for a bad input file, DistillAborted after a long streak of failed questions.
    """
    questions = read_questions(questions_path, config.limit)
    owned = [q for position, q in enumerate(questions) if config.shard.owns(position)]
    check = getattr(agent.backend, "check", None)
    if check is not None:
        check()
    if on_start is not None:
        on_start(len(owned))
    store = SampleStore(out_dir, shard=config.shard)
    outcomes = JsonlRecords(store.directory / config.shard.filename.replace("samples", "distill", 1))
    done = set(outcomes.load()) | store.done_ids()
    run = _Run(config, agent, judge, store, outcomes, on_question)
    asyncio.run(run.all(owned, done))
    return _summary(len(owned), run.ids, outcomes, run, store)


class _Run:
    """One call's questions in flight: attempts, verdicts, writes, and the failure streak."""

    def __init__(self, config, agent, judge, store: SampleStore, outcomes: JsonlRecords, on_question) -> None:
        self.config, self.agent, self.judge = config, agent, judge
        self.store, self.outcomes, self.on_question = store, outcomes, on_question
        self.new = 0
        self.ids: set[str] = set()  # the questions' ids, as computed
        self.errors: list[tuple[str, str]] = []
        self.streak = 0
        self.max_streak = max(8, config.concurrency)

    async def all(self, questions: list[Question], done: set[str]) -> None:
        gate = asyncio.Semaphore(self.config.concurrency)

        async def one(question: Question) -> None:
            try:
                qid = await asyncio.to_thread(lambda: question.row.id)
            except RowError as exc:
                self._failed(question.row.where, str(exc))
                return
            self.ids.add(qid)
            if qid not in done:
                async with gate:
                    await self.attempts(qid, question)
            if self.on_question is not None:
                self.on_question()

        await asyncio.gather(*(one(q) for q in questions))

    async def attempts(self, qid: str, question: Question) -> None:
        from thyme.agent import InputError

        reasons: list[str] = []
        for attempt in range(1, self.config.attempts + 1):
            try:
                traj = await self.agent.arun(question.row.image, question.prompt)
            except InputError as exc:
                self._failed(qid, str(exc))
                return
            judge = self.judge
            reason = await asyncio.to_thread(rejection, traj, question, self.config.require_code, judge)
            if reason == "error":
                self._forget(traj)
                self._failed(qid, traj.error or "the run ended without a result")
                return
            self.streak = 0
            if reason is None:
                sample = self._sample(qid, question, traj, attempt)
                self._forget(traj)
                self.store.append([sample])
                self._record(qid, True, attempt, reasons, traj.answer)
                return
            reasons.append(reason)
            self._forget(traj)
        self._record(qid, False, self.config.attempts, reasons, traj.answer)

    def _record(self, qid: str, kept: bool, attempts: int, reasons: list[str], prediction) -> None:
        self.outcomes.append({"id": qid, "kept": kept, "attempts": attempts, "rejections": reasons,
                              "last_answer": prediction})  # fmt: skip
        self.new += 1

    def _failed(self, qid: str, message: str) -> None:
        self.errors.append((qid, message))
        self.streak += 1
        if self.streak >= self.max_streak:
            raise DistillAborted(f"{self.streak} questions in a row failed; the last: {message}")

    def _sample(self, qid: str, question: Question, traj, attempt: int) -> Sample:
        sample = portable(Sample.from_trajectory(traj, id=qid, answer=question.row.answer), traj, self.store)
        meta = {
            **sample.meta,
            "teacher": traj.model,
            "attempt": attempt,
            "temperature": self.config.temperature,
        }
        return dataclasses.replace(sample, origin="distill", meta=meta)

    def _forget(self, traj) -> None:
        """The agent's scratch copy of a trajectory's images can go once the sample holds its own."""
        import shutil

        root = traj.root
        if root is not None and Path(root).resolve().parent == Path(self.agent.artifacts_dir).resolve():
            shutil.rmtree(root, ignore_errors=True)


def _summary(total: int, owned: set[str], outcomes: JsonlRecords, run: _Run, store) -> DistillResult:
    records = [r for i, r in outcomes.load().items() if i in owned]
    reasons: Counter[str] = Counter(reason for r in records for reason in r["rejections"])
    return DistillResult(
        total=total,
        recorded=len(records),
        kept=sum(1 for r in records if r["kept"]),
        attempts=sum(int(r["attempts"]) for r in records),
        rejections={r: reasons[r] for r in REASONS if reasons[r]},
        new=run.new,
        errors=run.errors,
        samples_path=store.path,
        outcomes_path=outcomes.path,
    )


# -- the command ------------------------------------------------------------------------------------------
def distill_command(
    questions: Path,
    out: Path,
    config_args: dict[str, Any],
    *,
    base_url: str,
    model: str,
    api_key: str | None = None,
    judge_url: str | None = None,
    judge_model: str | None = None,
    judge_api_key: str | None = None,
    allow_weak_isolation: bool = False,
    console=None,
) -> int:
    """`thyme data distill` with a progress bar and a summary; the exit status: 0 done, 1 some questions
    failed in the backend or sandbox (run again to retry them) or the run stopped, 2 bad input or options,
    130 interrupted."""
    from rich.console import Console

    from thyme.agent import Agent, BackendError, EndpointError
    from thyme.progress import item_progress
    from thyme.sandbox import SandboxConfig, SandboxError

    console = console or Console(stderr=True, highlight=False)

    def fail(message: str, status: int = 2) -> int:
        console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        return status

    try:
        config = DistillConfig(**config_args)
        read_questions(questions, config.limit)  # a bad file fails before anything starts
    except (ValueError, RowError) as exc:
        return fail(str(exc))
    if bool(judge_url) != bool(judge_model):
        return fail("a judge needs both --judge-url and --judge-model")
    if config.temperature == 0 and config.attempts > 1:
        console.print("note: at --temperature 0 every attempt samples the same turn; raise it", markup=False)
    try:
        agent = Agent.from_pretrained(
            model, backend="openai", base_url=base_url, api_key=api_key, config=config.agent_config(),
            sandbox_config=SandboxConfig(allow_weak_isolation=allow_weak_isolation),
        )  # fmt: skip
    except (BackendError, ValueError) as exc:
        return fail(first_line(exc))
    judge = None
    try:
        with agent:
            agent.backend.check()  # before any work and before the progress bar
            if judge_url:
                from thyme.eval.judge import Judge

                judge = Judge(judge_url, judge_model, judge_api_key, cache_path=out / "judge.jsonl")
            with item_progress(console, "distill", unit="questions") as (progress, bar):
                result = distill(
                    questions, out, config, agent, judge=judge,
                    on_start=lambda total: progress.update(bar, total=total),
                    on_question=lambda: progress.advance(bar),
                )  # fmt: skip
    except EndpointError as exc:
        return fail(f"cannot reach the endpoint: {first_line(exc)}; check --base-url and that it is running")
    except BackendError as exc:
        return fail(first_line(exc))
    except (DistillAborted, SandboxError) as exc:
        return fail(f"{first_line(exc)}; what was kept so far is on disk, run the same command to resume", 1)
    except KeyboardInterrupt:
        return fail("interrupted; what was kept so far is on disk; run the same command to resume", 130)
    finally:
        if judge is not None:
            judge.close()
    _report(result, console)
    return 1 if result.errors else 0


def _report(result: DistillResult, console) -> None:
    share = f" ({100 * result.kept / result.recorded:.1f}%)" if result.recorded else ""
    console.print(
        f"kept {result.kept}/{result.recorded} questions{share} in {result.attempts} attempts "
        f"({result.new} new); samples in {result.samples_path}, outcomes in {result.outcomes_path}",
        markup=False,
    )
    if result.rejections:
        reasons = ", ".join(f"{reason} {count}" for reason, count in result.rejections.items())
        console.print(f"rejected attempts: {reasons}", markup=False)
    if result.errors:
        qid, message = result.errors[0]
        console.print(
            f"{len(result.errors)} questions failed in the backend or sandbox and are not recorded "
            f"(first: {qid}: {message}); run the same command again to retry them",
            markup=False,
        )


def register(app) -> None:
    """Add `distill` to the `thyme data` group."""
    import typer

    @app.command("distill")
    def distill_cli(
        questions: Path = typer.Argument(
            ...,
            metavar="QUESTIONS",
            help="JSONL, CSV or TSV rows: image, question, answer, optional id and choices.",
        ),
        base_url: str = typer.Option(
            ..., "--base-url", help="The teacher's OpenAI-compatible API root (…/v1)."
        ),
        model: str = typer.Option(..., "--model", "-m", help="The served model name."),
        out: Path = typer.Option(..., "--out", help="Output directory (samples, images, distill.jsonl)."),
        api_key: str = typer.Option(None, "--api-key", help="Bearer token for the endpoint."),
        attempts: int = typer.Option(4, help="Runs per question at most; the first that passes is kept."),
        temperature: float = typer.Option(0.7, help="Sampling temperature (above 0 so attempts differ)."),
        concurrency: int = typer.Option(8, help="Questions in flight at once."),
        preset: str = typer.Option(None, help="Prompt preset (default: the model's)."),
        max_steps: int = typer.Option(5, help="Generation rounds per trajectory."),
        judge_url: str = typer.Option(None, help="An OpenAI-compatible judge, asked when the rules say no."),
        judge_model: str = typer.Option(None, help="The judge's served model name."),
        judge_api_key: str = typer.Option(None, help="Bearer token for the judge."),
        shard: str = typer.Option(None, help="This job's share of the questions, i/n (e.g. 0/8)."),
        limit: int = typer.Option(None, help="Only the first N questions of the file."),
        require_code: bool = typer.Option(
            True, "--require-code/--allow-direct", help="Keep only trajectories that ran code."
        ),
        allow_weak_isolation: bool = typer.Option(
            False, "--allow-weak-isolation", help="Run even where a sandbox confinement layer is missing."
        ),
    ) -> None:
        """Run a teacher through the agent loop on your questions; keep right, cleanly run trajectories."""
        try:
            args = dict(
                attempts=attempts, temperature=temperature, concurrency=concurrency, preset=preset,
                max_steps=max_steps, require_code=require_code, limit=limit, shard=Shard.parse(shard),
            )  # fmt: skip
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        status = distill_command(
            questions, out, args, base_url=base_url, model=model, api_key=api_key, judge_url=judge_url,
            judge_model=judge_model, judge_api_key=judge_api_key, allow_weak_isolation=allow_weak_isolation,
        )  # fmt: skip
        raise typer.Exit(status)
