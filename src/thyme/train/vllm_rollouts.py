"""GRPO rollouts on vLLM colocated with training: TRL's engine and weight sync, the agent loop's backend.

With `use_vllm: true` (`vllm_mode: colocate`, TRL's `vllm_mode="colocate"`), TRL's `GRPOTrainer` starts one
`vllm.LLM` per training process (`trainer.vllm_generation.llm`, sharing the GPU at
`vllm_gpu_memory_utilization`). TRL's own generation path does not fit Thyme (see `thyme.train.grpo`), so
only its engine and its weight sync are used: before the rollouts of a new optimizer step the policy's
weights are pushed into the engine with TRL's `VLLMGeneration.sync_weights` (ZeRO-3 gathering, FSDP, PEFT
merging are TRL's), then `thyme.agent.backends.vllm.VLLMBackend` over that engine serves the agent loop's
rounds (`Agent.run_batch`: one batched `LLM.generate` per round; ATS as text and code legs).

With `vllm_enable_sleep_mode`, the engine sleeps (level 2, weights and KV cache released) between rollout
batches as in TRL: it wakes for the weights before the sync (a level-2 sleep discards them, so every
rollout batch after a sleep syncs again), for the KV cache before generating, and goes back to sleep after.

Tensor parallelism inside the colocated engine is refused: TRL's colocated TP gathers each group's prompts
into one engine call, which multi-round rollouts with per-rank sandboxes cannot follow. Each GPU rolls out
its own prompts (data parallel), as TRL does at `vllm_tensor_parallel_size: 1`. The `server` mode (a
separate `trl vllm-serve` engine) is not supported yet.

Private TRL seams used, pinned in tests/train/test_trl_contract.py: `trainer.vllm_generation` with `llm`,
`sync_weights()`, `enable_sleep_mode`, `_llm_weights_sleeping`; `trainer._last_loaded_step`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


def engine_image_limit(llm: Any, default: int) -> int:
    """Images per prompt the engine accepts (`limit_mm_per_prompt`), or `default` where it cannot say."""
    try:
        limits = llm.llm_engine.model_config.multimodal_config.limit_per_prompt
        value = limits.get("image") if isinstance(limits, dict) else None
        if isinstance(value, dict):  # newer vLLM: {"count": N, ...}
            value = value.get("count")
        return int(value) if value else default
    except (AttributeError, TypeError, ValueError):
        return default


class ColocatedRollouts:
    """The vLLM backend over a trainer's colocated engine, kept in step with the policy's weights.

    generation: TRL's `VLLMGeneration` (`trainer.vllm_generation`), mode "colocate".
    processor, model_config: the policy's processor and transformers config (vision ids, chat template).
    preset: the rollouts' prompt preset; pixel_bounds: {"min_pixels", "max_pixels"} the encoder uses, so the
    engine sees the images at the resolution the loss will.
    max_images: the user's image plus the loop's fed-back images (`AgentConfig.max_images` + 1).
    eos_token_ids: the ids that end a sequence (TRL's `trainer.eos_token_ids`).
    sampling_params_cls: `vllm.SamplingParams` (imported when None).
    """

    def __init__(
        self,
        generation: Any,
        processor: Any,
        model_config: Any,
        *,
        preset: str,
        pixel_bounds: dict[str, int | None],
        max_images: int,
        eos_token_ids: list[int] | None = None,
        model_id: str = "",
        sampling_params_cls: Any = None,
    ) -> None:
        from thyme.agent.backends.vllm import VLLMBackend

        if getattr(generation, "mode", "colocate") != "colocate":
            raise ValueError(f"vLLM rollouts run colocated only, not in {generation.mode!r} mode")
        if getattr(generation, "tensor_parallel_size", 1) != 1:
            raise ValueError(
                "vLLM rollouts need vllm_tensor_parallel_size 1 (each GPU rolls out its prompts)"
            )
        self.generation = generation
        llm = generation.llm
        limit = engine_image_limit(llm, max_images)
        if limit < max_images:
            log.warning(
                "the vLLM engine takes %d images per prompt; rollouts that feed back more end with 'context'",
                limit,
            )
        self.backend = VLLMBackend(
            llm,
            processor,
            model_config=model_config,
            max_model_len=llm.llm_engine.model_config.max_model_len,
            model_id=model_id,
            default_preset=preset,
            max_images=min(limit, max_images),
            min_pixels=pixel_bounds.get("min_pixels"),
            max_pixels=pixel_bounds.get("max_pixels"),
            eos_token_ids=eos_token_ids,
            sampling_params_cls=sampling_params_cls,
        )

    @contextlib.contextmanager
    def ready(self, trainer: Any) -> Iterator[Any]:
        """The backend, with the engine holding the weights of `trainer.state.global_step` and awake for
        generation; asleep again afterwards when sleep mode is on."""
        generation = self.generation
        sleeping = bool(getattr(generation, "_llm_weights_sleeping", False))
        if trainer.state.global_step != trainer._last_loaded_step or sleeping:
            generation.sync_weights()  # wakes the weights first in sleep mode (TRL)
            trainer._last_loaded_step = trainer.state.global_step
        if generation.enable_sleep_mode:
            generation.llm.wake_up(tags=["kv_cache"])
        try:
            yield self.backend
        finally:
            if generation.enable_sleep_mode:
                generation.llm.sleep(level=2)
                generation._llm_weights_sleeping = True
