"""`thyme demo`: the bundled thyme-tiny thinks with code on a toy-world image drawn for this run.

Offline, on the CPU, in seconds: a fresh image from the toy world's held-out seed range (never trained on),
the question, then each step as it happens (the model's reasoning, the code it wrote, what the sandbox ran
and the image it produced, the answer), the gold answer beside it, and the trajectory as HTML.

    thyme demo                        # a zoom question (find the tiny label, crop, read its chip)
    thyme demo --task compute --seed 7

Until a thyme-tiny is bundled (`make tiny` trains and installs it), the demo says so and runs
`thyme.demo_sandbox` instead: released-model-shaped code in the real sandbox, no model.
"""

from __future__ import annotations

import pathlib
import random

from rich.console import Console

# (toy-world task, level) per demo task: thyme-tiny's training targets.
DEMO_TASKS = {"zoom": ("zoom", "find"), "compute": ("compute", "mul-text")}


def run_demo(
    out_dir: pathlib.Path,
    console: Console,
    *,
    task: str = "zoom",
    seed: int | None = None,
    device: str = "cpu",
) -> int:
    """Draw one sample, run thyme-tiny on it live, write out_dir/{image.png, trajectory.html}; exit status."""
    from thyme.agent import Agent, BackendError
    from thyme.agent.console import EventPrinter
    from thyme.agent.loop import bundled_tiny
    from thyme.data.toyworld import SPLIT_SPAN, draft_sample, get_task

    if task not in DEMO_TASKS:
        console.print(
            f"error: unknown demo task {task!r}; choose one of: {', '.join(DEMO_TASKS)}", markup=False
        )
        return 2
    if seed is not None and not 0 <= seed < SPLIT_SPAN:
        message = f"error: --seed {seed}: use 0 to {SPLIT_SPAN - 1} (the test split's seeds)"
        console.print(message, markup=False)
        return 2
    if out_dir.exists() and not out_dir.is_dir():
        console.print(f"error: --out {out_dir} is a file; give a directory", markup=False)
        return 2
    if bundled_tiny() is None:
        console.print(
            "[yellow]thyme-tiny is not bundled in this version yet (`make tiny` trains and installs it); "
            "showing the sandbox demo instead.[/]"
        )
        from thyme.demo_sandbox import run_sandbox_demo

        return run_sandbox_demo(out_dir, console)
    name, level = DEMO_TASKS[task]
    seed = random.SystemRandom().randrange(SPLIT_SPAN) if seed is None else seed
    _, _, draft = draft_sample(get_task(name), SPLIT_SPAN + seed, level)  # the test split: never trained on
    out_dir.mkdir(parents=True, exist_ok=True)
    image = out_dir / "image.png"
    draft.image.save(image)
    size = f"{draft.image.width}x{draft.image.height}"
    console.print(f"[bold]image[/]: {image} ({size}, toy world {name}/{level}, test seed {seed})")
    console.print(f"[bold]question[/]: {draft.question}")
    try:
        with console.status("loading thyme-tiny"):
            agent = Agent.from_pretrained("thyme-tiny", device=device)
    except (BackendError, ValueError) as exc:
        console.print(f"error: {str(exc).splitlines()[0]}", markup=False)
        return 2
    with agent:
        trajectory = agent.run(image=image, question=draft.question, on_event=EventPrinter(console))
        html = out_dir / "trajectory.html"
        trajectory.to_html(html)
    verdict = "[green]right[/]" if trajectory.answer == draft.answer else "[red]wrong[/]"
    console.print(f"gold answer: {draft.answer} ({verdict}); the trajectory: {html}")
    return 0 if trajectory.final is None or trajectory.final.reason != "error" else 1
