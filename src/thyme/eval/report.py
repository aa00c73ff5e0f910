"""The report of one evaluation directory: tools and direct side by side, tool statistics, plots, pages.

    write_report(Path("runs/vstar"))      # -> runs/vstar/report.md (+ accuracy.png, steps.png, index.html)

It reads only what the runner wrote (`<mode>/results.jsonl`, `<mode>/runs.jsonl`, `<mode>/protocol.json`
for the modes that exist), so a report can be rebuilt at any time, also from a run still in progress or one
that was interrupted. Contents of report.md: accuracy per category for each mode (tools / direct) with n;
tool statistics (code-call rate, execution success, steps, repairs); the share of wall time spent in the
sandbox and in generation; the protocol card's summary and a command that reproduces the run. The plots are
drawn with Pillow (already a dependency), so no plotting library is needed; index.html links every
sample's trajectory page and marks it correct or incorrect.
"""

from __future__ import annotations

import html
import json
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from thyme.eval.runner import MODES
from thyme.eval.scoring import record_categories
from thyme.jsonl import JsonlRecords

ALL = "all"


@dataclass(frozen=True)
class ModeRun:
    """What one mode's directory holds."""

    mode: str
    card: dict[str, Any] | None
    records: list[dict[str, Any]]
    runs: list[dict[str, Any]]


def load_modes(out_dir: Path) -> list[ModeRun]:
    """The modes present under `out_dir` (tools first), read without modifying anything."""
    found = []
    for mode in MODES:
        directory = Path(out_dir) / mode
        if not (directory / "results.jsonl").is_file() and not (directory / "protocol.json").is_file():
            continue
        card_path = directory / "protocol.json"
        card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else None
        records = list(JsonlRecords(directory / "results.jsonl").load(repair=False).values())
        runs = _read_lines(directory / "runs.jsonl")
        found.append(ModeRun(mode, card, records, runs))
    return found


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue  # a torn last line of an interrupted run: the statistics skip it
    return lines


def accuracy_table(modes: list[ModeRun]) -> list[tuple[str, dict[str, tuple[float, int]]]]:
    """Rows (category, {mode: (accuracy, n)}): "all" first, then categories in sorted order.

    A sample in several splits (a POPE row in "adversarial,popular") counts once in each, in its splits'
    rows and in "all", as VLMEvalKit counts it (so n of "all" can exceed the number of samples).
    """
    categories = sorted({c for m in modes for r in m.records for c in record_categories(r)})
    rows = []
    for category in [ALL, *categories]:
        cells = {}
        for m in modes:
            scores = [
                r["score"]
                for r in m.records
                for split in (record_categories(r) or [ALL])
                if category in (ALL, split)
            ]
            if scores:
                cells[m.mode] = (sum(scores) / len(scores), len(scores))
        rows.append((category, cells))
    return rows


