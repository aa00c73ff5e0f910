"""`thyme train ...`: training commands (thin wrappers over `thyme.train`).

    thyme train sft CONFIG.yaml [--set key=value ...] [--check]
    thyme train grpo CONFIG.yaml [--set key=value ...] [--check]

Under `accelerate launch` every process runs the same command (`accelerate launch -m thyme train sft ...`;
on a CPU-only machine add `--multi_gpu` to get several gloo processes, which this command checks).
"""

from __future__ import annotations

import logging
import pathlib

import typer
from rich.console import Console

train_app = typer.Typer(help="Train models on TRL: SFT and GRPO-ATS.", no_args_is_help=True)
_err = Console(stderr=True, soft_wrap=True, highlight=False)


@train_app.command("sft")
def sft(
    config: pathlib.Path = typer.Argument(..., help="YAML config (see configs/sft/ and the README)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override one key: --set learning_rate=2e-5 --set lora.r=8 (repeatable)."
    ),
    check: bool = typer.Option(
        False, "--check", help="Check the config and data, print the plan, and stop before loading the model."
    ),
) -> None:
    """Supervised fine-tuning with the reference's loss masks, on TRL's SFTTrainer."""
    from thyme.config import ConfigError
    from thyme.data.sample import SampleError

    cfg, resume = _configured("sft", config, overrides)
    from thyme.train.sft import run_sft

    if check:
        _err.print(f"config ok: {cfg.finetune} fine-tune of {cfg.model} into {cfg.output_dir}")
        _err.print(f"resume from: {resume or 'nothing (a fresh run)'}")
        raise typer.Exit(0)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from thyme.progress import item_progress

    try:
        with item_progress(_err, "reading samples", unit="samples") as (progress, bar):
            result = run_sft(cfg, progress=lambda: progress.advance(bar))
    except (ConfigError, SampleError) as exc:
        _fail(exc)
    loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
    _err.print(
        f"trained {result.steps} steps on {result.samples} samples ({result.dropped} too long, left out) in "
        f"{result.minutes:.1f} min; train loss {loss}; model saved to {result.output_dir}"
    )


@train_app.command("grpo")
def grpo(
    config: pathlib.Path = typer.Argument(..., help="YAML config (see configs/grpo/ and the README)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override one key: --set max_steps=20 --set code_temperature=null (repeatable)."
    ),
    check: bool = typer.Option(
        False, "--check", help="Check the config and data, print the plan, and stop before loading the model."
    ),
) -> None:
    """GRPO-ATS with rollouts from the agent loop (sandbox output inside the turn), on TRL's GRPOTrainer."""
    from thyme.config import ConfigError
    from thyme.data.sample import SampleError

    cfg, resume = _configured("grpo", config, overrides)
    from thyme.train.grpo_run import prompt_rows, run_grpo

    try:
        prompts = len(prompt_rows(cfg))
    except SampleError as exc:
        _fail(exc)
    ats = (
        "greedy code (ATS)"
        if cfg.code_temperature == 0
        else f"code at T={cfg.code_temperature or cfg.temperature}"
    )
    if check:
        _err.print(
            f"config ok: {prompts} prompts x {cfg.num_generations} rollouts, text at T={cfg.temperature}, "
            f"{ats}, reward {cfg.reward!r}, {cfg.finetune} fine-tune of {cfg.model} into {cfg.output_dir}"
        )
        _err.print(f"resume from: {resume or 'nothing (a fresh run)'}")
        raise typer.Exit(0)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_grpo(cfg)
    except (ConfigError, SampleError) as exc:
        _fail(exc)
    _err.print(
        f"trained {result.steps} steps on {result.prompts} prompts in {result.minutes:.1f} min "
        f"({result.rollout_minutes:.1f} min of rollouts); model saved to {result.output_dir}"
    )


def _configured(stage: str, path: pathlib.Path, overrides: list[str]):
    """(config, checkpoint to resume from) of `stage`, everything checked before anything loads; on a
    problem, one line and exit 2."""
    from thyme.config import ConfigError, load_config

    single = lone_accelerate_process()
    if single:
        _fail(ValueError(single))
    try:
        if stage == "sft":
            from thyme.train.config import SFTConfig as Config
            from thyme.train.sft import check_config as check
        else:
            from thyme.train.grpo_config import GRPOConfig as Config
            from thyme.train.grpo_run import check_grpo as check
        cfg = load_config(Config, path, overrides)
        return cfg, check(cfg)
    except (ConfigError, ImportError) as exc:
        _fail(exc)


def lone_accelerate_process(env=None) -> str | None:
    """A message when `accelerate launch --num_processes N` started one process instead of N.

    On a machine without GPUs and without an accelerate config, accelerate's plain launcher runs a single
    process; it still sets MASTER_ADDR for the N asked, but no WORLD_SIZE (torchrun sets both).
    """
    import os

    env = os.environ if env is None else env
    launched = "ACCELERATE_MIXED_PRECISION" in env and "MASTER_ADDR" in env
    if launched and "WORLD_SIZE" not in env:
        return (
            "accelerate launch started one process, not the number asked: on a machine without GPUs add "
            "--multi_gpu (N processes on the CPU with gloo), or drop --num_processes"
        )
    return None


def _fail(exc: BaseException) -> None:
    if isinstance(exc, ImportError):
        message = (
            f"{exc.name or exc} is not installed; install the train extra: pip install 'thyme-vl[train]'"
        )
    else:
        message = str(exc)
    _err.print(f"error: {message}", markup=False)
    raise typer.Exit(2)
