"""The reward parts: small functions of one rollout, each returning a value in [0, 1] or None.

REFERENCE.md section 4 defines them; `thyme.rewards.combine` adds them up. Every part has the registry's
signature `part(inp: RewardInput, judge: RewardJudge | None = None) -> float | None`, where None means "this
row cannot be scored by this part" (TRL ignores it).

- `format`: the strict grammar (`thyme.protocol.has_valid_format`: `...</think>` + one whitespace +
  `<answer>...</answer>` and nothing after, one of each think/answer tag) *and* a non-blank answer, and the
  turn was neither cut by the repetition guard nor by a limit. The grammar itself allows `<answer></answer>`;
  paying format for it was the released code's hole, so the blank check lives here.
- `accuracy`: the answer (`thyme.protocol.extract_answer`: the first complete `<answer>`, its last
  `\\boxed{}`, lead-ins stripped) against the gold, by the evaluation's own rules (`thyme.eval.scoring`): the
  option letter when the row has choices, yes/no, normalised text, numbers and math (`math_equal`, with
  math-verify when installed). Only when the rules find no match on a free-form answer, and a judge is
  configured, does the judge decide. Missing, blank or repeated answers (two `<answer>` blocks) and rollouts
  cut by the repetition guard get 0 without asking anyone.
- `consistency`: a judge says whether the last 500 characters of the reasoning reach the answer given. It
  counts only for a right answer (0 otherwise: consistently wrong reasoning earns nothing) and is None
  without a judge.
- `code_success`: 1 when at least one code block ran and none failed (an optional tool-use term; it pays
  for working code whatever the answer, so give it a small weight).

Accuracy and consistency are also given in two halves, `check_answer` (the rules) and `accuracy_from` /
`consistency_from` (the judge), so that a batch can run the rules on the main thread and the judge's
questions concurrently while computing exactly what the single-row functions compute.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from thyme.eval.scoring import (
    exact_match,
    extract_choice,
    extract_yes_no,
    gold_letter,
    math_equal,
    normalize_answer,
)
from thyme.protocol import (
    AnswerSegment,
    ThinkTag,
    extract_answer,
    has_valid_format,
    parse_assistant,
    strip_answer_leadins,
)
from thyme.rewards.inputs import RewardInput
from thyme.rewards.registry import register_reward

if TYPE_CHECKING:
    from thyme.rewards.judge import RewardJudge

REASONING_TAIL_CHARS = 500  # what the consistency judge reads of the reasoning (REFERENCE section 4)


# -- the answer ---------------------------------------------------------------------------------------------
def final_answer(completion: str) -> str | None:
    """The answer a completion gives, lead-ins stripped; None when it is missing, blank or given twice.

    "Given twice" is two `<answer>` blocks (complete or not) outside code and sandbox output: a turn that
    answers again after its answer hedges, and only the first would be read.
    """
    segments = parse_assistant(completion)
    if sum(isinstance(s, AnswerSegment) for s in segments) != 1:
        return None
    answer = extract_answer(completion)
    if answer is None:
        return None
    answer = strip_answer_leadins(answer)
    return None if is_blank(answer) else answer


def is_blank(text: str) -> bool:
    """Nothing but whitespace and punctuation ("", "  ", ".", "..."): no answer at all."""
    return all(ch.isspace() or unicodedata.category(ch).startswith("P") for ch in text)


def gold_answer(answer: str) -> str:
    """The gold as text to compare with: `<answer>`/`\\boxed{}` wrappers and lead-ins removed."""
    return strip_answer_leadins(extract_answer(answer, require_tags=False) or "")


def rule_match(prediction: str, gold: str, choices: Mapping[str, str] | None = None) -> bool | None:
    """The evaluation's rules on one answer: True (equal), False (the rules decide it is wrong: option
    letters, yes/no) or None (no rule found them equal; a judge may know better)."""
    if choices:
        letter = gold_letter(gold, choices)
        if letter is not None:
            # The lenient reader with its contradiction check ("B. red" where red is A's text picks no
            # option), not VLMEvalKit's rule, which takes the letter: a reward must not pay for a hedge.
            return extract_choice(prediction, choices, matching="lenient") == letter
    if normalize_answer(gold) in ("yes", "no"):
        return extract_yes_no(prediction) == normalize_answer(gold)
    if exact_match(prediction, gold) or math_equal(prediction, gold):
        return True
    return None


def reasoning_tail(completion: str, chars: int = REASONING_TAIL_CHARS) -> str:
    """The last `chars` characters of the reasoning: the turn before its first answer, think tags removed
    (code, sandbox output and `<image>` placeholders kept, as the model saw them)."""
    kept = []
    for segment in parse_assistant(completion):
        if isinstance(segment, AnswerSegment):
            break
        if not isinstance(segment, ThinkTag):
            kept.append(segment.raw)
    return "".join(kept).strip()[-chars:].strip()


# -- the parts ----------------------------------------------------------------------------------------------
@register_reward("format")
def format_reward(inp: RewardInput, judge: RewardJudge | None = None) -> float:
    """1.0 for a well-formed, complete turn with a non-blank answer; else 0.0."""
    if inp.repetition_stopped or inp.truncated or not has_valid_format(inp.completion):
        return 0.0
    return float(final_answer(inp.completion) is not None)


@dataclass(frozen=True)
class AnswerCheck:
    """What the rules say about one row, before any judge.

    prediction: the usable answer (`final_answer`); None when it is missing, blank or repeated, or the
                repetition guard cut the turn.
    gold:       the gold as compared (`gold_answer`); blank means the row cannot be scored.
    verdict:    the rules' verdict (`rule_match`); None when they leave it open (or there is no prediction).
    """

    prediction: str | None
    gold: str
    verdict: bool | None


def check_answer(inp: RewardInput) -> AnswerCheck:
    """The rule-based half of accuracy. math-verify bounds its time only on the main thread, so batch
    callers run this there and only the judge questions elsewhere."""
    prediction = None if inp.repetition_stopped else final_answer(inp.completion)
    gold = gold_answer(inp.answer)
    verdict = None
    if prediction is not None and not is_blank(gold):
        verdict = rule_match(prediction, gold, inp.choices)
    return AnswerCheck(prediction, gold, verdict)


def accuracy_from(check: AnswerCheck, inp: RewardInput, judge: RewardJudge | None) -> float | None:
    """Accuracy from the rules' check, asking the judge where they left it open (see `accuracy_reward`)."""
    if is_blank(check.gold):
        return None
    if check.prediction is None:
        return 0.0
    verdict = check.verdict
    if verdict is None and judge is not None and judge.accuracy:
        verdict = judge.correct(inp.question, check.gold, check.prediction, inp.choices)
    return float(bool(verdict))


