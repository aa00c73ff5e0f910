"""`ThymeAgentLoop` inside verl 0.9.1, as verl's own CPU tests drive agent loops: no Ray, no GPU, a fake
server manager (here backed by the real scripted tiny model), plus the real `thyme sandbox serve`.

The path is verl's own: the loop is found in verl's registry by name, built by `hydra.utils.instantiate`
from a YAML entry with our options, run by `AgentLoopWorker._run_agent_loop`, and its output goes through
verl's `_agent_loop_postprocess` (padding, multi-modal inputs re-computed from our images, position ids).

verl pins transformers <5.11, so it lives in its own environment; where it is not installed this module is
skipped. To run it (torch named in the same command, so pip takes the CPU build):

    python -m venv .venv-verl
    .venv-verl/bin/pip install torch==2.13.0 -e '.[verl,dev]'
    .venv-verl/bin/python -m pytest tests/verl -q
"""

from __future__ import annotations

import asyncio
import types

import pytest

pytest.importorskip(
    "verl.experimental.agent_loop.agent_loop",
    reason="verl is not installed (it needs its own environment: see this module's docstring)",
)

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from verl.experimental.agent_loop import agent_loop as verl_agent_loop
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, AgentLoopWorker
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

import thyme.verl.agent_loop as thyme_agent_loop
from thyme.models.encoding import load_image

PROMPT_LENGTH, RESPONSE_LENGTH = 512, 512


def trainer_config(agent_yaml=None):
    return OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {
                    "prompt_length": PROMPT_LENGTH,
                    "response_length": RESPONSE_LENGTH,
                    "multi_turn": {"tool_config_path": None},
                    "agent": {"agent_loop_config_path": agent_yaml},
                },
                "model": {"path": "unused", "tokenizer_path": "unused"},
            },
            "data": {"apply_chat_template_kwargs": {}, "mm_processor_kwargs": {}},
        }
    )


@pytest.fixture
def verl_processor(verl_model_dir):
    """Our processor as verl prepares a Qwen2.5-VL one (`verl.utils.tokenizer.hf_processor`): the model's
    `get_rope_index` bound to it, so verl computes 3-D mRoPE positions."""
    from transformers import AutoConfig
    from transformers.models.qwen2_5_vl import Qwen2_5_VLModel

    from thyme.models.processor import load_processor

    processor = load_processor(str(verl_model_dir))
    processor.config = AutoConfig.from_pretrained(str(verl_model_dir))
    processor.get_rope_index = types.MethodType(Qwen2_5_VLModel.get_rope_index, processor)
    if hasattr(Qwen2_5_VLModel, "get_vision_position_ids"):
        processor.get_vision_position_ids = types.MethodType(
            Qwen2_5_VLModel.get_vision_position_ids, processor
        )
    return processor


def worker(config, server, processor):
    """An `AgentLoopWorker` without Ray: the attributes `_run_agent_loop` and its post-processing read."""
    w = object.__new__(AgentLoopWorker)
    w.config = config
    w.llm_client = server
    w.tokenizer = processor.tokenizer
    w.processor = processor
    w.hf_model_type = "qwen2_5_vl"
    w.dataset_cls = RLHFDataset
    w.tools = []
    w.rollout_config = config.actor_rollout_ref.rollout
    w.mm_processor_kwargs = {}
    w.reward_loop_worker_handles = None
    w.distillation_enabled = False
    return w


def row(image_path, question):
    image = Image.open(image_path).convert("RGB")
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}
    ]
    return {"raw_prompt": messages, "extra_info": {"index": 0}, "index": 0, "agent_name": "thyme"}


def test_registered_under_the_name_thyme():
    entry = verl_agent_loop._agent_loop_registry["thyme"]
    assert entry == {"_target_": "thyme.verl.agent_loop.ThymeAgentLoop"}
    assert thyme_agent_loop.ThymeAgentLoop.__mro__[1] is verl_agent_loop.AgentLoopBase


