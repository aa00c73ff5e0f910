"""Repair passes: the fixes to model-written code that the released Thyme model relies on.

The reference sandbox the model was trained with quietly fixed its code before running it (REFERENCE.md
section 2); the released checkpoints expect those fixes. Each one is a named pass here, switchable on its own,
and `apply_repairs` reports which passes changed the code:

    indent         code that does not compile because of its indentation (the model often indents the whole
                   block, or only its first line, inside `<code>`): re-indent the first line like the second,
                   dedent
    format         code that does not compile because of its whitespace: CR/CRLF newlines, BOM, zero-width and
                   non-breaking spaces, mixed tabs, stray ``` fence lines, blanks after a line continuation
    output_prefix  string literals under /mnt/data/temp_processed_images point into the session's output dir
    image_path     `image_path = "<literal>"` naming no existing file becomes the real input path
    cv_alias       `cv.`, `cv3.`, `cv4.`, `CV.` become `cv2.` where the code does not define that name itself
    crop_clamp     `E.crop(box)` and `E[a:b, c:d]` go through run-time helpers (`thyme.sandbox.clamp`) that
                   clamp the box on the image actually cropped; the helpers, not this module, report the pass

Where we differ from the reference on purpose:
- `indent` and `format` run only when the code as given does not compile, and a result is kept only if it
  compiles: valid code (a `for` loop on the first line, say) is never re-indented or reformatted.
- The AST passes edit the source text at node positions instead of re-printing the tree, so comments,
  formatting and the line numbers of untouched code survive: tracebacks point at the lines the model wrote.
- Printed output is never rewritten (the reference's float reformatting changed results).

Nothing here raises on bad input: code that cannot be parsed even after repair comes back unchanged, and the
worker's compile step reports the SyntaxError. Typical cost: one `ast.parse` and one tree walk.
"""

from __future__ import annotations

import ast
import functools
import os
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from thyme.sandbox.codeedit import (
    STRING_HEAD,
    Edit,
    Source,
    bound_names,
    composite,
    leaf,
    parse_expression,
    parse_module,
    render_edits,
)
from thyme.sandbox.textfix import fix_syntax

REPAIR_NAMES: tuple[str, ...] = ("indent", "format", "output_prefix", "image_path", "cv_alias", "crop_clamp")
OUTPUT_PREFIX = "/mnt/data/temp_processed_images"
CV_ALIASES = frozenset({"cv", "cv3", "cv4", "CV"})
CROP_HELPER = "__thyme_crop__"
SLICE_HELPER = "__thyme_slice__"


@dataclass(frozen=True)
class RepairContext:
    """What the passes may know about the session.

    input_paths: the inputs as the code sees them; `input_paths[0]` is `image_path`.
    output_dir:  the session's real output directory (where OUTPUT_PREFIX is mapped to).
    bound_names: names already bound in the session namespace (a `cv` defined by an earlier block stays).
    path_exists: whether a path names an existing file (injectable for tests).
    """

    input_paths: tuple[str, ...]
    output_dir: str
    bound_names: frozenset[str] = frozenset()
    path_exists: Callable[[str], bool] = os.path.isfile


@dataclass(frozen=True)
class RepairOutcome:
    """The code to execute, the passes that changed it (in REPAIR_NAMES order), the module names the
    worker must provide in the namespace because a repair introduced them (`cv2` after `cv_alias`), and
    `shown`: the code as the model wrote it (after the text passes, before the AST passes' edits, which keep
    line numbers), whose lines tracebacks quote; None when it is `code`."""

    code: str
    applied: tuple[str, ...] = ()
    needs: frozenset[str] = field(default_factory=frozenset)
    shown: str | None = None


def apply_repairs(code: str, ctx: RepairContext, enabled: Iterable[str] = REPAIR_NAMES) -> RepairOutcome:
    """Run the enabled passes on one code block. Raises ValueError only for unknown pass names."""
    names = frozenset((enabled,) if isinstance(enabled, str) else enabled)
    unknown = sorted(names - set(REPAIR_NAMES))
    if unknown:
        raise ValueError(f"unknown repair pass(es) {unknown}; valid names: {', '.join(REPAIR_NAMES)}")
    if not isinstance(code, str):
        return RepairOutcome(code)
    try:
        return _repair(code, ctx, names)
    except Exception:  # a repair must never be the reason a block fails; compile() reports real errors
        return RepairOutcome(code)


