"""The protocol card: everything that decides an evaluation's numbers, stored beside them.

A number without its protocol cannot be trusted later, so every result directory holds `protocol.json`:

- `protocol`: what changes the numbers — task name and version, the data file's sha256, the model and
  backend, the prompt presets with hashes of their exact strings, image pixel bounds, decoding, step cap,
  error policy, the rest of the agent's configuration, the judge. Resuming into a directory whose card
  differs here is refused (`conflicts`), since the results would mix two protocols.
- `environment`: what should not change the numbers but helps explain a difference — package versions,
  the git commit of the thyme checkout, Python, the platform.
- `run`: where and when — the data path as given, the start time, later resumes.

    card = build_card(task, agent, data=Path("VStarBench.tsv"), tools=True, judge=None)
    write_card(out / "tools" / "protocol.json", card)
    conflicts(read_card(path), card)      # [] or ["model: 'a' -> 'b'", ...]
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import thyme
from thyme.files import atomic_write

SCHEMA = "thyme.eval.protocol/1"
PACKAGES = ("thyme-vl", "torch", "transformers", "vllm", "math-verify")
# Agent settings that cannot change a number (they only change speed).
_SPEED_ONLY = ("kv_reuse",)


def sha256_of(path: Path) -> str:
    """sha256 of a file, streamed; of a directory, over its files' relative paths and contents, sorted."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _preset_entry(preset) -> dict[str, str]:
    return {
        "name": preset.name,
        "system_sha256": _text_sha(preset.system),
        "user_template_sha256": _text_sha(preset.user_template),
    }


def pixel_bounds(backend) -> dict[str, int | None]:
    """The images' pixel bounds the backend applies (`backend.pixel_bounds`: the user's override, else the
    processor's default). HTTP backends do not know them (the server decides): both None."""
    bounds = getattr(backend, "pixel_bounds", None) or {}
    return {k: int(v) if (v := bounds.get(k)) is not None else None for k in ("min_pixels", "max_pixels")}


def describe_judge(judge) -> dict[str, Any] | None:
    """What the card says about a judge: its model and endpoint (never a key), or None."""
    if judge is None:
        return None
    describe = getattr(judge, "describe", None)
    if callable(describe):
        return dict(describe())
    return {
        "model": getattr(judge, "model", None),
        "url": getattr(judge, "base_url", None) or getattr(judge, "url", None),
    }


def build_card(task, agent, *, data: Path | None, tools: bool, judge=None) -> dict[str, Any]:
    """The card of evaluating `task` with `agent` on `data` (tools or direct mode)."""
    config = agent.config
    backend = agent.backend
    agent_config = {k: v for k, v in dataclasses.asdict(config).items() if k not in _SPEED_ONLY}
    preset = agent.preset if tools else agent.direct_preset
    protocol = {
        "task": task.name,
        "task_version": task.version,
        "data_sha256": sha256_of(data) if data is not None else None,
        "model": backend.model_id,
        "backend": backend.name,
        "mode": "tools" if tools else "direct",
        "preset": _preset_entry(preset),
        # the direct preset is also the tool mode's fallback prompt
        "direct_preset": _preset_entry(agent.direct_preset),
        **pixel_bounds(backend),
        "decoding": dataclasses.asdict(config.sampling),
        "max_steps": config.max_steps,
        "on_error": config.on_error,
        "agent_config": agent_config,
        "judge": describe_judge(judge) if task.judge else None,
        "scoring": dict(task.scoring),  # choices beyond the task's version (MCQ matching)
        "math_backend": _math_backend(),
    }
    return {
        "schema": SCHEMA,
        "protocol": protocol,
        "environment": environment(),
        "run": {
            "data": str(data) if data is not None else None,
            "base_url": getattr(backend, "url", None) if backend.name == "openai" else None,
            "started": now(),
            "resumed": [],
        },
    }


def _math_backend() -> str | None:
    """How math answers are compared (math_verify, or the fallback when it is not installed)."""
    try:
        from thyme.eval.scoring import MATH_BACKEND
    except ImportError:
        return None
    return MATH_BACKEND


def environment() -> dict[str, Any]:
    return {
        "packages": {name: _version(name) for name in PACKAGES},
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """`git rev-parse HEAD` of the checkout thyme is imported from ("+dirty" with local changes to tracked
    files); None for an installed copy (even one inside a repository, e.g. a venv in a checkout) or without
    git."""
    where = Path(thyme.__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None

    tracked = git("ls-files", "--error-unmatch", "__init__.py")
    head = git("rev-parse", "HEAD") if tracked is not None and tracked.returncode == 0 else None
    if head is None or head.returncode != 0:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head.stdout.strip() + ("+dirty" if dirty is not None and dirty.stdout.strip() else "")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def conflicts(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The protocol fields on which two cards differ, as "field: old -> new" lines (empty: compatible)."""
    return _diff(old.get("protocol", {}), new.get("protocol", {}), "")


def _diff(a: Any, b: Any, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            line
            for key in sorted(set(a) | set(b))
            for line in _diff(a.get(key), b.get(key), where + key + ".")
        ]
    if a == b:
        return []
    return [f"{where.rstrip('.')}: {_short(a)} -> {_short(b)}"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_card(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def write_card(path: Path, card: dict[str, Any]) -> None:
    """Write the card atomically (a reader never sees half a card)."""
    atomic_write(path, json.dumps(card, indent=1, sort_keys=True) + "\n", fsync=True)
