"""Gold crop-and-zoom drafts for one (image, question, answer, box) row, plain or augmented.

`thyme data from-boxes` (`thyme.data.boxes`) turns each row into toy-world `Draft`s, so the toy world's gold
machinery (`thyme.data.toyworld.gold.run_gold`) runs and checks them in the real sandbox and writes the turn.
Each variant is one code block that opens `image_path`, undoes the variant's transform, crops the box with a
margin, enlarges it, saves it under `/mnt/data/temp_processed_images/`, and prints `processed_path`:

- zoom:     the image as given;
- rotate:   the image turned by 90, 180 or 270 degrees counter-clockwise; the code turns it back (a quarter
            turn is a lossless pixel transpose) before cropping;
- contrast: the image's levels squeezed linearly into a narrow band (40-72 of 256 levels); the code
            stretches its darkest to its brightest level over 0-255 with numpy before cropping (exact, up
            to rounding, when the original spans the full range).

The expected crop is computed here with the same operations on the file the sandbox receives; `run_gold`
requires the sandbox's image to equal it, and `read_back` requires the crop window to hold the whole box.
Everything random (angle, squeeze, wording, file name) comes from the generator the caller seeds per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from thyme.data.rows import RowRejected
from thyme.data.toyworld.base import OUTPUT_PREFIX, CodeStep, Draft, choose
from thyme.data.toyworld.rotate import TURN_WORDS
from thyme.data.toyworld.zoom import MIN_CROP

VARIANTS = ("zoom", "rotate", "contrast")
AUGMENTATIONS = ("rotate", "contrast")
MAX_SIDE = 4096  # an enlarged crop never exceeds this many px a side (a lower zoom is used instead)
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Variant:
    """One variant of a row, before it runs.

    image:  the image the sample shows (the original, or the transformed copy the caller stores).
    body:   the gold code after its imports (the released preset puts `image_path = "..."` between).
    region: the box in `image`'s pixels (the sample's region); meta: JSON-ready facts (box, crop, zoom...).
    """

    name: str
    image: Image.Image
    question: str
    answer: str
    lead: str
    body: str
    conclusion: str
    region: Box
    meta: dict

    def code(self, source_path: str | None = None) -> str:
        """The gold code; with `source_path` (the path the prompt states) it first assigns `image_path`."""
        imports = (
            "import numpy as np\nfrom PIL import Image\n"
            if self.name == "contrast"
            else "from PIL import Image\n"
        )
        assign = f'image_path = "{source_path}"\n' if source_path is not None else ""
        return imports + assign + self.body

    def draft(self, stored: Image.Image, source_path: str | None = None) -> Draft:
        """The gold draft; its expected crop is computed from the image as stored (and decoded) for the
        sandbox, with the operations the code performs."""
        img = stored.convert("RGB")
        if self.name == "rotate":
            img = img.rotate((360 - self.meta["angle"]) % 360, expand=True)
        elif self.name == "contrast":
            img = stretch(img)
        window, box = self.meta["crop_box"], self.meta["box"]
        expected = enlarge(img.crop(tuple(window)), self.meta["zoom"])
        holds_box = all(window[i] <= box[i] for i in (0, 1)) and all(window[i] >= box[i] for i in (2, 3))
        answer = self.answer

        def read_back(outputs: list[np.ndarray]) -> str | None:
            # The answer is "in" the output when it is one image: the crop of a window around the whole box.
            if len(outputs) != 1 or outputs[0].shape[1::-1] != expected.size or not holds_box:
                return None
            return answer

        step = CodeStep(self.lead, self.code(source_path), expect_images=(expected,))
        return Draft(stored, self.question, answer, (step,), self.conclusion, direct="", read_back=read_back)


def box_values(value: object) -> tuple[float, float, float, float]:
    """A row's box [x1, y1, x2, y2] (a list, or text "x1, y1, x2, y2") as numbers; ValueError says why."""
    if isinstance(value, str):
        value = value.replace(",", " ").strip("[]() ").split()
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"box {value!r} is not four numbers; give [x1, y1, x2, y2]")
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"box {value!r} is not four numbers; give [x1, y1, x2, y2]") from None
    if not all(math.isfinite(v) and v >= 0 for v in (x1, y1, x2, y2)):
        raise ValueError(f"box {list(value)} has a negative or non-finite value")
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {list(value)} is empty; give [x1, y1, x2, y2] with x2 > x1 and y2 > y1")
    return x1, y1, x2, y2


def pixel_box(box: tuple[float, ...], size: tuple[int, int]) -> tuple[Box, bool]:
    """The box in whole pixels inside the image, and whether it was read as fractions (every value <= 1)."""
    width, height = size
    normalised = all(v <= 1 for v in box)
    scale = (width, height, width, height) if normalised else (1, 1, 1, 1)
    x1, y1, x2, y2 = (v * s for v, s in zip(box, scale, strict=True))
    # Fractions times sizes carry float noise (230 / 300 * 300 = 230.00000000000003): snap within 1e-6 px.
    x1, y1 = (max(0, math.floor(v + 1e-6)) for v in (x1, y1))
    x2, y2 = min(width, math.ceil(x2 - 1e-6)), min(height, math.ceil(y2 - 1e-6))
    clamped = (x1, y1, x2, y2)
    if clamped[2] <= clamped[0] or clamped[3] <= clamped[1]:
        raise RowRejected("box", f"box {list(box)} lies outside the {width}x{height} image")
    return clamped, normalised


