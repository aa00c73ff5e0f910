"""The tool is needed and it works: measured on what the model's processor leaves of each target.

For every task the gold step's output is compared with the input as the model sees it: resized by the
processor's `smart_resize` rule to the level's max_pixels budget (the "small" tiny model's is 64 vision
tokens, 224 x 224 px). There the target is smaller than a vision token, mixed into its surroundings, turned,
or faint; after the gold step it spans several tokens and the readers (an ideal observer that knows where to
look) recognise it in every sample.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from toyworld_measure import correlation, grey_view, mapped, zoom_after, zoom_before

from thyme.data.toyworld import TASKS
from thyme.data.toyworld.base import as_array
from thyme.data.toyworld.contrast import ink_of
from thyme.data.toyworld.generate import draft_sample
from thyme.data.toyworld.read import (
    PATCH,
    RELEASED_MAX_PIXELS,
    SMALL_MAX_PIXELS,
    ink_contrast,
    model_view,
    read_digits,
    region,
    smart_resize,
)
from thyme.data.toyworld.rotate import read_upright

SAMPLES = 12  # per level


@functools.cache
def drafts(task: str, level: str, count: int = SAMPLES) -> tuple:
    """(knobs, draft) of the first `count` samples of a level (drafts are pure: cached across tests)."""
    spec = TASKS[task]
    return tuple(draft_sample(spec, seed, level)[1:] for seed in range(count))


def test_smart_resize_matches_the_qwen_processor():
    qwen = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    for height, width in [
        (1792, 1792),
        (3584, 3584),
        (252, 168),
        (1000, 2000),
        (57, 300),
        (224, 224),
        (8000, 90),
    ]:
        for max_pixels in (SMALL_MAX_PIXELS, 256 * 28 * 28, RELEASED_MAX_PIXELS):
            expected = qwen.smart_resize(height, width, factor=28, min_pixels=56 * 56, max_pixels=max_pixels)
            assert smart_resize(height, width, max_pixels=max_pixels) == expected


def test_the_small_budget_is_64_tokens():
    assert smart_resize(1792, 1792, max_pixels=SMALL_MAX_PIXELS) == (224, 224)
    assert SMALL_MAX_PIXELS // (PATCH * PATCH) == 64


@pytest.mark.parametrize("level", ["colour", "grid", "box", "find"])
def test_zoom_colour_chip_is_mixed_away_then_classified_after_the_crop(level):
    hits = 0
    for knobs, draft in drafts("zoom", level):
        value = _wanted_value(draft)
        before, after = zoom_before(draft, knobs, knobs.budget), zoom_after(draft, knobs, knobs.budget)
        # At the model's resolution the chip is ~2 px wide, under 1% of its vision token, and the token's
        # mean colour is a grey or another palette colour.
        assert before.extent_px <= 2.5 and before.patch_share < 0.01
        assert before.patch_colour != value
        # After the crop the chip spans about two tokens (find crops the card with a margin: 1.94) and its
        # colour classifies right.
        assert after.extent_px >= (1.9 if level == "find" else 2) * PATCH and after.read == value
        hits += before.read == value
    # Even reading exactly the chip's few pixels (an observer that knows where it is) rarely gets it right.
    assert hits <= 2


def test_zoom_find_needs_the_largest_white_region_not_any_white_pixel():
    """The find code's rule is right in every sample; "every white pixel" (no component analysis) is not,
    because white decoys lie outside the card."""
    for _knobs, draft in drafts("zoom", "find"):
        white = np.asarray(draft.image.convert("RGB")).min(axis=2) > 230
        ys, xs = np.nonzero(white)
        card = draft.meta["target_box"]
        outside = (xs < card[0]) | (xs >= card[2]) | (ys < card[1]) | (ys >= card[3])
        assert outside.any()  # decoys: the bounding box of all white pixels is not the card
        # The gold crop (the find code's output, checked in the sandbox at generation) holds the card.
        crop = draft.meta["crop_boxes"][0]
        assert crop[0] < card[0] and crop[1] < card[1] and crop[2] > card[2] and crop[3] > card[3]


def test_zoom_cell_label_lies_inside_its_cell_and_the_chip_is_readable_in_the_cell_crop():
    """The model names a 4 x 4 cell; the cell crop (448 px, seen at 224) shows the chip at ~8 px: small, but
    one colour over a whole vision token's quarter, which the small model learns (DESIGN.md)."""
    for knobs, draft in drafts("zoom", "cell"):
        cell = draft.meta["crop_boxes"][0]
        card = draft.meta["target_box"]
        assert cell[0] <= card[0] and cell[1] <= card[1] and card[2] <= cell[2] and card[3] <= cell[3]
        assert cell[2] - cell[0] == knobs.canvas // knobs.grid
        row, col = cell[1] // (cell[3] - cell[1]) + 1, cell[0] // (cell[2] - cell[0]) + 1
        assert f"row {row}, column {col}" in draft.steps[0].lead
        before, after = zoom_before(draft, knobs, knobs.budget), zoom_after(draft, knobs, knobs.budget)
        assert before.extent_px <= 2.5 and before.patch_share < 0.01
        assert 7.5 <= after.extent_px < PATCH and after.read == draft.answer


