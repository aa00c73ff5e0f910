"""What a reward sees of one rollout (`RewardInput`), and how TRL's reward-function arguments become it.

TRL calls a reward function with the completions and, per row, every dataset column as a keyword
(`thyme.rewards.combine.ThymeReward` is one). `reward_inputs` turns those into typed rows once, so each reward
part reads fields instead of guessing at dictionaries. The columns read:

- `answer` (required): the gold answer. Plain text, or text holding `<answer>...</answer>` and/or
  `\\boxed{...}`, reduced the way model answers are (`thyme.protocol.extract_answer`). Thyme-RL's `solution`
  column is this column under another name: rename it when converting the data.
- `question` (optional): the question as the judge should read it (no image path lines or wrappers).
- `choices` (optional): MCQ options, `{"A": "red", ...}` or `["red", ...]` (lettered A, B, ...); None-valued
  keys are dropped (a datasets struct column fills missing keys with None).
- `rollout` (optional): what happened in the rollout, a mapping or an object with the attributes
  `code_calls` (code blocks that ran and were fed back), `code_errors` (of those, how many failed or timed
  out), `repetition_stopped` (the repetition guard cut a step), `truncated` (a length, context or step
  limit ended the turn). `thyme.train.rollout.RolloutFacts` (or its `as_dict()`) has exactly these.

A completion is the assistant turn as text, `<image>` where a sandbox image was fed back; TRL's
conversational form (a list of messages whose content is text or a list of text/image parts) is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from thyme.protocol import IMAGE_PLACEHOLDER, normalize_options


@dataclass(frozen=True)
class RewardInput:
    """One rollout as the reward parts see it (see the module docstring for each field's meaning)."""

    completion: str
    answer: str
    question: str = ""
    choices: Mapping[str, str] | None = None
    code_calls: int = 0
    code_errors: int = 0
    repetition_stopped: bool = False
    truncated: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.completion, str) or not isinstance(self.answer, str):
            raise TypeError("RewardInput.completion and .answer must be text")
        if self.code_calls < 0 or not 0 <= self.code_errors <= self.code_calls:
            raise ValueError(
                f"code_calls={self.code_calls}, code_errors={self.code_errors}: need "
                "0 <= code_errors <= code_calls (errors count among the calls)"
            )


_FACTS = {"code_calls": 0, "code_errors": 0, "repetition_stopped": False, "truncated": False}


def reward_inputs(completions: Sequence[Any], columns: Mapping[str, Any]) -> list[RewardInput]:
    """Typed rows from TRL's `completions` and per-row keyword columns (`answer`, `question`, `choices`,
    `rollout`); other keywords (TRL's `trainer_state`, `log_metric`, other columns) are ignored."""
    n = len(completions)
    if "answer" not in columns:
        raise ValueError(
            "the reward needs an `answer` column (the gold answer) in the training data; "
            "rename Thyme-RL's `solution` column to `answer`"
        )
    answers = _column(columns, "answer", n)
    questions = _column(columns, "question", n)
    choices = _column(columns, "choices", n)
    rollouts = _column(columns, "rollout", n)
    rows = []
    for i in range(n):
        facts = _facts(rollouts[i])
        rows.append(
            RewardInput(
                completion=completion_text(completions[i]),
                answer="" if answers[i] is None else str(answers[i]),
                question="" if questions[i] is None else str(questions[i]),
                choices=_choices(choices[i]),
                **facts,
            )
        )
    return rows


def _column(columns: Mapping[str, Any], name: str, n: int) -> Sequence[Any]:
    values = columns.get(name)
    if values is None:
        return [None] * n
    if isinstance(values, str | bytes) or len(values) != n:
        raise ValueError(f"the `{name}` column must hold one value per completion ({n})")
    return values


def _facts(rollout: Any) -> dict[str, Any]:
    if rollout is None:
        return dict(_FACTS)
    read = (
        rollout.get if isinstance(rollout, Mapping) else lambda key, default: getattr(rollout, key, default)
    )
    facts = {}
    for key, default in _FACTS.items():
        value = read(key, default)
        facts[key] = int(value) if isinstance(default, int) and not isinstance(default, bool) else bool(value)
    return facts


def _choices(value: Any) -> dict[str, str] | None:
    if not value:
        return None
    if isinstance(value, Mapping):
        value = {key: text for key, text in value.items() if text is not None}
        if not value:
            return None
    return normalize_options(value)


def completion_text(completion: Any) -> str:
    """The assistant turn as text: a string as it is, or TRL's list of messages (assistant contents joined,
    image parts as `<image>`)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        texts = []
        for message in completion:
            if not isinstance(message, Mapping):
                break
            if message.get("role", "assistant") == "assistant":
                texts.append(_content_text(message.get("content")))
        else:
            return "".join(texts)
    raise TypeError(
        f"a completion must be text or a list of chat messages, not {type(completion).__name__}; "
        "pass the assistant turn"
    )


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            parts.append(str(part.get("text", "")))
        elif kind in ("image", "image_url"):
            parts.append(IMAGE_PLACEHOLDER)
        else:
            raise TypeError(f"a message content part must be text or an image, not {part!r:.60}")
    return "".join(parts)
