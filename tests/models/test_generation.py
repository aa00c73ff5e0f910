"""Greedy generation with an image on the CPU, and the vision-placeholder suppression every backend uses."""

from __future__ import annotations

import pytest
import torch
import transformers  # noqa: F401  (the models extra: make test installs it)
from model_samples import user_turn
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    Qwen2_5_VLConfig,
)

from thyme.models import (
    SuppressVisionTokens,
    suppress_vision_tokens,
    vision_bad_words_ids,
    vision_logit_bias,
    vision_token_ids,
)


@pytest.fixture(scope="module")
def model(tiny_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir)


def _inputs(processor, images, questions):
    render = processor.apply_chat_template
    texts = [render(user_turn(q), add_generation_prompt=True, tokenize=False) for q in questions]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


class BoostVision(LogitsProcessor):
    """Makes the vision placeholders the argmax by a wide margin, as an untrained model sometimes does."""

    def __init__(self, ids):
        self.ids = list(ids)

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.ids] += 1e4
        return scores


def test_greedy_generate_with_an_image_produces_varied_text(model, processor, noise_image):
    batch = _inputs(processor, [noise_image], ["What is written on the label?"])
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=24, do_sample=False)
    new = out[0, batch["input_ids"].shape[1] :]
    assert 1 <= new.numel() <= 24
    assert not set(new.tolist()) & set(vision_token_ids(model.config))
    assert len(set(new.tolist())) > 3, "a degenerate model repeats one token; tests built on it prove little"
    assert isinstance(processor.decode(new, skip_special_tokens=True), str)
    with torch.inference_mode():
        again = model.generate(**batch, max_new_tokens=24, do_sample=False)
    assert torch.equal(out, again)


def test_output_depends_on_the_image(model, processor, noise_image):
    flat = Image.new("RGB", noise_image.size, (128, 128, 128))
    outs = []
    for image in (noise_image, flat):
        batch = _inputs(processor, [image], ["Describe the image."])
        with torch.inference_mode():
            outs.append(model.generate(**batch, max_new_tokens=8, do_sample=False)[0, -8:].tolist())
    assert outs[0] != outs[1]


def test_left_padded_batch_matches_one_by_one(model, processor, noise_image):
    tall = noise_image.rotate(90, expand=True)
    questions = ["Colour?", "Read the tiny label in the lower right corner and multiply it by 347."]
    singles = []
    for image, question in zip([noise_image, tall], questions, strict=True):
        batch = _inputs(processor, [image], [question])
        with torch.inference_mode():
            singles.append(model.generate(**batch, max_new_tokens=10, min_new_tokens=10)[0, -10:].tolist())
    batch = _inputs(processor, [noise_image, tall], questions)
    assert (batch["attention_mask"] == 0).any(), "the shorter prompt should be left-padded"
    with torch.inference_mode():
        batched = model.generate(**batch, max_new_tokens=10, min_new_tokens=10)[:, -10:].tolist()
    assert batched == singles


def test_saved_generation_config_suppresses_boosted_placeholders(model, processor, noise_image):
    batch = _inputs(processor, [noise_image], ["What is it?"])
    ids = set(vision_token_ids(model.config))
    boost = LogitsProcessorList([BoostVision(ids)])
    with torch.inference_mode():
        # Control: with suppression switched off, the boosted model does emit placeholders.
        unguarded = model.generate(**batch, max_new_tokens=3, suppress_tokens=[], logits_processor=boost)
        guarded = model.generate(**batch, max_new_tokens=3, logits_processor=boost)
    n = batch["input_ids"].shape[1]
    assert set(unguarded[0, n:].tolist()) <= ids
    assert not set(guarded[0, n:].tolist()) & ids


def test_suppression_helper_works_without_the_saved_config(model, processor, noise_image):
    batch = _inputs(processor, [noise_image], ["What is it?"])
    ids = set(vision_token_ids(model.config))
    processors = LogitsProcessorList([BoostVision(ids), *suppress_vision_tokens(model.config)])
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=6, suppress_tokens=[], logits_processor=processors)
    assert not set(out[0, batch["input_ids"].shape[1] :].tolist()) & ids


def test_helpers_name_the_four_placeholders():
    config = Qwen2_5_VLConfig()  # released ids: image 151655, video 151656, start 151652, end 151653
    assert vision_token_ids(config) == (151652, 151653, 151655, 151656)
    assert vision_bad_words_ids(config) == [[151652], [151653], [151655], [151656]]
    assert vision_logit_bias(config) == {"151652": -100, "151653": -100, "151655": -100, "151656": -100}
    scores = torch.zeros(1, 151700)
    assert torch.isinf(SuppressVisionTokens(config)(torch.zeros(1, 1, dtype=torch.long), scores)[0, 151655])
    with pytest.raises(ValueError, match="no vision token ids"):
        vision_token_ids(config.text_config)
