"""Running GRPO-ATS: config checks, the prompt set, the trainer, the final model.

    result = run_grpo(load_config(GRPOConfig, "configs/grpo/tiny-cpu.yaml", ["max_steps=20"]))

Everything checkable is checked before the model loads (paths, batch arithmetic, the reward's name, the
precision this machine can do). The prompt set holds one row per sample: its plain question
(`meta.question`), its first image, its answer; the agent loop renders the prompt in `preset`, as
`thyme eval` and `thyme run` do, so a policy is trained on the prompt it is evaluated with. The final
`output_dir` loads like any checkpoint and holds `thyme_grpo.json` (the config, the reward and tool-use curve
per step, the minutes spent in rollouts and in updates).
"""

from __future__ import annotations

import itertools
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
from thyme.train.grpo_config import GRPOConfig

log = logging.getLogger(__name__)

RESULT_FILE = "thyme_grpo.json"


@dataclass
class GRPOResult:
    output_dir: Path
    steps: int
    prompts: int
    minutes: float
    rollout_minutes: float
    log_history: list[dict[str, Any]]


def check_grpo(config: GRPOConfig) -> str | None:
    """Checks that need no model; returns the checkpoint to resume from (ConfigError otherwise)."""
    from thyme.rewards import reward_names

    if config.use_vllm:
        check_vllm(config)
    if config.reward not in reward_names():
        names = ", ".join(reward_names())
        raise ConfigError(f"reward: {config.reward!r} is not registered; choose one of {names}")
    return check_run(config, RESULT_FILE)


def check_vllm(config: GRPOConfig) -> None:
    """`use_vllm: true` needs vLLM on a CUDA GPU, installed in the range TRL supports (ConfigError saying
    what to change). In server mode too: TRL pushes the weights to the server over vLLM's NCCL engine."""
    import importlib.metadata
    import importlib.util

    if config.device == "cpu":
        raise ConfigError("use_vllm: true needs a CUDA GPU; on the CPU set use_vllm: false")
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "use_vllm: true but vLLM is not installed: pip install 'thyme-vl[vllm]' (Linux, CUDA GPU), "
            "or set use_vllm: false"
        )
    check_vllm_version(importlib.metadata.version("vllm"))


VLLM_RANGE = ("0.22.0", "0.31.0")  # what TRL 1.16 supports (pyproject.toml's `vllm` extra)


def check_vllm_version(version: str) -> None:
    """A ConfigError unless `version` is in the range TRL supports (TRL itself only warns)."""
    from packaging.version import Version

    low, high = VLLM_RANGE
    if not Version(low) <= Version(Version(version).base_version) <= Version(high):
        raise ConfigError(
            f"vLLM {version} is installed; GRPO rollouts need vLLM {low} to {high} (the range TRL 1.16 "
            f"supports): pip install 'thyme-vl[vllm]'"
        )


def prompt_rows(config: GRPOConfig) -> list[dict[str, Any]]:
    """The prompt set: question, image, answer (and choices) of every sample of every source."""
    from thyme.data.sample import SampleError, read_samples

    rows = []
    for source in config.data:
        samples = read_samples(source.path, toyworld_variants=source.variants[:1], preset=source.preset)
        for sample in itertools.islice(samples, source.limit):
            question = sample.meta.get("question")
            images = sample.images
            if not question or sample.answer is None or not images:
                raise SampleError(
                    f"{source.path}: sample {sample.id} lacks a plain question (meta.question), an answer "
                    "or an image; GRPO prompts need all three"
                )
            row = {
                "prompt": question,
                "question": question,
                "image": str(images[0]),
                "answer": str(sample.answer),
                "id": sample.id,
            }
            rows.extend([row] * source.repeat)
    if not rows:
        raise SampleError("no prompt to train on: every data source is empty")
    return rows


