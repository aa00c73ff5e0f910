"""GRPO-ATS on TRL with rollouts from the agent loop: the rollout tensors, advantages, TRL's loss against
hand-computed values, ATS in the rollouts, and `train()` steps with sandbox images in the forward pass."""

from __future__ import annotations

import random

import pytest
import torch

from thyme.agent.events import ModelText
from thyme.train.advantages import group_advantages
from thyme.train.masks import SANDBOX
from thyme.train.rollout import RolloutFacts, encode_rollouts


def test_rollout_tensors_mask_the_sandbox_and_carry_every_image(scripted_generation):
    backend, traj, fed = scripted_generation
    encoder = backend.encoder
    batch = encode_rollouts([traj, traj], encoder, pad_id=0)
    out = batch.tensors()
    assert next(iter(out)) == "prompt_ids"  # TRL's split reads the first key
    example = batch.examples[0]
    assert example.ids == fed  # exactly what the model was fed and generated
    completion_roles = example.roles[example.prompt_len :]
    loss = out["tool_mask"][0].tolist()[: len(completion_roles)]
    for role, token, keep in zip(completion_roles, example.ids[example.prompt_len :], loss, strict=True):
        assert keep == int(role != SANDBOX and token not in encoder.vision_ids)
    assert 0 in loss and 1 in loss
    merge = encoder.processor.image_processor.merge_size
    rows = int(out["image_grid_thw"].prod(-1).sum())
    assert rows == out["pixel_values"].shape[0]
    assert int(out["mm_token_type_ids"].sum()) * merge**2 == rows
    assert out["num_images"] == [2, 2]  # the user's image and the crop fed back inside the completion
    completion_types = out["mm_token_type_ids"][0, out["prompt_ids"].shape[1] :]
    assert int(completion_types.sum()) > 0  # image tokens inside the completion
    assert out["completion_mask"][0].sum() == len(completion_roles)
    facts = RolloutFacts.of(traj)
    assert (facts.code_calls, facts.code_errors, facts.steps, facts.reason) == (1, 0, 2, "answer")


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 2.0, 2.0])
    adv = group_advantages(rewards, 2)
    std = (0.5**2 * 2) ** 0.5  # Bessel-corrected std of [1, 0]
    assert adv.tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.0, 0.0])
    assert group_advantages(rewards, 2, "none").tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    batch_std = torch.tensor([1.0, 0.0, 2.0, 2.0]).std().item()
    assert group_advantages(rewards, 2, "batch").tolist() == pytest.approx(
        [0.5 / (batch_std + 1e-4), -0.5 / (batch_std + 1e-4), 0, 0], rel=1e-5
    )
    with_nan = group_advantages(torch.tensor([1.0, float("nan"), 0.0, 1.0]), 2)
    assert with_nan[1] == 0 and not torch.isnan(with_nan).any()
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(rewards, 3)


def random_reward(prompts, completions, **kwargs):
    return [random.random() for _ in completions]


def make_trainer(model_dir, sandbox, tmp_path, reward=random_reward, **overrides):
    import datasets
    from transformers import AutoModelForImageTextToText

    from thyme.models.encoding import Encoder
    from thyme.models.processor import load_processor
    from thyme.train.config import DataSource
    from thyme.train.grpo import ThymeGRPOTrainer
    from thyme.train.grpo_config import GRPOConfig
    from thyme.train.grpo_run import agent_config, trl_grpo_arguments

    settings = dict(
        model=str(model_dir),
        output_dir=str(tmp_path / "out"),
        data=(DataSource("unused"),),
        max_steps=2,
        batch_size=4,
        grad_accum=1,
        num_generations=2,
        learning_rate=1e-3,
        max_new_tokens=96,
        max_turns=3,
        report_to=("none",),
        device="cpu",
        beta=0.0,
        save_steps=1000,
    )
    settings.update(overrides)
    cfg = GRPOConfig(**settings)
    processor = load_processor(model_dir, padding_side="left")
    return ThymeGRPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(model_dir),
        reward_funcs=[reward],
        args=trl_grpo_arguments(cfg),
        train_dataset=datasets.Dataset.from_list(
            [
                {"prompt": q, "question": q, "image": str(tmp_path / "unused.png"), "answer": a}
                for q, a in [("What is six times seven?", "42"), ("Zoom in on the corner.", "red")] * 2
            ]
        ),
        processing_class=processor,
        agent_config=agent_config(cfg),
        sandbox=sandbox,
        encoder=Encoder(processor),
    )


