"""zoom: a large cluttered image holding small white labels whose content only a crop makes out.

Each label is a white card with a black border; on it is the target: a colour chip, a black shape, or 1-3
digits of the bitmap font. The canvas is many times larger than what the model sees (`budget`, max_pixels of
its processor), so at the model's resolution a label is a light dot a few pixels wide and its target is
mixed into the card around it; the gold code crops a small window around the label and enlarges it, after
which the target spans several vision tokens. Questions:

- ask="read": one label; what colour / shape / number is on it.
- ask="grid": several labels with different targets; which one holds the named target, answered as a cell
  "row R, column C" of a G x G grid (a coarse position a small model can learn).
- ask="box":  the same, answered with the label's bounding box [x1, y1, x2, y2] in pixels.
- ask="find": one label, which the code finds by itself: the card's white inside is the largest white region
  of the image (white decoys, clutter and background are smaller or darker), so the code thresholds, takes
  the largest connected component, crops around it and enlarges it. The code is the same for every sample:
  a small model learns to write it and to read the chip in the crop, without locating anything itself.
- ask="cell": one label inside one cell of a G x G grid (never straddling cells); the model names the cell
  and the code crops that cell, its box computed from the cell's row and column.

For "read", "grid" and "box" the gold code crops every label of the question (one image each) and enlarges
the crops `zoom` times; crop corners are multiples of `snap` px, so the numbers in the code are coarse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from thyme.data.toyworld import draw
from thyme.data.toyworld.base import (
    OUTPUT_PREFIX,
    CodeStep,
    Draft,
    TaskDef,
    article,
    as_array,
    choose,
    number,
    require,
)
from thyme.data.toyworld.read import (
    PROCESSOR_MIN_PIXELS,
    SMALL_MAX_PIXELS,
    model_view,
    read_colour,
    read_digits,
    read_shape,
    region,
    scale_box,
)

TARGETS = ("colour", "shape", "digits")
ASKS = ("read", "grid", "box", "find", "cell")
SINGLE = ("read", "find", "cell")  # asks about one label
FIND_MARGIN = 16  # px the find code keeps around the card's white inside (crops stay >= MIN_CROP)
MIN_CROP = 64  # the sandbox enlarges smaller crops (the released model's convention), so gold crops never are


@dataclass(frozen=True)
class ZoomKnobs:
    """How one zoom sample is drawn and asked.

    target:     what the label holds: "colour" (a chip), "shape" (a black shape) or "digits".
    ask:        "read" (what is on the one label), "grid" (which G x G cell holds the named label), "box",
                "find" (read the one label; the code locates it) or "cell" (read it; the model names the
                cell).
    canvas:     side of the square image, px.
    card:       height of a label card, px (digit labels grow wider to fit).
    target_px:  side of the chip or shape; for digits their height, a multiple of 7 (the font's height).
    digits:     how many digits a digit label shows (1-3).
    labels:     labels in the image: 1 for ask="read", "find" and "cell", 2-4 otherwise.
    grid:       G of the G x G grid; labels sit in distinct cells.
    decoys:     small white squares without a border (2-8 px): at the model's resolution they look like the
                card, and the find code must tell them apart (the largest white region is the card).
    clutter:    distractor shapes and lines in palette colours; clutter_px their size range, px.
    speckles:   palette-coloured dots of 2-8 px, which blur like a chip at low resolution.
    crop:       the smallest side of a gold crop, px (>= 64); snap: crop corners are multiples of it.
    zoom:       the gold code enlarges its crops this many times.
    budget:     max_pixels of the model view the level is calibrated for (the property tests check it).
    """

    target: str = "colour"
    ask: str = "read"
    canvas: int = 1792
    card: int = 40
    target_px: int = 16
    digits: int = 1
    labels: int = 1
    grid: int = 3
    decoys: int = 0
    clutter: int = 80
    clutter_px: tuple[int, int] = (24, 160)
    speckles: int = 300
    crop: int = 64
    snap: int = 8
    zoom: int = 4
    budget: int = SMALL_MAX_PIXELS

    def __post_init__(self) -> None:
        require(self.target in TARGETS, f"ZoomKnobs.target={self.target!r}; choose one of {TARGETS}")
        require(self.ask in ASKS, f"ZoomKnobs.ask={self.ask!r}; choose one of {ASKS}")
        require(1 <= self.digits <= 3, f"ZoomKnobs.digits={self.digits}; use 1, 2 or 3")
        if self.target == "digits":
            require(
                self.target_px % 7 == 0 and self.target_px >= 7,
                f"ZoomKnobs.target_px={self.target_px}: digit height must be a multiple of 7 "
                "(the font is 7 units high), e.g. 21",
            )
        require(
            self.target_px <= self.card - 2 * self.border - 4,
            f"ZoomKnobs.target_px={self.target_px} does not fit on a {self.card} px card; "
            f"use target_px <= {self.card - 2 * self.border - 4} or a larger card",
        )
        if self.ask in SINGLE:
            require(
                self.labels == 1, f"ZoomKnobs.labels={self.labels}: ask={self.ask!r} uses one label; set 1"
            )
        else:
            require(
                2 <= self.labels <= min(4, self.grid**2),
                f"ZoomKnobs.labels={self.labels}: ask={self.ask!r} needs 2-4 labels (at most grid**2)",
            )
        require(self.grid >= 2, f"ZoomKnobs.grid={self.grid}; use 2 or more")
        require(self.crop >= MIN_CROP, f"ZoomKnobs.crop={self.crop}: the sandbox enlarges crops below 64 px")
        require(self.snap >= 1, f"ZoomKnobs.snap={self.snap}; use 1 (exact corners) or more")
        require(1 <= self.zoom <= 8, f"ZoomKnobs.zoom={self.zoom}; use 1-8")
        lo, hi = self.clutter_px
        require(4 <= lo <= hi, f"ZoomKnobs.clutter_px={self.clutter_px}: use (min, max) with 4 <= min <= max")
        require(
            self.clutter >= 0 and self.speckles >= 0 and self.decoys >= 0,
            "ZoomKnobs.clutter, speckles and decoys must be >= 0",
        )
        if self.ask == "find":
            require(
                self.target == "colour", f"ZoomKnobs.target={self.target!r}: ask='find' reads a colour chip"
            )
        cell = self.canvas // (self.grid if self.gridded else 1)
        window = max(self.window)
        require(
            cell >= 2 * window + 2 * self.snap,
            f"ZoomKnobs.canvas={self.canvas} is too small for {self.labels} label(s) in a "
            f"{self.grid} x {self.grid} grid with {window} px crops; use canvas >= "
            f"{(2 * window + 2 * self.snap) * (self.grid if self.gridded else 1)}",
        )
        require(self.budget >= PROCESSOR_MIN_PIXELS, f"ZoomKnobs.budget={self.budget}; use >= {56 * 56}")

    @property
    def gridded(self) -> bool:
        """Labels sit in cells of the G x G grid (every ask but a whole-canvas single label)."""
        return self.ask not in ("read", "find")

    @property
    def border(self) -> int:
        return max(2, self.card // 12)

    @property
    def content_size(self) -> tuple[int, int]:
        """(width, height) of the target on the card, px (the widest digit label for digits)."""
        if self.target == "digits":
            return draw.text_size(self.digits, self.target_px // 7)
        return self.target_px, self.target_px

    @property
    def card_size(self) -> tuple[int, int]:
        pad = (self.card - self.target_px) // 2
        return max(self.card, self.content_size[0] + 2 * pad), self.card

    @property
    def window(self) -> tuple[int, int]:
        """(width, height) of a gold crop: the card, `snap` of play on each side and a margin, >= crop."""
        return tuple(  # type: ignore[return-value]
            math.ceil(max(self.crop, side + 2 * self.snap + 8) / self.snap) * self.snap
            for side in self.card_size
        )


LEVELS: dict[str, ZoomKnobs] = {
    "colour": ZoomKnobs(target="colour"),
    "shape": ZoomKnobs(target="shape", target_px=18),
    "digit": ZoomKnobs(target="digits", target_px=21, digits=1),
    "grid": ZoomKnobs(target="colour", ask="grid", labels=2, grid=3),
    "digits": ZoomKnobs(target="digits", target_px=21, digits=3),
    "grid-shape": ZoomKnobs(target="shape", target_px=18, ask="grid", labels=3, grid=4),
    "box": ZoomKnobs(target="colour", ask="box", labels=3, grid=4),
    # The code finds the label itself (thyme-tiny's zoom target); white decoys make "the largest white
    # region" the rule rather than "any white pixel".
    "find": ZoomKnobs(target="colour", ask="find", decoys=60),
    # The model names the label's cell of a 4 x 4 grid; the code crops the cell (448 px, seen at 224: the
    # chip is 8 px there, which the small model learns to read; DESIGN.md).
    "cell": ZoomKnobs(target="colour", ask="cell", grid=4, zoom=1),
    # Calibrated for a 256-token view (448 x 448): the same label on a twice larger canvas.
    "digits-hires": ZoomKnobs(
        target="digits", target_px=21, digits=3, canvas=3584, clutter=320, speckles=1200, budget=256 * 28 * 28
    ),
}


@dataclass(frozen=True)
class Label:
    card: draw.Box  # the card, in canvas px
    content: draw.Box  # the target on it
    value: str  # colour name, shape name, or digits
    window: draw.Box  # the gold crop around it


def _place(rng: np.random.Generator, k: ZoomKnobs, cell: draw.Box, value: str) -> Label:
    card_w, card_h = k.card_size
    win_w, win_h = k.window
    margin = k.snap
    x_lo = max(cell[0] + margin, (win_w - card_w) // 2 + k.snap)
    x_hi = min(cell[2] - margin - card_w, k.canvas - (win_w + card_w) // 2 - k.snap)
    y_lo = max(cell[1] + margin, (win_h - card_h) // 2 + k.snap)
    y_hi = min(cell[3] - margin - card_h, k.canvas - (win_h + card_h) // 2 - k.snap)
    x, y = int(rng.integers(x_lo, x_hi + 1)), int(rng.integers(y_lo, y_hi + 1))
    card = (x, y, x + card_w, y + card_h)
    content_w, content_h = (
        draw.text_size(len(value), k.target_px // 7) if k.target == "digits" else k.content_size
    )
    cx, cy = x + (card_w - content_w) // 2, y + (card_h - content_h) // 2
    if k.ask == "find":  # what the find code crops: the card's white inside and a margin
        window = draw.grow(draw.grow(card, -k.border), FIND_MARGIN)
    elif k.ask == "cell":
        window = cell
    else:
        wx = k.snap * math.floor((x + card_w / 2 - win_w / 2) / k.snap)
        wy = k.snap * math.floor((y + card_h / 2 - win_h / 2) / k.snap)
        window = (wx, wy, wx + win_w, wy + win_h)
    label = Label(card, (cx, cy, cx + content_w, cy + content_h), value, window)
    _check_window(label, k.canvas)
    return label


def _check_window(label: Label, canvas: int) -> None:
    """A crop window must hold its whole card and lie inside the canvas (a planning bug otherwise)."""
    w, c = label.window, label.card
    inside = w[0] >= 0 and w[1] >= 0 and w[2] <= canvas and w[3] <= canvas
    if not (inside and w[0] <= c[0] and w[1] <= c[1] and w[2] >= c[2] and w[3] >= c[3]):
        raise RuntimeError(f"gold crop {w} does not hold the label card {c} inside a {canvas} px canvas")


def _values(rng: np.random.Generator, k: ZoomKnobs) -> list[str]:
    if k.target == "colour":
        return choose(rng, draw.PALETTE, k.labels)
    if k.target == "shape":
        return choose(rng, draw.SHAPES, k.labels)
    values: list[str] = []
    while len(values) < k.labels:
        value = str(number(rng, int(rng.integers(1, k.digits + 1)) if k.ask != "read" else k.digits))
        if value not in values:
            values.append(value)
    return values


def _draw_label(image: Image.Image, k: ZoomKnobs, label: Label) -> None:
    draw.card(image, label.card, k.border)
    x, y = label.content[:2]
    if k.target == "colour":
        image.paste(draw.PALETTE[label.value], label.content)
    elif k.target == "shape":
        draw.paste_mask(image, draw.shape_mask(label.value, k.target_px), (x, y), draw.BLACK)
    else:
        draw.paste_mask(image, draw.text_mask(label.value, k.target_px // 7), (x, y), draw.BLACK)


def read_label(
    view: np.ndarray, label: Label, target: str, sx: float, sy: float, origin=(0, 0)
) -> str | None:
    """Read a label's target in `view`: an image whose pixel (0, 0) is canvas point `origin`, scaled by sx, sy
    from canvas pixels."""
    pad = max(2, (label.card[3] - label.card[1] - (label.content[3] - label.content[1])) // 4)
    box = draw.grow(label.content, 0 if target == "colour" else pad)
    box = (box[0] - origin[0], box[1] - origin[1], box[2] - origin[0], box[3] - origin[1])
    pixels = region(view, scale_box(box, sx, sy))
    if pixels.size == 0:
        return None
    if target == "colour":
        return read_colour(pixels)
    grey = pixels.astype(np.float32).mean(axis=-1)
    return read_shape(grey) if target == "shape" else read_digits(grey)


def _crop_code(windows: list[draw.Box], zoom: int) -> str:
    head = "from PIL import Image\nimg = Image.open(image_path)\n"
    resize = f"crop = crop.resize((crop.width * {zoom}, crop.height * {zoom}), Image.LANCZOS)\n"
    if len(windows) == 1:
        return (
            head + f"crop = img.crop({tuple(windows[0])})\n" + resize
            + f'processed_path = "{OUTPUT_PREFIX}/zoom_crop.png"\n'
            "crop.save(processed_path)\nprint(processed_path)"
        )  # fmt: skip
    boxes = ", ".join(str(tuple(w)) for w in windows)
    return (
        head + f"boxes = [{boxes}]\npaths = []\nfor i, box in enumerate(boxes):\n    crop = img.crop(box)\n"
        + "    " + resize + f'    path = f"{OUTPUT_PREFIX}/zoom_crop_{{i}}.png"\n'
        "    crop.save(path)\n    paths.append(path)\n"
        'processed_path = paths[0]\nprint("\\n".join(paths))'
    )  # fmt: skip


def _find_code(zoom: int) -> str:
    """The find code: the largest white region is the card's inside; crop it with a margin and enlarge."""
    return (
        "import cv2\nimport numpy as np\nfrom PIL import Image\n"
        'img = Image.open(image_path).convert("RGB")\n'
        "white = (np.asarray(img).min(axis=2) > 230).astype(np.uint8)\n"
        "n, _, stats, _ = cv2.connectedComponentsWithStats(white)\n"
        "x, y, w, h = (int(v) for v in stats[1 + np.argmax(stats[1:, 4]), :4])\n"
        f"m = {FIND_MARGIN}\n"
        "crop = img.crop((x - m, y - m, x + w + m, y + h + m))\n"
        f"crop = crop.resize((crop.width * {zoom}, crop.height * {zoom}), Image.LANCZOS)\n"
        f'processed_path = "{OUTPUT_PREFIX}/zoom_crop.png"\n'
        "crop.save(processed_path)\nprint(processed_path)"
    )


def _cell_code(grid: int, row: int, col: int, zoom: int) -> str:
    """The cell code: the model names the cell; the box comes from its row and column."""
    resize = f"crop = crop.resize((crop.width * {zoom}, crop.height * {zoom}), Image.LANCZOS)\n"
    return (
        "from PIL import Image\nimg = Image.open(image_path)\n"
        f"row, col = {row}, {col}\n"
        f"w, h = img.width // {grid}, img.height // {grid}\n"
        "crop = img.crop(((col - 1) * w, (row - 1) * h, col * w, row * h))\n"
        + (resize if zoom > 1 else "")
        + f'processed_path = "{OUTPUT_PREFIX}/zoom_cell.png"\n'
        "crop.save(processed_path)\nprint(processed_path)"
    )


def _expected_crop(image: Image.Image, window: draw.Box, zoom: int) -> Image.Image:
    crop = image.crop(window)
    return crop.resize((crop.width * zoom, crop.height * zoom), Image.LANCZOS)


def _phrase(target: str, value: str) -> str:
    return {
        "colour": f"has {article(value)} {value} chip",
        "shape": f"shows a {value}",
        "digits": f"shows the number {value}",
    }[target]


def _row_col(k: ZoomKnobs, label: Label) -> tuple[int, int]:
    """The 1-based (row, column) of the grid cell holding the label's centre."""
    cx, cy = (label.card[0] + label.card[2]) / 2, (label.card[1] + label.card[3]) / 2
    size = k.canvas / k.grid
    return int(cy // size) + 1, int(cx // size) + 1


def _cell(k: ZoomKnobs, label: Label) -> str:
    row, col = _row_col(k, label)
    return f"row {row}, column {col}"


def _centre(label: Label) -> str:
    return f"({(label.card[0] + label.card[2]) // 2}, {(label.card[1] + label.card[3]) // 2})"


def make(rng: np.random.Generator, k: ZoomKnobs) -> Draft:
    values = _values(rng, k)
    cells = [] if k.gridded else [(0, 0, k.canvas, k.canvas)]
    if k.gridded:
        size = k.canvas // k.grid
        for index in choose(rng, range(k.grid**2), k.labels):
            row, col = divmod(index, k.grid)
            cells.append((col * size, row * size, (col + 1) * size, (row + 1) * size))
    labels = [_place(rng, k, cell, value) for cell, value in zip(cells, values, strict=True)]
    wanted = labels[0]
    image = draw.gradient(rng, k.canvas, k.canvas)
    draw.clutter(
        rng, image, shapes=k.clutter, size=k.clutter_px, speckles=k.speckles,
        keep_clear=[draw.grow(label.window, k.snap) for label in labels],
    )  # fmt: skip
    if k.decoys:
        draw.clutter(
            rng, image, shapes=0, size=k.clutter_px, speckles=k.decoys, colours=(draw.WHITE,),
            keep_clear=[draw.grow(label.card, FIND_MARGIN + k.snap) for label in labels],
        )  # fmt: skip
    for label in labels:
        _draw_label(image, k, label)
    shown = sorted(labels, key=lambda lab: (lab.card[1] // (k.canvas // k.grid), lab.card[0]))
    windows = [label.window for label in shown]
    expected = tuple(_expected_crop(image, w, k.zoom) for w in windows)
    meta = {
        "answer_type": "text" if k.ask in SINGLE else k.ask,
        "image_size": [k.canvas, k.canvas],
        "target": k.target,
        "target_box": list(wanted.card),
        "content_box": list(wanted.content),
        "crop_boxes": [list(w) for w in windows],
        "labels": [{"box": list(lab.card), "value": lab.value} for lab in shown],
    }
    if k.ask == "read":
        return _read_draft(k, image, wanted, expected, meta)
    if k.ask in ("find", "cell"):
        return _located_draft(k, image, wanted, expected, meta)
    return _find_draft(k, image, wanted, shown, expected, meta)


def _read_back(k: ZoomKnobs, shown: list[Label]):
    """Reads each produced crop as the level's model sees it; the answer is what the crops say."""

    def read(outputs: list[np.ndarray]) -> list[str | None]:
        if len(outputs) != len(shown):
            return [None] * len(shown)
        values = []
        for label, output in zip(shown, outputs, strict=True):
            crop = Image.fromarray(output)
            view = as_array(model_view(crop, k.budget))
            s = view.shape[1] / crop.width * k.zoom, view.shape[0] / crop.height * k.zoom
            values.append(read_label(view, label, k.target, *s, origin=label.window[:2]))
        return values

    return read


def _read_draft(k, image, label, expected, meta) -> Draft:
    what = {
        "colour": "What colour is the chip on",
        "shape": "What shape is drawn on",
        "digits": "What number is written on",
    }
    said = {
        "colour": f"{article(label.value)} {label.value} chip",
        "shape": f"a {label.value}",
        "digits": f"the number {label.value}",
    }
    lead = (
        f"The small white label near {_centre(label)} is too small to make out at this resolution. "
        f"Crop around it and enlarge it {k.zoom} times."
    )
    reader = _read_back(k, [label])
    return Draft(
        image=image,
        question=f"{what[k.target]} the small white label?",
        answer=label.value,
        steps=(CodeStep(lead, _crop_code([label.window], k.zoom), expect_images=expected),),
        conclusion=f"The enlarged label shows {said[k.target]}.",
        direct=f"The small white label near {_centre(label)} seems to show {said[k.target]}.",
        meta=meta,
        read_back=lambda outputs: reader(outputs)[0],
    )


def _located_draft(k, image, label, expected, meta) -> Draft:
    """ask="find" (the code locates the card) and ask="cell" (the model names the card's grid cell)."""
    said = f"{article(label.value)} {label.value} chip"
    reader = _read_back(k, [label])
    if k.ask == "find":
        question = (
            "Somewhere in the image is a small white label with a black border. What colour is its chip?"
        )
        lead = (
            "The label is too small to make out at this resolution. Its white inside is the largest white "
            f"region of the image: find it with code, crop around it and enlarge it {k.zoom} times."
        )
        code, where = _find_code(k.zoom), "The small white label"
    else:
        row, col = _row_col(k, label)
        question = (
            f"The image is a {k.grid} x {k.grid} grid; one cell holds a small white label. "
            "What colour is its chip?"
        )
        lead = (
            f"The small white label is in row {row}, column {col} of the {k.grid} x {k.grid} grid, too small "
            "to make out. Crop that cell" + (f" and enlarge it {k.zoom} times." if k.zoom > 1 else ".")
        )
        code, where = (
            _cell_code(k.grid, row, col, k.zoom),
            f"The small white label in row {row}, column {col}",
        )
    return Draft(
        image=image,
        question=question,
        answer=label.value,
        steps=(CodeStep(lead, code, expect_images=expected),),
        conclusion=f"The label shows {said}.",
        direct=f"{where} seems to show {said}.",
        meta=meta,
        read_back=lambda outputs: reader(outputs)[0],
    )


def _find_draft(k, image, wanted, shown, expected, meta) -> Draft:
    phrase = _phrase(k.target, wanted.value)
    if k.ask == "grid":
        answer = _cell(k, wanted)
        how = (
            f'Divide the image into a {k.grid} x {k.grid} grid and answer with its cell as "row R, column C" '
            "(rows from the top, columns from the left, starting at 1)."
        )
        where = f"which is {answer} of the {k.grid} x {k.grid} grid"
    else:
        answer = "[" + ", ".join(str(v) for v in wanted.card) + "]"
        how = "Answer with its bounding box as [x1, y1, x2, y2] in pixels."
        where = f"whose box is {answer}"
    centres = ", ".join(_centre(label) for label in shown)
    ordinal = ("first", "second", "third", "fourth")[shown.index(wanted)]
    lead = (
        f"There are {len(shown)} small white labels, at about {centres}; at this resolution I cannot tell "
        f"which one {phrase}. Crop each and enlarge them {k.zoom} times."
    )
    seen = ", ".join(_phrase(k.target, label.value).split(" ", 1)[1] for label in shown)
    reader = _read_back(k, shown)

    def read_back(outputs: list[np.ndarray]) -> str | None:
        values = reader(outputs)
        if values.count(wanted.value) != 1:
            return None
        found = shown[values.index(wanted.value)]
        return _cell(k, found) if k.ask == "grid" else "[" + ", ".join(str(v) for v in found.card) + "]"

    return Draft(
        image=image,
        question=f"Several small white labels are scattered over the image. Which one {phrase}? {how}",
        answer=answer,
        steps=(
            CodeStep(lead, _crop_code([label.window for label in shown], k.zoom), expect_images=expected),
        ),
        conclusion=(
            f"The crops show, in order: {seen}. So the label that {phrase} is the {ordinal} one, at "
            f"{_centre(wanted)}, {where}."
        ),
        direct=f"The label that {phrase} is probably the one at {_centre(wanted)}, {where}.",
        meta=meta,
        read_back=read_back,
    )


TASK = TaskDef(
    name="zoom",
    description="a small label in a large cluttered image; crop and enlarge it to read its target",
    knobs=ZoomKnobs,
    levels=LEVELS,
    make=make,
)