@pytest.mark.parametrize("level", ["shape", "grid-shape"])
def test_zoom_shape_is_a_blob_then_recognised_after_the_crop(level):
    hits = 0
    for knobs, draft in drafts("zoom", level):
        before, after = zoom_before(draft, knobs, knobs.budget), zoom_after(draft, knobs, knobs.budget)
        assert before.extent_px <= 2.5 and before.patch_share < 0.01
        assert after.extent_px >= 2 * PATCH and after.read == _wanted_value(draft)
        hits += before.read == _wanted_value(draft)
    # A 2-px blob matches one template whatever the shape: about chance (1 in 5).
    assert hits <= SAMPLES * 0.4


@pytest.mark.parametrize("level", ["digit", "digits", "digits-hires"])
def test_zoom_digits_have_subpixel_strokes_then_read_after_the_crop(level):
    for knobs, draft in drafts("zoom", level, 8):
        before, after = zoom_before(draft, knobs, knobs.budget), zoom_after(draft, knobs, knobs.budget)
        # Digits under 3 px high with strokes under half a pixel: nothing to read.
        assert before.stroke_px < 0.5 and 7 * before.stroke_px < 3 and before.read is None
        # After the crop: strokes of 7+ px, digits 1.5+ vision tokens high, read right.
        assert after.stroke_px >= 7 and 7 * after.stroke_px >= 1.5 * PATCH and after.read == draft.answer


def test_zoom_levels_are_calibrated_for_their_budget_not_for_larger_ones():
    """The hires level holds at a 256-token view; small-budget colour chips do not; nothing does at the
    released processor's budget (12.8 Mpx, no downscale for these canvases)."""
    hires = 256 * PATCH * PATCH
    assert TASKS["zoom"].levels["digits-hires"].budget == hires
    for knobs, draft in drafts("zoom", "digits-hires", 8):
        assert zoom_before(draft, knobs, hires).read is None
    colour_reads = [zoom_before(d, k, hires).read == d.answer for k, d in drafts("zoom", "colour")]
    assert all(colour_reads)  # at 4x the pixels a chip is 4 px wide: the colour level is for 64 tokens only
    for level, count in (("colour", SAMPLES), ("digits-hires", 8)):
        for knobs, draft in drafts("zoom", level, count)[:4]:
            assert zoom_before(draft, knobs, RELEASED_MAX_PIXELS).read == draft.answer


@pytest.mark.parametrize("level", ["arrow", "digit", "digits"])
def test_rotate_upright_output_matches_the_upright_sign_and_reads_right(level):
    upright_hits = turned_hits = 0
    for knobs, draft in drafts("rotate", level):
        output = draft.steps[0].expect_images[0]
        assert output.size == knobs.sign
        view = grey_view(output, knobs.budget)
        reference = grey_view(_upright(draft, knobs), knobs.budget)
        turned = grey_view(draft.image.resize(knobs.sign), knobs.budget)
        assert correlation(view, reference) > 0.999 > 0.8 > correlation(turned, reference)
        sx, sy = view.shape[1] / knobs.sign[0], view.shape[0] / knobs.sign[1]
        upright_hits += (
            read_upright(as_array(model_view(output, knobs.budget)), knobs, sx, sy) == draft.answer
        )
        turned_hits += _read_turned(draft, knobs) == draft.answer
    assert upright_hits == SAMPLES
    # An upright reader on the turned sign: an arrow always points elsewhere; digits rarely survive a turn.
    assert turned_hits == 0 if level == "arrow" else turned_hits <= SAMPLES * 0.25