def _repair(code: str, ctx: RepairContext, enabled: frozenset[str]) -> RepairOutcome:
    applied: list[str] = []
    tree = parse_module(code)
    if tree is None:
        code, applied, tree = fix_syntax(code, enabled)
        if tree is None:
            return RepairOutcome(code)
    found = _collect(tree)
    if not found:
        return RepairOutcome(code, tuple(applied))
    src = Source(code)
    bound = functools.cache(lambda: frozenset(bound_names(tree)) | ctx.bound_names)
    groups: dict[str, list[Edit]] = {}
    needs_cv2 = False
    if "output_prefix" in enabled:
        groups["output_prefix"] = map_output_prefix(found, src, ctx)
    if "image_path" in enabled:
        groups["image_path"] = fix_image_path(found, src, ctx, map_prefix="output_prefix" in enabled)
        replaced = [(e.start, e.end) for e in groups["image_path"]]
        groups["output_prefix"] = [  # a literal that image_path replaces needs no prefix mapping
            e for e in groups.get("output_prefix", []) if not any(s <= e.start < t for s, t in replaced)
        ]
    if "cv_alias" in enabled:
        groups["cv_alias"], needs_cv2 = alias_cv(found, src, bound)
    if "crop_clamp" in enabled:
        groups["crop_clamp"] = wrap_crops(found, src, bound)
    # Safety net: never hand over code that no longer parses; the most intricate edits are dropped first.
    for dropped in ((), ("crop_clamp",)):
        edits = [e for name, group in groups.items() if name not in dropped for e in group]
        if not edits:
            break
        new_code, done = render_edits(code, edits)
        if parse_module(new_code) is not None:
            applied += [n for n in ("output_prefix", "image_path", "cv_alias") if n in done]
            needs = frozenset({"cv2"}) if needs_cv2 and "cv_alias" in done else frozenset()
            return RepairOutcome(new_code, _ordered(applied), needs, shown=code)
    return RepairOutcome(code, _ordered(applied))


def _ordered(names: Iterable[str]) -> tuple[str, ...]:
    chosen = set(names)
    return tuple(n for n in REPAIR_NAMES if n in chosen)


# -- AST passes, applied as text edits at node positions ---
@dataclass
class _Found:
    """Candidate nodes for every AST pass, gathered in one walk of the tree (the no-op path stays cheap)."""

    strings: list[ast.Constant] = field(default_factory=list)
    fstrings: list[ast.JoinedStr] = field(default_factory=list)
    image_paths: list[ast.Constant] = field(default_factory=list)
    aliases: list[ast.Name] = field(default_factory=list)
    crops: list[ast.Call] = field(default_factory=list)
    subscripts: list[ast.Subscript] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.strings, self.fstrings, self.image_paths, self.aliases, self.crops, self.subscripts))


def _collect(tree: ast.Module) -> _Found:
    found, in_fstring = _Found(), set()
    for node in ast.walk(tree):
        kind = type(node)
        if kind is ast.Constant:
            value = node.value
            if isinstance(value, str) and value.startswith(OUTPUT_PREFIX) and id(node) not in in_fstring:
                found.strings.append(node)
        elif kind is ast.Attribute:
            if type(node.value) is ast.Name and node.value.id in CV_ALIASES:
                found.aliases.append(node.value)
        elif kind is ast.Call:
            if type(node.func) is ast.Attribute and node.func.attr == "crop":
                found.crops.append(node)
        elif kind is ast.Subscript:
            if type(node.slice) is ast.Tuple and type(node.ctx) is ast.Load:
                found.subscripts.append(node)
        elif kind is ast.Assign or kind is ast.AnnAssign:
            targets = node.targets if kind is ast.Assign else [node.target]
            value = node.value
            is_literal = type(value) is ast.Constant and isinstance(value.value, str)
            if is_literal and any(type(t) is ast.Name and t.id == "image_path" for t in targets):
                found.image_paths.append(value)
        elif kind is ast.JoinedStr:
            # Before 3.12 the literal parts of an f-string carry the whole f-string's position.
            in_fstring.update(id(n) for n in ast.walk(node))
            first = node.values[0] if node.values else None
            if type(first) is ast.Constant and str(first.value).startswith(OUTPUT_PREFIX):
                found.fstrings.append(node)
    return found


