"""Crop clamping: the pure rules, the run-time helpers, and rewritten code run on real images and arrays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from thyme.sandbox.clamp import MIN_CROP_DIMENSION, clamp_box, clamp_slices, make_runtime_helpers
from thyme.sandbox.repairs import RepairContext, apply_repairs


def gradient(width: int, height: int) -> Image.Image:
    """An RGB image whose every pixel is distinct, so a wrong crop cannot pass for the right one."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x % 256, y % 256, (x // 256 + 16 * (y // 256)) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def fired() -> list[str]:
    return []


@pytest.fixture
def helpers(fired):
    return make_runtime_helpers(fired.append)


# -- clamp_box ---
@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((100, 100, 300, 300), (100, 100, 300, 300)),  # a good box is kept
        ((300, 250, 100, 100), (100, 100, 300, 250)),  # corners swapped
        ((-50, -20, 200, 100), (0, 0, 200, 100)),  # negative literals
        ((900, 700, 1200, 900), (900, 700, 1000, 800)),  # past the far edges
        ((500, 400, 510, 405), (473, 370, 537, 434)),  # tiny, in the middle: grown around its centre
        ((0, 0, 10, 10), (0, 0, 64, 64)),  # tiny at the top-left corner: shifted inside
        ((995, 795, 1000, 800), (936, 736, 1000, 800)),  # tiny at the bottom-right corner
        ((2000, 2000, 3000, 3000), (936, 736, 1000, 800)),  # entirely outside: the nearest corner
        ((-10, 300, 40, 300), (0, 268, 64, 332)),  # zero height
    ],
)
def test_clamp_box_rules(box, expected):
    assert clamp_box(box, 1000, 800) == expected


def test_image_smaller_than_the_minimum_is_taken_whole_on_that_side():
    assert clamp_box((5, 5, 10, 10), 40, 30) == (0, 0, 40, 30)
    assert clamp_box((5, 5, 10, 10), 40, 500) == (0, 0, 40, 64)


def test_lists_and_numpy_arrays_give_python_ints():
    assert clamp_box([-5, 0, 50, 50], 100, 100) == (0, 0, 64, 64)
    box = clamp_box(np.array([1, 2, 300, 400], dtype=np.int64), 1000, 800)
    assert box == (1, 2, 300, 400) and all(type(v) is int for v in box)


def test_float_boxes_stay_float_and_keep_the_minimum():
    x1, y1, x2, y2 = clamp_box((10.5, 10.5, 12.0, 12.0), 1000, 800)
    assert all(isinstance(v, float) for v in (x1, y1, x2, y2))
    assert x2 - x1 == MIN_CROP_DIMENSION and y2 - y1 == MIN_CROP_DIMENSION
    assert clamp_box((10.25, 20.5, 200.75, 300.0), 1000, 800) == (10.25, 20.5, 200.75, 300.0)
    assert clamp_box(np.array([-3.5, 0.0, 120.5, 90.0]), 100, 100) == (0.0, 0.0, 100.0, 90.0)


def test_min_size_is_a_parameter():
    assert clamp_box((50, 50, 52, 52), 1000, 800, min_size=10) == (46, 46, 56, 56)
    assert clamp_box((50, 50, 52, 52), 1000, 800, min_size=0) == (50, 50, 52, 52)


@pytest.mark.parametrize(
    "box", [(1, 2, 3), (0, 0, "10", 10), (0, 0, float("nan"), 5), None, np.zeros((2, 2))]
)
def test_clamp_box_rejects_what_is_not_a_box(box):
    with pytest.raises(ValueError, match="four finite numbers"):
        clamp_box(box, 100, 100)


# -- clamp_slices ---
@pytest.mark.parametrize(
    ("y", "x", "expected"),
    [
        (slice(10, 200), slice(20, 300), (slice(10, 200), slice(20, 300))),
        (slice(-30, 100), slice(0, 100), (slice(0, 100), slice(0, 100))),  # ran off the top edge
        (slice(-100, -10), slice(0, 100), (slice(700, 790), slice(0, 100))),  # both negative: from the end
        (slice(10, -10), slice(0, 100), (slice(10, 790), slice(0, 100))),  # negative stop: from the end
        (slice(700, 900), slice(990, 1100), (slice(700, 800), slice(936, 1000))),  # past the far edges
        (slice(300, 100), slice(0, 100), (slice(100, 300), slice(0, 100))),  # reversed
        (slice(400, 410), slice(500, 505), (slice(373, 437), slice(470, 534))),  # tiny: grown
    ],
)
def test_clamp_slices_rules(y, x, expected):
    assert clamp_slices(y, x, 800, 1000) == expected