def trl_grpo_arguments(config: GRPOConfig):
    """TRL's `GRPOConfig` for our run."""
    import trl

    return trl.GRPOConfig(
        **trainer_arguments(config),
        num_generations=config.num_generations,
        # Log-probs at temperature 1 for every token (ATS samples code greedily in the rollouts).
        temperature=1.0,
        beta=config.beta,
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        num_iterations=config.num_iterations,
        max_completion_length=config.max_new_tokens * config.max_turns,
        # vLLM only as the rollouts' engine (thyme.train.vllm_rollouts): colocated, one engine per GPU, or a
        # `vllm serve` node; no importance-sampling correction (no sampling log-probs are used; see
        # thyme.train.grpo).
        use_vllm=config.use_vllm,
        vllm_mode=config.vllm_mode,
        vllm_server_base_url=config.vllm_server_base_url,
        vllm_server_timeout=config.vllm_server_timeout,
        vllm_group_port=config.vllm_group_port,
        vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        vllm_max_model_length=config.vllm_max_model_len,
        vllm_tensor_parallel_size=1,
        vllm_enable_sleep_mode=config.vllm_enable_sleep_mode,
        vllm_importance_sampling_correction=False,
    )


def rollout_preset(config: GRPOConfig) -> str:
    """The prompt preset of the rollouts: the config's, or the one the model was trained with."""
    from thyme.agent.backends.base import model_preset

    return config.preset or model_preset(config.model)


def agent_config(config: GRPOConfig):
    """The rollouts' `AgentConfig`: ATS sampling, the turn budget, errors fed back, no fallback."""
    from thyme.agent import AgentConfig, SamplingParams

    sampling = SamplingParams(
        temperature=config.temperature,
        code_temperature=config.code_temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        repetition_penalty=config.repetition_penalty,
        max_new_tokens=config.max_new_tokens,
    )
    return AgentConfig(
        preset=rollout_preset(config),
        max_steps=config.max_turns,
        on_error="feedback",
        fallback=False,
        kv_reuse=False,
        sampling=sampling,
        repetition_threshold=config.repetition_threshold,
    )


def build_reward(config: GRPOConfig):
    """The TRL reward function `config.reward` names: "thyme" with `config.rewards`, or one part alone
    (given the judge `config.rewards.judge` describes, if any)."""
    from thyme.rewards import RewardJudge, reward_function

    if config.reward == "thyme":
        return reward_function("thyme", config.rewards)
    judge = config.rewards.judge
    return reward_function(config.reward, judge=RewardJudge.from_settings(judge) if judge else None)


def run_grpo(config: GRPOConfig) -> GRPOResult:
    """Train as `config` says and save the final model (see the module docstring)."""
    import datasets
    import torch
    from transformers import AutoModelForImageTextToText

    from thyme.models.encoding import Encoder
    from thyme.models.processor import load_processor
    from thyme.sandbox import Sandbox, SandboxConfig
    from thyme.train.grpo import ThymeGRPOTrainer

    resume = check_grpo(config)
    started = time.perf_counter()
    rows = prompt_rows(config)
    args = trl_grpo_arguments(config)
    generation_batch = config.batch_size * args.steps_per_generation * args.world_size
    if generation_batch % config.num_generations:
        raise ConfigError(
            f"batch_size x grad_accum x processes = {generation_batch} rollouts per generation batch, not a "
            f"multiple of num_generations={config.num_generations}; change one of them"
        )
    processor = load_processor(config.model, padding_side="left")
    encoder = Encoder(processor, min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(config.model, dtype=dtype)
    freeze_vision(model, config)
    reward = build_reward(config)
    with Sandbox(SandboxConfig(timeout_s=config.sandbox_timeout_s)) as sandbox:
        trainer = ThymeGRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=args,
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=processor,
            peft_config=lora_config(config),
            agent_config=agent_config(config),
            sandbox=sandbox,
            encoder=encoder,
            scale=config.scale_rewards,
            code_call_floor=config.code_call_floor,
        )
        clock = TrainingClock(resume, started)
        trainer.add_callback(clock.callback())
        output = trainer.train(resume_from_checkpoint=resume)
    minutes = clock.minutes()
    history = list(trainer.state.log_history)
    rollout_minutes = trainer.rollout_seconds / 60
    summary = {
        "config": to_plain(config),
        "prompts": len(rows),
        "steps": output.global_step,
        "minutes": minutes,
        "rollout_minutes": rollout_minutes,
        "log_history": history,
    }
    out = save_final(trainer, processor, config, RESULT_FILE, summary, preset=rollout_preset(config))
    return GRPOResult(out, output.global_step, len(rows), minutes, rollout_minutes, history)
