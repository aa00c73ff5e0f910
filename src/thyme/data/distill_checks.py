"""The questions of `thyme data distill`, what a trajectory must satisfy to be kept, and how a kept one
becomes a portable sample.

`read_questions` reads the input rows (MCQs wrapped as the evaluation wraps them). `thyme data distill`
(`thyme.data.distill`) asks a teacher each question several times; `rejection` says why one attempt is not
kept (or None), using the evaluation's own rules (`thyme.eval.scoring`) and, optionally, its LLM judge
(`thyme.eval.judge`); `portable` copies a kept sample's images into the store and removes the machine's
sandbox path from prompts that state it.

    questions = read_questions("questions.jsonl")
    reason = rejection(trajectory, question, require_code=True, judge=None)   # None: keep it
    sample = portable(Sample.from_trajectory(trajectory, id=...), trajectory, store)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from thyme.data.rows import Row, RowError, read_rows
from thyme.data.sample import Sample
from thyme.data.store import SampleStore

# Why an attempt is not kept, in the order they are checked.
REASONS = ("error", "no_answer", "code_failed", "no_code", "wrong")


@dataclass(frozen=True)
class Question:
    """One input row, ready to ask: `prompt` is what the agent receives; `choices` {letter: text} or None."""

    row: Row
    prompt: str
    choices: Mapping[str, str] | None


def read_questions(path: str | Path, limit: int | None = None) -> list[Question]:
    """The questions of a file; a bad row (or an MCQ gold that is none of its choices) is a RowError."""
    from thyme.eval.scoring import gold_letter
    from thyme.protocol import normalize_options, wrap_mcq

    questions = []
    for row in read_rows(path, limit=limit):
        raw = row.fields.get("choices")
        if raw in (None, "", [], {}):
            questions.append(Question(row, row.question, None))
            continue
        try:
            choices = normalize_options(raw) if isinstance(raw, (list, dict)) else None
        except ValueError as exc:
            raise RowError(f"{row.where}: {exc}") from None
        if choices is None:
            raise RowError(f"{row.where}: choices must be a list or an object {{letter: text}}")
        if gold_letter(row.answer, choices) is None:
            raise RowError(
                f"{row.where}: the answer {row.answer!r} is none of the choices {', '.join(choices)}"
            )
        questions.append(Question(row, wrap_mcq(row.question, choices), choices))
    return questions


def is_right(answer: str | None, gold: str, choices: Mapping[str, str] | None = None) -> bool:
    """The evaluation's rules: MCQ letter, box IoU >= 0.5, yes/no, number, normalised text or math."""
    from thyme.eval import scoring

    if answer is None or not answer.strip():
        return False
    if choices:
        return scoring.extract_choice(answer, choices) == scoring.gold_letter(gold, choices)
    if scoring.parse_box(gold) is not None:
        return scoring.box_iou(answer, gold) >= 0.5
    if scoring.parse_number(gold) is None and gold.strip().lower().rstrip(".") in ("yes", "no"):
        return scoring.extract_yes_no(answer) == scoring.normalize_yes_no_gold(gold)
    if scoring.parse_number(gold) is not None and scoring.numbers_match(answer, gold):
        return True
    return scoring.exact_match(answer, gold) or scoring.math_equal(answer, gold)


def rejection(traj, question: Question, require_code: bool, judge=None) -> str | None:
    """Why a trajectory is not kept (one of REASONS), or None when it is."""
    final = traj.final
    if final is None or final.reason == "error":
        return "error"
    if final.reason != "answer" or not (traj.answer or "").strip():
        return "no_answer"
    shown = [o for o in traj.observations if o.fed_back]
    if any(o.error is not None or o.timed_out for o in shown):
        return "code_failed"
    if require_code and not shown:
        return "no_code"
    if is_right(traj.answer, question.row.answer, question.choices):
        return None
    if judge is not None:
        from thyme.eval.task import EvalSample

        row = question.row
        sample = EvalSample(row.given_id or row.where, row.question, row.answer, choices=question.choices)
        if judge.score(traj.answer, sample) == 1.0:
            return None
    return "wrong"


def portable(sample: Sample, traj, store: SampleStore) -> Sample:
    """The sample with its images copied into the store and, where the prompt states the image path (the
    released preset), the sandbox's own path replaced by `/mnt/data/<stored file>` in every text."""
    from thyme.agent.conversation import Piece
    from thyme.protocol import ImagePart, TextPart, get_preset

    stored = {}

    def keep(part):
        if isinstance(part, ImagePart):
            stored.setdefault(part.path, store.add_image(part.path))
            return ImagePart(stored[part.path])
        return part

    user = tuple(keep(p) for p in sample.user)
    assistant = [Piece(keep(p.part), p.source, p.token_ids) for p in sample.assistant]
    preset = get_preset(traj.preset)
    images = [p.path for p in user if isinstance(p, ImagePart)]
    seen = _stated_path(preset, traj, images[0] if images else None)
    if seen is not None:
        shown = f"/mnt/data/{images[0].name}"
        user = tuple(TextPart(p.text.replace(seen, shown)) if isinstance(p, TextPart) else p for p in user)
        assistant = [
            Piece(TextPart(p.part.text.replace(seen, shown)), p.source)
            if isinstance(p.part, TextPart) and seen in p.part.text
            else p
            for p in assistant
        ]
    return dataclasses.replace(sample, user=user, assistant=tuple(assistant))


def _stated_path(preset, traj, image: Path | None) -> str | None:
    """The image path the trajectory's prompt stated (the sandbox's), found by matching the preset's
    template; None when the preset states none."""
    if image is None or not preset.needs_image_path:
        return None
    from PIL import Image

    with Image.open(image) as img:
        size = img.size
    marker = "\x00path\x00"
    template = re.escape(preset.user_text(traj.question, image_path=marker, image_size=size))
    pattern = template.replace(re.escape(marker), "(?P<p>.+?)", 1).replace(re.escape(marker), "(?P=p)")
    match = re.fullmatch(pattern, traj.user_text, re.DOTALL)
    return match.group("p") if match else None
