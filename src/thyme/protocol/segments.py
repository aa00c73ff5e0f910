"""Typed pieces of an assistant turn, as produced by `thyme.protocol.parser.parse_assistant`.

Every segment remembers its exact span of the parsed text: `raw == text[start:end]`, and the segments of
one parse tile the input, so `"".join(s.raw for s in segments)` gives the input back byte for byte. That is
what lets SFT and RL build loss masks from parsed spans without re-parsing chat text, and lets the agent
loop record which characters were model-written and which were sandbox output.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextSegment:
    """Prose outside any code, sandbox output or answer (reasoning, whitespace, stray closing tags)."""

    text: str
    start: int
    end: int

    @property
    def raw(self) -> str:
        return self.text


@dataclass(frozen=True)
class ThinkTag:
    """A `<think>` or `</think>` marker; `closing` tells which. Matched case-insensitively."""

    closing: bool
    raw: str
    start: int
    end: int


@dataclass(frozen=True)
class CodeSegment:
    """One `<code>` block.

    code:     the Python source inside, without tags and Markdown fence, common indentation removed,
              leading blank lines and trailing whitespace dropped.
    complete: the closing `</code>` was seen. Only complete blocks are run by the agent loop.
    raw:      the exact span, from `<code>` through `</code>` (or to where an unclosed block stops).
    """

    code: str
    complete: bool
    raw: str
    start: int
    end: int


@dataclass(frozen=True)
class SandboxOutputSegment:
    """A `<sandbox_output>` block inserted by the agent loop; `text` is everything between the tags."""

    text: str
    complete: bool
    raw: str
    start: int
    end: int


@dataclass(frozen=True)
class AnswerSegment:
    """An `<answer>` block; `text` is everything between the tags, unstripped."""

    text: str
    complete: bool
    raw: str
    start: int
    end: int


Segment = TextSegment | ThinkTag | CodeSegment | SandboxOutputSegment | AnswerSegment
