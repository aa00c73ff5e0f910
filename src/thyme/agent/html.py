"""Render a `Trajectory` as one self-contained HTML page: read a run in a browser, attach it to a bug.

Why: a trajectory's JSON is exact but hard to read; the page shows what the model saw and wrote, in order:
the question and the final answer first, the user image, then the assistant turn piece by piece (reasoning as
text, `<code>` as highlighted Python, the sandbox's output with its images, the `<answer>` block), and a
per-step table built from the typed events, with errors and rolled-back steps marked.

How: `render_html(trajectory)` returns the page; `Trajectory.to_html(path)` writes it. The page needs nothing
else: inline CSS, no JavaScript, images inlined as base64 data URLs (too-large ones downscaled with Pillow,
unreadable ones shown as a placeholder). Model text, code, sandbox output and the question are untrusted, so
every string from the trajectory goes through `html.escape`; the only markup is what this module writes.

    page = traj.to_html("runs/cat/index.html")
    Trajectory.load("runs/cat/trajectory.json").to_html("runs/cat/index.html")   # from a saved run
"""

from __future__ import annotations

import base64
import builtins
import html
import io
import json
import keyword
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from thyme.agent.events import CodeCall, Error, Final, ModelText, Observation, Resample
from thyme.protocol import (
    SANDBOX_CLOSE,
    SANDBOX_OPEN,
    AnswerSegment,
    CodeSegment,
    ImagePart,
    SandboxOutputSegment,
    TextPart,
    TextSegment,
    ThinkTag,
    parse_assistant,
)

if TYPE_CHECKING:
    from thyme.agent.conversation import Piece
    from thyme.agent.trajectory import Trajectory

