"""`thyme data convert`: released Thyme-SFT / Thyme-RL data (parquet or JSONL) into our sample format.

    thyme data convert Thyme-SFT/data --out data/thyme-sft [--layout auto|sft|rl] [--split NAME]
        [--shard i/n] [--limit N]

Arguments and inputs are checked before any row is read (missing input, unknown columns, bad `--shard`:
one line, exit 2); a progress bar shows rows/s and how many were written and rejected; the run ends with one
summary line (written / rejected by reason / skipped, rows/s). A row that fails a check is a rejection
recorded in DIR/convert.jsonl, never a crash. Re-running the same command resumes; a job array passes
`--shard $i/$n`. The conversion itself: `thyme.data.convert` and `thyme.data.released`.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `convert` to the `thyme data` group."""

    @app.command("convert")
    def convert_cli(
        inputs: list[Path] = typer.Argument(
            ..., metavar="INPUT", help="Parquet or JSONL files of released Thyme rows, or their folders."
        ),
        out: Path = typer.Option(..., "--out", help="Output directory (samples, images, convert.jsonl)."),
        layout: str = typer.Option("auto", "--layout", help="auto | sft | rl (auto: from the columns)."),
        split: str = typer.Option(None, "--split", help="Split name for ids (default: from each file name)."),
        shard: str = typer.Option(None, "--shard", help="This job's share of the rows, i/n (e.g. 0/8)."),
        limit: int = typer.Option(None, "--limit", help="Only the first N rows of the inputs."),
    ) -> None:
        """Released Thyme-SFT / Thyme-RL rows (parquet or JSONL) into samples; resumable, --shard i/n."""
        raise typer.Exit(convert_command(inputs, out, layout=layout, split=split, shard=shard, limit=limit))


def convert_command(
    inputs: list[Path],
    out: Path,
    *,
    layout: str = "auto",
    split: str | None = None,
    shard: str | None = None,
    limit: int | None = None,
    console=None,
) -> int:
    """Convert with a progress bar and a summary line; the exit status: 0 done (rejections included), 1 an
    input failed mid-run or the run was interrupted (what was converted is kept), 2 bad arguments."""
    from rich.console import Console

    from thyme.data.convert import ConvertConfig, convert
    from thyme.data.convert_read import open_inputs
    from thyme.data.store import Shard, sample_files
    from thyme.errors import first_line
    from thyme.progress import item_progress

    console = console or Console(stderr=True, highlight=False)

    def say(message: str) -> None:
        console.print(message, markup=False, highlight=False, soft_wrap=True)

    try:
        config = ConvertConfig(layout=layout, split=split, shard=Shard.parse(shard), limit=limit)
        if not inputs:
            raise ValueError("give at least one INPUT: a parquet or JSONL file, or a folder of them")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; give a directory for the samples")
        outputs = {p.resolve() for p in sample_files(out)} if out.is_dir() else set()
        for path in inputs:
            if path.exists() and path.resolve() in outputs:
                raise ValueError(f"{path} is an output of --out {out}; convert into another directory")
        open_inputs(inputs, layout=config.layout, split=config.split)
    except ValueError as exc:  # InputError is a ValueError
        say(f"error: {first_line(exc)}")
        return 2
    resume = "what was converted is kept; run the same command again to resume"
    try:
        with item_progress(console, "convert", unit="rows") as (progress, bar):
            tally = {"ok": 0, "rejected": 0}

            def tick(outcome: str) -> None:
                if outcome not in ("resumed", "duplicate"):
                    tally["ok" if outcome == "ok" else "rejected"] += 1
                progress.update(
                    bar, advance=1, description=f"convert ({tally['ok']} ok, {tally['rejected']} rejected)"
                )

            summary = convert(
                inputs, out, config, on_start=lambda total: progress.update(bar, total=total), on_row=tick
            )
    except (ValueError, OSError) as exc:  # a file that fails mid-read, a full disk
        say(f"error: {first_line(exc)}; {resume}")
        return 1
    except KeyboardInterrupt:
        say(f"error: interrupted; {resume}")
        return 130
    say(summary_line(summary))
    return 0


def summary_line(summary) -> str:
    """One line: rows, written, rejected by reason, skipped, rows/s, where the files are."""
    rejected = sum(summary.rejected.values())
    reasons = ", ".join(f"{reason} {n}" for reason, n in summary.rejected.items())
    skipped = summary.resumed + summary.duplicates
    return (
        f"converted {summary.rows} rows: {summary.written} written, {rejected} rejected"
        + (f" ({reasons})" if reasons else "")
        + f", {skipped} skipped"
        + (f" ({summary.resumed} done earlier, {summary.duplicates} repeated)" if skipped else "")
        + f"; {summary.rows_per_s:.1f} rows/s; samples in {summary.samples_path}, "
        + f"one record per row in {summary.records_path}"
    )
