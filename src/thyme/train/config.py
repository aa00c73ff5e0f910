"""The SFT config: one frozen, validated dataclass; YAML and `--set` fill it (`thyme.config.load_config`).

    thyme train sft configs/sft/tiny-cpu.yaml --set learning_rate=3e-4 --set max_steps=50

Defaults are the reference's recipe where it has one (REFERENCE.md section 5, and its ms-swift defaults):
full fine-tune, vision tower and merger frozen, max length 10240, lr 1e-5 cosine with 5% warmup, weight
decay 0.1, Adam beta2 0.95, 3 epochs, sandbox output masked, only the last round trained. The
computation-annealing stage is a second config (`model` = the first stage's output, lr 1e-6,
`keep_modalities_apart: true`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from thyme.train.masks import MaskConfig


@dataclass(frozen=True)
class DataSource:
    """One training data source.

    path:     our JSONL (or a directory of it, shard files included), a `thyme synth` directory, or saved
              trajectories (`thyme.data.sample.read_samples` reads them all).
    variants: for `thyme synth` rows, which samples to take: gold (code) and/or direct (no code).
    preset:   for `thyme synth` rows, the tool-using prompt preset (default: "default"); direct samples take
              its direct counterpart. When every source names the same preset, the trained model's
              `thyme.json` records it, so the agent asks that model in the prompt it learned.
    limit:    take at most this many samples from the source (None: all).
    repeat:   how many times the source's samples appear per epoch (mixing weights).
    """

    path: str
    variants: tuple[Literal["gold", "direct"], ...] = ("gold",)
    preset: str | None = None
    limit: int | None = None
    repeat: int = 1

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("data path is empty; give a sample file or directory")
        if not self.variants:
            raise ValueError(f"data {self.path}: variants is empty; use [gold], [direct] or [gold, direct]")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data {self.path}: limit={self.limit} must be >= 1 (or null for all)")
        if self.repeat < 1:
            raise ValueError(f"data {self.path}: repeat={self.repeat} must be >= 1")


@dataclass(frozen=True)
class LoraSettings:
    """PEFT LoRA on the language model's linear layers (the vision tower stays as `freeze_vision` says)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r={self.r} must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout={self.dropout} must be in [0, 1)")


@dataclass(frozen=True)
class AuxLoss:
    """The per-patch auxiliary vision loss: a linear head on the merged vision tokens predicts each token's
    class from the samples' regions (0 = nothing there). What lets a small model learn to see small things
    (DESIGN.md: plain SFT stays at chance, with this loss it learns)."""

    classes: int
    weight: float = 1.0
    background_weight: float = 0.2

    def __post_init__(self) -> None:
        if self.classes < 2:
            raise ValueError(f"aux.classes={self.classes}: count 'nothing' plus at least one class (>= 2)")
        if self.weight <= 0 or self.background_weight <= 0:
            raise ValueError("aux.weight and aux.background_weight must be > 0")


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning on TRL's `SFTTrainer` (see the README, "Training" for every key)."""

    model: str
    output_dir: str
    data: tuple[DataSource, ...]
    eval_data: tuple[DataSource, ...] = ()
    # -- what is trained
    finetune: Literal["full", "lora"] = "full"
    lora: LoraSettings = field(default_factory=LoraSettings)
    freeze_vision: bool = True
    train_merger: bool = False
    mask_sandbox: bool = True
    only_last_round: bool = True
    aux: AuxLoss | None = None
    # -- sequences
    max_length: int = 10240
    min_pixels: int | None = None
    max_pixels: int | None = None
    keep_modalities_apart: bool = False
    group_by_length: bool = False
    # -- optimisation
    learning_rate: float = 1e-5
    vision_lr_scale: float = 1.0
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.1
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 1
    grad_accum: int = 1
    seed: int = 0
    # -- machinery
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    deepspeed: str | None = None
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    eval_steps: int | None = None
    report_to: tuple[str, ...] = ("auto",)
    resume: str = "auto"
    dataloader_workers: int = 0

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data is empty; list at least one sample file or directory")
        positive = ("max_length", "batch_size", "grad_accum", "logging_steps", "save_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")
        if self.vision_lr_scale <= 0:
            raise ValueError(f"vision_lr_scale={self.vision_lr_scale} must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.epochs <= 0 and self.max_steps < 1:
            raise ValueError("train for epochs > 0 or max_steps >= 1")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels={self.min_pixels} is above max_pixels={self.max_pixels}")
        if self.group_by_length and self.keep_modalities_apart:
            raise ValueError("group_by_length and keep_modalities_apart both order the batches; choose one")
        if self.aux is not None and self.freeze_vision:
            raise ValueError("aux trains the vision tower: set freeze_vision: false with it")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ValueError(f"eval_steps={self.eval_steps} must be >= 1 (or null: evaluate per epoch)")
        if self.dataloader_workers < 0:
            raise ValueError(f"dataloader_workers={self.dataloader_workers} must be >= 0")

    @property
    def masks(self) -> MaskConfig:
        return MaskConfig(mask_sandbox=self.mask_sandbox, only_last_round=self.only_last_round)
