"""How `thyme data verify` compares a re-run with a sample's claim: images, printed text, exception names.

Pure functions, no sandbox:

    image_distance(claimed_png, produced_png)        # 0.0 same look ... 1.0 opposite (or another shape)
    texts_match("x = 0.30000000000000004", "x = 0.3", rule="numeric", rel_tol=1e-6)   # True
    exception_name("Traceback ...\\nZeroDivisionError: division by zero")             # "ZeroDivisionError"

Images. Both are reduced to 32x32 RGB thumbnails with a box filter (each thumbnail pixel is the mean of its
area, so re-encoding noise and resampling differences average out), transparency composited over white;
the distance is the largest mean absolute difference of an 8x8 grid of tiles (4x4 thumbnail pixels each),
over 255. The worst tile rather than the whole mean, so that a small changed region (another digit on a
label) is not averaged away; RGB rather than grey, so that swapped colour channels (an RGB array saved
with OpenCV) are caught. Images whose width/height ratios differ by more than 10% are another shape (1.0).
Measured on toy-world outputs (4x crops of cluttered 1792 px scenes, rotations, contrast stretches):
PNG vs JPEG quality 75-90 <= 0.007; LANCZOS vs BICUBIC resampling <= 0.008, vs NEAREST <= 0.062; a crop
1 px larger on each side 0.11-0.19; shifted by 2 px >= 0.35; another region of the scene >= 0.35; another
label of the same scene >= 0.25; a wrong rotation >= 0.62; the unstretched low-contrast input >= 0.17. So
the default threshold 0.10 accepts re-encoding and resampling and rejects a different crop. Known limit:
tiny images (<= 32 px) of pure colour noise re-encoded as JPEG (chroma subsampling) can exceed it.

Text. Runs of whitespace collapse to one space on both sides. Under the "numeric" rule the numbers in the
text are compared as numbers: integers exactly, others within `rel_tol` (or 1e-9 absolute near zero), so a
float printed by another numpy or Python version still matches; the text around them must be equal.

Exception names. A sample's pieces do not say whether an output was an error, so this is the one place
that reads an exception type out of text: the last line that starts with a (dotted) name ending in Error,
Exception, Exit, Interrupt, Iteration or Warning, or a module's `error` (`cv2.error`), followed by ":" or
the end of the line.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np

THUMB_SIZE = 32
TILE_SIZE = 4
DEFAULT_IMAGE_THRESHOLD = 0.10
ASPECT_TOLERANCE = 0.10  # width/height ratios may differ by 10% (a crop box rounded differently)
TEXT_RULES = ("numeric", "exact")

_NUMBER_RE = re.compile(r"([-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)")
_EXCEPTION_RE = re.compile(
    r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Iteration|Warning)"
    r"|(?:[A-Za-z_]\w*\.)+error)(?::|[ \t]*$)",
    re.MULTILINE,
)


class ImageUnreadable(ValueError):
    """An image file that PIL cannot open."""


def thumbnail(path: str | os.PathLike[str]) -> tuple[np.ndarray, tuple[int, int]]:
    """The image as a [THUMB_SIZE, THUMB_SIZE, 3] float32 RGB thumbnail, and its (width, height)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            size = img.size
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                img = Image.new("RGBA", size, (255, 255, 255, 255))
                img.alpha_composite(rgba)
            small = img.convert("RGB").resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageUnreadable(f"cannot read {path} ({exc})") from None
    return np.asarray(small, dtype=np.float32), size


def thumb_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The largest tile's mean absolute difference of two thumbnails, over 255."""
    diff = np.abs(a - b).mean(axis=2)  # [THUMB, THUMB]
    tiles = THUMB_SIZE // TILE_SIZE
    per_tile = diff.reshape(tiles, TILE_SIZE, tiles, TILE_SIZE).mean(axis=(1, 3))  # [tiles, tiles]
    return float(per_tile.max() / 255.0)


def same_shape(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Width/height ratios within ASPECT_TOLERANCE of each other."""
    return abs(math.log((a[0] / a[1]) / (b[0] / b[1]))) <= math.log1p(ASPECT_TOLERANCE)


def image_distance(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> float:
    """How different two image files look, in [0, 1] (1.0 for another shape); raises ImageUnreadable."""
    (thumb_a, size_a), (thumb_b, size_b) = thumbnail(a), thumbnail(b)
    return thumb_distance(thumb_a, thumb_b) if same_shape(size_a, size_b) else 1.0


def texts_match(claimed: str, produced: str, *, rule: str = "numeric", rel_tol: float = 1e-6) -> bool:
    """Equal once whitespace runs collapse; under "numeric", non-integer numbers within `rel_tol`."""
    a, b = " ".join(claimed.split()), " ".join(produced.split())
    if a == b:
        return True
    if rule == "exact":
        return False
    pieces_a, pieces_b = _NUMBER_RE.split(a), _NUMBER_RE.split(b)
    if len(pieces_a) != len(pieces_b):
        return False
    for position, (x, y) in enumerate(zip(pieces_a, pieces_b, strict=True)):
        if x == y:
            continue
        if position % 2 == 0 or (_is_integer(x) and _is_integer(y)):  # text between numbers, or integers
            return False
        if not math.isclose(float(x), float(y), rel_tol=rel_tol, abs_tol=1e-9):
            return False
    return True


def exception_name(text: str | None) -> str | None:
    """The exception type a text names last (`ValueError`, `cv2.error`), or None."""
    names = _EXCEPTION_RE.findall(text or "")
    return names[-1] if names else None


def same_exception(a: str, b: str) -> bool:
    """The same type, compared by the last part of a dotted name (`PIL.UnidentifiedImageError`)."""
    return a.rsplit(".", 1)[-1] == b.rsplit(".", 1)[-1]


def _is_integer(number: str) -> bool:
    return not any(c in number for c in ".eE")
