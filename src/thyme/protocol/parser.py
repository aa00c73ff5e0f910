"""Parse an assistant turn into typed segments, tolerantly and in linear time.

`parse_assistant(text)` splits a (possibly partial, streamed) assistant turn into `TextSegment`,
`ThinkTag`, `CodeSegment`, `SandboxOutputSegment` and `AnswerSegment` whose raw spans tile the input exactly.
The agent loop asks `pending_code(text)` which block to run after generation stopped at `</code>`, and a
streaming sampler asks `is_code_open(text)` whether the next token is inside code.

Rules, chosen to agree with how text is generated (generation stops at `</code>` and `</answer>`):
- Tags are matched case-insensitively (`<CODE>` works) and only in their exact spelling otherwise.
- Inside `<sandbox_output>` and `<answer>` nothing is a tag except the matching close; code printed by the
  sandbox or quoted in an answer is never code to run. A missing close runs to the end of the text.
- Inside `<code>` the first `</code>` closes the block, even inside a Python string literal: generation stops
  there, so the model cannot have meant anything else. Other tags inside a closed block are code text.
  A `<sandbox_output>` or `</answer>` before any `</code>` means the close was lost: the block is unclosed.
- An unclosed block (`complete=False`) stops before the next `<code>`, `</think>`, `<answer>`,
  `</answer>` or `<sandbox_output>`; if its Markdown fence was closed and more than whitespace follows,
  it stops right after the closing fence (unless what follows is the start of `</code>` being streamed).
  Otherwise it runs to the end of the text (still being streamed).
- Code may be fenced with ```python, ```py, ```Python, a bare ```, or not fenced at all; an unclosed fence
  is fine. Stray closing tags outside their block are kept as prose.
Every search runs over a precomputed tag index (one regex pass with no backtracking, then one backward
sweep), so a megabyte of adversarial text parses in linear time.
"""

from __future__ import annotations

import re
import textwrap
from typing import NamedTuple

from thyme.protocol.grammar import CODE_CLOSE, CODE_FENCE, PYTHON_FENCE_LANGUAGES, TAG_NAMES
from thyme.protocol.segments import (
    AnswerSegment,
    CodeSegment,
    SandboxOutputSegment,
    Segment,
    TextSegment,
    ThinkTag,
)

# ASCII-only case folding: with Unicode folding the Kelvin sign would match the "k" of "think".
_TAG_RE = re.compile(r"<(/?)(" + "|".join(TAG_NAMES) + r")>", re.IGNORECASE | re.ASCII)
_FENCE_WORD_RE = re.compile(r"[A-Za-z][\w+.-]*", re.ASCII)


# Tag kinds are (name, closing) pairs. The sets below drive every "what comes next" question.
_CODE_ENDS = frozenset({("code", True), ("sandbox_output", False), ("answer", True)})
_UNCLOSED_CODE_ENDS = frozenset(
    {("code", False), ("think", True), ("answer", False), ("answer", True), ("sandbox_output", False)}
)
_SANDBOX_ENDS = frozenset({("sandbox_output", True)})
_ANSWER_ENDS = frozenset({("answer", True)})


class _Tag(NamedTuple):
    start: int
    end: int
    kind: tuple[str, bool]  # (lower-case name, is a closing tag)


class _TagIndex:
    """All tags of one text in order, and for each tag the next tag in each set of interest.

    The "next" tables are filled by one backward sweep, so every lookup is O(1) and a text with many
    unclosed blocks still parses in linear time.
    """

    def __init__(self, text: str) -> None:
        self.tags = [
            _Tag(m.start(), m.end(), (m.group(2).lower(), m.group(1) == "/")) for m in _TAG_RE.finditer(text)
        ]
        self._next = {
            ends: self._next_in(ends)
            for ends in (_CODE_ENDS, _UNCLOSED_CODE_ENDS, _SANDBOX_ENDS, _ANSWER_ENDS)
        }

    def _next_in(self, ends: frozenset[tuple[str, bool]]) -> list[_Tag | None]:
        """Entry i: the first tag after tag i whose kind is in `ends`."""
        table: list[_Tag | None] = [None] * len(self.tags)
        following: _Tag | None = None
        for i in range(len(self.tags) - 1, -1, -1):
            table[i] = following
            if self.tags[i].kind in ends:
                following = self.tags[i]
        return table

    def next_in(self, ends: frozenset[tuple[str, bool]], i: int) -> _Tag | None:
        return self._next[ends][i]


