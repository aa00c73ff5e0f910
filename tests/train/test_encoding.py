"""The encoder: exact trained spans for every sample shape, images, lengths, and the ids generation used."""

from __future__ import annotations

import pytest

from thyme.agent.conversation import Conversation
from thyme.data.sample import split_response
from thyme.models.encoding import EncodingError, piece_groups
from thyme.protocol import ImagePart, TextPart
from thyme.train.masks import IGNORE_INDEX, MODEL, PROMPT, SANDBOX, MaskConfig

CODE = "<code>\n```python\nprint(6 * 7)\n```\n</code>"
ZOOM = "<code>\n```python\nprint(processed_path)\n```\n</code>"


def conversation(images, response: str, fed=()) -> Conversation:
    conv = Conversation("You are a helpful assistant.", (ImagePart(images[0]), TextPart("What is it?")))
    conv.assistant = list(split_response(response, list(fed)))
    return conv


def trained_spans(encoder, example) -> list[str]:
    """The decoded runs of consecutive tokens that carry loss."""
    out, run = [], []
    for token, label in zip(example.ids, example.labels, strict=True):
        if label == IGNORE_INDEX:
            if run:
                out.append(run)
            run = []
        else:
            assert label == token
            run.append(token)
    if run:
        out.append(run)
    return [encoder.tokenizer.decode(r, skip_special_tokens=False) for r in out]


def test_no_code_sample_trains_the_whole_turn_and_its_end(encoder, images):
    ex = encoder.example(conversation(images, "<think>It is red.</think> <answer>red</answer>"))
    assert trained_spans(encoder, ex) == ["<think>It is red.</think> <answer>red</answer><|im_end|>"]
    assert ex.roles[: ex.prompt_len] == [PROMPT] * ex.prompt_len
    assert set(ex.roles[ex.prompt_len :]) == {MODEL}


def test_single_round_masks_the_sandbox_output_and_its_tags(encoder, images):
    t0 = f"<think>Compute it. {CODE}"
    a = "So 42.</think> <answer>42</answer>"
    ex = encoder.example(conversation(images, f"{t0}<sandbox_output>42</sandbox_output>{a}"))
    assert trained_spans(encoder, ex) == [t0, a + "<|im_end|>"]
    sandbox = [t for t, r in zip(ex.ids, ex.roles, strict=True) if r == SANDBOX]
    assert encoder.tokenizer.decode(sandbox) == "<sandbox_output>42</sandbox_output>"


def test_multi_round_trains_only_the_last_round(encoder, images):
    t0, t1 = f"<think>Zoom. {ZOOM}", f"Closer. {ZOOM}"
    t2 = "Red.</think> <answer>red</answer>"
    response = f"{t0}<sandbox_output><image></sandbox_output>{t1}<sandbox_output><image></sandbox_output>{t2}"
    conv = conversation(images, response, fed=images[1:])
    assert trained_spans(encoder, encoder.example(conv)) == [t1, t2 + "<|im_end|>"]
    every = encoder.example(conv, MaskConfig(only_last_round=False))
    assert trained_spans(encoder, every) == [t0, t1, t2 + "<|im_end|>"]


def test_error_feedback_is_context_not_target(encoder, images):
    t0 = "<think>Divide. <code>\n```python\nprint(1 / 0)\n```\n</code>"
    err = "Traceback (most recent call last):\nZeroDivisionError: division by zero"
    t1 = "It failed.</think> <answer>undefined</answer>"
    ex = encoder.example(conversation(images, f"{t0}<sandbox_output>{err}</sandbox_output>{t1}"))
    assert trained_spans(encoder, ex) == [t0, t1 + "<|im_end|>"]
    naive = encoder.example(
        conversation(images, f"{t0}<sandbox_output>{err}</sandbox_output>{t1}"),
        MaskConfig(mask_sandbox=False),
    )
    assert trained_spans(encoder, naive) == [f"{t0}<sandbox_output>{err}</sandbox_output>{t1}<|im_end|>"]


def test_images_in_order_and_rows_match_the_grids(encoder, images):
    response = f"<think>{ZOOM}<sandbox_output><image><image></sandbox_output>ok</think> <answer>a</answer>"
    ex = encoder.example(conversation(images, response, fed=images[1:]))
    assert len(ex.pixels) == len(ex.grids) == 3
    assert ex.image_rows == sum(int(g.prod()) for g in ex.grids)
    assert ex.sizes == [(320, 240), (112, 112), (168, 84)]
    merge = encoder.processor.image_processor.merge_size
    image_id = encoder.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert sum(t == image_id for t in ex.ids) == sum(int(g.prod()) // merge**2 for g in ex.grids)
    # image tokens are typed 1 (3-D positions) and never trained
    assert all((m == 1) == (t == image_id) for t, m in zip(ex.ids, ex.mm_types, strict=True))
    assert all(label == IGNORE_INDEX for t, label in zip(ex.ids, ex.labels, strict=True) if t == image_id)


def test_length_matches_the_example_without_decoding_pixels(encoder, images):
    response = f"<think>{ZOOM}<sandbox_output><image></sandbox_output>ok</think> <answer>a</answer>"
    for conv in (
        conversation(images, response, fed=images[1:2]),
        conversation(images, "<think>x</think> <answer>y</answer>"),
    ):
        assert encoder.length(conv) == len(encoder.example(conv))
        assert encoder.length(conv, end_of_turn=False) == len(encoder.example(conv, end_of_turn=False))


def test_sandbox_pieces_are_encoded_together_as_the_loop_feeds_them(images):
    conv = conversation(images, f"a{CODE}<sandbox_output>42</sandbox_output>b")
    assert [[p.source for p in g] for g in piece_groups(conv.assistant)] == [
        ["model"],
        ["sandbox", "sandbox", "sandbox"],
        ["model"],
    ]


def test_an_unreadable_image_names_the_file(encoder, images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    conv = Conversation("s", (ImagePart(bad), TextPart("q")))
    with pytest.raises(EncodingError, match=r"bad\.png"):
        encoder.example(conv)


def test_training_sees_exactly_the_ids_generation_fed(scripted_generation):
    """A real trajectory of the loop: the example's ids equal what the backend fed and generated, token for
    token (model pieces by their generated ids, sandbox feedback tokenised as the loop appended it)."""
    backend, traj, fed = scripted_generation
    ex = backend.encoder.example(traj.conversation, end_of_turn=False)
    assert ex.ids == fed
    assert len(ex.pixels) == len(traj.conversation.images) == 2  # the user's image and the zoomed crop
    assert ex.image_rows == sum(int(g.prod()) for g in ex.grids)
    assert any(r == SANDBOX for r in ex.roles)


def test_max_pixels_bounds_every_image(tiny_model_dir, images):
    from thyme.models import load_processor
    from thyme.models.encoding import Encoder

    response = f"<think>{ZOOM}<sandbox_output><image></sandbox_output>ok</think> <answer>a</answer>"
    conv = conversation(images, response, fed=images[1:2])
    wide = Encoder(load_processor(tiny_model_dir))
    narrow = Encoder(load_processor(tiny_model_dir), max_pixels=4 * 28 * 28)
    assert narrow.pixel_bounds["max_pixels"] == 4 * 28 * 28
    ex = narrow.example(conv)
    merge = narrow.processor.image_processor.merge_size
    assert all(int(g.prod()) // merge**2 <= 4 for g in ex.grids)
    assert len(ex) < len(wide.example(conv)) and narrow.length(conv) == len(ex)