def test_rollout_through_verl_worker(verl_model_dir, verl_processor, sandbox_service, verl_image, tmp_path):
    from verl_model_server import ModelServerManager

    url, token_file = sandbox_service
    agent_yaml = tmp_path / "thyme_agent.yaml"
    agent_yaml.write_text(
        "- name: thyme\n"
        "  _target_: thyme.verl.agent_loop.ThymeAgentLoop\n"
        f"  sandbox_url: {url}\n"
        f"  sandbox_token_file: {token_file}\n"
        "  max_steps: 4\n"
    )
    config = trainer_config(str(agent_yaml))
    # What AgentLoopWorker.__init__ does with agent_loop_config_path: each entry into the registry.
    for entry in OmegaConf.load(agent_yaml):
        verl_agent_loop._agent_loop_registry[entry.name] = entry
    server = ModelServerManager(verl_model_dir, output_cls=TokenOutput)
    w = worker(config, server, verl_processor)
    sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": 1, "repetition_penalty": 1.0, "logprobs": True}
    trajectory = {"step": 0, "sample_index": 0, "rollout_n": 0, "validate": False}
    fields = row(verl_image, "Zoom in on the corner.")
    out = asyncio.run(w._run_agent_loop(sampling, trajectory, trace=False, **fields))

    # Padded as verl pads: prompt left, response right; the mask is zero on sandbox tokens and padding.
    prompt = out.prompt_ids[0][out.attention_mask[0, :PROMPT_LENGTH].bool()].tolist()
    n = int(out.attention_mask[0, PROMPT_LENGTH:].sum())
    response = out.response_ids[0, :n].tolist()
    mask = out.response_mask[0].tolist()
    text = verl_processor.tokenizer.decode(response)
    assert "<code>" in text and "<sandbox_output>" in text and text.endswith("<answer>red</answer>")
    assert 0 < sum(mask) < n and not any(mask[n:])
    assert verl_processor.tokenizer.decode(
        [t for t, m in zip(response, mask[:n], strict=True) if m]
    ).endswith("<answer>red</answer>")
    assert out.response_logprobs is not None and out.response_logprobs.shape == (1, RESPONSE_LENGTH)
    assert out.extra_fields["thyme_code_calls"] == 1 and out.extra_fields["thyme_answer"] == "red"
    assert out.num_turns == 4

    # The images verl re-processes are ours, in order, and give exactly the grids of the vision tokens.
    images = out.multi_modal_data["images"]
    assert len(images) == 2 and np.array_equal(np.asarray(images[0]), np.asarray(load_image(verl_image)))
    grids = out.multi_modal_inputs["image_grid_thw"]
    pad = verl_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = verl_processor.image_processor.merge_size
    assert int((torch.tensor(prompt + response) == pad).sum()) == int(grids.prod(dim=1).sum()) // merge**2
    assert out.multi_modal_inputs["pixel_values"].shape[0] == int(grids.prod(dim=1).sum())
    assert out.position_ids.shape == (1, 4, PROMPT_LENGTH + RESPONSE_LENGTH)  # text row + 3-D mRoPE rows
    rope = out.position_ids[0, 1:, out.attention_mask[0].bool()]  # [3, tokens]
    assert not torch.equal(rope[1], rope[2])  # image tokens got (height, width) positions: the grids line up

    # The last generate call was fed the sequence verl trains on (up to that call's own output).
    last = server.calls[-1]
    assert prompt + response == last.prompt_ids + last.token_ids[: len(prompt) + n - len(last.prompt_ids)]
    assert last.images == 2


def test_unknown_option_is_an_error_naming_it(verl_processor, verl_model_dir):
    import hydra
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap

    config = trainer_config()
    entry = OmegaConf.create(
        {
            "name": "thyme",
            "_target_": "thyme.verl.agent_loop.ThymeAgentLoop",
            "sandbox_url": "http://127.0.0.1:9",
            "max_stpes": 3,
        }
    )
    with pytest.raises(Exception, match="max_stpes"):
        hydra.utils.instantiate(
            config=entry,
            trainer_config=DictConfigWrap(config),
            server_manager=object(),
            tokenizer=verl_processor.tokenizer,
            processor=verl_processor,
            hf_model_type="qwen2_5_vl",
            dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(config.data),
            tools=ToolListWrap([]),
        )


def test_output_type_is_verls():
    assert AgentLoopOutput.model_fields.keys() >= {
        "prompt_ids",
        "response_ids",
        "response_mask",
        "response_logprobs",
        "multi_modal_data",
        "mm_processor_kwargs",
        "num_turns",
        "metrics",
        "extra_fields",
    }
