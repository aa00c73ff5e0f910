"""`thyme train sft`: supervised fine-tuning of a Qwen2.5-VL-family model on TRL, at any accelerate scale.

    thyme train sft configs/sft/tiny-cpu.yaml --set max_steps=100
    accelerate launch --num_processes 8 --config_file configs/accelerate/zero2.yaml -m thyme train sft \\
        configs/sft/qwen2.5-vl-7b.yaml

What runs: the config is checked (paths, keys, values) before anything is loaded; the samples of every source
are read, measured and filtered (`thyme.train.data`); the model loads with `AutoModelForImageTextToText`;
the vision tower is frozen (the merger trained) or not, LoRA applied or not; TRL's `SFTTrainer`
(`thyme.train.trainer.ThymeSFTTrainer`) trains with our collator (`thyme.train.collate`: the reference's loss
masks). TRL and transformers own the optimizer, schedule, checkpoints (`output_dir/checkpoint-N`), resume,
TensorBoard logs (`output_dir/runs`, W&B too when installed) and the progress bar.

At the end `output_dir` holds a model that loads like any checkpoint (`thyme run --model output_dir`): the
weights (LoRA merged into them), the processor, and `thyme_sft.json` (the config, the data counts, the
final metrics, the minutes spent). A run that stopped resumes from its last checkpoint when started again
with the same command (`resume: auto`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thyme.config import ConfigError, to_plain
from thyme.files import atomic_write
from thyme.train.config import SFTConfig

log = logging.getLogger(__name__)

RESULT_FILE = "thyme_sft.json"


@dataclass
class SFTResult:
    """What a finished run produced."""

    output_dir: Path
    steps: int
    samples: int
    dropped: int
    train_loss: float | None
    minutes: float
    log_history: list[dict[str, Any]]


def check_config(config: SFTConfig) -> str | None:
    """Everything that can be checked without loading the model; returns the checkpoint to resume from.

    Raises ConfigError (one line, naming the key) on a missing path or an unusable output directory.
    """
    model = Path(config.model).expanduser()
    if (model.is_absolute() or config.model.startswith(".") or model.exists()) and not (
        model / "config.json"
    ).is_file():
        raise ConfigError(f"model: {config.model} holds no config.json; give a checkpoint directory")
    for key, sources in (("data", config.data), ("eval_data", config.eval_data)):
        for source in sources:
            if not Path(source.path).exists():
                raise ConfigError(f"{key}: {source.path} does not exist")
    if config.deepspeed is not None and not Path(config.deepspeed).is_file():
        raise ConfigError(f"deepspeed: {config.deepspeed} does not exist; give a DeepSpeed JSON config")
    machine(config)
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} is a file")
    if (out / RESULT_FILE).is_file():
        raise ConfigError(f"output_dir: {out} holds a finished run; choose a new output_dir")
    return resume_point(config.resume, out)


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


@dataclass
class Prepared:
    """Everything a run needs, built and checked, before `train()` starts."""

    trainer: Any  # ThymeSFTTrainer
    train: Any  # thyme.train.data.TrainingSet
    processor: Any
    resume: str | None


def prepare_sft(config: SFTConfig, *, progress=None) -> Prepared:
    """Check the config, read the data, load the model and build the trainer (nothing trained yet).

    progress: a callable taking no arguments, called once per sample scanned (a progress bar).
    """
    import torch
    from transformers import AutoModelForImageTextToText

    from thyme.models.encoding import Encoder
    from thyme.models.processor import load_processor
    from thyme.train.collate import SampleCollator
    from thyme.train.data import build_training_set, modality_order
    from thyme.train.trainer import ThymeSFTTrainer, attach_aux_head

    resume = check_config(config)
    processor = load_processor(config.model)
    encoder = Encoder(processor, min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    train = build_training_set(config.data, encoder, max_length=config.max_length, on_sample=progress)
    evaluation = None
    if config.eval_data:
        evaluation = build_training_set(config.eval_data, encoder, max_length=config.max_length)
    args = trl_arguments(config)
    dataset = train.dataset
    if config.keep_modalities_apart:
        chunk = config.batch_size * config.grad_accum * args.world_size
        dataset = dataset.select(modality_order(dataset["has_image"], chunk, config.seed))

    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(config.model, dtype=dtype)
    if config.aux is not None:
        attach_aux_head(model, config.aux)
    freeze_vision(model, config)
    tokenizer = processor.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = SampleCollator(
        encoder, config.masks, pad_id=pad_id, aux_classes=config.aux.classes if config.aux else None
    )
    trainer = ThymeSFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=evaluation.dataset if evaluation else None,
        data_collator=collator,
        processing_class=processor,
        peft_config=lora_config(config),
        vision_lr_scale=config.vision_lr_scale,
        aux=config.aux,
    )
    return Prepared(trainer, train, processor, resume)


def run_sft(config: SFTConfig, *, progress=None) -> SFTResult:
    """Train as `config` says and save the final model; see the module docstring."""
    from thyme.train.trainer import AUX_HEAD, release_checkpoint_layout

    started = time.perf_counter()
    prepared = prepare_sft(config, progress=progress)
    trainer, train, processor, resume = prepared.trainer, prepared.train, prepared.processor, prepared.resume
    device = "cpu" if trainer.args.use_cpu else str(trainer.args.device)
    log.info("training on %s (%d samples, %d left out)", device, train.size, len(train.dropped))
    output = trainer.train(resume_from_checkpoint=resume)
    minutes = (time.perf_counter() - started) / 60
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
        summary = {
            "config": to_plain(config),
            "samples": train.size,
            "per_source": train.per_source,
            "dropped_too_long": train.dropped,
            "unreadable": train.unreadable,
            "steps": output.global_step,
            "train_loss": output.training_loss,
            "minutes": minutes,
            "metrics": output.metrics,
            "log_history": trainer.state.log_history,
        }
        atomic_write(out / RESULT_FILE, json.dumps(summary, indent=1, default=str))
    trainer.accelerator.wait_for_everyone()
    return SFTResult(
        output_dir=out,
        steps=output.global_step,
        samples=train.size,
        dropped=len(train.dropped),
        train_loss=output.training_loss,
        minutes=minutes,
        log_history=list(trainer.state.log_history),
    )


def trl_arguments(config: SFTConfig):
    """TRL's `SFTConfig` for our run: our collator and dataset as they are, machinery from the config."""
    import trl

    use_cpu, precision = machine(config)
    evaluate = bool(config.eval_data)
    return trl.SFTConfig(
        output_dir=config.output_dir,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        adam_beta2=config.adam_beta2,
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
        eval_strategy=("steps" if config.eval_steps else "epoch") if evaluate else "no",
        eval_steps=config.eval_steps,
        report_to=report_targets(config.report_to),
        dataloader_num_workers=config.dataloader_workers,
        train_sampling_strategy="sequential" if config.keep_modalities_apart else "random",
        # Our dataset holds whole samples and our collator makes the labels (the reference's masks), so
        # TRL must neither tokenise, truncate, pack nor drop the "sample" column.
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        packing=False,
        assistant_only_loss=False,
        completion_only_loss=False,
    )


def machine(config: SFTConfig) -> tuple[bool, str]:
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


def freeze_vision(model, config: SFTConfig) -> None:
    """Freeze the vision tower (keeping the merger trainable when `train_merger`), or leave it trainable."""
    if not config.freeze_vision:
        return
    from thyme.train.trainer import vision_module

    for name, param in vision_module(model).named_parameters():
        param.requires_grad = config.train_merger and name.startswith("merger.")


def lora_config(config: SFTConfig):
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
