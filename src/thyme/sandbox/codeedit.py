"""Source edits at AST positions: the engine under the AST repair passes (`thyme.sandbox.repairs`).

AST nodes give 1-based lines and UTF-8 byte columns; `Source` turns them into string offsets. An `Edit`
replaces a span with literal text and ranges of the original code that are rendered recursively, so nested
rewrites (`img.crop(a).crop(b)`) compose. Editing text instead of re-printing the tree keeps comments and the
line numbers of the model's code, so tracebacks point at the lines the model wrote.
"""

from __future__ import annotations

import ast
import bisect
import re
from dataclasses import dataclass


def parse_module(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except Exception:  # SyntaxError, NUL bytes (ValueError), surrogates, too deep nesting...
        return None


NEWLINE = re.compile(r"\r\n|\r|\n")
STRING_HEAD = re.compile(r"([A-Za-z]*)('''|\"\"\"|'|\")")


@dataclass(frozen=True)
class Edit:
    """Replace code[start:end] by `pieces`: literal text, and (start, end) ranges of the original code that
    are rendered recursively, so that edits nested inside them (`img.crop(a).crop(b)`) apply too."""

    start: int
    end: int
    pieces: tuple[str | tuple[int, int], ...]
    repair: str


class Source:
    """The code with AST positions (1-based lines, UTF-8 byte columns) turned into string offsets."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.line_starts = [0, *(m.end() for m in NEWLINE.finditer(code))]
        self.ascii = code.isascii()

    def offset(self, lineno: int, col: int) -> int:
        start = self.line_starts[lineno - 1]
        if self.ascii:
            return start + col
        end = self.line_starts[lineno] if lineno < len(self.line_starts) else len(self.code)
        line = self.code[start:end]
        return start + (col if line.isascii() else len(line.encode("utf-8")[:col].decode("utf-8")))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (
            self.offset(node.lineno, node.col_offset),
            self.offset(node.end_lineno, node.end_col_offset),
        )

    def at(self, pos: int, char: str) -> bool:
        return 0 <= pos < len(self.code) and self.code[pos] == char

    def skip(self, pos: int, closers: str = "") -> int:
        """The first offset from `pos` that is not blank, a line continuation, a comment or in `closers`."""
        code, n = self.code, len(self.code)
        while pos < n:
            c = code[pos]
            if c in " \t\f\r\n" or c in closers:
                pos += 1
            elif c == "\\" and code.startswith(("\\\n", "\\\r"), pos):
                pos += 2
            elif c == "#":
                m = NEWLINE.search(code, pos)
                pos = m.start() if m else n
            else:
                break
        return pos

    def newlines(self, start: int, end: int) -> int:
        return len(NEWLINE.findall(self.code, start, end))


def composite(src: Source, start: int, end: int, items: list[str | tuple[int, int]], repair: str) -> Edit:
    """An edit from literal text and kept ranges. The text between kept ranges is dropped, but its line
    breaks are re-emitted in place, inside the brackets the edit opens, so later lines keep their numbers."""
    pieces: list[str | tuple[int, int]] = []
    pending: list[str] = []
    cursor = start
    for item in [*items, None]:
        if isinstance(item, str):
            pending.append(item)
            continue
        stop = end if item is None else item[0]
        pieces.append("\n" * src.newlines(cursor, stop) + "".join(pending))
        pending = []
        if item is None:
            break
        pieces.append(item)
        cursor = item[1]
    return Edit(start, end, tuple(pieces), repair)


def leaf(src: Source, start: int, end: int, text: str, repair: str) -> Edit:
    """Replace a whole literal; the line breaks it spanned become line continuations (valid anywhere)."""
    return Edit(start, end, ("\\\n" * src.newlines(start, end) + text,), repair)


def render_edits(code: str, edits: list[Edit]) -> tuple[str, set[str]]:
    """Apply non-overlapping, possibly nested edits; returns the new code and the repairs actually applied."""
    ordered = sorted(edits, key=lambda e: (e.start, -e.end))
    starts = [e.start for e in ordered]
    done: set[str] = set()

    def render(lo: int, hi: int) -> str:
        out, cursor = [], lo
        for i in range(bisect.bisect_left(starts, lo), bisect.bisect_left(starts, hi)):
            edit = ordered[i]
            if edit.start < cursor or edit.end > hi:
                continue  # nested in an edit already rendered (it was rendered there) or not contained
            out.append(code[cursor : edit.start])
            out.extend(p if isinstance(p, str) else render(*p) for p in edit.pieces)
            done.add(edit.repair)
            cursor = edit.end
        out.append(code[cursor:hi])
        return "".join(out)

    return render(0, len(code)), done


def parse_expression(text: str) -> ast.AST | None:
    try:
        return ast.parse("(" + text + "\n)", mode="eval").body
    except Exception:
        return None


def bound_names(tree: ast.Module) -> set[str]:
    """Every name the code binds anywhere: assignments, imports, definitions, arguments, patterns..."""
    names: set[str] = set()
    for node in ast.walk(tree):
        kind = type(node)
        if kind is ast.Name:
            if type(node.ctx) is not ast.Load:
                names.add(node.id)
        elif kind is ast.Import or kind is ast.ImportFrom:
            names.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif kind in (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef):
            names.add(node.name)
        elif kind is ast.arg:
            names.add(node.arg)
        elif kind in (ast.Global, ast.Nonlocal):
            names.update(node.names)
        elif kind in (ast.ExceptHandler, ast.MatchAs, ast.MatchStar) and node.name:
            names.add(node.name)
        elif kind is ast.MatchMapping and node.rest:
            names.add(node.rest)
    return names
