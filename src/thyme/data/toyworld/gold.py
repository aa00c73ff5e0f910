"""Gold trajectories: run a draft's code in the real sandbox, check what it produced, write the turn.

A gold trajectory is only written when its code did what the sample claims:

1. every step ran without error in a sandbox session opened on the sample's image;
2. a computing step printed exactly the expected text (the answer); an image step produced exactly the
   expected images, in order (pixels compared with the same operations done here);
3. the answer read back from the produced images, as the level's model would see them (`Draft.read_back`),
   or else the text the last step printed, equals the sample's answer, so a crop that misses the target, a
   wrong answer, or a wrong computation cannot pass;
4. the assembled turn parses back: the protocol's parser finds the same code, and the answer extractor the
   same answer, and it has the RL format reward's shape.

Anything else raises `GoldVerificationError`. Without a session (verify=False) the steps are not run: the
expected outputs stand in for the sandbox's, and checks 3-4 still apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from thyme.data.toyworld.base import Draft, code_block
from thyme.protocol import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    IMAGE_PLACEHOLDER,
    THINK_CLOSE,
    THINK_OPEN,
    code_blocks,
    extract_answer,
    feedback_text,
    has_valid_format,
)
from thyme.sandbox.config import SandboxConfig

PIXEL_TOLERANCE = 2  # grey levels a produced image may differ from the expected one (none in practice)


class GoldVerificationError(RuntimeError):
    """A gold trajectory did not do what its sample claims; the message names the sample and its seed."""


@dataclass(frozen=True)
class GoldRun:
    """A verified gold trajectory.

    response: the assistant turn, `<image>` for each fed-back image, exactly as the loop renders it.
    images:   the fed-back image files, in order (the sandbox's copies, or local renders when unverified).
    """

    response: str
    images: list[Path]


def answer_turn(thinking: str, answer: str) -> str:
    """`<think>thinking</think> <answer>answer</answer>`: the end of every toy-world turn."""
    return f"{THINK_OPEN}{thinking}{THINK_CLOSE} {ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def run_gold(draft: Draft, session, scratch: Path) -> GoldRun:
    """Run (or, without a session, stand in for) the draft's steps and return the checked trajectory.

    session: a sandbox session opened with the sample's image as its input, or None for verify=False.
    scratch: a directory for images rendered here when there is no session.
    """
    pieces: list[str] = []
    images: list[Path] = []
    text: str | None = None
    for number, step in enumerate(draft.steps):
        pieces.append(f"{step.lead} {code_block(step.code)}")
        if session is None:
            text, produced = step.expect_text, _render(step.expect_images, scratch, number)
        else:
            result = session.run(step.code)
            if not result.ok:
                # The traceback's last line says what went wrong, in one line.
                lines = (result.error or "no error text").strip().splitlines() or ["no error text"]
                reason = "timed out" if result.timed_out else lines[-1]
                raise GoldVerificationError(f"gold code step {number + 1} failed: {reason}")
            text, produced = result.text, list(result.images)
            _check_step(step, text, produced, number)
        pieces.append(feedback_text(text, produced, image_placeholder=IMAGE_PLACEHOLDER))
        images.extend(produced)
    # The answer must come out of the outputs: read from the images, or printed by the last step.
    if draft.read_back is not None:
        read = draft.read_back([_pixels(path) for path in images])
        if read != draft.answer:
            raise GoldVerificationError(
                f"the gold images read as {read!r}, not the answer {draft.answer!r} (target not in the crop?)"
            )
    elif (text or "").strip() != draft.answer:
        raise GoldVerificationError(
            f"the gold code printed {(text or '').strip()[:80]!r}, not {draft.answer!r}"
        )
    response = answer_turn("".join(pieces) + draft.conclusion, draft.answer)
    _check_turn(draft, response)
    return GoldRun(response, images)


def direct_response(draft: Draft) -> str:
    """The direct-answer variant: reasoning without code, then the answer."""
    response = answer_turn(draft.direct, draft.answer)
    if extract_answer(response) != draft.answer or not has_valid_format(response):
        raise GoldVerificationError(f"the direct answer turn does not parse back to {draft.answer!r}")
    return response


def _check_step(step, text: str, produced: list[Path], number: int) -> None:
    where = f"gold code step {number + 1}"
    if step.expect_text is not None:
        if produced or text.strip() != step.expect_text:
            raise GoldVerificationError(
                f"{where} printed {text.strip()[:80]!r} and {len(produced)} images; "
                f"expected {step.expect_text!r}"
            )
        return
    if len(produced) != len(step.expect_images):
        raise GoldVerificationError(
            f"{where} produced {len(produced)} images, expected {len(step.expect_images)}"
        )
    for index, (path, expected) in enumerate(zip(produced, step.expect_images, strict=True)):
        got, expected = _pixels(path), np.asarray(expected.convert("RGB"))
        if got.shape != expected.shape:
            raise GoldVerificationError(
                f"{where} image {index + 1} is {got.shape[1]}x{got.shape[0]}, "
                f"expected {expected.shape[1]}x{expected.shape[0]}"
            )
        diff = int(np.abs(got.astype(np.int16) - expected.astype(np.int16)).max())
        if diff > PIXEL_TOLERANCE:
            raise GoldVerificationError(
                f"{where} image {index + 1} differs from the expected one by {diff} levels"
            )


def _check_turn(draft: Draft, response: str) -> None:
    if extract_answer(response) != draft.answer:
        raise GoldVerificationError(f"the gold turn's answer does not parse back to {draft.answer!r}")
    if not has_valid_format(response):
        raise GoldVerificationError(
            "the gold turn does not have the <think>...</think> <answer>...</answer> shape"
        )
    parsed = [block.code for block in code_blocks(response)]
    if parsed != [step.code for step in draft.steps]:
        raise GoldVerificationError("the protocol parser does not find the gold code in the gold turn")


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _render(images, scratch: Path, number: int) -> list[Path]:
    """Save the expected images as the sandbox would (its default PNG level), so verified and unverified
    runs write the same bytes."""
    level = SandboxConfig().png_compress_level
    paths = []
    for index, image in enumerate(images):
        path = scratch / f"expected-{number}-{index}.png"
        image.save(path, **({} if level is None else {"compress_level": level}))
        paths.append(path)
    return paths
