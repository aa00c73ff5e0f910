"""GRPO rollouts on vLLM, colocated with training or on a `vllm serve` node: TRL's engine and weight sync,
the agent loop's backends.

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
its own prompts (data parallel), as TRL does at `vllm_tensor_parallel_size: 1`.

With `vllm_mode: server` the engine is a separate `vllm serve` node (TRL 1.16 talks to plain `vllm serve`,
started with `--weight-transfer-config '{"backend": "nccl"}'`): TRL's `VLLMClient` joins it over NCCL and
`sync_weights` broadcasts the weights there before each step's rollouts; the rollouts themselves reach it as
any OpenAI client would, through `thyme.agent.backends.openai.OpenAIBackend` (the assistant turn continued
with `continue_final_message`, ATS as text and code legs), every training process sending its own prompts
and the server batching them all. The server sees the images at its own processor settings, so start it
with `--mm-processor-kwargs` holding the run's `min_pixels`/`max_pixels` and `--limit-mm-per-prompt` above
the loop's image budget (README, "vLLM rollouts").

Private TRL seams used, pinned in tests/train/test_trl_contract.py: `trainer.vllm_generation` with `llm`,
`sync_weights()`, `enable_sleep_mode`, `_llm_weights_sleeping`, `mode`, `server_base_url`, `server_host`,
`server_port`; `trainer._last_loaded_step`.
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
        # a level-2 sleep dropped the weights; TRL's sync wakes them first in sleep mode
        sync_for_step(generation, trainer, force=bool(getattr(generation, "_llm_weights_sleeping", False)))
        if generation.enable_sleep_mode:
            generation.llm.wake_up(tags=["kv_cache"])
        try:
            yield self.backend
        finally:
            if generation.enable_sleep_mode:
                generation.llm.sleep(level=2)
                generation._llm_weights_sleeping = True


def sync_for_step(generation: Any, trainer: Any, *, force: bool = False) -> None:
    """TRL's `sync_weights` when the optimizer step changed since the last push (or when `force`d), as
    TRL's own generation path does; every process calls it (ZeRO-3 gathers the weights collectively)."""
    if force or trainer.state.global_step != trainer._last_loaded_step:
        generation.sync_weights()
        trainer._last_loaded_step = trainer.state.global_step


class ServerRollouts:
    """The OpenAI backend over the `vllm serve` node of TRL's server mode, kept in step with the policy.

    generation: TRL's `VLLMGeneration` (`trainer.vllm_generation`), mode "server".
    preset: the rollouts' prompt preset. timeout_s: one HTTP exchange's limit (TRL's `vllm_server_timeout`).
    The served model's name is read from the server's `/v1/models`.
    """

    def __init__(self, generation: Any, *, preset: str, timeout_s: float = 240.0) -> None:
        from thyme.agent.backends.openai import OpenAIBackend

        if getattr(generation, "mode", None) != "server":
            raise ValueError(f"server rollouts need TRL's vLLM server mode, not {generation.mode!r}")
        root = generation.server_base_url or f"http://{generation.server_host}:{generation.server_port}"
        self.generation = generation
        self.base_url = root.rstrip("/") + "/v1"
        probe = OpenAIBackend("?", base_url=self.base_url, timeout_s=timeout_s, max_retries=2)
        try:
            served = probe.served_models()
        finally:
            probe.close()
        if not served:
            raise RuntimeError(f"the vLLM server at {root} serves no model")
        self.backend = OpenAIBackend(
            served[0],
            base_url=self.base_url,
            timeout_s=timeout_s,
            continuation="always",  # vLLM continues the assistant turn; ATS needs it
            default_preset=preset,
        )

    @contextlib.contextmanager
    def ready(self, trainer: Any) -> Iterator[Any]:
        """The backend, with the server holding the weights of `trainer.state.global_step`."""
        sync_for_step(self.generation, trainer)
        yield self.backend

    def close(self) -> None:
        self.backend.close()