# An image file larger than this is not inlined as is but downscaled to a JPEG preview, so that one huge
# photo does not make the page unopenable.
MAX_INLINE_BYTES = 4 * 1024 * 1024
PREVIEW_SIDE = 2048

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#1d1d1f}
h1{font-size:1.2em;margin:.2em 0} h2{font-size:1.05em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
.question,.prose{white-space:pre-wrap;overflow-wrap:anywhere}
.question{font-size:1.1em;background:#f6f6f8;padding:.6em .8em;border-radius:6px}
.final{margin:1em 0;padding:.7em 1em;border-radius:6px;border:2px solid #2e7d32;background:#eef8ee}
.final.none{border-color:#c62828;background:#fdeeee}
.big{font-size:1.5em;font-weight:600;white-space:pre-wrap;overflow-wrap:anywhere}
.label{font-size:.8em;color:#555;text-transform:uppercase;letter-spacing:.04em;margin-bottom:.2em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;
vertical-align:top} th{background:#f3f3f5}
.mono,pre{font:13px/1.4 ui-monospace,Menlo,Consolas,monospace}
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:0}
.block{margin:.6em 0;padding:.5em .7em;border-radius:6px;border:1px solid #ccc}
.block.code{background:#fafafa;border-color:#9ab} .block.sandbox{background:#f4f7fb;border-color:#7a9cc6}
.block.sandbox.error,.block.sandbox.timeout{background:#fdf0f0;border-color:#c62828}
.block.fake{background:#fff8e1;border-color:#f9a825} .block.fallback{border-style:dashed}
.block.answer{background:#eef8ee;border:2px solid #2e7d32;font-weight:600}
.tag{color:#888;font:12px ui-monospace,monospace}
.py .k{color:#0033b3;font-weight:600} .py .b{color:#7a3e9d} .py .s{color:#067d17} .py .c{color:#8c8c8c;
font-style:italic} .py .n{color:#1750eb}
figure{margin:.4em 0;display:inline-block;vertical-align:top} img{max-width:100%;max-height:640px;
border:1px solid #ccc} figcaption{font-size:.8em;color:#555}
.missing{padding:1em;border:2px dashed #c62828;color:#c62828;background:#fdeeee;display:inline-block}
tr.err td{background:#fdeeee;color:#b71c1c} tr.resampled td{background:#fff8e1}
tr.final td{background:#eef8ee}
.bad{color:#c62828;font-weight:600} .ok{color:#2e7d32} .muted{color:#777}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


# -- Python highlighting ------------------------------------------------------------------------------------
_KEYWORDS = frozenset(keyword.kwlist)
_BUILTINS = frozenset(name for name in dir(builtins) if not name.startswith("_"))
_STRING_TOKENS = frozenset(
    getattr(tokenize, name)
    for name in ("STRING", "FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
    if hasattr(tokenize, name)
)


def _token_class(tok: tokenize.TokenInfo) -> str | None:
    if tok.type in _STRING_TOKENS:
        return "s"
    if tok.type == tokenize.COMMENT:
        return "c"
    if tok.type == tokenize.NUMBER:
        return "n"
    if tok.type == tokenize.NAME:
        return "k" if tok.string in _KEYWORDS else "b" if tok.string in _BUILTINS else None
    return None


def highlight_python(code: str) -> str:
    """Escaped `code` with keywords, builtins, strings, comments and numbers wrapped in `<span class=...>`.

    Partial or invalid code is fine: tokens are coloured up to where `tokenize` gives up, the rest is plain
    escaped text. Stripping the spans and unescaping always gives `code` back (newlines normalised to \\n).
    """
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    line_starts = [0]
    for line in io.StringIO(code).readlines():
        line_starts.append(line_starts[-1] + len(line))

    def offset(row: int, col: int) -> int:
        return min(line_starts[min(row - 1, len(line_starts) - 1)] + col, len(code))

    out: list[str] = []
    pos = 0  # code[:pos] is already in `out`
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            cls = _token_class(tok)
            if cls is None:
                continue
            start, end = offset(*tok.start), offset(*tok.end)
            if start < pos or code[start:end] != tok.string:
                break  # positions we cannot map back (f-string internals): the rest stays plain
            out.append(f'{_esc(code[pos:start])}<span class="{cls}">{_esc(tok.string)}</span>')
            pos = end
    except (tokenize.TokenError, SyntaxError):
        pass  # unterminated string or bracket, bad indentation: keep what was coloured
    out.append(_esc(code[pos:]))
    return "".join(out)


# -- images -------------------------------------------------------------------------------------------------
def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), None)


def _preview_jpeg(path: Path) -> tuple[bytes, tuple[int, int]]:
    with Image.open(path) as im:
        size = im.size
        im.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue(), size


def _placeholder(reason: str, path: Path | str | None) -> str:
    where = f'<br><span class="mono">{_esc(path)}</span>' if path is not None else ""
    return f'<div class="missing">{_esc(reason)}{where}</div>'


def image_html(path: Path | str | None, caption: str = "") -> str:
    """A `<figure>` with the image inlined as a data URL, or a placeholder saying why it cannot be shown."""
    if path is None:
        return _placeholder("no image", None)
    path = Path(path)
    try:
        nbytes = path.stat().st_size
        note = ""
        data = path.read_bytes() if nbytes <= MAX_INLINE_BYTES else b""
        mime = _sniff(data)
        if mime is None:  # too large, or a format browsers may not show (TIFF...): a JPEG preview
            data, (w, h) = _preview_jpeg(path)
            mime = "image/jpeg"
            note = f" · JPEG preview of a {nbytes / 2**20:.1f} MB, {w}×{h} file"
            if len(data) > MAX_INLINE_BYTES:
                return _placeholder(f"image too large to inline ({nbytes / 2**20:.1f} MB)", path)
    except FileNotFoundError:
        return _placeholder("image file missing", path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return _placeholder(f"image cannot be read ({type(exc).__name__})", path)
    encoded = base64.b64encode(data).decode("ascii")
    label = " · ".join(x for x in (caption, path.name) if x)
    return (
        f'<figure><img src="data:{mime};base64,{encoded}" alt="{_esc(label)}">'
        f"<figcaption>{_esc(label + note)}</figcaption></figure>"
    )


# -- the assistant turn -------------------------------------------------------------------------------------
def _block(kind: str, label: str, body: str) -> str:
    return f'<div class="block {kind}"><div class="label">{_esc(label)}</div>{body}</div>'


def model_text_html(text: str) -> str:
    """Model-written text, split by `parse_assistant` into prose, think tags, code, answer."""
    out: list[str] = []
    for seg in parse_assistant(text):
        if isinstance(seg, TextSegment):
            out.append(f'<span class="prose">{_esc(seg.text)}</span>')
        elif isinstance(seg, ThinkTag):
            out.append(f'<span class="tag">{_esc(seg.raw)}</span>')
        elif isinstance(seg, CodeSegment):
            label = "code" if seg.complete else "code (no </code>: not run)"
            out.append(_block("code", label, f'<pre class="py">{highlight_python(seg.code)}</pre>'))
        elif isinstance(seg, SandboxOutputSegment):
            label = "sandbox output written by the model itself (not executed)"
            out.append(_block("fake", label, f"<pre>{_esc(seg.text)}</pre>"))
        elif isinstance(seg, AnswerSegment):
            label = "answer" if seg.complete else "answer (no </answer>)"
            out.append(_block("answer", label, f'<div class="big">{_esc(seg.text.strip())}</div>'))
    return f'<div class="model">{"".join(out)}</div>'


def _status(obs: Observation) -> str:
    return "timeout" if obs.timed_out else "error" if obs.error is not None else "ok"


def _sandbox_html(pieces: list[Piece], obs: Observation | None) -> str:
    body: list[str] = []
    for piece in pieces:
        part = piece.part
        if isinstance(part, ImagePart):
            body.append(image_html(part.path, "sandbox image"))
        elif part.text not in (SANDBOX_OPEN, SANDBOX_CLOSE):
            body.append(f"<pre>{_esc(part.text)}</pre>")
    if not body:
        body.append('<div class="muted">(no output)</div>')
    if obs is None:
        return _block("sandbox", "sandbox output", "".join(body))
    label = f"sandbox output · step {obs.step} · {_status(obs)} · {obs.duration_s:.2f}s"
    if obs.repairs:
        label += " · repaired: " + ", ".join(obs.repairs)
    if obs.note:
        label += f" · {obs.note}"
    return _block(f"sandbox {_status(obs)}", label, "".join(body))


def _split_blocks(pieces: list[Piece]) -> list[tuple[str, list[Piece]]]:
    """Runs of pieces by source; each `<sandbox_output>` opens a new sandbox run."""
    blocks: list[tuple[str, list[Piece]]] = []
    for piece in pieces:
        opens = isinstance(piece.part, TextPart) and piece.part.text == SANDBOX_OPEN
        if not blocks or blocks[-1][0] != piece.source or (piece.source == "sandbox" and opens):
            blocks.append((piece.source, []))
        blocks[-1][1].append(piece)
    return blocks


def assistant_html(traj: Trajectory) -> str:
    """The assistant turn in order; sandbox runs are paired with fed-back observations if the counts agree."""
    blocks = _split_blocks(list(traj.conversation.assistant))
    fed = [o for o in traj.observations if o.fed_back]
    n_sandbox = sum(1 for source, _ in blocks if source == "sandbox")
    observations = iter(fed if len(fed) == n_sandbox else [None] * n_sandbox)
    out: list[str] = []
    for source, pieces in blocks:
        if source == "sandbox":
            out.append(_sandbox_html(pieces, next(observations)))
            continue
        text: list[str] = []
        for piece in pieces:
            if isinstance(piece.part, ImagePart):
                out.append(model_text_html("".join(text)))
                out.append(image_html(piece.part.path))
                text = []
            else:
                text.append(piece.part.text)
        out.append(model_text_html("".join(text)))
    fallback = _fallback(traj)
    if fallback is not None:
        final, step = fallback
        label = f"fallback: asked again for a direct answer (the tool turn ended by {_from(final)})"
        out.append(_block("fallback", label, model_text_html(step.text)))
    return "\n".join(out) or '<div class="muted">(empty assistant turn)</div>'


def _fallback(traj: Trajectory) -> tuple[Final, ModelText] | None:
    """(the Final, the fallback's generation step) when the run ended with the direct-answer fallback: the
    step generated last, after the tool trajectory (`Final.steps` does not count it)."""
    final = traj.final
    if final is None or final.reason != "fallback":
        return None
    step = next((e for e in reversed(traj.events) if isinstance(e, ModelText)), None)
    return (final, step) if step is not None else None


def _from(final: Final) -> str:
    return str(final.extra.get("fallback_from") or "no answer")


# -- per-step table -----------------------------------------------------------------------------------------
@dataclass
class _Row:
    step: int
    text: ModelText | None = None
    code: CodeCall | None = None
    observation: Observation | None = None
    resample: Resample | None = None
    fallback_from: str | None = None  # the direct-answer fallback's step, after the tool trajectory ended so


def _details(summary: str, text: str) -> str:
    return f"<details><summary>{_esc(summary)}</summary><pre>{_esc(text)}</pre></details>"


def _row_html(row: _Row) -> str:
    t, obs = row.text, row.observation
    cells = [str(row.step) if row.fallback_from is None else "fallback"]
    finish = "" if t is None else _esc(t.finish_reason)
    if t is not None and t.stop:
        finish += f' <span class="mono">{_esc(t.stop)}</span>'
    cells.append(finish)
    cells.append(f"{t.prompt_tokens} / {t.completion_tokens}" if t else "")
    cells.append(f"{t.duration_s:.2f}s" if t else "")
    cells.append("yes" if row.code else "")
    if obs is None:
        cells += ["", "", "", ""]
    else:
        status = _status(obs)
        result = f'<span class="{"ok" if status == "ok" else "bad"}">{status}</span>'
        if obs.error:
            result += _details("error", obs.error)
        if obs.stdout:
            result += _details("stdout", obs.stdout)
        cells += [result, f"{obs.duration_s:.2f}s", _esc(", ".join(obs.repairs)), str(len(obs.images))]
    notes = []
    if t and t.code_greedy:
        notes.append("code decoded greedily (ATS)")
    if obs is not None and not obs.fed_back:
        notes.append("output not fed back")
    if obs is not None and obs.note:
        notes.append(_esc(obs.note))
    if row.fallback_from is not None and t is not None:
        notes.append(f"direct answer asked after the tool trajectory ended ({_esc(row.fallback_from)})")
        notes.append(_details("fallback text", t.text))
    if row.resample:
        r = row.resample
        notes.append(f'<span class="bad">rolled back (attempt {r.attempt}): {_esc(r.reason)}</span>')
        if t:
            notes.append(_details("rolled-back text", t.text))
    cells.append("<br>".join(notes))
    cls = ' class="resampled"' if row.resample else ""
    return f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


_HEAD = (
    "step",
    "finish",
    "tokens in / out",
    "generation",
    "code",
    "result",
    "sandbox",
    "repairs",
    "images",
    "notes",
)


def steps_html(traj: Trajectory) -> str:
    """One row per generation step (a retried step gets a row per attempt), errors and the end as own rows."""
    rows: list[_Row | str] = []
    current: _Row | None = None
    wide = f'<td colspan="{len(_HEAD) - 1}">'
    for event in traj.events:
        if isinstance(event, Error):
            rows.append(
                f'<tr class="err"><td>{event.step}</td>{wide}error ({_esc(event.category)}): '
                f"{_esc(event.message)}</td></tr>"
            )
            continue
        if isinstance(event, Final):
            rows.append(
                f'<tr class="final"><td></td>{wide}end: {_esc(event.reason)}, answer '
                f"{_esc(event.answer) if event.answer is not None else '(none)'}</td></tr>"
            )
            continue
        slot = {ModelText: "text", CodeCall: "code", Observation: "observation", Resample: "resample"}[
            type(event)
        ]
        if current is None or current.step != event.step or getattr(current, slot) is not None:
            current = _Row(step=event.step)
            rows.append(current)
        setattr(current, slot, event)
    fallback = _fallback(traj)
    if fallback is not None:
        final, step = fallback
        for row in rows:
            if isinstance(row, _Row) and row.text is step:
                row.fallback_from = _from(final)
    head = "".join(f"<th>{h}</th>" for h in _HEAD)
    body = "".join(r if isinstance(r, str) else _row_html(r) for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# -- the page -----------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _summary_html(traj: Trajectory) -> str:
    final = traj.final
    if final is None:
        answer = (
            '<div class="final none"><div class="label">no Final event: the run did not finish</div></div>'
        )
    else:
        cls = "final" if final.answer is not None else "final none"
        text = final.answer if final.answer is not None else "(no answer)"
        answer = (
            f'<div class="{cls}"><div class="label">final answer · ended by: {_esc(final.reason)}</div>'
            f'<div class="big">{_esc(text)}</div></div>'
        )
    tokens = traj.tokens
    facts: list[tuple[str, str]] = [
        ("model", traj.model),
        ("backend", traj.backend),
        ("preset", traj.preset),
        ("tools", "on" if traj.tools else "off"),
        ("steps", str(final.steps if final else traj.steps) + (" + fallback" if _fallback(traj) else "")),
        ("tool calls", str(final.tool_calls if final else sum(isinstance(e, CodeCall) for e in traj.events))),
        ("tokens", f"prompt {tokens['prompt']}, completion {tokens['completion']}"),
        ("timings", ", ".join(f"{k} {_fmt(v)}" for k, v in traj.timings.items()) or "(none)"),
    ]
    if traj.repairs:
        facts.append(("repairs", ", ".join(traj.repairs)))
    if traj.error:
        facts.append(("error", traj.error))
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts)
    return f'<h1>Question</h1><div class="question">{_esc(traj.question)}</div>{answer}<table>{rows}</table>'


def _inputs_html(traj: Trajectory) -> str:
    images = traj.conversation.user_images or ([traj.image] if traj.image is not None else [])
    shown = "".join(image_html(p, "user image") for p in images) or '<div class="muted">(no image)</div>'
    dump = json.dumps({"config": traj.config, "meta": traj.meta}, indent=1, default=str, ensure_ascii=False)
    return (
        shown
        + _details("system prompt", traj.conversation.system)
        + _details("user text", traj.user_text)
        + _details("config and meta", dump)
    )


def render_html(trajectory: Trajectory) -> str:
    """The whole page as a string (UTF-8, self-contained)."""
    title = trajectory.question if len(trajectory.question) <= 80 else trajectory.question[:77] + "..."
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Thyme: {_esc(title)}</title><style>{_CSS}</style></head><body>\n"
        f"{_summary_html(trajectory)}\n<h2>Input</h2>\n{_inputs_html(trajectory)}\n"
        f"<h2>Assistant turn</h2>\n{assistant_html(trajectory)}\n"
        f"<h2>Steps</h2>\n{steps_html(trajectory)}\n</body></html>\n"
    )
    # A lone surrogate (possible in JSON from a byte-level decoder) would make writing the file fail.
    return page.encode("utf-8", errors="replace").decode("utf-8")
