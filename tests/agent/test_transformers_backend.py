"""The transformers backend on a random tiny Qwen2.5-VL: KV reuse across an inserted image, batching with
left padding, canonical stops and finish reasons, seeds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from thyme.agent import Conversation, GenerationRequest, SamplingParams
from thyme.protocol import ImagePart, TextPart, render_feedback


@pytest.fixture(scope="module")
def backend(random_model_dir):
    from thyme.agent.backends.transformers import TransformersBackend

    return TransformersBackend.from_pretrained(str(random_model_dir))


@pytest.fixture(scope="module")
def second_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("kv") / "crop.png"
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, size=(120, 150, 3), dtype=np.uint8)).save(path)
    return path


def _conv(image, question="Describe the image.") -> Conversation:
    return Conversation(system="You are a helpful assistant.", user=(ImagePart(image), TextPart(question)))


def _two_steps(backend, noise_png, second_image, reuse: bool):
    greedy = SamplingParams(max_new_tokens=12)
    conv = _conv(noise_png)
    first = backend.generate([GenerationRequest(conv, greedy, stops=(), reuse_cache=reuse)])[0]
    conv.add_model(first.text, first.token_ids)
    conv.add_feedback(render_feedback("", [second_image]))
    state = first.state if reuse else dataclasses.replace(first.state, cache=None)
    second = backend.generate([GenerationRequest(conv, greedy, stops=(), state=state, reuse_cache=reuse)])[0]
    return first, second


def test_kv_reuse_across_an_inserted_image_matches_recompute(backend, noise_png, second_image):
    before = dict(backend.stats)
    _, with_cache = _two_steps(backend, noise_png, second_image, reuse=True)
    cached = backend.stats["cached_tokens"] - before["cached_tokens"]
    _, without = _two_steps(backend, noise_png, second_image, reuse=False)
    assert cached > 0  # the second step really continued the cache
    assert with_cache.token_ids == without.token_ids
    assert with_cache.prompt_tokens == without.prompt_tokens


def test_kv_reuse_positions_matter(backend, noise_png, second_image):
    """Continuing the cache without the recomputed mRoPE positions gives different logits: the test above
    would catch a backend that got them wrong."""
    import torch

    first, _ = _two_steps(backend, noise_png, second_image, reuse=True)
    conv = _conv(noise_png)
    conv.add_model(first.text, first.token_ids)
    conv.add_feedback(render_feedback("", [second_image]))
    enc = backend._encode(conv, first.state)
    full = backend._batch([dataclasses.replace(enc, cache=None)])
    with torch.no_grad():
        reference = backend.model(**full).logits[0, -1]
        inputs = backend._single_with_cache(enc)
        keep = enc.cache.get_seq_length()
        sliced = {k: inputs[k][..., keep:] for k in ("input_ids", "mm_token_type_ids", "position_ids")}
        right = backend.model(**{**inputs, **sliced}).logits[0, -1]
        enc.cache.crop(keep - enc.cache.get_seq_length())  # back to `keep` tokens for the next run
        text_positions = sliced["position_ids"][:1].expand_as(sliced["position_ids"])  # as if plain text
        wrong = backend.model(**{**inputs, **sliced, "position_ids": text_positions}).logits[0, -1]
    finite = torch.isfinite(reference)
    assert torch.allclose(right[finite], reference[finite], atol=1e-4)
    assert not torch.allclose(wrong[finite], reference[finite], atol=1e-3)


def test_batch_rows_equal_single_rows(backend, noise_png, second_image):
    greedy = SamplingParams(max_new_tokens=10)
    convs = [
        _conv(noise_png, "short?"),
        _conv(second_image, "a much longer question about the picture here?"),
    ]
    batch = backend.generate([GenerationRequest(c, greedy, stops=()) for c in convs])
    single = [backend.generate([GenerationRequest(c, greedy, stops=())])[0] for c in convs]
    assert [g.token_ids for g in batch] == [g.token_ids for g in single]


def test_length_finish_and_token_counts(backend, noise_png):
    g = backend.generate([GenerationRequest(_conv(noise_png), SamplingParams(max_new_tokens=5), stops=())])[0]
    assert g.finish_reason == "length" and g.completion_tokens == 5 and len(g.token_ids) == 5
    assert g.prompt_tokens > 20 and g.state is not None


def test_stop_string_is_kept_and_nothing_after(backend, noise_png):
    conv = _conv(noise_png)
    free = backend.generate([GenerationRequest(conv, SamplingParams(max_new_tokens=30), stops=())])[0]
    piece = backend.tokenizer.decode(free.token_ids[6:8])  # text the model is known to produce
    end = free.text.find(piece) + len(piece)
    stopped = backend.generate([GenerationRequest(conv, SamplingParams(max_new_tokens=30), stops=(piece,))])[
        0
    ]
    assert (stopped.finish_reason, stopped.stop) == ("stop", piece)
    assert stopped.text == free.text[:end]


def test_seeded_sampling_is_reproducible(backend, noise_png):
    params = SamplingParams(temperature=1.0, max_new_tokens=15, seed=3)
    conv = _conv(noise_png)
    a = backend.generate([GenerationRequest(conv, params, stops=())])[0]
    b = backend.generate([GenerationRequest(conv, params, stops=())])[0]
    c = backend.generate([GenerationRequest(conv, dataclasses.replace(params, seed=4), stops=())])[0]
    assert a.token_ids == b.token_ids != c.token_ids


def test_rolled_back_state_is_not_reused(backend, noise_png, second_image):
    greedy = SamplingParams(max_new_tokens=6)
    conv = _conv(noise_png)
    first = backend.generate([GenerationRequest(conv, greedy, stops=(), reuse_cache=True)])[0]
    conv.add_model("something else entirely")  # not what the state covers
    enc = backend._encode(conv, first.state)
    assert enc.cache is None and enc.ids[-3:] != list(first.token_ids[-3:])


def test_kv_reuse_that_cannot_happen_is_said_once(
    random_model_dir, noise_png, second_image, monkeypatch, caplog
):
    """A release whose generate() output names its cache differently must not lose KV reuse in silence: the
    backend warns once (and the steps still run, re-encoding their prompts)."""
    import thyme.agent.backends.transformers as module

    monkeypatch.setattr(module, "CACHE_KEY", "no_such_cache")
    fresh = module.TransformersBackend.from_pretrained(str(random_model_dir))
    with caplog.at_level("WARNING", logger=module.__name__):
        for _ in range(2):
            first = fresh.generate(
                [
                    GenerationRequest(
                        _conv(noise_png), SamplingParams(max_new_tokens=4), stops=(), reuse_cache=True
                    )
                ]
            )[0]
            assert first.state.cache is None
    said = [r for r in caplog.records if "KV reuse is on" in r.getMessage()]
    assert len(said) == 1 and "no_such_cache" in said[0].getMessage()


def test_the_cache_name_is_the_one_this_release_uses():
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    from thyme.agent.backends.transformers import CACHE_KEY

    assert CACHE_KEY in {f.name for f in dataclasses.fields(GenerateDecoderOnlyOutput)}