def tool_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Code-call rate, execution success, mean steps, repairs per call, common repairs, final reasons."""
    n = len(records)
    calls = sum(r["code_total"] for r in records)
    repairs = Counter(name for r in records for name in r["repairs"])
    return {
        "n": n,
        "code_call_rate": sum(1 for r in records if r["code_total"] > 0) / n if n else 0.0,
        "execution_success": sum(r["code_ok"] for r in records) / calls if calls else None,
        "code_calls": calls,
        "mean_steps": sum(r["steps"] for r in records) / n if n else 0.0,
        "repairs_per_call": sum(repairs.values()) / calls if calls else 0.0,
        "common_repairs": repairs.most_common(5),
        "reasons": Counter(r["reason"] for r in records).most_common(),
    }


def time_shares(m: ModeRun) -> dict[str, float]:
    """Wall time over all invocations, and the sandbox's and generation's shares of it."""
    wall = sum(r["wall_s"] for r in m.runs)
    sandbox = sum(r["sandbox_s"] for r in m.runs)
    generation = sum(r["generation_busy_s"] for r in m.runs)
    samples = sum(r["samples"] for r in m.runs)
    return {
        "wall_s": wall,
        "sandbox_share": sandbox / wall if wall else 0.0,
        "generation_share": generation / wall if wall else 0.0,
        "samples_per_s": samples / wall if wall else 0.0,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def write_report(out_dir: Path) -> Path:
    """Write out_dir/report.md, accuracy.png, steps.png and index.html; returns the report's path."""
    out_dir = Path(out_dir)
    modes = load_modes(out_dir)
    if not modes:
        raise FileNotFoundError(
            f"{out_dir} holds no tools/ or direct/ results; run `thyme eval` into it first"
        )
    card = next((m.card for m in modes if m.card), None)
    protocol = (card or {}).get("protocol", {})
    lines = [f"# {protocol.get('task', out_dir.name)}: {protocol.get('model', '?')}", ""]
    lines += _accuracy_md(modes)
    lines += _headline_md(modes, protocol.get("task"))
    tools = next((m for m in modes if m.mode == "tools"), None)
    if tools is not None and tools.records:
        lines += _tools_md(tool_stats(tools.records))
    lines += _time_md(modes)
    accuracy_plot(out_dir / "accuracy.png", modes)
    lines += ["## Plots", "", "![accuracy per category](accuracy.png)", ""]
    if tools is not None and tools.records:
        steps_plot(out_dir / "steps.png", [r["steps"] for r in tools.records])
        lines += ["![steps per trajectory (tools)](steps.png)", ""]
    write_index(out_dir / "index.html", modes, protocol.get("task", out_dir.name))
    lines += ["Per-sample trajectories: [index.html](index.html)", ""]
    lines += _card_md(modes)
    lines += ["## Reproduce", "", "```", *reproduce_command(modes, out_dir), "```", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _headline_md(modes: list[ModeRun], task_name: str | None) -> list[str]:
    """The benchmark's own headline metrics (POPE's F1, HallusionBench's aAcc/fAcc/qAcc), per mode."""
    from thyme.eval.task import get_task

    try:
        aggregate = get_task(task_name).aggregate if task_name else None
    except ValueError:  # a task registered only in the run that wrote these results
        aggregate = None
    if aggregate is None:
        return []
    values = {m.mode: aggregate([r for r in m.records if r.get("reason") != "input_error"]) for m in modes}
    keys = list(dict.fromkeys(k for v in values.values() for k in v))
    if not keys:
        return []
    names = [m.mode for m in modes]
    lines = [
        "## Benchmark metrics",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|" + "---|" * (1 + len(names)),
    ]
    lines += [f"| {k} | " + " | ".join(_metric(values[n].get(k)) for n in names) + " |" for k in keys]
    return [*lines, ""]


def _metric(value: float | None) -> str:
    """A benchmark metric: a count (OCRBench's score out of 1000) as it is, a fraction as a percentage."""
    return str(value) if isinstance(value, int) else _pct(value)


def _accuracy_md(modes: list[ModeRun]) -> list[str]:
    names = [m.mode for m in modes]
    header = "| category | " + " | ".join(f"{n} | n" for n in names) + (" | Δ |" if len(names) == 2 else " |")
    lines = ["## Accuracy", "", header, "|" + "---|" * (1 + 2 * len(names) + (len(names) == 2))]
    for category, cells in accuracy_table(modes):
        row = [f"**{category}**" if category == ALL else category]
        for name in names:
            acc, n = cells.get(name, (None, 0))
            row += [_pct(acc), str(n)]
        if len(names) == 2:
            a, b = (cells.get(n, (None, 0))[0] for n in names)
            row.append(f"{100 * (a - b):+.1f}" if a is not None and b is not None else "-")
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def _tools_md(stats: dict[str, Any]) -> list[str]:
    repairs = ", ".join(f"{name} ({count})" for name, count in stats["common_repairs"]) or "none"
    reasons = ", ".join(f"{name} {count}" for name, count in stats["reasons"])
    return [
        "## Tool use (tools mode)",
        "",
        "| code-call rate | execution success | code calls | mean steps | repairs per call |",
        "|---|---|---|---|---|",
        f"| {_pct(stats['code_call_rate'])} | {_pct(stats['execution_success'])} | {stats['code_calls']} "
        f"| {stats['mean_steps']:.2f} | {stats['repairs_per_call']:.2f} |",
        "",
        f"Most common repairs: {repairs}. How trajectories ended: {reasons}.",
        "",
    ]


def _time_md(modes: list[ModeRun]) -> list[str]:
    lines = [
        "## Time",
        "",
        "| mode | wall | sandbox share | generation share | samples/s |",
        "|---|---|---|---|---|",
    ]
    for m in modes:
        t = time_shares(m)
        lines.append(
            f"| {m.mode} | {t['wall_s']:.1f} s | {_pct(t['sandbox_share'])} | {_pct(t['generation_share'])} "
            f"| {t['samples_per_s']:.2f} |"
        )
    note = (
        "Sandbox share: sandbox seconds summed over trajectories / wall time (code runs concurrently, so it "
        "can exceed 100%). Generation share: wall time with the model generating / wall time."
    )
    return [*lines, "", note, ""]


def _card_md(modes: list[ModeRun]) -> list[str]:
    lines = ["## Protocol", ""]
    for m in modes:
        if m.card is None:
            lines += [f"- {m.mode}: no protocol card (results of unknown protocol)", ""]
            continue
        p, env, run = m.card["protocol"], m.card["environment"], m.card["run"]
        judge = p.get("judge") or {}
        lines += [
            f"**{m.mode}**: task {p['task']} v{p['task_version']}, data sha256 {_short(p['data_sha256'])}; "
            f"model {p['model']} ({p['backend']}); preset {p['preset']['name']} (system "
            f"{_short(p['preset']['system_sha256'])}, user {_short(p['preset']['user_template_sha256'])}); "
            f"pixels {p['min_pixels']}..{p['max_pixels']}; decoding {json.dumps(p['decoding'])}; "
            f"max steps {p['max_steps']}; on error {p['on_error']}; "
            f"judge {judge.get('model') or 'none'}{' at ' + judge['url'] if judge.get('url') else ''}.",
            "",
            f"Environment: {', '.join(f'{k} {v}' for k, v in env['packages'].items() if v)}; git "
            f"{env['git_commit'] or 'unknown'}; Python {env['python']}; {env['platform']}. Started "
            f"{run['started']}, resumed {len(run.get('resumed', []))} time(s). Full card: "
            f"[{m.mode}/protocol.json]({m.mode}/protocol.json).",
            "",
        ]
    return lines


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "-"


def reproduce_command(modes: list[ModeRun], out_dir: Path) -> list[str]:
    """`thyme eval ...` (after a `git checkout` of the recorded commit, when known) that redoes the run."""
    m = next((m for m in modes if m.card), None)
    if m is None:
        return ["# no protocol card: the command cannot be reconstructed"]
    p, run = m.card["protocol"], m.card["run"]
    args = ["thyme", "eval", "--task", p["task"], "--model", p["model"]]
    if run.get("data"):
        args += ["--data", run["data"]]
    args += ["--out", str(out_dir), "--backend", p["backend"]]
    if p["agent_config"].get("preset"):
        args += ["--preset", p["agent_config"]["preset"]]
    if run.get("base_url"):
        args += ["--base-url", run["base_url"].removesuffix("/chat/completions")]
    decoding = p["decoding"]
    args += ["--max-steps", str(p["max_steps"]), "--max-new-tokens", str(decoding["max_new_tokens"])]
    args += ["--temperature", str(decoding["temperature"])]
    if p["max_pixels"] is not None:
        args += ["--max-pixels", str(p["max_pixels"])]
    if p.get("judge"):
        args += ["--judge-model", str(p["judge"].get("model")), "--judge-url", str(p["judge"].get("url"))]
    limit = ([r.get("limit") for r in run.get("resumed", [])] or [run.get("limit")])[-1]
    if limit is not None:
        args += ["--limit", str(limit)]
    names = {x.mode for x in modes}
    if names == set(MODES):
        args.append("--both")
    elif names == {"direct"}:
        args.append("--no-tools")
    lines = [shlex.join(args)]
    commit = m.card["environment"].get("git_commit")
    if commit:
        note = "  # the run had local changes on top" if commit.endswith("+dirty") else ""
        lines.insert(0, f"git checkout {commit.removesuffix('+dirty')}{note}")
    return lines


# -- HTML index -----------------------------------------------------------------------------------------
def write_index(path: Path, modes: list[ModeRun], title: str) -> None:
    """One row per sample: question, gold answer, and per mode the prediction, a mark and its page."""
    by_mode = {m.mode: {r["id"]: r for r in m.records} for m in modes}
    ids = list(dict.fromkeys(r["id"] for m in modes for r in m.records))
    esc = html.escape
    head = "".join(f"<th>{esc(m.mode)}</th>" for m in modes)
    rows = []
    for sample_id in ids:
        first = next(by_mode[m.mode][sample_id] for m in modes if sample_id in by_mode[m.mode])
        cells = []
        for m in modes:
            r = by_mode[m.mode].get(sample_id)
            if r is None:
                cells.append("<td>-</td>")
                continue
            ok = r["score"] >= 1.0
            mark = f'<span class="{"ok" if ok else "bad"}">{"&#10003;" if ok else "&#10007;"}</span>'
            text = esc(_clip(str(r["prediction"]), 120)) if r["prediction"] is not None else "<i>none</i>"
            if r.get("trajectory"):
                text = f'<a href="{esc(m.mode)}/{esc(r["trajectory"])}/index.html">{text}</a>'
            cells.append(f"<td>{mark} {text}</td>")
        rows.append(
            f"<tr><td>{esc(sample_id)}</td><td>{esc(first['category'])}</td>"
            f"<td>{esc(_clip(first['question'], 200))}</td><td>{esc(str(first['answer']))}</td>"
            f"{''.join(cells)}</tr>"
        )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}.ok{color:#080}.bad{color:#c00}"
        f"</style></head><body><h1>{esc(title)}</h1><p><a href='report.md'>report.md</a></p><table>"
        f"<tr><th>id</th><th>category</th><th>question</th><th>answer</th>{head}</tr>"
        f"{''.join(rows)}</table></body></html>"
    )
    path.write_text(page, encoding="utf-8")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- plots (Pillow) -------------------------------------------------------------------------------------
