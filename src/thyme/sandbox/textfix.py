"""Text repair passes, `indent` and `format`: fallbacks for code that does not compile as given.

Each candidate is kept only if it parses, so valid code (a `for` loop on the first line, say) is never
re-indented, which the reference's unconditional first-line re-indent got wrong.
"""

from __future__ import annotations

import ast
import bisect
import re

from thyme.sandbox.codeedit import parse_module


def fix_syntax(code: str, enabled: frozenset[str]) -> tuple[str, list[str], ast.Module | None]:
    """Try `indent`, then `format`, then both; keep the first result that parses, else the code unchanged."""
    combos = [c for c in (("indent",), ("format",), ("format", "indent")) if set(c) <= enabled]
    passes = {"indent": fix_indent, "format": fix_format}
    for combo in combos:
        text, used = code, []
        for name in combo:
            fixed = passes[name](text)
            if fixed != text:
                text, used = fixed, [*used, name]
        tree = parse_module(text) if used else None
        if tree is not None:
            return text, sorted(used, key=("indent", "format").index), tree
    return code, [], None


def fix_indent(code: str) -> str:
    """Remove the common indentation; failing that, re-indent the first line like the second, then dedent.

    Blank and comment-only lines do not count (Python ignores their indentation). Returns the first
    candidate that parses, else the last one tried.
    """
    lines = code.split("\n")
    candidates = [_dedent(lines)]
    code_lines = [i for i, line in enumerate(lines) if _is_code_line(line)]
    if len(code_lines) >= 2:
        first, second = code_lines[0], code_lines[1]
        if _margin(lines[first]) != _margin(lines[second]):
            aligned = list(lines)
            aligned[first] = _margin(lines[second]) + lines[first].lstrip(" \t\f")
            candidates.append(_dedent(aligned))
    for candidate in candidates:
        if candidate != code and parse_module(candidate) is not None:
            return candidate
    return candidates[-1]


def _is_code_line(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _margin(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t\f"))]


def _dedent(lines: list[str]) -> str:
    margins = [_margin(line) for line in lines if _is_code_line(line)]
    prefix = margins[0] if margins else ""
    for margin in margins:
        while not margin.startswith(prefix):
            prefix = prefix[:-1]
    if not prefix:
        return "\n".join(lines)
    return "\n".join(
        line[len(prefix) :] if line.startswith(prefix) else line.lstrip(" \t\f") for line in lines
    )


_INVISIBLE = str.maketrans(
    {
        **dict.fromkeys("\ufeff\u200b\u200c\u200d\u2060\u00ad", ""),
        **dict.fromkeys("\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a", " "),
        **dict.fromkeys("\u202f\u205f\u3000", " "),
    }
)
_LITERAL_OR_COMMENT = re.compile(
    r"#[^\n]*"
    r"|'''(?:[^\\]|\\.)*?(?:'''|\Z)"
    r'|"""(?:[^\\]|\\.)*?(?:"""|\Z)'
    r"|'(?:[^'\\\n]|\\.)*(?:'|$)"
    r'|"(?:[^"\\\n]|\\.)*(?:"|$)',
    re.S | re.M,
)
_FENCE = re.compile(r"[ \t]*```[\w+-]*[ \t]*")
_BLANKS_AFTER_CONTINUATION = re.compile(r"\\[ \t]+$")


def fix_format(code: str) -> str:
    """Whitespace fixes outside string literals; a tab in indentation counts 4 spaces, else 8."""
    fixed = _format(code, 4)
    if "\t" in code and parse_module(fixed) is None:
        fixed = _format(code, 8)
    return fixed


def _format(code: str, tabsize: int) -> str:
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    pieces, cursor = [], 0
    for m in _LITERAL_OR_COMMENT.finditer(code):
        pieces += [code[cursor : m.start()].translate(_INVISIBLE), m.group()]
        cursor = m.end()
    code = "".join([*pieces, code[cursor:].translate(_INVISIBLE)])
    literals = _Literals(code)
    out, pos = [], 0
    for line in code.split("\n"):
        start, pos = pos, pos + len(line) + 1
        if literals.strictly_inside(start):  # a line of a multi-line string: content, not code
            out.append(line)
            continue
        if _FENCE.fullmatch(line):
            line = ""  # blank, not removed: line numbers stay
        m = _BLANKS_AFTER_CONTINUATION.search(line)
        if m and not literals.covers(start + m.start()):
            line = line[: m.start() + 1]
        margin = _margin(line)
        out.append(margin.expandtabs(tabsize) + line[len(margin) :])
    return "\n".join(out)


class _Literals:
    """Where string literals and comments are, by a regex scan that also works on code that does not parse."""

    def __init__(self, code: str) -> None:
        self.spans = [m.span() for m in _LITERAL_OR_COMMENT.finditer(code)]
        self.starts = [s for s, _ in self.spans]

    def _span_at(self, pos: int) -> tuple[int, int] | None:
        i = bisect.bisect_right(self.starts, pos) - 1
        return self.spans[i] if i >= 0 else None

    def covers(self, pos: int) -> bool:
        span = self._span_at(pos)
        return span is not None and span[0] <= pos < span[1]

    def strictly_inside(self, pos: int) -> bool:
        span = self._span_at(pos)
        return span is not None and span[0] < pos < span[1]
