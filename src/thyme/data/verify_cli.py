"""`thyme data verify`: re-run every sample's code in the sandbox; keep the samples that do what they claim.

    thyme data verify data/sft.jsonl toy/zoom --out verified/ [--shard 3/16] [--workers 8] [--timeout 30]
        [--threshold 0.1] [--allow-weak-isolation]

Arguments are checked before the sandbox starts (exit 2 with one line); a progress bar shows samples/s and
how many were accepted; the run ends with one summary line. Files: `thyme.data.verify_run`; the checks:
`thyme.data.verify`. Re-running the same command resumes; a job array passes `--shard $i/$n` to each job.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `verify` to the `thyme data` group."""

    @app.command("verify")
    def verify_cli(
        inputs: list[Path] = typer.Argument(
            ...,
            metavar="INPUT",
            help="Samples: our JSONL, a store or `thyme synth` directory, trajectory.json files, their dir.",
        ),
        out: Path = typer.Option(
            ..., "--out", help="Output directory (accepted samples, verify.jsonl, report)."
        ),
        shard: str = typer.Option(None, "--shard", help="This job's share of the samples, i/n (e.g. 0/8)."),
        workers: int = typer.Option(None, "--workers", help="Samples in flight (default: two per core)."),
        timeout: float = typer.Option(30.0, "--timeout", help="Seconds one code block may run."),
        threshold: float = typer.Option(
            None, "--threshold", help="Largest accepted image distance, 0-1 (default 0.1)."
        ),
        allow_weak_isolation: bool = typer.Option(
            False, "--allow-weak-isolation", help="Run even where a sandbox confinement layer is missing."
        ),
    ) -> None:
        """Re-run every code block of every sample in the sandbox; keep the samples whose code does what they
        claim (images, printed text, errors); write the verdicts and a report."""
        raise typer.Exit(
            verify_command(
                inputs,
                out,
                shard=shard,
                workers=workers,
                timeout=timeout,
                threshold=threshold,
                allow_weak_isolation=allow_weak_isolation,
            )
        )


def verify_command(
    inputs: list[Path],
    out: Path,
    *,
    shard: str | None = None,
    workers: int | None = None,
    timeout: float = 30.0,
    threshold: float | None = None,
    allow_weak_isolation: bool = False,
    console=None,
) -> int:
    """Verify with a progress bar and a summary line; the exit status: 0 done (rejections included), 1 the
    sandbox failed, a row was corrupt or the run was interrupted (verdicts so far kept), 2 bad arguments."""
    from rich.console import Console

    from thyme.data.store import Shard
    from thyme.data.verify import VerifyConfig, verify_samples
    from thyme.data.verify_compare import DEFAULT_IMAGE_THRESHOLD
    from thyme.data.verify_run import check_inputs, count_samples
    from thyme.progress import item_progress
    from thyme.sandbox import Sandbox, SandboxError

    console = console or Console(stderr=True, highlight=False)

    def fail(message: str, status: int = 2) -> int:
        console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        return status

    try:
        part = Shard.parse(shard)
        config = VerifyConfig(
            image_threshold=DEFAULT_IMAGE_THRESHOLD if threshold is None else threshold,
            timeout_s=timeout,
            workers=workers,
            allow_weak_isolation=allow_weak_isolation,
        )
        paths = check_inputs(inputs, out)
        total = count_samples(paths, part)
    except (ValueError, OSError) as exc:  # SampleError is a ValueError
        return fail(_line(exc))
    try:
        sandbox = Sandbox(config.sandbox_config())
    except SandboxError as exc:
        return fail(f"{_line(exc)} (or pass --allow-weak-isolation)", 1)
    resume = "the verdicts so far are kept; run the same command again to resume"
    try:
        with sandbox, item_progress(console, "verify", total=total) as (progress, bar):
            tally = {"verified": 0, "accepted": 0}

            def tick(check) -> None:
                if check is not None:
                    tally["verified"] += 1
                    tally["accepted"] += check.ok
                progress.update(
                    bar, advance=1, description=f"verify ({tally['accepted']}/{tally['verified']} ok)"
                )

            summary = verify_samples(paths, out, shard=part, config=config, sandbox=sandbox, on_progress=tick)
    except ValueError as exc:  # a corrupt row (SampleError) or a corrupt line of verify.jsonl
        return fail(f"{_line(exc)}; the verdicts so far are kept: fix or delete that row and run again", 1)
    except SandboxError as exc:
        return fail(f"the sandbox failed: {_line(exc)}; {resume}", 1)
    except OSError as exc:
        return fail(f"{_line(exc)}; {resume}", 1)
    except KeyboardInterrupt:
        return fail(f"interrupted; {resume}", 130)
    console.print(_summary_line(summary), markup=False, highlight=False, soft_wrap=True)
    if summary.retry:
        console.print(
            f"note: {summary.retry} samples could not run in the sandbox (not recorded); run again to retry",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return 0


def _summary_line(summary) -> str:
    from thyme.data.verify import ACCEPTED

    report = f"report: {summary.report_path.with_suffix('.md')}"
    earlier = (
        f"{summary.resumed} samples recorded earlier ({summary.total_accepted}/{summary.total_records} "
        "accepted in all)"
    )
    if not summary.verified:
        return f"nothing left to verify: {earlier}; {report}"
    rejected = ", ".join(f"{r} {n}" for r, n in sorted(summary.reasons.items()) if r not in ACCEPTED)
    return (
        f"accepted {summary.accepted}/{summary.verified} samples "
        f"({100 * summary.accepted / summary.verified:.1f}%)"
        + (f", rejected: {rejected}" if rejected else "")
        + f"; {summary.samples_per_s:.1f} samples/s"
        + (f"; {earlier}" if summary.resumed else "")
        + (f"; {summary.duplicates} repeated ids skipped" if summary.duplicates else "")
        + f"; {report}"
    )


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