def map_output_prefix(found: _Found, src: Source, ctx: RepairContext) -> list[Edit]:
    """String literals equal to OUTPUT_PREFIX or under it point into `ctx.output_dir`.

    The prefix is swapped inside the literal's own text (quotes, string prefix and the rest untouched);
    an f-string's first literal part likewise. Each edit is checked by re-parsing the literal.
    """
    root = _output_root(ctx)
    if root is None:
        return []
    edits = []
    for node in found.strings:
        mapped = _mapped(node.value, ctx)
        if mapped is None:
            continue
        start, end = src.span(node)
        edit, parsed = _prefix_in_place(src, start, end, root)
        if edit is None or not (isinstance(parsed, ast.Constant) and parsed.value == mapped):
            edit = leaf(src, start, end, repr(mapped), "output_prefix")  # e.g. '/mnt/data/' 'temp_...'
        edits.append(edit)
    for node in found.fstrings:
        mapped = _mapped(node.values[0].value, ctx)
        if mapped is None:
            continue
        edit, parsed = _prefix_in_place(src, *src.span(node), root)
        if edit is not None and _same_fstring(parsed, mapped, node.values[1:]):
            edits.append(edit)
    return edits


def fix_image_path(found: _Found, src: Source, ctx: RepairContext, map_prefix: bool = True) -> list[Edit]:
    """`image_path = "<literal>"` whose literal is no existing file becomes the matching (else first) input.

    The literal is checked as the code will see it, after OUTPUT_PREFIX mapping, so a processed image of an
    earlier step is kept.
    """
    if not ctx.input_paths:
        return []
    edits = []
    for value in found.image_paths:
        literal = value.value
        seen = (_mapped(literal, ctx) if map_prefix else None) or literal
        if _exists(ctx, seen):
            continue
        name = posixpath.basename(literal)
        same_name = [p for p in ctx.input_paths if name and posixpath.basename(p) == name]
        real = (same_name or ctx.input_paths)[0]
        if real != literal:
            edits.append(leaf(src, *src.span(value), repr(real), "image_path"))
    return edits


def alias_cv(found: _Found, src: Source, bound: Callable[[], frozenset[str]]) -> tuple[list[Edit], bool]:
    """`cv.X`, `cv3.X`, `cv4.X`, `CV.X` become `cv2.X` unless the code or the session binds that name.

    `bound()` gives the names bound by the code or the session. Also says whether the worker must provide
    `cv2` (neither binds it).
    """
    if not found.aliases:
        return [], False
    free = CV_ALIASES - bound()
    edits = []
    for name in found.aliases:
        start, end = src.span(name)
        if name.id in free and src.code[start:end] == name.id:
            edits.append(Edit(start, end, ("cv2",), "cv_alias"))
    return edits, "cv2" not in bound()


def wrap_crops(found: _Found, src: Source, bound: Callable[[], frozenset[str]]) -> list[Edit]:
    """`E.crop(A)` -> `__thyme_crop__(E, A)`; `E[a:b, c:d, ...]` -> `__thyme_slice__(E, (slice(a, b), ...))`.

    Only one positional argument and no keywords for crops; for subscripts (loads only, never stores or
    deletes) the first two index elements must be slices with both bounds and no step, and the rewrite
    spells them `slice(a, b)`, so it is skipped where the code or session rebinds `slice`. Evaluation order
    and counts are unchanged: E, then the box, each once.
    """
    edits: list[Edit] = []
    for call in found.crops:
        if len(call.args) == 1 and not call.keywords and type(call.args[0]) is not ast.Starred:
            edits += _wrap_crop(call, src)
    for sub in found.subscripts if found.subscripts and "slice" not in bound() else ():
        elts = sub.slice.elts
        if len(elts) >= 2 and all(
            type(s) is ast.Slice and s.lower is not None and s.upper is not None and s.step is None
            for s in elts[:2]
        ):
            edits += _wrap_subscript(sub, src)
    return edits


