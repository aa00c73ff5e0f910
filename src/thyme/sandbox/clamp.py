"""Crop clamping: keep the model's crops on the image it is actually cropping.

The released Thyme model writes boxes that run off the image, have their corners swapped, or are a few
pixels wide; the reference sandbox it was trained with silently fixed such boxes (REFERENCE.md section 2.3):
sort the corners, clamp them into the image and enlarge every side to at least `MIN_CROP_DIMENSION` pixels,
shifting the box inside the image. The reference only saw literal boxes and always used the original image's
size; here the `crop_clamp` repair (`thyme.sandbox.repairs`) routes every `E.crop(box)` call and every
`E[a:b, c:d]` slice through the two runtime helpers below, which clamp against the object at hand:

    __thyme_crop__(obj, box)    PIL images with a 4-number box; anything else calls obj.crop(box) unchanged
    __thyme_slice__(obj, idx)   numpy image arrays (H x W or H x W x C, C <= 4) with int bounds; else obj[idx]

Both return what the original expression would have returned when the box needs no change, and call
`record("crop_clamp")` each time they do change one, so a session can report the repair. `clamp_box` and
`clamp_slices` are the pure rules, usable (and tested) on their own.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

MIN_CROP_DIMENSION = 64
"""The smallest side a clamped crop keeps (the reference's value); smaller images are taken whole."""

Number = int | float


def clamp_box(
    box: Sequence[Number] | np.ndarray, width: int, height: int, min_size: int = MIN_CROP_DIMENSION
) -> tuple[Number, Number, Number, Number]:
    """Clamp a PIL-style box `(x1, y1, x2, y2)` into a `width` x `height` image.

    Corners are sorted, clamped into [0, width] x [0, height], and a side shorter than `min_size` is grown
    to `min_size` around its centre (shifted back inside the image), or to the whole side when the image
    is smaller than that. Integer boxes stay integers (Python ints); a box with any float stays float,
    which PIL rounds when cropping. Raises ValueError when `box` is not four finite real numbers.
    """
    values = _box_values(box)
    if values is None:
        raise ValueError(f"a crop box must be four finite numbers (x1, y1, x2, y2), got {box!r}")
    as_int = all(isinstance(v, numbers.Integral) for v in values)
    x1, y1, x2, y2 = (int(v) if as_int else float(v) for v in values)
    x1, x2 = _clamp_axis(x1, x2, int(width), min_size)
    y1, y2 = _clamp_axis(y1, y2, int(height), min_size)
    return x1, y1, x2, y2


def clamp_slices(
    y: slice, x: slice, height: int, width: int, min_size: int = MIN_CROP_DIMENSION
) -> tuple[slice, slice]:
    """Clamp the row and column slices of `array[y, x]` like a crop box on a `height` x `width` image.

    Bounds follow numpy's negative-index rules where they make sense for a crop: both bounds negative
    index from the end; a negative start with a non-negative stop is a box that ran off the top/left edge
    (the start becomes 0); a negative stop alone counts from the end. Slices that are not a crop are
    returned unchanged: a step, a missing or non-integer bound, or an extent below 2 on either axis
    (a 1-pixel slice is a pixel read).
    """
    if not (_is_plain_int_slice(y) and _is_plain_int_slice(x)):
        return y, x
    y1, y2 = _normalise_bounds(int(y.start), int(y.stop), int(height))
    x1, x2 = _normalise_bounds(int(x.start), int(x.stop), int(width))
    if abs(y2 - y1) < 2 or abs(x2 - x1) < 2:
        return y, x
    y1, y2 = _clamp_axis(y1, y2, int(height), min_size)
    x1, x2 = _clamp_axis(x1, x2, int(width), min_size)
    return slice(y1, y2), slice(x1, x2)


def make_runtime_helpers(
    record: Callable[[str], None], min_size: int = MIN_CROP_DIMENSION
) -> dict[str, Callable[..., Any]]:
    """The helpers that rewritten code calls, keyed by the names the `crop_clamp` repair emits."""

    def thyme_crop(obj: Any, box: Any) -> Any:
        if isinstance(obj, Image.Image) and _is_int_pair(obj.size) and _box_values(box) is not None:
            width, height = obj.size
            clamped = clamp_box(box, width, height, min_size)
            if _differs(clamped, _box_values(box)):
                record("crop_clamp")
                return obj.crop(clamped)
        return obj.crop(box)

    def thyme_slice(obj: Any, index: tuple[Any, ...]) -> Any:
        if _is_image_array(obj) and len(index) >= 2:
            y, x = index[0], index[1]
            height, width = obj.shape[:2]
            new_y, new_x = clamp_slices(y, x, height, width, min_size)
            if (new_y, new_x) != (y, x) and _selection_changed(y, new_y, height, x, new_x, width):
                record("crop_clamp")
                return obj[(new_y, new_x, *index[2:])]
        return obj[index]

    return {"__thyme_crop__": thyme_crop, "__thyme_slice__": thyme_slice}


def _clamp_axis(lo: Number, hi: Number, size: int, min_size: int) -> tuple[Number, Number]:
    """One axis of a box: sort, clamp into [0, size], grow to min(min_size, size) around the centre."""
    as_int = isinstance(lo, int) and isinstance(hi, int)
    lo, hi = min(lo, hi), max(lo, hi)
    lo, hi = min(max(lo, 0), size), min(max(hi, 0), size)
    target = max(min(min_size, size), 0)
    if hi - lo < target:
        # Integer boxes stay integer: the centre is floored, which keeps the side exactly `target`.
        start = (lo + hi - target) // 2 if as_int else (lo + hi - target) / 2
        lo = min(max(start, 0), size - target)
        hi = lo + target
    return (int(lo), int(hi)) if as_int else (float(lo), float(hi))


def _normalise_bounds(start: int, stop: int, size: int) -> tuple[int, int]:
    if start < 0 and stop < 0:
        return start + size, stop + size
    if start < 0:
        return 0, stop
    if stop < 0:
        return start, stop + size
    return start, stop


def _box_values(box: Any) -> tuple[Number, ...] | None:
    """The four coordinates of a tuple, list or 1-D numpy array of finite real numbers; None otherwise."""
    if isinstance(box, np.ndarray):
        if box.ndim != 1 or box.shape[0] != 4:
            return None
        values = tuple(box.tolist())
    elif isinstance(box, (tuple, list)) and len(box) == 4:
        values = tuple(box)
    else:
        return None
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            return None
    return values


def _differs(new: Sequence[Number], old: Sequence[Number]) -> bool:
    return any(float(a) != float(b) for a, b in zip(new, old, strict=True))


def _is_int_pair(size: Any) -> bool:
    return (
        isinstance(size, tuple)
        and len(size) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in size)
    )


def _is_plain_int_slice(s: Any) -> bool:
    return (
        isinstance(s, slice)
        and s.step is None
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (s.start, s.stop))
    )


def _is_image_array(obj: Any) -> bool:
    return isinstance(obj, np.ndarray) and (obj.ndim == 2 or (obj.ndim == 3 and obj.shape[2] <= 4))


def _selection_changed(y: slice, new_y: slice, height: int, x: slice, new_x: slice, width: int) -> bool:
    """Whether the clamped slices select other pixels than the written ones (not just other numbers)."""

    def span(s: slice, size: int) -> tuple[int, int]:
        start, stop, _ = s.indices(size)
        return (start, stop) if stop > start else (0, 0)

    return span(y, height) != span(new_y, height) or span(x, width) != span(new_x, width)
