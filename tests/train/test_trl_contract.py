"""The private TRL seams thyme's trainers rely on, pinned: an upgrade that changes one fails here, loudly.

TRL's private method signatures changed in most minor releases from 1.0 to 1.16, so `pyproject.toml` pins
`trl>=1.16,<1.17` and this file names every seam `ThymeSFTTrainer` and `ThymeGRPOTrainer` use.
"""

from __future__ import annotations

import inspect

import trl
from trl import GRPOTrainer, SFTTrainer


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_trl_is_the_pinned_minor_release():
    assert trl.__version__.startswith("1.16."), trl.__version__


def test_grpo_seams():
    assert params(GRPOTrainer._generate_and_score_completions) == ["self", "inputs"]
    assert params(GRPOTrainer._calculate_rewards) == [
        "self",
        "inputs",
        "prompts",
        "completions",
        "completion_ids_list",
    ]
    assert params(GRPOTrainer._compute_loss) == ["self", "model", "inputs"]
    logps = params(GRPOTrainer._get_per_token_logps_and_entropies)
    assert logps[:5] == ["self", "model", "input_ids", "attention_mask", "logits_to_keep"]
    for name in ("batch_size", "pixel_values", "image_grid_thw", "num_images", "mm_token_type_ids"):
        assert name in logps
    assert params(GRPOTrainer._prepare_inputs) == ["self", "generation_batch"]
    source = inspect.getsource(GRPOTrainer._compute_loss)
    for key in (
        "prompt_ids",
        "prompt_mask",
        "completion_ids",
        "completion_mask",
        "tool_mask",
        "advantages",
        "old_per_token_logps",
        "ref_per_token_logps",
        "num_items_in_batch",
        "mm_token_type_ids",
    ):
        assert f'"{key}"' in source, f"_compute_loss no longer reads {key}"
    for attribute in ("_pending_extra_logs", "_pending_metrics", "_metrics", "_logs"):
        assert attribute in inspect.getsource(GRPOTrainer.__init__)


def test_sft_seams():
    assert params(SFTTrainer.compute_loss) == [
        "self",
        "model",
        "inputs",
        "return_outputs",
        "num_items_in_batch",
    ]
    assert params(SFTTrainer.create_optimizer) == ["self", "model"]
    assert params(SFTTrainer.get_decay_parameter_names) == ["self", "model"]
    assert params(SFTTrainer.get_optimizer_cls_and_kwargs)[:2] == ["args", "model"]
    assert "fused_lm_head=True" in inspect.getsource(SFTTrainer.compute_loss)
    assert "_metrics" in inspect.getsource(SFTTrainer.compute_loss)


def test_unwrap_for_generation_and_utils():
    from trl.models import unwrap_model_for_generation
    from trl.trainer.utils import nanstd

    assert params(unwrap_model_for_generation)[:2] == ["model", "accelerator"]
    assert "gather_deepspeed3_params" in params(unwrap_model_for_generation)
    assert params(nanstd)[0] == "tensor"


def test_colocated_vllm_seams():
    """What thyme.train.vllm_rollouts uses of TRL's colocated vLLM (importable without vLLM)."""
    from trl.generation.vllm_generation import VLLMGeneration

    assert params(VLLMGeneration.sync_weights) == ["self"]
    source = inspect.getsource(VLLMGeneration)
    for attribute in ("self.llm = LLM(", "self.enable_sleep_mode", "self._llm_weights_sleeping", "self.mode"):
        assert attribute in source, attribute
    # server mode (ServerRollouts): where the server is, and that sync_weights pushes to it
    for attribute in ("self.server_base_url", "self.server_host", "self.server_port"):
        assert attribute in source, attribute
    assert "self.vllm_client.update_named_params(" in inspect.getsource(VLLMGeneration.sync_weights)
    assert 'self.llm.wake_up(tags=["weights"])' in inspect.getsource(VLLMGeneration.sync_weights)
    trainer_init = inspect.getsource(GRPOTrainer.__init__)
    assert "self.vllm_generation = VLLMGeneration(" in trainer_init
    assert "self._last_loaded_step = -1" in trainer_init
    assert "self.eos_token_ids = " in trainer_init
    # TRL's trainer reads the engine's context length where we do
    assert "self.vllm_generation.llm.llm_engine.model_config.max_model_len" in inspect.getsource(GRPOTrainer)