@pytest.mark.parametrize("level", ["shape", "digit", "digits", "scene"])
def test_contrast_is_below_5_percent_before_and_above_40_percent_after(level):
    for knobs, draft in drafts("contrast", level):
        meta = draft.meta
        ink = ink_of(knobs, draft.answer)
        x1, y1, x2, y2 = meta["card_box"]
        card = np.asarray(draft.image.convert("L"), dtype=np.float32)[y1:y2, x1:x2]
        assert ink_contrast(card, ink) <= knobs.delta / 255 + 0.01 < 0.05
        cx1, cy1, cx2, cy2 = meta["crop_box"]
        enhanced = np.asarray(draft.steps[0].expect_images[0], dtype=np.float32)
        ink_in_crop = ink[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1]
        assert ink_contrast(enhanced, ink_in_crop) > 0.4
        # The model view (bicubic resize) keeps most of the stretched contrast, and none of the faint one.
        view_ink = np.asarray(model_view(_mask_image(ink_in_crop), knobs.budget).convert("L")) > 200
        assert ink_contrast(grey_view(draft.steps[0].expect_images[0], knobs.budget), view_ink) > 0.3
        assert draft.read_back([as_array(draft.steps[0].expect_images[0])]) == draft.answer


@pytest.mark.parametrize("level", ["add-image", "mul-image"])
def test_compute_operands_in_the_image_are_legible_at_the_budget(level):
    for knobs, draft in drafts("compute", level, 8):
        view = grey_view(draft.image, knobs.budget)
        for operand, box in zip(draft.meta["operands"], draft.meta["number_boxes"], strict=True):
            pixels = region(view, mapped(_grow(box, knobs.unit), draft.image, view))
            assert read_digits(pixels) == str(operand)
        assert 7 * knobs.unit * view.shape[0] / draft.image.height >= 20


@pytest.mark.parametrize("level", list(TASKS["compute"].levels))
def test_compute_answers_are_many_digit_results(level):
    for knobs, draft in drafts("compute", level, 8):
        operands = draft.meta["operands"]
        assert int(draft.answer) == (sum(operands) if knobs.op == "add" else math.prod(operands))
        assert len(draft.answer) >= 4
        assert knobs.in_image or all(str(v) in draft.question for v in operands)


def _wanted_value(draft) -> str:
    meta = draft.meta
    return next(label["value"] for label in meta["labels"] if label["box"] == meta["target_box"])


def _upright(draft, knobs):
    return draft.image.rotate((360 - draft.meta["angle"]) % 360, expand=True)


def _read_turned(draft, knobs) -> str | None:
    """What an upright reader reads at the target's place in the turned image, as the model sees it."""
    view = as_array(model_view(draft.image, knobs.budget))
    box = _turned_box(knobs.target_box, knobs.sign, draft.meta["angle"])
    box = (box[0] - knobs.unit, box[1] - knobs.unit, box[2] + knobs.unit, box[3] + knobs.unit)
    from thyme.data.toyworld.read import read_arrow

    grey = region(view, mapped(box, draft.image, view)).astype(np.float32).mean(axis=-1)
    return read_arrow(grey) if knobs.target == "arrow" else read_digits(grey)


def _turned_box(box, size, angle):
    """Where an upright box lands after PIL's counter-clockwise `rotate(angle, expand=True)`."""
    x1, y1, x2, y2 = box
    width, height = size
    if angle == 90:
        return y1, width - x2, y2, width - x1
    if angle == 180:
        return width - x2, height - y2, width - x1, height - y1
    return height - y2, x1, height - y1, x2


def _grow(box, by):
    return box[0] - by, box[1] - by, box[2] + by, box[3] + by


def _mask_image(mask):
    from PIL import Image

    return Image.fromarray(mask.astype(np.uint8) * 255)