def _wrap_crop(call: ast.Call, src: Source) -> list[Edit]:
    start, end = src.span(call)
    dot = src.skip(src.span(call.func.value)[1], ")")
    name = src.skip(dot + 1)
    opening = src.skip(name + 4)
    if not (src.at(dot, ".") and src.code.startswith("crop", name) and src.at(opening, "(")):
        return []
    if not src.at(end - 1, ")"):
        return []
    items: list[str | tuple[int, int]] = [CROP_HELPER + "(", (start, dot), ", ", (opening + 1, end - 1), ")"]
    return [composite(src, start, end, items, "crop_clamp")]


def _wrap_subscript(sub: ast.Subscript, src: Source) -> list[Edit]:
    start, end = src.span(sub)
    bracket = src.skip(src.span(sub.value)[1], ")")
    if not (src.at(bracket, "[") and src.at(end - 1, "]")):
        return []
    items: list[str | tuple[int, int]] = [
        SLICE_HELPER + "(",
        (start, bracket),
        ", (",
        (bracket + 1, end - 1),
        "))",
    ]
    edits = [composite(src, start, end, items, "crop_clamp")]
    for elt in sub.slice.elts:
        if type(elt) is ast.Slice:  # `a:b` is no expression inside a tuple: spell it slice(a, b)
            edit = _slice_call(elt, src)
            if edit is None:
                return []
            edits.append(edit)
    return edits


def _slice_call(node: ast.Slice, src: Source) -> Edit | None:
    start, end = src.span(node)
    colon = src.skip(src.span(node.lower)[1] if node.lower else start, ")")
    if not src.at(colon, ":"):
        return None
    after_upper = src.skip(src.span(node.upper)[1], ")") if node.upper else src.skip(colon + 1)
    second = after_upper if after_upper < end and src.at(after_upper, ":") else end
    items: list[str | tuple[int, int]] = ["slice("]
    items += [(start, colon) if node.lower else "None", ", "]
    items += [(colon + 1, second) if node.upper else "None"]
    if node.step is not None:
        if second == end:
            return None
        items += [", ", (second + 1, end)]
    return composite(src, start, end, [*items, ")"], "crop_clamp")


def _output_root(ctx: RepairContext) -> str | None:
    return (ctx.output_dir.rstrip("/") or "/") if ctx.output_dir else None


def _mapped(value: str, ctx: RepairContext) -> str | None:
    root = _output_root(ctx)
    if root is None or not (value == OUTPUT_PREFIX or value.startswith(OUTPUT_PREFIX + "/")):
        return None
    return root + value[len(OUTPUT_PREFIX) :]


def _prefix_in_place(src: Source, start: int, end: int, root: str) -> tuple[Edit | None, ast.AST | None]:
    """Swap OUTPUT_PREFIX for `root` right after the literal's opening quote; returns the edit and the
    re-parsed literal so the caller can check the value came out right."""
    segment = src.code[start:end]
    head = STRING_HEAD.match(segment)
    if head is None or not segment.startswith(OUTPUT_PREFIX, head.end()):
        return None, None
    text = _escape(root, head.group(1).lower(), head.group(2)[0])
    if text is None:
        return None, None
    at = head.end()
    parsed = parse_expression(segment[:at] + text + segment[at + len(OUTPUT_PREFIX) :])
    return Edit(start + at, start + at + len(OUTPUT_PREFIX), (text,), "output_prefix"), parsed


def _escape(text: str, string_prefix: str, quote: str) -> str | None:
    if "r" in string_prefix:
        if any(c in text for c in ("\\", quote, "\n", "\r")):
            return None
    else:
        for char, escaped in (("\\", "\\\\"), (quote, "\\" + quote), ("\n", "\\n"), ("\r", "\\r")):
            text = text.replace(char, escaped)
    return text.replace("{", "{{").replace("}", "}}") if "f" in string_prefix else text


def _same_fstring(parsed: ast.AST | None, first: str, rest: list[ast.expr]) -> bool:
    if not isinstance(parsed, ast.JoinedStr) or len(parsed.values) != len(rest) + 1:
        return False
    head = parsed.values[0]
    return (
        isinstance(head, ast.Constant)
        and head.value == first
        and all(ast.dump(a) == ast.dump(b) for a, b in zip(parsed.values[1:], rest, strict=True))
    )


def _exists(ctx: RepairContext, path: str) -> bool:
    try:
        return bool(ctx.path_exists(path))
    except Exception:  # a path the OS refuses to look at is not an existing file
        return False
