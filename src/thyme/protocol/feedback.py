"""Render sandbox results back into the assistant turn, exactly as the released checkpoints expect.

No new user turn starts. Right after the segment that ended with `</code>`, the loop appends to the SAME
assistant message, with no whitespace anywhere in between:

    <sandbox_output>  then one image item per produced image, or the stripped printed text  </sandbox_output>

as three (or 2 + number-of-images) content parts, and generation continues the turn. An error is fed back
the same way, its text inside the tags (RL style). The released evaluation builds exactly these parts
(`eval/VLMEvalKit/vlmeval/vlm/thyme/model.py`), and RL rollouts append the same strings with ms-swift's
`<image>` placeholder per image (`swift/trainers/rlhf_trainer/grpo_trainer.py`).

Printed text cannot end the block early: a literal `</sandbox_output>` in it is rendered as
`&lt;/sandbox_output&gt;`, so the parser never mistakes sandbox output for model-written code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from thyme.protocol.grammar import SANDBOX_CLOSE, SANDBOX_OPEN

_CLOSE_RE = re.compile(re.escape(SANDBOX_CLOSE), re.IGNORECASE | re.ASCII)
_ESCAPED_CLOSE = "&lt;/sandbox_output&gt;"


@dataclass(frozen=True)
class TextPart:
    """A text content item of a chat message."""

    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image content item of a chat message: a file the caller can read."""

    path: Path


FeedbackPart = TextPart | ImagePart


class RendersAsFeedback(Protocol):
    """What feedback needs from an execution result (`thyme.sandbox.ExecutionResult` has both)."""

    @property
    def text(self) -> str: ...

    @property
    def images(self) -> Sequence[Path]: ...


def render_feedback(text: str | None, images: Sequence[Path] = ()) -> list[FeedbackPart]:
    """The parts that follow `</code>`: open tag, images (or the stripped text, or nothing), close tag.

    Images take precedence: when any image came back, printed text is not shown, as in the released loop.
    """
    parts: list[FeedbackPart] = [TextPart(SANDBOX_OPEN)]
    if images:
        parts.extend(ImagePart(Path(path)) for path in images)
    else:
        body = (text or "").strip()
        if body:
            parts.append(TextPart(_CLOSE_RE.sub(_ESCAPED_CLOSE, body)))
    parts.append(TextPart(SANDBOX_CLOSE))
    return parts


def render_result(result: RendersAsFeedback) -> list[FeedbackPart]:
    """`render_feedback` for an execution result: its images, else its text (stdout, or the error)."""
    return render_feedback(result.text, list(result.images))


def render_error(error: str) -> list[FeedbackPart]:
    """Error feedback: the error text inside the same tags, so the model can fix its code."""
    return render_feedback(error)


def flatten_parts(parts: Sequence[FeedbackPart], image_placeholder: str) -> str:
    """Join parts into one string, writing `image_placeholder` for each image (text-only backends, logs)."""
    return "".join(part.text if isinstance(part, TextPart) else image_placeholder for part in parts)


def feedback_text(text: str | None, images: Sequence[Path] = (), *, image_placeholder: str) -> str:
    """`render_feedback` as one string, with e.g. `<image>` (ms-swift) or the chat template's image tokens."""
    return flatten_parts(render_feedback(text, images), image_placeholder)
