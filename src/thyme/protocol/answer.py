"""Answer extraction and the format check: pure functions over the text of an assistant turn.

`extract_answer` is what evaluation scores and what the RL accuracy reward compares: the first complete
`<answer>...</answer>` (found by the shared parser, so an answer printed inside sandbox output or quoted in
code never counts), stripped, and reduced to the last balanced `\\boxed{...}` when it holds one, as the
released evaluation does. `has_valid_format` is the RL format reward's test. All functions run in linear
time, whatever the input.
"""

from __future__ import annotations

import re

from thyme.protocol.grammar import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from thyme.protocol.parser import parse_assistant
from thyme.protocol.segments import AnswerSegment

_BOX_OPEN = "\\boxed{"

# Lead-ins that models put before an answer (REFERENCE section 4), matched case-insensitively at the start.
# Longer phrases come first so that "the answer is" does not cut "the answer is" out of a longer one.
ANSWER_LEADINS = (
    "therefore, the answer is",
    "therefore the answer is",
    "the correct answer is",
    "the correct option is",
    "the final answer is",
    "the best answer is",
    "the best option is",
    "so the answer is",
    "the answer is",
    "correct answer:",
    "final answer:",
    "best answer:",
    "best option:",
    "the answer:",
    "answer:",
)
_SPACE_RE = re.compile(r"\s*")


def extract_answer(text: str, *, require_tags: bool = True) -> str | None:
    """The final answer of a turn, or None when it has no complete `<answer>` block.

    With `require_tags=False` a turn without any answer block is taken whole as the answer (direct-answer
    prompts that do not ask for tags, such as the released fallback prompt).
    """
    for segment in parse_assistant(text):
        if isinstance(segment, AnswerSegment) and segment.complete:
            return _reduce(segment.text)
    if require_tags:
        return None
    return _reduce(text)


def _reduce(answer: str) -> str:
    answer = answer.strip()
    boxed = last_boxed(answer)
    return answer if boxed is None else boxed


def last_boxed(s: str) -> str | None:
    """Content of the last `\\boxed{...}` whose braces balance (nested braces handled), stripped.

    Escaped braces (`\\{`, `\\}`) do not count. When no box balances, the content of the last box up to the
    end of `s` is returned (a truncated answer); None when there is no box at all.
    """
    opens = _box_positions(s)
    if not opens:
        return None
    closing = _matching_braces(s)
    for brace in reversed(opens):
        if brace in closing:
            return s[brace + 1 : closing[brace]].strip()
    return s[opens[-1] + 1 :].strip()


def _box_positions(s: str) -> list[int]:
    """Index of the `{` of every `\\boxed{` in `s`."""
    positions = []
    at = s.find(_BOX_OPEN)
    while at != -1:
        positions.append(at + len(_BOX_OPEN) - 1)
        at = s.find(_BOX_OPEN, at + len(_BOX_OPEN))
    return positions


def _matching_braces(s: str) -> dict[int, int]:
    """Map each `{` that has a matching `}` to the index of that `}` (one pass with a stack)."""
    matches: dict[int, int] = {}
    stack: list[int] = []
    i = 0
    while i < len(s):
        char = s[i]
        if char == "\\":
            i += 2  # an escaped character, braces included, is literal
            continue
        if char == "{":
            stack.append(i)
        elif char == "}" and stack:
            matches[stack.pop()] = i
        i += 1
    return matches


def strip_answer_leadins(s: str) -> str:
    """Remove lead-ins such as "The answer is" or "Answer:" from the start of `s` (repeatedly).

    A single trailing period is removed too when a lead-in was, since it ends that sentence
    ("The answer is 12." -> "12").
    """
    pos = 0
    stripped = False
    while True:
        start = _SPACE_RE.match(s, pos).end()
        for leadin in ANSWER_LEADINS:
            if s[start : start + len(leadin)].lower() == leadin:
                pos = start + len(leadin)
                if s.startswith(":", pos):
                    pos += 1
                stripped = True
                break
        else:
            break
    rest = s[pos:].strip()
    if stripped and rest.endswith(".") and not rest.endswith(".."):
        rest = rest[:-1].rstrip()
    return rest


def has_valid_format(completion: str) -> bool:
    """The RL format test: `...</think>` + exactly one whitespace + `<answer>...</answer>` and nothing after.

    Exactly one of each of `<think>`, `</think>`, `<answer>`, `</answer>` (exact case), with `<think>` before
    `</think>`. The answer may be empty; whether it is right is the accuracy reward's business.
    """
    for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE):
        if completion.count(tag) != 1:
            return False
    think_close = completion.find(THINK_CLOSE)
    if completion.find(THINK_OPEN) > think_close:
        return False
    gap = think_close + len(THINK_CLOSE)
    return (
        completion[gap : gap + 1].isspace()
        and completion.startswith(ANSWER_OPEN, gap + 1)
        and completion.endswith(ANSWER_CLOSE)
    )
