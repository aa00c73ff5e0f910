"""`thyme synth`: generate toy-world data with a progress bar (a thin wrapper over `toyworld.generate`).

    thyme synth --task zoom --n 200 --seed 0 --out toy/zoom [--split test] [--level colour] [--overwrite]

writes `toy/zoom/samples.jsonl`, `toy/zoom/images/` and `toy/zoom/manifest.json`, and ends with one line
reporting samples per second.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from thyme.data.toyworld import GoldVerificationError, generate
from thyme.data.toyworld.generate import check_request
from thyme.errors import first_line
from thyme.progress import item_progress, rate


def synth_command(
    task: str,
    n: int,
    seed: int,
    out: Path,
    *,
    split: str = "train",
    level: str | None = None,
    overwrite: bool = False,
    verify: bool = True,
    console: Console | None = None,
) -> int:
    """Generate `n` samples of `task` into `out`; the exit status: 0 ok, 1 failed, 2 bad arguments."""
    from thyme.sandbox import SandboxError

    console = console or Console(stderr=True, highlight=False)
    try:
        check_request(task, n, seed, out, split=split, level=level, overwrite=overwrite)
    except (ValueError, FileExistsError) as exc:
        console.print(f"[red]error:[/red] {first_line(exc)}")
        return 2
    try:
        with item_progress(console, f"synth {task}", total=n) as (progress, bar):
            manifest = generate(
                task, n, seed, out, split=split, level=level, verify=verify, overwrite=overwrite,
                on_sample=lambda: progress.advance(bar),
            )  # fmt: skip
    except (ValueError, TypeError, FileExistsError) as exc:
        console.print(f"[red]error:[/red] {first_line(exc)}")
        return 2
    except GoldVerificationError as exc:
        console.print(f"[red]gold verification failed, nothing written:[/red] {exc}")
        return 1
    except SandboxError as exc:
        console.print(
            f"[red]the sandbox could not run the gold code:[/red] {exc}\n"
            "Run `thyme sandbox check`, or pass --no-verify to write gold outputs computed here instead."
        )
        return 1
    speed, seconds = rate(progress.tasks[bar]) or (0.0, 0.0)
    categories = ", ".join(f"{name} {count}" for name, count in manifest.categories.items())
    console.print(
        f"wrote {n} {task} samples ({split}, seeds {manifest.seeds[0]}-{manifest.seeds[1]}; {categories}) "
        f"to {Path(out) / 'samples.jsonl'}{'' if verify else ' (gold not verified)'}"
    )
    console.print(f"{speed:.1f} samples/s ({n} samples in {seconds:.1f} s)")
    return 0
