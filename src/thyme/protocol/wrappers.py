"""Benchmark question wrappers, as the released evaluation phrased them (VLMEvalKit conventions).

The wrapped question is what goes into `{question}` of a prompt preset. The instruction strings are interface
constants kept in `prompts/benchmark_wrappers.json` (verbatim from the reference's
`eval/VLMEvalKit/vlmeval/vlm/thyme/prompt.py`); the layout is:

    Hint: <hint>            (only when there is a hint)
    Question: <question>
    Options:
    A. <text>
    B. <text>
    Please select the correct answer from the options above.

trailing whitespace removed. As in the reference, a question, hint or option holding CJK characters gets the
Chinese "answer with the option letter" instruction instead. Which benchmarks skip a wrapper (the reference
adds no yes/no suffix for MME and no short-answer suffix for MMVet) is the task spec's decision, not ours.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from thyme.protocol.choices import normalize_options
from thyme.protocol.presets import read_prompt_file

_WRAPPERS: Mapping[str, str] = json.loads(read_prompt_file("benchmark_wrappers.json"))
_CJK_RE = re.compile("[\u4e00-\u9fff]")


def wrap_mcq(
    question: str,
    options: Mapping[str, str] | Sequence[str],
    hint: str | None = None,
) -> str:
    """A multiple-choice question with its lettered options; options as {letter: text} or a sequence."""
    lettered = normalize_options(options)
    prompt = ""
    if hint is not None and hint.strip():
        prompt += f"Hint: {hint}\n"
    prompt += f"Question: {question}\n"
    if lettered:
        prompt += "Options:\n"
        prompt += "".join(f"{letter}. {text}\n" for letter, text in lettered.items())
        cjk = _CJK_RE.search(prompt) is not None
        prompt += _WRAPPERS["mcq_instruction_cjk" if cjk else "mcq_instruction"]
    return prompt.rstrip()


def wrap_yes_no(question: str) -> str:
    """A yes/no question: appends " Please answer yes or no."."""
    return question + _WRAPPERS["yes_no_suffix"]


def wrap_short_vqa(question: str) -> str:
    """An open question with a short expected answer: asks for short words or phrases on a new line."""
    return question + _WRAPPERS["short_vqa_suffix"]
