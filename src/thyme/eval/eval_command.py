"""`thyme eval`: run a task through a model with a progress bar, then write and print the report.

Kept out of `cli.py` so the CLI stays a list of flags. Contract with the user: a mistake they can make
(unknown task, missing data file, unknown model, unreachable endpoint, results of another protocol in --out)
is one line on stderr and a non-zero exit before any work is done; Ctrl-C (or SIGTERM) keeps every result
written so far, removes the run's temporary folders, and says how to resume (run the same command again).

Exit status: 0 done; 1 the run failed or stopped (samples that failed in the backend or the sandbox, an
interrupted run); 2 bad input or options; 130 interrupted by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from thyme.errors import cli_flags, first_line
from thyme.files import check_out_dir
from thyme.interrupts import sigterm_interrupts


def eval_command(
    task: str,
    model: str,
    *,
    data: pathlib.Path | None,
    out: pathlib.Path,
    limit: int | None,
    tools: bool,
    backend: str,
    base_url: str | None,
    api_key: str | None,
    concurrency: int,
    max_steps: int,
    max_new_tokens: int,
    temperature: float,
    max_pixels: int | None,
    judge_url: str | None,
    judge_model: str | None,
    force: bool,
    both: bool,
    console: Console,
    err_console: Console,
    preset: str | None = None,
    device: str = "auto",
    allow_weak_isolation: bool = False,
    judge_api_key: str | None = None,
    mcq_matching: str | None = None,
) -> int:
    """Evaluate `task` with `model` into `out` (`out/tools`, `out/direct`), then write `out/report.md`."""
    from thyme.agent import Agent, AgentConfig, BackendError, SamplingParams
    from thyme.agent.backends.base import backend_options
    from thyme.eval.task import configure_task, get_task
    from thyme.sandbox import SandboxConfig

    def fail(message: str, status: int = 2) -> int:
        err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        return status

    try:
        check_out_dir(out)
    except ValueError as exc:
        return fail(str(exc))
    # SIGTERM (a scheduler, `timeout`, `kill`) stops the run like Ctrl-C, so the sandbox and the agent close
    # and their temporary folders go; an `out` this run created, or its cache, is removed when left empty.
    with sigterm_interrupts(), _removed_if_empty(out):
        try:
            spec = get_task(task)
            if mcq_matching is not None:
                spec = configure_task(spec, mcq_matching=mcq_matching)
        except ValueError as exc:
            return fail(str(exc))
        if data is not None and not data.exists():
            hint = f" ({spec.data_hint})" if spec.data_hint else ""
            return fail(f"data file {data} does not exist; pass --data with the {spec.name} file{hint}")
        if limit is not None and limit < 1:
            return fail(f"--limit must be >= 1, got {limit}")
        if concurrency < 1:
            return fail(f"--concurrency must be >= 1, got {concurrency}")
        try:
            _first_sample(spec, data, out / "cache")
            config = AgentConfig(
                preset=preset,
                max_steps=max_steps,
                sampling=SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens),
            )
        except (ValueError, OSError) as exc:
            return fail(first_line(exc, cli_flags("preset", "max_steps", "temperature", "max_new_tokens")))
        if bool(judge_url) != bool(judge_model):
            return fail("a judge needs both --judge-url and --judge-model")
        if judge_url and not spec.judge:
            err_console.print(
                f"note: task {spec.name} is scored by rules only; the judge options are ignored"
            )
        try:
            options = backend_options(
                backend, base_url=base_url, api_key=api_key, device=device, max_pixels=max_pixels
            )
        except ValueError as exc:
            return fail(first_line(exc))
        try:
            with console.status(f"loading {model} ({backend})"):
                agent = Agent.from_pretrained(
                    model,
                    backend=backend,
                    config=config,
                    sandbox_config=SandboxConfig(allow_weak_isolation=allow_weak_isolation),
                    **options,
                )
        except (BackendError, ValueError, OSError) as exc:
            return fail(first_line(exc))
        judge = None
        if judge_url and spec.judge:
            from thyme.eval.judge import Judge

            # Verdicts are cached in out/judge.jsonl, so a resumed run does not ask again.
            judge = Judge(judge_url, judge_model, judge_api_key, cache_path=out / "judge.jsonl")
        job = _Job(spec, agent, data, out, limit, concurrency, judge, force, console, err_console)
        try:
            with agent:
                return job.check_endpoint(model, base_url) or job.run([True, False] if both else [tools])
        finally:
            if judge is not None:
                judge.close()


@dataclass(frozen=True)
class _Job:
    """One `thyme eval` invocation once its inputs are validated and the agent is loaded."""

    spec: Any
    agent: Any
    data: pathlib.Path | None
    out: pathlib.Path
    limit: int | None
    concurrency: int
    judge: Any
    force: bool
    console: Console
    err_console: Console

    def fail(self, message: str, status: int = 2) -> int:
        self.err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        return status

    def check_endpoint(self, model: str, base_url: str | None) -> int | None:
        """HTTP backends: the endpoint answers and serves the model (an exit status when not)."""
        from thyme.agent import EndpointError
        from thyme.agent.backends.base import ModelNotFoundError

        if self.agent.backend.name != "openai":
            return None
        try:
            self.agent.backend.check()
        except EndpointError as exc:
            return self.fail(
                f"cannot reach the endpoint: {first_line(exc)}; check --base-url and that it is running"
            )
        except ModelNotFoundError as exc:
            return self.fail(first_line(exc))
        return None

    def run(self, modes: list[bool]) -> int:
        """Run each mode (tools=True/False), then write and print the report."""
        failed = 0
        for tools in modes:
            outcome = self.run_mode(tools)
            if isinstance(outcome, int):
                return outcome
            failed += len(outcome.errors)
        _finish(self.out, self.console)
        return 1 if failed else 0

    def run_mode(self, tools: bool):
        """One mode with a progress bar: its `EvalResult`, or an exit status when the command must stop."""
        from thyme.eval.runner import EvalAborted, ProtocolMismatch, run_eval
        from thyme.sandbox import SandboxError

        mode = "tools" if tools else "direct"
        columns = (
            TextColumn(f"{self.spec.name} [bold]{mode}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("acc {task.fields[acc]}"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as bar:
            ids: list[int] = []

            def progress(done: int, total: int, score_sum: float) -> None:
                acc = f"{100 * score_sum / done:.1f}%" if done else "-"
                if not ids:
                    ids.append(bar.add_task(mode, total=total, completed=done, acc=acc))
                else:
                    bar.update(ids[0], completed=done, acc=acc)

            try:
                result = run_eval(
                    self.spec,
                    self.agent,
                    data=self.data,
                    out_dir=self.out,
                    limit=self.limit,
                    tools=tools,
                    concurrency=self.concurrency,
                    judge=self.judge,
                    progress=progress,
                    force=self.force,
                )
            except ProtocolMismatch as exc:
                return self.fail(str(exc))
            except KeyboardInterrupt:
                bar.stop()
                _try_report(self.out)
                return self.fail(
                    f"interrupted; the results so far are kept in {self.out / mode / 'results.jsonl'}; "
                    "run the same command again to resume",
                    130,
                )
            except EvalAborted as exc:
                _try_report(self.out)
                return self.fail(
                    f"{first_line(exc)}; the results so far are kept; fix the cause and run the same command",
                    1,
                )
            except SandboxError as exc:
                return self.fail(first_line(exc), 1)
            except (ValueError, OSError) as exc:
                return self.fail(first_line(exc))
        if result.errors:
            sample_id, message = result.errors[0]
            self.console.print(
                f"[yellow]{len(result.errors)} sample(s) failed in the backend or sandbox and are not scored "
                f"(first: {sample_id}: {message}); run the same command again to retry them[/]",
                highlight=False,
            )
        return result


def _finish(out: pathlib.Path, console: Console) -> None:
    """Write the report and print its accuracy table and time shares."""
    from thyme.eval.report import accuracy_table, load_modes, time_shares, write_report

    path = write_report(out)
    modes = load_modes(out)
    table = Table(title=f"{out}")
    table.add_column("category")
    for m in modes:
        table.add_column(m.mode, justify="right")
        table.add_column("n", justify="right")
    for category, cells in accuracy_table(modes):
        row = [category]
        for m in modes:
            acc, n = cells.get(m.mode, (None, 0))
            row += ["-" if acc is None else f"{100 * acc:.1f}%", str(n)]
        table.add_row(*row)
    console.print(table)
    for m in modes:
        t = time_shares(m)
        console.print(
            f"{m.mode}: sandbox {100 * t['sandbox_share']:.1f}% and generation "
            f"{100 * t['generation_share']:.1f}% of {t['wall_s']:.1f} s wall",
            highlight=False,
        )
    console.print(f"wrote {path}", highlight=False)


def _first_sample(spec, data, cache_dir: pathlib.Path) -> None:
    """Read the first sample now, so that a data file the task cannot read fails before a model loads."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    if next(iter(spec.load(data, cache_dir)), None) is None:
        raise ValueError(f"task {spec.name} found no samples in {data if data is not None else 'its data'}")


@contextlib.contextmanager
def _removed_if_empty(out: pathlib.Path) -> Iterator[None]:
    """Remove `out/cache` on the way out when nothing was cached, and `out` when this run created it and
    nothing was written (a run that failed before its first result)."""
    created = not out.exists()
    try:
        yield
    finally:
        for path in [out / "cache", out] if created else [out / "cache"]:
            with contextlib.suppress(OSError):  # not empty, or already gone
                path.rmdir()


def _try_report(out: pathlib.Path) -> None:
    """Best effort: a report of what is there so far (the results themselves are already on disk)."""
    from thyme.eval.report import write_report

    try:
        write_report(out)
    except (OSError, ValueError, KeyError) as exc:
        logging.getLogger(__name__).warning("no report written: %s", exc)