@pytest.mark.parametrize(
    ("y", "x"),
    [
        (slice(5, 6), slice(5, 200)),  # one row: a pixel read, not a crop
        (slice(5, 200), slice(-1, 0)),  # one column
        (slice(0, 100, 2), slice(0, 100)),  # a step
        (slice(None, 100), slice(0, 100)),  # an open bound
        (slice(0.5, 100), slice(0, 100)),  # not an int
    ],
)
def test_slices_that_are_not_crops_are_kept(y, x):
    assert clamp_slices(y, x, 800, 1000) == (y, x)


# -- __thyme_crop__ ---
def test_crop_helper_keeps_good_boxes_and_records_nothing(helpers, fired):
    img = gradient(500, 400)
    out = helpers["__thyme_crop__"](img, (10, 20, 200, 220))
    assert np.array_equal(np.asarray(out), np.asarray(img.crop((10, 20, 200, 220))))
    assert fired == []


def test_crop_helper_clamps_on_the_image_it_is_given(helpers, fired):
    img = gradient(500, 400)
    out = helpers["__thyme_crop__"](img, [480, -5, 530, 20])
    assert np.array_equal(np.asarray(out), np.asarray(img.crop((436, 0, 500, 64))))
    helpers["__thyme_crop__"](img, np.array([300, 300, 100, 100]))
    assert fired == ["crop_clamp", "crop_clamp"]  # once per changed box


def test_crop_helper_with_a_float_box(helpers, fired):
    img = gradient(500, 400)
    assert helpers["__thyme_crop__"](img, (10.4, 10.6, 12.2, 300.0)).size == (64, 289)
    assert fired == ["crop_clamp"]


def test_crop_helper_leaves_other_objects_and_odd_boxes_alone(helpers, fired):
    class Croppable:
        size = (10, 10)

        def crop(self, box):
            return ("custom", box)

    assert helpers["__thyme_crop__"](Croppable(), (-1, -1, 5, 5)) == ("custom", (-1, -1, 5, 5))
    img = gradient(100, 80)
    assert helpers["__thyme_crop__"](img, None).size == (100, 80)  # PIL: no box means a copy
    with pytest.raises(Exception) as direct:
        img.crop((1, 2, 3))
    with pytest.raises(direct.type):  # PIL's own error for a malformed box still reaches the model
        helpers["__thyme_crop__"](img, (1, 2, 3))
    assert fired == []


# -- __thyme_slice__ ---
@pytest.mark.parametrize("shape", [(800, 1000), (800, 1000, 3), (800, 1000, 4)])
def test_slice_helper_clamps_image_arrays(helpers, fired, shape):
    arr = np.arange(np.prod(shape), dtype=np.int64).reshape(shape)
    out = helpers["__thyme_slice__"](arr, (slice(-20, 30), slice(990, 1200)))
    assert np.array_equal(out, arr[0:64, 936:1000])
    assert fired == ["crop_clamp"]


def test_slice_helper_keeps_what_numpy_would_do_anyway(helpers, fired):
    arr = np.arange(800 * 1000 * 3, dtype=np.int64).reshape(800, 1000, 3)
    same = helpers["__thyme_slice__"](arr, (slice(-100, -10), slice(0, 100)))
    assert np.array_equal(same, arr[-100:-10, 0:100]) and np.shares_memory(same, arr)
    trimmed = helpers["__thyme_slice__"](arr, (slice(10, -10), slice(10, -10)))
    assert trimmed.shape == (780, 980, 3)
    pixel = helpers["__thyme_slice__"](arr, (slice(5, 6), slice(7, 8), 0))
    assert np.array_equal(pixel, arr[5:6, 7:8, 0])
    assert fired == []