def consistency_from(
    check: AnswerCheck, inp: RewardInput, judge: RewardJudge | None, result: float | None
) -> float | None:
    """Consistency given the accuracy `result` (see `consistency_reward`)."""
    if judge is None or not judge.consistency:
        return None
    if not result or check.prediction is None:
        return 0.0
    verdict = judge.consistent(inp.question, reasoning_tail(inp.completion), check.prediction)
    return None if verdict is None else float(verdict)


@register_reward("accuracy")
def accuracy_reward(inp: RewardInput, judge: RewardJudge | None = None) -> float | None:
    """1.0 when the answer equals the gold (rules, then the judge for free-form answers); None when the
    gold itself is blank (the row cannot be scored)."""
    return accuracy_from(check_answer(inp), inp, judge)


@register_reward("consistency")
def consistency_reward(
    inp: RewardInput, judge: RewardJudge | None = None, *, result: float | None = None
) -> float | None:
    """1.0 when a right answer is what the reasoning concludes; 0.0 for a wrong or missing answer; None
    without a consistency judge or when it could not say. `result`: the accuracy, when already known."""
    if judge is None or not judge.consistency:
        return None
    check = check_answer(inp)
    return consistency_from(check, inp, judge, accuracy_from(check, inp, judge) if result is None else result)


@register_reward("code_success")
def code_success_reward(inp: RewardInput, judge: RewardJudge | None = None) -> float:
    """1.0 when at least one code block ran and none failed; else 0.0."""
    return float(inp.code_calls > 0 and inp.code_errors == 0)
