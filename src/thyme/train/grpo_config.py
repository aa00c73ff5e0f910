"""The GRPO-ATS config: one frozen, validated dataclass; YAML and `--set` fill it (`thyme.config`).

    thyme train grpo configs/grpo/tiny-cpu.yaml --set max_steps=20

Defaults are the reference's run where it has one (REFERENCE.md section 3): 4 rollouts per prompt, up to 4
generation rounds, text at temperature 1.0 (top-p 0.9, top-k 50, repetition penalty 1.05) and code greedy
(ATS), log-probs at temperature 1, advantage (r - mean) / (std + 1e-4) per group, PPO clip 0.2, KL k3 with
beta 0.01, lr 5e-7 cosine (3% warmup), 2 epochs, batch 1 x 5 accumulation steps per device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from thyme.rewards.combine import RewardConfig
from thyme.train.config import DataSource, LoraSettings


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO-ATS on TRL's `GRPOTrainer`, rollouts from `thyme.agent` (README, "Training (GRPO-ATS)").

    data:      prompts: any source `read_samples` reads (Thyme-RL conversions, `thyme synth` directories...);
               each sample needs an answer, an image and its plain question (`meta.question`).
    reward:    a registered reward (`thyme.rewards`); "thyme" is r = result x (1 + 0.5 consistency) +
               0.5 format, its weights and the optional judge in `rewards` (`rewards.judge.url`,
               `rewards.judge.model`: an OpenAI-compatible judge for the accuracy fallback and consistency;
               without one the rule-based path runs and consistency is off).
    code_temperature: 0.0 = ATS (code greedy); null = one fixed temperature everywhere (the ablation).
    preset:    the rollouts' prompt preset; null = the model's (`thyme.json` of a model trained in one preset,
               else "default"). The saved model records it.
    """

    model: str
    output_dir: str
    data: tuple[DataSource, ...]
    # -- rewards
    reward: str = "thyme"
    rewards: RewardConfig = field(default_factory=RewardConfig)
    # -- rollouts
    num_generations: int = 4
    max_turns: int = 4
    max_new_tokens: int = 2048
    temperature: float = 1.0
    code_temperature: float | None = 0.0
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.05
    repetition_threshold: float | None = 0.5
    preset: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    sandbox_timeout_s: float = 30.0
    code_call_floor: float = 0.05
    # -- what is trained
    finetune: Literal["full", "lora"] = "full"
    lora: LoraSettings = field(default_factory=LoraSettings)
    freeze_vision: bool = True
    train_merger: bool = False
    # -- optimisation (TRL's GRPO)
    learning_rate: float = 5e-7
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    epochs: float = 2.0
    max_steps: int = -1
    batch_size: int = 1
    grad_accum: int = 5
    beta: float = 0.01
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: int = 1
    seed: int = 0
    # -- machinery
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    deepspeed: str | None = None
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = 0.3
    vllm_max_model_len: int | None = None
    vllm_enable_sleep_mode: bool = False
    # vllm_mode: server: the `vllm serve` node TRL pushes the weights to (README, "vLLM rollouts")
    vllm_server_base_url: str | None = None
    vllm_server_timeout: float = 240.0
    vllm_group_port: int = 51216
    logging_steps: int = 1
    save_steps: int = 100
    save_total_limit: int | None = 2
    report_to: tuple[str, ...] = ("auto",)
    resume: str = "auto"

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data is empty; list at least one source of prompts")
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations={self.num_generations}: a group needs >= 2 rollouts per prompt"
            )
        for name in (
            "max_turns",
            "max_new_tokens",
            "batch_size",
            "grad_accum",
            "num_iterations",
            "save_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: GRPO samples text; use a temperature > 0")
        if self.code_temperature is not None and self.code_temperature < 0:
            raise ValueError(f"code_temperature={self.code_temperature} must be >= 0 (0 = greedy) or null")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")
        if self.beta < 0 or self.epsilon <= 0:
            raise ValueError("beta must be >= 0 and epsilon > 0")
        if not 0 <= self.code_call_floor < 1:
            raise ValueError(f"code_call_floor={self.code_call_floor} must be in [0, 1)")
        if self.use_vllm and self.vllm_mode == "server":
            url = self.vllm_server_base_url or ""
            if not url.startswith(("http://", "https://")):
                raise ValueError(
                    "vllm_mode: server needs vllm_server_base_url, the vLLM server's root URL "
                    "(e.g. http://gpu-node-9:8000, without /v1)"
                )
        if self.vllm_server_timeout <= 0:
            raise ValueError(f"vllm_server_timeout={self.vllm_server_timeout} must be > 0 seconds")
        if self.epochs <= 0 and self.max_steps < 1:
            raise ValueError("train for epochs > 0 or max_steps >= 1")
