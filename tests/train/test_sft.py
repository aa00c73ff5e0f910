"""SFT on TRL with a real tiny Qwen2.5-VL: the loss falls, resume is exact, what is frozen stays frozen,
LoRA merges, the auxiliary vision loss and the vision learning rate act, and the final model loads."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from thyme.config import ConfigError
from thyme.train.config import AuxLoss, DataSource, SFTConfig
from thyme.train.sft import RESULT_FILE, prepare_sft, run_sft


def config(model, data, out, variants=("gold", "direct"), **kw) -> SFTConfig:
    base = dict(
        model=str(model),
        output_dir=str(out),
        data=(DataSource(str(data), variants=variants),),
        max_steps=4,
        batch_size=4,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        weight_decay=0.0,
        logging_steps=1,
        save_steps=100,
        report_to=("none",),
        max_length=2048,
        device="cpu",
    )
    base.update(kw)
    return SFTConfig(**base)


def losses(result) -> list[float]:
    return [h["loss"] for h in result.log_history if "loss" in h]


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_loss_falls_on_a_toy_world_set(tiny_model_dir, compute_data, tmp_path):
    result = run_sft(
        config(tiny_model_dir, compute_data, tmp_path / "out", max_steps=24, freeze_vision=False)
    )
    curve = losses(result)
    assert len(curve) == 24
    assert sum(curve[-4:]) / 4 < 0.5 * sum(curve[:4]) / 4, curve
    summary = json.loads((tmp_path / "out" / RESULT_FILE).read_text())
    assert summary["samples"] == 48 and summary["steps"] == 24 and summary["dropped_too_long"] == []


def test_resumed_run_matches_the_uninterrupted_one(tiny_model_dir, compute_data, tmp_path):
    kw = dict(max_steps=6, save_steps=3, freeze_vision=False)
    whole = run_sft(config(tiny_model_dir, compute_data, tmp_path / "whole", **kw))
    cut = tmp_path / "cut"
    run_sft(config(tiny_model_dir, compute_data, cut, **kw))
    # as if killed after step 3: the later checkpoint and the final model never got written
    import shutil

    shutil.rmtree(cut / "checkpoint-6")
    (cut / RESULT_FILE).unlink()
    (cut / "model.safetensors").unlink()
    # each checkpoint records the minutes so far; the resumed run counts on from there
    clock = cut / "checkpoint-3" / "thyme_clock.json"
    assert 0 < json.loads(clock.read_text())["minutes"] < 10
    clock.write_text(json.dumps({"minutes": 100.0}))
    resumed = run_sft(config(tiny_model_dir, compute_data, cut, **kw))
    assert 100 < resumed.minutes < 110
    assert losses(resumed) == pytest.approx(losses(whole), abs=1e-6)
    a, b = weights(tmp_path / "whole"), weights(cut)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def is_vision(key: str) -> bool:
    """A vision-tower weight, in either file layout transformers writes: `visual.*` (the hub's, as 5.25
    writes it) or `model.visual.*` (as 5.5.4 does)."""
    return key.startswith(("visual.", "model.visual."))


def test_frozen_vision_tower_and_merger_by_default(tiny_model_dir, compute_data, tmp_path):
    run_sft(config(tiny_model_dir, compute_data, tmp_path / "out"))
    before, after = weights(tiny_model_dir), weights(tmp_path / "out")
    assert set(before) == set(after)  # hub layout kept, nothing added
    vision = [k for k in before if is_vision(k)]
    language = [k for k in before if not is_vision(k)]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in language)


def test_lora_trains_the_language_model_and_merges(tiny_model_dir, compute_data, tmp_path):
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "lora"
    result = run_sft(config(tiny_model_dir, compute_data, out, finetune="lora", learning_rate=1e-2))
    assert losses(result)[-1] < losses(result)[0]
    before, after = weights(tiny_model_dir), weights(out)
    assert set(before) == set(after)  # merged: no adapter keys left
    assert all(torch.equal(before[k], after[k]) for k in before if is_vision(k))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed)
    AutoModelForImageTextToText.from_pretrained(out)  # loads as a plain checkpoint


def test_vision_learning_rate_scale_and_auxiliary_loss(tiny_model_dir, zoom_data, tmp_path):
    cfg = config(
        tiny_model_dir,
        zoom_data,
        tmp_path / "aux",
        variants=("gold",),
        batch_size=2,
        freeze_vision=False,
        vision_lr_scale=3.0,
        aux=AuxLoss(classes=2),
    )
    with pytest.raises(ConfigError, match=r"region class \d+ but aux.classes=2; set aux.classes to at least"):
        prepare_sft(cfg)  # the colour crops carry their chip as class 2 + palette index
    cfg = dataclasses.replace(cfg, aux=AuxLoss(classes=10))
    prepared = prepare_sft(cfg)
    optimizer = prepared.trainer.create_optimizer()
    rates = sorted({group["lr"] for group in optimizer.param_groups})
    assert rates == pytest.approx([3e-3, 9e-3])
    vision_params = {id(p) for n, p in prepared.trainer.model.named_parameters() if ".visual." in f".{n}"}
    for group in optimizer.param_groups:
        assert all((id(p) in vision_params) == (group["lr"] > 5e-3) for p in group["params"])
    result = run_sft(cfg)
    logged = [h for h in result.log_history if "aux_vision_loss" in h]
    assert len(logged) == 4 and all(h["aux_vision_loss"] > 0 for h in logged)
    assert not any(k.startswith("thyme_aux_head") for k in weights(tmp_path / "aux"))


def test_tensorboard_logs_and_a_finished_run_is_not_overwritten(tiny_model_dir, compute_data, tmp_path):
    from thyme.config import ConfigError

    cfg = config(tiny_model_dir, compute_data, tmp_path / "out", max_steps=2, report_to=("tensorboard",))
    run_sft(cfg)
    assert list((tmp_path / "out" / "runs").rglob("events.out.tfevents.*"))
    with pytest.raises(ConfigError, match="finished run"):
        run_sft(cfg)


def test_over_long_samples_are_left_out_by_name(tiny_model_dir, compute_data, tmp_path):
    from thyme.models import load_processor
    from thyme.models.encoding import Encoder
    from thyme.train.data import build_training_set

    encoder = Encoder(load_processor(tiny_model_dir))
    source = DataSource(str(compute_data), variants=("gold", "direct"))
    full = build_training_set((source,), encoder, max_length=2048)
    short = build_training_set((source,), encoder, max_length=200)
    assert full.size == 48 and not full.dropped
    assert short.size + len(short.dropped) == 48 and short.dropped
    assert all(n <= 200 for n in short.dataset["length"])
    assert all(not i.endswith("-direct") for i in short.dropped)  # the gold turns are the long ones


def test_modality_chunks_never_mix_image_and_text_only_samples():
    from thyme.train.data import modality_order

    flags = [True] * 7 + [False] * 5
    order = modality_order(flags, 4, seed=0)
    assert len(order) % 4 == 0 and set(order) == set(range(12))
    for start in range(0, len(order), 4):
        assert len({flags[i] for i in order[start : start + 4]}) == 1
    assert modality_order(flags, 4, seed=0) == order and modality_order(flags, 4, seed=1) != order


def test_a_run_in_one_named_preset_records_it_and_groups_by_length(tiny_model_dir, compute_data, tmp_path):
    """Every source in `compact`: gold samples get the compact prompt, direct ones its direct counterpart,
    and the saved model's thyme.json names it (the agent then asks the model in that prompt)."""
    from thyme.agent.backends.base import MODEL_CARD, model_preset
    from thyme.protocol import get_preset

    compact = (DataSource(str(compute_data), ("gold", "direct"), "compact"),)
    cfg = config(tiny_model_dir, compute_data, tmp_path / "out", max_steps=2, group_by_length=True)
    cfg = SFTConfig(**{**cfg.__dict__, "data": compact})
    prepared = prepare_sft(cfg)
    assert prepared.trainer.args.train_sampling_strategy == "group_by_length"
    systems = {json.loads(row)["system"] for row in prepared.train.dataset["sample"]}
    assert systems == {get_preset("compact").system, get_preset("compact_direct").system}
    run_sft(cfg)
    assert json.loads((tmp_path / "out" / MODEL_CARD).read_text()) == {"preset": "compact"}
    assert model_preset(str(tmp_path / "out")) == "compact"
    # Sources in different (or unnamed) presets record nothing: the model's prompt is not one preset.
    run_sft(config(tiny_model_dir, compute_data, tmp_path / "plain", max_steps=1))
    assert not (tmp_path / "plain" / MODEL_CARD).exists()
    with pytest.raises(ValueError, match="choose one"):
        config(tiny_model_dir, compute_data, tmp_path / "x", group_by_length=True, keep_modalities_apart=True)