def _fence_bounds(body: str) -> tuple[int, int, int | None]:
    """Locate the code inside a block body: (code_start, code_end, end_of_closing_fence or None)."""
    lead = len(body) - len(body.lstrip())
    if not body.startswith(CODE_FENCE, lead):
        return 0, len(body), None
    info_start = lead + len(CODE_FENCE)
    newline = body.find("\n", info_start)
    line_end = len(body) if newline == -1 else newline
    words = body[info_start:line_end].split(None, 1)
    if not words or (len(words) == 1 and _FENCE_WORD_RE.fullmatch(words[0])):
        # A bare fence or a lone info word ("python", "Py", "python3"): code starts on the next line.
        code_start = line_end + 1 if newline != -1 else line_end
    elif words[0].lower() in PYTHON_FENCE_LANGUAGES:
        # "```python print(1)```": the language word shares its line with code.
        word_end = body.find(words[0], info_start) + len(words[0])
        code_start = line_end - len(body[word_end:line_end].lstrip())
    else:
        code_start = info_start
    close = body.find(CODE_FENCE, code_start)
    if close == -1:
        return code_start, len(body), None
    return code_start, close, close + len(CODE_FENCE)


def _clean_code(source: str) -> str:
    """Drop leading blank lines, trailing whitespace, a stray closing fence, and common indentation."""
    source = source.rstrip()
    if not source:
        return ""
    if source.endswith(CODE_FENCE):
        source = source[: -len(CODE_FENCE)].rstrip()
    lines = source.split("\n")
    first = 0
    while first < len(lines) and not lines[first].strip():
        first += 1
    return textwrap.dedent("\n".join(lines[first:]))


def _code_segment(text: str, i: int, index: _TagIndex) -> CodeSegment:
    open_tag = index.tags[i]
    body_start = open_tag.end
    stop = index.next_in(_CODE_ENDS, i)
    if stop is not None and stop.kind == ("code", True):
        body = text[body_start : stop.start]
        code_start, code_end, _ = _fence_bounds(body)
        return CodeSegment(
            code=_clean_code(body[code_start:code_end]),
            complete=True,
            raw=text[open_tag.start : stop.end],
            start=open_tag.start,
            end=stop.end,
        )
    region = index.next_in(_UNCLOSED_CODE_ENDS, i)
    region_end = len(text) if region is None else region.start
    body = text[body_start:region_end]
    code_start, code_end, fence_end = _fence_bounds(body)
    end = region_end
    after_fence = "" if fence_end is None else body[fence_end:].strip()
    # While streaming, "```\n</co" is the close being typed, not prose after a lost close.
    still_typing = region_end == len(text) and CODE_CLOSE.startswith(after_fence.lower())
    if fence_end is not None and after_fence and not still_typing:
        end = body_start + fence_end
    return CodeSegment(
        code=_clean_code(body[code_start:code_end]),
        complete=False,
        raw=text[open_tag.start : end],
        start=open_tag.start,
        end=end,
    )


def _block(text: str, i: int, index: _TagIndex, kind: type) -> Segment:
    """A sandbox-output or answer block: everything up to the first matching close."""
    open_tag = index.tags[i]
    close = index.next_in(_SANDBOX_ENDS if kind is SandboxOutputSegment else _ANSWER_ENDS, i)
    inner_end = len(text) if close is None else close.start
    end = len(text) if close is None else close.end
    return kind(
        text=text[open_tag.end : inner_end],
        complete=close is not None,
        raw=text[open_tag.start : end],
        start=open_tag.start,
        end=end,
    )


def parse_assistant(text: str) -> list[Segment]:
    """Split an assistant turn into segments whose raw spans concatenate back to `text`."""
    index = _TagIndex(text)
    segments: list[Segment] = []
    prose_start = 0  # text from here up to the next segment is prose
    for i, tag in enumerate(index.tags):
        name, closing = tag.kind
        if tag.start < prose_start or (closing and name != "think"):
            continue  # inside a block already consumed, or a stray close kept as prose
        if name == "think":
            segment: Segment = ThinkTag(closing, text[tag.start : tag.end], tag.start, tag.end)
        elif name == "code":
            segment = _code_segment(text, i, index)
        elif name == "sandbox_output":
            segment = _block(text, i, index, SandboxOutputSegment)
        else:
            segment = _block(text, i, index, AnswerSegment)
        if prose_start < segment.start:
            segments.append(TextSegment(text[prose_start : segment.start], prose_start, segment.start))
        segments.append(segment)
        prose_start = segment.end
    if prose_start < len(text):
        segments.append(TextSegment(text[prose_start:], prose_start, len(text)))
    return segments


def code_blocks(text: str) -> list[CodeSegment]:
    """All code blocks of a turn, complete or not, in order (never code inside sandbox output or answers)."""
    return [s for s in parse_assistant(text) if isinstance(s, CodeSegment)]


def pending_code(text: str) -> CodeSegment | None:
    """The last complete code block with no `<sandbox_output>` after it: what the loop should run next."""
    pending: CodeSegment | None = None
    for segment in parse_assistant(text):
        if isinstance(segment, SandboxOutputSegment):
            pending = None
        elif isinstance(segment, CodeSegment) and segment.complete:
            pending = segment
    return pending


def is_code_open(text: str) -> bool:
    """True while a streamed turn is inside `<code>` whose `</code>` has not been generated yet."""
    segments = parse_assistant(text)
    if not segments:
        return False
    last = segments[-1]
    return isinstance(last, CodeSegment) and not last.complete and last.end == len(text)
