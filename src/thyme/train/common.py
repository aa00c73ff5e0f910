"""What every training stage shares: checks before loading, TRL's common arguments, freezing, LoRA, saving.

SFT (`thyme.train.sft`) and GRPO (`thyme.train.grpo_run`) differ in their data and their trainer; the rest
of a run is the same and lives here once:

- `check_run(config, result_file)`: the model, data and DeepSpeed paths exist, the precision fits this
  machine, the output directory is usable and not a finished run; returns the checkpoint to resume from;
- `trainer_arguments(config)`: the TrainingArguments fields both stages fill from their config;
- `freeze_vision`, `lora_config`: what trains;
- `save_final(trainer, processor, out, result_file, summary)`: the final model in the hub layout (LoRA
  merged, training aids removed), the processor, and the run's summary JSON;
- `TrainingClock`: the minutes a run took, counted across its resumed attempts.

The stage configs share these keys by name (duck typing): model, output_dir, data, deepspeed, device,
precision, resume, finetune, lora, freeze_vision, train_merger, and the optimisation and logging keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thyme.config import ConfigError
from thyme.files import atomic_write, give_umask


def check_run(config, result_file: str, sources=None) -> str | None:
    """Everything checkable without loading the model; returns the checkpoint to resume from.

    sources: (key, DataSource...) pairs whose paths must exist (default: ("data", config.data)).
    Raises ConfigError (one line, naming the key).
    """
    model = Path(config.model).expanduser()
    if (model.is_absolute() or config.model.startswith(".") or model.exists()) and not (
        model / "config.json"
    ).is_file():
        raise ConfigError(f"model: {config.model} holds no config.json; give a checkpoint directory")
    for key, group in sources or (("data", config.data),):
        for source in group:
            if not Path(source.path).exists():
                raise ConfigError(f"{key}: {source.path} does not exist")
    if config.deepspeed is not None and not Path(config.deepspeed).is_file():
        raise ConfigError(f"deepspeed: {config.deepspeed} does not exist; give a DeepSpeed JSON config")
    machine(config)
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} is a file")
    if (out / result_file).is_file():
        raise ConfigError(f"output_dir: {out} holds a finished run; choose a new output_dir")
    return resume_point(config.resume, out)


def trainer_arguments(config) -> dict[str, Any]:
    """The TrainingArguments fields every stage takes from its config (TRL's SFTConfig and GRPOConfig
    extend TrainingArguments)."""
    use_cpu, precision = machine(config)
    return dict(
        output_dir=config.output_dir,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=use_cpu,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=config.gradient_checkpointing,
        deepspeed=config.deepspeed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to=report_targets(config.report_to),
        remove_unused_columns=False,
    )


def save_final(
    trainer, processor, config, result_file: str, summary: dict[str, Any], preset: str | None = None
) -> Path:
    """Save the final model (hub key layout, LoRA merged, the auxiliary head dropped), its processor,
    the summary and, when known, the prompt preset it was trained with (`thyme.json`, read by
    `thyme.agent.backends.base.model_preset`), on the main process; every process waits for it."""
    from thyme.agent.backends.base import MODEL_CARD
    from thyme.train.trainer import AUX_HEAD, release_checkpoint_layout

    out = Path(config.output_dir)
    if trainer.accelerator.is_main_process:
        final = trainer.model
        if config.finetune == "lora":
            final = final.merge_and_unload()
        release_checkpoint_layout(final)
        if hasattr(final, AUX_HEAD):
            delattr(final, AUX_HEAD)  # a training aid, not part of the model
        final.save_pretrained(out)
        processor.save_pretrained(out)
        atomic_write(out / result_file, json.dumps(summary, indent=1, default=str))
        if preset is not None:
            atomic_write(out / MODEL_CARD, json.dumps({"preset": preset}) + "\n")
        give_umask(out)  # safetensors writes the weights 0600; the model is the user's to share
    trainer.accelerator.wait_for_everyone()
    return out


def resume_point(resume: str, out: Path) -> str | None:
    """The checkpoint a run starts from: `resume` is "auto" (the last one in `out`, if any), "never", or a
    checkpoint directory; ConfigError when it cannot be used."""
    from transformers.trainer_utils import get_last_checkpoint

    if resume == "never":
        return None
    if resume != "auto":
        if not (Path(resume) / "trainer_state.json").is_file():
            raise ConfigError(f"resume: {resume} is not a checkpoint directory (no trainer_state.json)")
        return resume
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last is None and out.is_dir() and any(out.iterdir()):
        entries = ", ".join(sorted(p.name for p in out.iterdir())[:3])
        raise ConfigError(
            f"output_dir: {out} is not empty ({entries}) and holds no checkpoint; choose an empty directory"
        )
    return last


def machine(config) -> tuple[bool, str]:
    """(train on the CPU?, precision): `auto` resolved for this machine; ConfigError when impossible."""
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda, but torch sees no CUDA device; use device: cpu or auto")
    use_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "fp32"
    if use_cpu and precision != "fp32":
        raise ConfigError(f"precision: {precision} needs a GPU; use precision: fp32 (or auto) on the CPU")
    return use_cpu, precision


def report_targets(names: tuple[str, ...]) -> list[str]:
    """ "auto" = TensorBoard, plus W&B when it is installed; "none" = nothing."""
    import importlib.util

    if tuple(names) == ("none",):
        return []
    out = []
    for name in names:
        if name == "auto":
            out.append("tensorboard")
            if importlib.util.find_spec("wandb") is not None:
                out.append("wandb")
        else:
            out.append(name)
    return sorted(set(out))


def freeze_vision(model, config) -> None:
    """Freeze the vision tower (keeping the merger trainable when `train_merger`), or leave it trainable."""
    if not config.freeze_vision:
        return
    from thyme.train.trainer import vision_module

    for name, param in vision_module(model).named_parameters():
        param.requires_grad = config.train_merger and name.startswith("merger.")


def lora_config(config):
    """PEFT's LoraConfig on the language model's linear layers only (None for a full fine-tune)."""
    if config.finetune != "lora":
        return None
    from peft import LoraConfig

    from thyme.train.trainer import AUX_HEAD

    names = "|".join(config.lora.target_modules)
    keep = []
    if not config.freeze_vision:
        keep.append("visual")
    elif config.train_merger:
        keep.append("merger")
    if getattr(config, "aux", None) is not None:
        keep.append(AUX_HEAD)
    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=rf"^(?!.*\bvisual\b).*\.({names})$",
        modules_to_save=keep or None,
        task_type="CAUSAL_LM",
    )


class TrainingClock:
    """The wall-clock minutes a run took, across the attempts that resumed it.

    Each checkpoint records the minutes spent up to it (`thyme_clock.json`); a run resumed from a checkpoint
    starts its count there, so a summary's `minutes` is the time of the attempts that produced the model
    (what ran after the last checkpoint of an interrupted attempt is lost work and not counted).
    `callback()` is the TRL/transformers callback that writes the record.
    """

    FILE = "thyme_clock.json"

    def __init__(self, resume: str | None, started: float) -> None:
        """resume: the checkpoint this attempt starts from (None: a fresh run); started: when this attempt
        began (`time.perf_counter()`)."""
        record = Path(resume) / self.FILE if resume else None
        self.before = float(json.loads(record.read_text())["minutes"]) if record and record.is_file() else 0.0
        self._started = started

    def minutes(self) -> float:
        import time

        return self.before + (time.perf_counter() - self._started) / 60

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _Record(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if state.is_world_process_zero and folder.is_dir():
                    atomic_write(folder / clock.FILE, json.dumps({"minutes": clock.minutes()}) + "\n")

        return _Record()
