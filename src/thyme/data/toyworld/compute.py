"""compute: numbers that are easy to read but whose product or sum is hard to work out "in the head".

The operands (each `digits[i]` digits long) are stated in the question text, or written in the image in
large bitmap digits (legible at the model's resolution: `in_image=True`), schoolbook style with the
operator on the last line. The gold code prints the exact result, which is the answer. For operands in the
text the image is a plain card showing the operator, so every sample has an image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from thyme.data.toyworld import draw
from thyme.data.toyworld.base import CodeStep, Draft, TaskDef, number, require
from thyme.data.toyworld.read import PATCH, SMALL_MAX_PIXELS

OPS = {"add": ("+", "sum", "plus"), "mul": ("*", "product", "times")}


@dataclass(frozen=True)
class ComputeKnobs:
    """How one compute sample is drawn and asked.

    op:       "add" (sum of all operands) or "mul" (product).
    digits:   the number of digits of each operand, e.g. (3, 2) for a 3-digit times a 2-digit number.
    in_image: the operands are written in the image (the question only names the operation).
    unit:     font unit of the written digits, px (digits are 7 units high).
    budget:   max_pixels of the model view the level is calibrated for (the written digits stay legible).
    """

    op: str = "mul"
    digits: tuple[int, ...] = (3, 2)
    in_image: bool = False
    unit: int = 4
    budget: int = SMALL_MAX_PIXELS

    def __post_init__(self) -> None:
        require(self.op in OPS, f"ComputeKnobs.op={self.op!r}; choose one of {tuple(OPS)}")
        object.__setattr__(self, "digits", tuple(self.digits))
        require(
            2 <= len(self.digits) <= 5 and all(1 <= d <= 9 for d in self.digits),
            f"ComputeKnobs.digits={self.digits}: give 2-5 operands of 1-9 digits each, e.g. (3, 2)",
        )
        smallest = [10 ** (d - 1) for d in self.digits]
        require(
            len(str(sum(smallest) if self.op == "add" else math.prod(smallest))) >= 4,
            f"ComputeKnobs.digits={self.digits}: every {OPS[self.op][1]} must have 4 or more digits (smaller "
            "ones are easy in the head); use longer or more operands, e.g. (4, 3, 3) or (3, 2)",
        )
        require(self.op == "add" or len(self.digits) <= 3, "ComputeKnobs: a product takes 2 or 3 operands")
        require(2 <= self.unit <= 8, f"ComputeKnobs.unit={self.unit}; use 2-8 px per font unit")

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height): the written sum and a margin, rounded up to whole vision tokens, >= 224 x 224."""
        u = self.unit
        width = draw.text_size(max(self.digits), u)[0] + 10 * u + 8 * u
        height = len(self.digits) * 9 * u + 3 * u + 8 * u
        return tuple(max(8 * PATCH, math.ceil(side / PATCH) * PATCH) for side in (width, height))  # type: ignore[return-value]


LEVELS: dict[str, ComputeKnobs] = {
    "add-text": ComputeKnobs(op="add", digits=(4, 3, 3)),
    "mul-text": ComputeKnobs(op="mul", digits=(3, 2)),
    "add-image": ComputeKnobs(op="add", digits=(4, 4, 3), in_image=True),
    "mul-image": ComputeKnobs(op="mul", digits=(3, 2), in_image=True),
    "mul-text-hard": ComputeKnobs(op="mul", digits=(4, 3)),
}


def _paper(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    tone = int(rng.integers(232, 250))
    return Image.new("RGB", size, (tone, tone, max(0, tone - int(rng.integers(0, 20)))))


def _operator(image: Image.Image, symbol: str, box: draw.Box, width: int) -> None:
    x1, y1, x2, y2 = box
    pen = ImageDraw.Draw(image)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    if symbol == "+":
        pen.line([(x1, cy), (x2, cy)], fill=draw.BLACK, width=width)
        pen.line([(cx, y1), (cx, y2)], fill=draw.BLACK, width=width)
    else:
        pen.line([(x1, y1), (x2, y2)], fill=draw.BLACK, width=width)
        pen.line([(x1, y2), (x2, y1)], fill=draw.BLACK, width=width)


def number_boxes(k: ComputeKnobs, operands: list[int]) -> list[draw.Box]:
    """Where each operand is written: right-aligned lines, one per operand, 9 font units apart."""
    u = k.unit
    width, _ = k.image_size
    right = width - 4 * u
    boxes = []
    for i, value in enumerate(operands):
        w, h = draw.text_size(len(str(value)), u)
        top = 4 * u + 9 * u * i
        boxes.append((right - w, top, right, top + h))
    return boxes


def _written_sum(rng: np.random.Generator, k: ComputeKnobs, operands: list[int]) -> Image.Image:
    image = _paper(rng, k.image_size)
    u = k.unit
    boxes = number_boxes(k, operands)
    for value, box in zip(operands, boxes, strict=True):
        draw.paste_mask(image, draw.text_mask(str(value), u), box[:2], draw.BLACK)
    last = boxes[-1]
    left = min(box[0] for box in boxes) - 9 * u
    _operator(image, OPS[k.op][0], (left, last[1] + u, left + 5 * u, last[1] + 6 * u), u)
    pen = ImageDraw.Draw(image)
    pen.rectangle((left, last[3] + u, last[2] - 1, last[3] + 2 * u - 1), fill=draw.BLACK)
    return image


def _operator_card(rng: np.random.Generator, k: ComputeKnobs) -> Image.Image:
    image = _paper(rng, k.image_size)
    w, h = image.size
    side = min(w, h) // 3
    box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
    _operator(image, OPS[k.op][0], box, max(4, side // 8))
    return image


def make(rng: np.random.Generator, k: ComputeKnobs) -> Draft:
    operands = [number(rng, d) for d in k.digits]
    symbol, noun, verb = OPS[k.op]
    result = sum(operands) if k.op == "add" else math.prod(operands)
    listed = ", ".join(str(v) for v in operands[:-1]) + f" and {operands[-1]}"
    expression = f" {symbol} ".join(str(v) for v in operands)
    if k.in_image:
        image = _written_sum(rng, k, operands)
        question = f"What is the {noun} of the numbers written in the image?"
        lead = f"The image shows {listed}. Their {noun} is hard to get right in my head, so compute it."
    else:
        image = _operator_card(rng, k)
        question = f"What is the {noun} of {listed}?"
        # The operands are in the question already: the code is the one place they are copied to, and the
        # conclusion copies the printed result once (each copy is a chance for a small model to slip).
        lead = f"This {noun} is hard to get right in my head, so compute it."
    words = f" {verb} ".join(str(v) for v in operands)
    return Draft(
        image=image,
        question=question,
        answer=str(result),
        steps=(CodeStep(lead, f"print({expression})", expect_text=str(result)),),
        conclusion=f"The code prints {result}.",
        direct=f"{words} is {result}.",
        meta={
            "answer_type": "number",
            "image_size": list(image.size),
            "operands": operands,
            "op": k.op,
            "number_boxes": [list(b) for b in number_boxes(k, operands)] if k.in_image else None,
        },
    )


TASK = TaskDef(
    name="compute",
    description="multi-digit sums and products (operands in the text or in the image); print the result",
    knobs=ComputeKnobs,
    levels=LEVELS,
    make=make,
)