def crop_window(box: Box, size: tuple[int, int], margin: int) -> Box:
    """The box grown by `margin`, at least MIN_CROP px a side (the sandbox enlarges smaller crops), inside."""
    if min(size) < MIN_CROP:
        raise RowRejected("image", f"the image is {size[0]}x{size[1]}; crops need {MIN_CROP} px a side")
    sides = []
    for lo, hi, limit in ((box[0], box[2], size[0]), (box[1], box[3], size[1])):
        lo, hi = max(0, lo - margin), min(limit, hi + margin)
        short = MIN_CROP - (hi - lo)
        if short > 0:
            lo, hi = lo - short // 2, hi + short - short // 2
            shift = max(0, -lo) - max(0, hi - limit)
            lo, hi = lo + shift, hi + shift
        sides.append((lo, hi))
    (left, right), (top, bottom) = sides
    return left, top, right, bottom


def zoom_factor(window: Box, zoom: float) -> float:
    """`zoom` to two decimals, lowered (never below 1) so that the enlarged crop stays within MAX_SIDE."""
    side = max(window[2] - window[0], window[3] - window[1])
    return round(max(1.0, min(zoom, MAX_SIDE / side)), 2)


def enlarge(crop: Image.Image, factor: float) -> Image.Image:
    """The crop enlarged as the gold code does it (LANCZOS, sizes rounded by Python's `round`)."""
    if factor == 1:
        return crop
    return crop.resize((round(crop.width * factor), round(crop.height * factor)), Image.LANCZOS)


def rotated_box(box: Box, size: tuple[int, int], angle: int) -> Box:
    """Where `box` of an upright image of `size` lies after PIL's `rotate(angle, expand=True)` (CCW)."""
    width, height = size
    x1, y1, x2, y2 = box
    return {
        90: (y1, width - x2, y2, width - x1),
        180: (width - x2, height - y2, width - x1, height - y1),
        270: (height - y2, x1, height - y1, x2),
    }[angle]


def squeeze(image: Image.Image, low: int, band: int) -> Image.Image:
    """The image's levels mapped linearly from 0-255 onto low..low+band: a washed-out copy."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray(np.rint(low + pixels * (band / 255.0)).astype(np.uint8))


def stretch(image: Image.Image) -> Image.Image:
    """Its darkest to brightest level stretched over 0-255: what the contrast code does, done here."""
    pixels = np.asarray(image.convert("RGB")).astype(np.float32)
    low, high = pixels.min(), pixels.max()
    pixels = (pixels - low) * (255.0 / max(high - low, 1.0))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


# The gold code's lines that undo a transform (`img` is the opened RGB image); `stretch` does the same here.
_STRETCH_CODE = (
    "pixels = np.asarray(img).astype(np.float32)\n"
    "low, high = pixels.min(), pixels.max()\n"
    "pixels = (pixels - low) * (255.0 / max(high - low, 1.0))\n"
    "img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))\n"
)
_ZOOM_WORDS = (
    "The question is about the region at {box}; its details are small at this resolution. Crop it with a "
    "margin and enlarge it{times}.",
    "To answer I need a closer look at the area {box}. Crop that part of the image and zoom in{times}.",
)
_CONCLUSIONS = (
    "The enlarged crop shows the region clearly.",
    "With the region enlarged, its details are easy to make out.",
)


def _body(rng: np.random.Generator, window: Box, factor: float, stem: str, undo: str) -> str:
    """The code after its import: open, undo the transform, crop, enlarge, save, print `processed_path`."""
    code = 'img = Image.open(image_path).convert("RGB")\n' + undo + f"crop = img.crop({tuple(window)})\n"
    if factor == int(factor) and factor != 1:
        size = f"(crop.width * {factor:g}, crop.height * {factor:g})"
    else:
        size = f"(round(crop.width * {factor:g}), round(crop.height * {factor:g}))"
    if factor != 1:
        code += f"crop = crop.resize({size}, Image.LANCZOS)\n"
    name = f"{stem}_{int(rng.integers(16**6)):06x}.png"
    return (
        code + f'processed_path = "{OUTPUT_PREFIX}/{name}"\ncrop.save(processed_path)\nprint(processed_path)'
    )


def build_variant(
    name: str,
    rng: np.random.Generator,
    image: Image.Image,
    question: str,
    answer: str,
    box: Box,
    *,
    zoom: float,
    margin: int,
) -> Variant:
    """One variant of a row (`name` in VARIANTS); `box` is in `image`'s pixels (see `pixel_box`)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    upright = image.convert("RGB")
    window = crop_window(box, upright.size, margin)
    factor = zoom_factor(window, zoom)
    times = "" if factor == 1 else f" {factor:g} times"
    words = choose(rng, _ZOOM_WORDS).format(box=list(box), times=times)
    meta = {"variant": name, "box": list(box), "crop_box": list(window), "zoom": factor}
    shown, undo, region, stem = upright, "", box, "zoom"
    if name == "rotate":
        angle = int(choose(rng, (90, 180, 270)))
        back = (360 - angle) % 360
        shown, stem = upright.rotate(angle, expand=True), "upright"
        undo = f"img = img.rotate({back}, expand=True)\n"
        region, meta["angle"] = rotated_box(box, upright.size, angle), angle
        turn = (
            f"The image is turned {TURN_WORDS[angle]}; first rotate it by {back} degrees to make it upright."
        )
        words = f"{turn} {words}"
    elif name == "contrast":
        low, band = int(rng.integers(60, 121)), int(rng.integers(40, 73))
        shown, undo, stem = squeeze(upright, low, band), _STRETCH_CODE, "enhanced"
        meta["squeeze"] = [low, low + band]
        words = f"The image is washed out, with very little contrast; first stretch its levels. {words}"
    body = _body(rng, window, factor, f"{stem}_crop", undo)
    return Variant(name, shown, question, answer, words, body, choose(rng, _CONCLUSIONS), region, meta)
