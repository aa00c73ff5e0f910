"""The image-only Qwen2.5-VL processor: AutoProcessor returns it, images expand to the right number of
placeholders within the pixel budget, videos are refused, released-style directories load without
torchvision."""

from __future__ import annotations

import json
import shutil

import pytest
import transformers  # noqa: F401  (the models extra: make test installs it)
from model_samples import user_turn
from PIL import Image
from transformers import AutoProcessor, Qwen2VLImageProcessorPil

from thyme.models import Qwen2_5_VLImageOnlyProcessor, load_processor
from thyme.models.processor import torchvision_available
from thyme.models.tiny import SIZES


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir)


def test_auto_processor_returns_the_image_only_processor(processor):
    assert isinstance(processor, Qwen2_5_VLImageOnlyProcessor)
    assert Qwen2_5_VLImageOnlyProcessor.get_attributes() == ["image_processor", "tokenizer"]
    assert not hasattr(processor, "video_processor")
    if not torchvision_available():
        assert isinstance(processor.image_processor, Qwen2VLImageProcessorPil)
    assert processor.chat_template == processor.tokenizer.chat_template


def test_model_input_names_need_no_video_processor(processor):
    """transformers 5.5's `model_input_names` read `video_processor` (the Trainer asks for it when grouping
    by length); ours lists what the processor makes, in 5.25's order."""
    assert processor.model_input_names == [
        "pixel_values", "image_grid_thw", "input_ids", "attention_mask", "second_per_grid_ts",
        "mm_token_type_ids",
    ]  # fmt: skip


@pytest.mark.parametrize("size", [(320, 240), (2000, 1500), (60, 900)])
def test_image_expands_to_its_grid_within_the_token_budget(processor, size):
    spec = SIZES["tiny"]
    text = processor.apply_chat_template(user_turn("What is it?"), add_generation_prompt=True, tokenize=False)
    batch = processor(images=[Image.new("RGB", size, (200, 30, 30))], text=[text], return_tensors="pt")
    grid = batch["image_grid_thw"][0]  # [t, h, w] in 14 px patches
    n_tokens = int(grid.prod()) // 4  # 2x2 patches merge into one LM token
    assert (batch["input_ids"][0] == processor.image_token_id).sum() == n_tokens
    assert spec.min_image_tokens <= n_tokens <= spec.max_image_tokens
    assert batch["pixel_values"].shape == (int(grid.prod()), 3 * 2 * 14 * 14)
    assert batch["mm_token_type_ids"][0].sum() == n_tokens


def test_videos_are_refused_with_a_clear_error(processor):
    with pytest.raises(ValueError, match="images and text only"):
        processor(text=["<|vision_start|><|video_pad|><|vision_end|>"], videos=[[Image.new("RGB", (28, 28))]])


def test_released_style_directory_loads_image_only(tiny_dir, tmp_path):
    """A released checkpoint names Qwen2_5_VLProcessor, whose video processor needs torchvision."""
    released = tmp_path / "released"
    shutil.copytree(tiny_dir, released)
    config_path = released / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["processor_class"] = "Qwen2_5_VLProcessor"
    config_path.write_text(json.dumps(config))
    if not torchvision_available():
        with pytest.raises(OSError, match="video processor"):
            AutoProcessor.from_pretrained(released)
    loaded = load_processor(released)
    text = loaded.apply_chat_template(user_turn("Colour?"), add_generation_prompt=True, tokenize=False)
    batch = loaded(images=[Image.new("RGB", (320, 240))], text=[text], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 6, 8]]