COLORS = {"tools": (46, 125, 50), "direct": (120, 144, 156)}
W, H, LEFT, BOTTOM, TOP = 720, 400, 56, 90, 40


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _axes(title: str, top_value: float, ticks: list[float], fmt) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    draw.text((W // 2, 12), title, fill="black", font=_font(16), anchor="mt")
    draw.line([(LEFT, TOP), (LEFT, H - BOTTOM), (W - 16, H - BOTTOM)], fill="black")
    for tick in ticks:
        y = _y(tick, top_value)
        draw.line([(LEFT - 4, y), (W - 16, y)], fill=(225, 225, 225))
        draw.text((LEFT - 6, y), fmt(tick), fill="black", font=_font(11), anchor="rm")
    return img, draw


def _y(value: float, top_value: float) -> float:
    return H - BOTTOM - (H - BOTTOM - TOP) * (value / top_value if top_value else 0.0)


def accuracy_plot(path: Path, modes: list[ModeRun]) -> None:
    """Grouped bars: accuracy per category, one bar per mode."""
    rows = accuracy_table(modes)
    img, draw = _axes("accuracy per category", 1.0, [0, 0.25, 0.5, 0.75, 1.0], lambda v: f"{v:.0%}")
    group = (W - 16 - LEFT) / len(rows)
    bar = group * 0.8 / len(modes)
    for g, (category, cells) in enumerate(rows):
        x0 = LEFT + g * group + group * 0.1
        for b, m in enumerate(modes):
            if m.mode not in cells:
                continue
            acc = cells[m.mode][0]
            left = x0 + b * bar
            draw.rectangle([left, _y(acc, 1.0), left + bar - 2, H - BOTTOM], fill=COLORS[m.mode])
            draw.text(
                (left + bar / 2, _y(acc, 1.0) - 3), f"{acc:.0%}", fill="black", font=_font(11), anchor="mb"
            )
        label = category if len(category) <= 14 else category[:13] + "…"
        draw.text((x0 + group * 0.4, H - BOTTOM + 6), label, fill="black", font=_font(11), anchor="mt")
    for i, m in enumerate(modes):
        x = LEFT + 10 + i * 110
        draw.rectangle([x, H - 30, x + 14, H - 16], fill=COLORS[m.mode])
        draw.text((x + 20, H - 23), m.mode, fill="black", font=_font(12), anchor="lm")
    img.save(path)


def steps_plot(path: Path, steps: list[int]) -> None:
    """Histogram of generation steps per trajectory."""
    counts = Counter(steps)
    values = list(range(min(counts), max(counts) + 1))
    top = max(counts.values())
    ticks = sorted({0, *(round(top * f) for f in (0.25, 0.5, 0.75, 1.0))})
    img, draw = _axes("steps per trajectory (tools)", top, ticks, str)
    width = (W - 16 - LEFT) / len(values)
    for i, value in enumerate(values):
        left = LEFT + i * width + width * 0.1
        draw.rectangle([left, _y(counts[value], top), left + width * 0.8, H - BOTTOM], fill=COLORS["tools"])
        draw.text((left + width * 0.4, H - BOTTOM + 6), str(value), fill="black", font=_font(11), anchor="mt")
    draw.text((W // 2, H - 30), "steps", fill="black", font=_font(12), anchor="mt")
    img.save(path)