@pytest.fixture
def rows(images):
    return [
        {"prompt": q, "question": q, "image": str(images[0]), "answer": a}
        for q, a in [("What is six times seven?", "42")] * 2 + [("Zoom in on the corner.", "red")] * 2
    ]


def test_rollouts_decode_code_greedily_and_the_ablation_does_not(
    scripted_model, train_sandbox, tmp_path, rows
):
    trainer = make_trainer(scripted_model, train_sandbox, tmp_path)
    trajectories = trainer._rollouts(rows)
    assert [t.answer for t in trajectories] == ["42", "42", "red", "red"]
    steps = [e for t in trajectories for e in t.events if isinstance(e, ModelText)]
    with_code = [e for e in steps if "<code>" in e.text]
    assert with_code and all(e.code_greedy for e in with_code)
    fixed = make_trainer(scripted_model, train_sandbox, tmp_path / "fixed", code_temperature=None)
    fixed_steps = [e for t in fixed._rollouts(rows) for e in t.events if isinstance(e, ModelText)]
    assert not any(e.code_greedy for e in fixed_steps)


def test_trl_loss_on_a_two_sample_group_by_hand(scripted_generation, scripted_model, train_sandbox, tmp_path):
    """dapo loss with clipping and k3 KL (TRL's, bias-corrected by the ratio), computed here by hand."""
    _, traj, _ = scripted_generation
    trainer = make_trainer(scripted_model, train_sandbox, tmp_path, beta=0.05, epsilon=0.2)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop otherwise
    inputs = encode_rollouts([traj, traj], trainer.encoder, pad_id=trainer._pad_id).tensors()
    mask = (inputs["completion_mask"] * inputs["tool_mask"]).float()
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    vision = {k: inputs[k] for k in ("pixel_values", "image_grid_thw", "num_images", "mm_token_type_ids")}
    with torch.no_grad():
        logp = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, attention, inputs["completion_ids"].size(1), **vision
        )[0]
    shift = torch.linspace(-0.5, 0.5, logp.shape[1]).expand_as(logp)  # ratios inside and outside the clip
    inputs["old_per_token_logps"] = logp - shift
    inputs["ref_per_token_logps"] = logp - 0.1
    inputs["advantages"] = torch.tensor([1.0, -1.0])
    inputs["num_items_in_batch"] = mask.sum()
    loss = trainer._compute_loss(trainer.model, inputs)

    ratio = torch.exp(shift)
    clipped = ratio.clamp(1 - 0.2, 1 + 0.2)
    adv = inputs["advantages"].unsqueeze(1)
    policy = -torch.minimum(ratio * adv, clipped * adv)
    delta = -0.1
    kl = torch.exp(torch.tensor(delta)) - delta - 1
    per_token = policy + 0.05 * kl * ratio
    expected = (per_token * mask).sum() / mask.sum()
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)
    assert float(torch.clamp(ratio, 0.8, 1.2).ne(ratio).float().mean()) > 0.2  # the clip mattered


def test_train_steps_with_sandbox_images_in_the_forward(scripted_model, train_sandbox, tmp_path, rows):
    import datasets

    trainer = make_trainer(scripted_model, train_sandbox, tmp_path)
    trainer.train_dataset = datasets.Dataset.from_list(rows)
    forwards = []
    model = trainer.model

    def spy(module, args, kwargs):
        if kwargs.get("pixel_values") is not None and model.training:
            merge = trainer.encoder.processor.image_processor.merge_size
            rows_ = int(kwargs["image_grid_thw"].prod(-1).sum())
            assert rows_ == kwargs["pixel_values"].shape[0]
            assert int(kwargs["mm_token_type_ids"].sum()) * merge**2 == rows_
            forwards.append(kwargs["image_grid_thw"].shape[0] / kwargs["input_ids"].shape[0])

    model.register_forward_pre_hook(spy, with_kwargs=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    assert forwards and max(forwards) > 1  # rows carried the user's image and the crop fed back
    changed = sum(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters())
    assert changed > 0
    logged = [h for h in trainer.state.log_history if "tools/code_call_rate" in h]
    assert len(logged) == 2
    assert all(h["tools/code_call_rate"] == 1.0 and h["tools/execution_success"] == 1.0 for h in logged)
    assert trainer.rollout_seconds > 0
    assert not trainer._artifacts.exists()  # the fed-back images' folder goes with the run
