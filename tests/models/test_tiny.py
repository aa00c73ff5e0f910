"""`build_tiny`: an offline, deterministic, small Qwen2.5-VL directory that the Auto classes load."""

from __future__ import annotations

import hashlib
import pathlib
import socket
import time

import pytest
import torch
import transformers  # noqa: F401  (the models extra: make test installs it)
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    Qwen2_5_VLForConditionalGeneration,
)

from thyme.models import SIZES, TinySpec, build_tiny, parameter_count, vision_token_ids
from thyme.models.tokenizer import special_token_ids

EXPECTED_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


def _digest(directory: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a TCP connection fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_build_writes_a_complete_directory_that_auto_classes_load(tiny_dir, no_network):
    assert {p.name for p in tiny_dir.iterdir()} == EXPECTED_FILES
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    assert tokenizer.encode("<code>print(1)</code>") == processor.tokenizer.encode("<code>print(1)</code>")
    ids = special_token_ids(tokenizer)
    config = model.config
    assert config.image_token_id == ids["<|image_pad|>"] == processor.image_token_id
    assert config.video_token_id == ids["<|video_pad|>"]
    assert (config.vision_start_token_id, config.vision_end_token_id) == (
        ids["<|vision_start|>"],
        ids["<|vision_end|>"],
    )
    assert config.text_config.vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert model.generation_config.suppress_tokens == list(vision_token_ids(config))


def test_tiny_shape_and_parameter_count(tiny_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.num_hidden_layers) == (128, 2)
    assert (vision.hidden_size, vision.depth, vision.out_hidden_size) == (64, 2, 128)
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert 0.8e6 <= parameter_count(model) <= 1.2e6
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied


def test_same_seed_gives_identical_files_and_another_seed_other_weights(tiny_dir, tmp_path):
    again = build_tiny(tmp_path / "again", seed=0)
    other = build_tiny(tmp_path / "other", seed=1)
    assert _digest(again) == _digest(tiny_dir)
    differing = {name for name, digest in _digest(other).items() if _digest(tiny_dir)[name] != digest}
    assert differing == {"model.safetensors"}


def test_build_time_and_size_on_disk(tmp_path):
    start = time.perf_counter()
    path = build_tiny(tmp_path / "timed", seed=3)
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"build took {elapsed:.1f} s"
    size = sum(p.stat().st_size for p in path.iterdir())
    assert size < 8 * 2**20, f"{size} bytes on disk"


def test_build_leaves_the_callers_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny(tmp_path / "rng", seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_refuses_a_non_empty_directory_unless_told(tiny_dir, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        build_tiny(target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    build_tiny(target, overwrite=True)
    assert (target / "notes.txt").read_text() == "keep me"
    assert _digest(target)["model.safetensors"] == _digest(tiny_dir)["model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".busy.")]  # staging removed


def test_unknown_size_and_bad_specs_are_errors():
    with pytest.raises(ValueError, match="choose one of tiny, small"):
        build_tiny("unused", size="huge")
    with pytest.raises(ValueError, match="divisible by 4"):
        TinySpec(130, 2, 5, 5, 256, 64, 2, 2, 128, min_image_tokens=4, max_image_tokens=16)
    with pytest.raises(ValueError, match="min_image_tokens"):
        TinySpec(128, 2, 4, 2, 256, 64, 2, 2, 128, min_image_tokens=32, max_image_tokens=16)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_mrope_sections_fill_half_a_head(name):
    spec = SIZES[name]
    assert sum(spec.mrope_section) == spec.text_hidden // spec.text_heads // 2
    assert min(spec.mrope_section) > 0


@pytest.mark.slow
def test_small_size_builds_loads_and_generates(tmp_path):
    from PIL import Image

    path = build_tiny(tmp_path / "small", size="small")
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    assert 4e6 <= parameter_count(model) <= 8e6
    assert model.config.text_config.rope_parameters["rope_theta"] == 1e4  # copying numbers needs it (tiny.py)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which digit?"}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    batch = processor(images=[Image.new("RGB", (640, 480), (9, 9, 9))], text=[text], return_tensors="pt")
    # 640x480 resizes to 252x168 px under the 64-token budget: 9 x 6 tokens.
    assert (batch["input_ids"] == model.config.image_token_id).sum() == 54
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=8)
    assert not set(out[0, batch["input_ids"].shape[1] :].tolist()) & set(vision_token_ids(model.config))