def test_slice_helper_passes_extra_index_elements_through(helpers):
    arr = np.arange(100 * 120 * 3, dtype=np.int64).reshape(100, 120, 3)
    out = helpers["__thyme_slice__"](arr, (slice(-5, 10), slice(0, 70), slice(None, None, -1)))
    assert np.array_equal(out, arr[0:64, 0:70, ::-1])


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((800, 1000, 16)),  # a feature map, not an image
        np.zeros((4, 800, 1000, 3)),  # a batch
        np.zeros((3, 4)).tolist(),  # not an array at all
    ],
)
def test_slice_helper_leaves_non_images_alone(helpers, fired, arr):
    index = (slice(-20, 30), slice(0, 5))
    try:
        expected = arr[index]
    except TypeError as exc:  # a list: the same error as the original expression
        with pytest.raises(TypeError, match=str(exc)[:20]):
            helpers["__thyme_slice__"](arr, index)
    else:
        assert np.array_equal(helpers["__thyme_slice__"](arr, index), expected)
    assert fired == []


def test_slice_helper_with_float_bounds_raises_like_numpy(helpers, fired):
    arr = np.zeros((100, 100), np.uint8)
    with pytest.raises(TypeError):
        helpers["__thyme_slice__"](arr, (slice(0.5, 50), slice(0, 50)))
    assert fired == []


def test_min_size_of_the_helpers(fired):
    small = make_runtime_helpers(fired.append, min_size=16)
    assert small["__thyme_crop__"](gradient(500, 400), (10, 10, 12, 12)).size == (16, 16)


# -- rewritten code, run ---
def run(code: str, **names):
    """Repair `code` as the worker does and execute it with the run-time helpers."""
    fired: list[str] = []
    outcome = apply_repairs(code, RepairContext(input_paths=(), output_dir="/unused"))
    scope = {**make_runtime_helpers(fired.append), **names}
    exec(compile(outcome.code, "<cell>", "exec"), scope)
    return scope, fired


def test_box_is_clamped_on_the_resized_image_not_the_original():
    img = gradient(1000, 750)
    scope, fired = run("small = img.resize((500, 400))\nc = small.crop((460, -20, 520, 30))", img=img)
    expected = img.resize((500, 400)).crop((436, 0, 500, 64))
    assert np.array_equal(np.asarray(scope["c"]), np.asarray(expected)) and fired == ["crop_clamp"]


def test_computed_boxes_are_clamped_too():
    code = "cx, cy = 1990, 10\nbox = [cx - 5, cy - 5, cx + 5, cy + 5]\nc = img.crop(box)"
    scope, fired = run(code, img=gradient(2000, 1500))
    assert scope["c"].size == (64, 64) and fired == ["crop_clamp"]


def test_good_crops_run_exactly_as_written():
    img = gradient(640, 480)
    scope, fired = run("a = img.crop((10, 20, 300, 400)).crop((5, 5, 100, 100))", img=img)
    assert np.array_equal(np.asarray(scope["a"]), np.asarray(img.crop((15, 25, 110, 120))))
    assert fired == []


def test_nested_crops_clamp_on_each_intermediate_image():
    img = gradient(640, 480)
    scope, fired = run("a = img.crop((600, 400, 700, 500)).crop((30, 30, 40, 40))", img=img)
    expected = img.crop((576, 400, 640, 480)).crop((0, 3, 64, 67))  # 64 x 80, then 64 x 64 inside it
    assert np.array_equal(np.asarray(scope["a"]), np.asarray(expected))
    assert fired == ["crop_clamp", "crop_clamp"]


def test_numpy_slices_in_opencv_style_code():
    arr = np.asarray(gradient(1000, 800))
    code = "cx, cy = 995, 5\nroi = arr[cy - 20:cy + 20, cx - 20:cx + 20]\nsame = arr[100:300, 100:300]"
    scope, fired = run(code, arr=arr)
    assert np.array_equal(scope["roi"], arr[0:64, 936:1000])
    assert np.array_equal(scope["same"], arr[100:300, 100:300])
    assert fired == ["crop_clamp"]


def test_custom_crop_method_and_stores_behave_as_before():
    class Cropper:
        def __init__(self):
            self.calls = []

        def crop(self, box):
            self.calls.append(box)
            return len(self.calls)

    arr = np.zeros((100, 100), np.uint8)
    scope, fired = run("r = c.crop((-5, -5, 1, 1))\narr[-5:3, 0:2] = 7", c=Cropper(), arr=arr)
    assert scope["r"] == 1 and scope["c"].calls == [(-5, -5, 1, 1)]
    assert arr.sum() == 0  # numpy's empty selection: a store is never redirected into the image
    assert fired == []
