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

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thyme.config import ConfigError, to_plain
from thyme.train.common import (
    TrainingClock,
    check_run,
    freeze_vision,
    lora_config,
    save_final,
    trainer_arguments,
)
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
    """Everything that can be checked without loading the model; returns the checkpoint to resume from
    (ConfigError, one line naming the key, otherwise)."""
    return check_run(config, RESULT_FILE, (("data", config.data), ("eval_data", config.eval_data)))


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
    if config.aux is not None:
        check_aux_classes(config.aux, [train] + ([evaluation] if evaluation else []))
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


def check_aux_classes(aux, sets) -> None:
    """Refuse, before the model loads, data whose region classes the auxiliary head cannot hold."""
    largest = max(s.max_region_label for s in sets)
    if largest >= aux.classes:
        raise ConfigError(
            f"the data has auxiliary region class {largest} but aux.classes={aux.classes}; "
            f"set aux.classes to at least {largest + 1} (classes count 0 = nothing)"
        )


def run_sft(config: SFTConfig, *, progress=None) -> SFTResult:
    """Train as `config` says and save the final model; see the module docstring."""
    started = time.perf_counter()
    prepared = prepare_sft(config, progress=progress)
    trainer, train, processor, resume = prepared.trainer, prepared.train, prepared.processor, prepared.resume
    device = "cpu" if trainer.args.use_cpu else str(trainer.args.device)
    log.info("training on %s (%d samples, %d left out)", device, train.size, len(train.dropped))
    clock = TrainingClock(resume, started)
    trainer.add_callback(clock.callback())
    output = trainer.train(resume_from_checkpoint=resume)
    minutes = clock.minutes()
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
    out = save_final(trainer, processor, config, RESULT_FILE, summary, preset=trained_preset(config))
    return SFTResult(
        output_dir=out,
        steps=output.global_step,
        samples=train.size,
        dropped=len(train.dropped),
        train_loss=output.training_loss,
        minutes=minutes,
        log_history=list(trainer.state.log_history),
    )


def trained_preset(config: SFTConfig) -> str | None:
    """The prompt preset the samples were rendered in, when every source names the same one."""
    named = {source.preset for source in config.data}
    return next(iter(named)) if len(named) == 1 and None not in named else None


def trl_arguments(config: SFTConfig):
    """TRL's `SFTConfig` for our run: our collator and dataset as they are, machinery from the config."""
    import trl

    evaluate = bool(config.eval_data)
    return trl.SFTConfig(
        **trainer_arguments(config),
        per_device_eval_batch_size=config.batch_size,
        adam_beta2=config.adam_beta2,
        eval_strategy=("steps" if config.eval_steps else "epoch") if evaluate else "no",
        eval_steps=config.eval_steps,
        dataloader_num_workers=config.dataloader_workers,
        train_sampling_strategy=(
            "sequential"
            if config.keep_modalities_apart
            else "group_by_length"
            if config.group_by_length
            else "random"
        ),
        # Our dataset holds whole samples and our collator makes the labels (the reference's masks), so
        # TRL must neither tokenise, truncate, pack nor drop the "sample" column (nor any: common args).
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        packing=False,
        assistant_only_loss=False,
        completion_only_loss=False,
    )
