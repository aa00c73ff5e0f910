"""The bundled thyme-tiny: whole, small, loaded offline by every entry point, thinking with code.

The model is the one `make tiny` trained and installed (`src/thyme/models/thyme-tiny/`, with its measured
`results.json`); these tests load it as users do: `Agent.from_pretrained("thyme-tiny")`, `thyme run --model
thyme-tiny`, `thyme eval --model thyme-tiny` and `thyme demo`, on held-out toy-world samples.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thyme.agent import Agent
from thyme.agent.loop import bundled_tiny
from thyme.data.toyworld import SPLIT_SPAN, draft_sample, get_task

THYME = [sys.executable, "-m", "thyme"]
MAX_BUNDLE_MIB = 40
# The files the bundle keeps (scripts/make_tiny.py, KEEP) and its measurements.
BUNDLED = {"config.json", "model.safetensors", "tokenizer.json", "thyme.json", "results.json"}


@pytest.fixture(scope="module")
def bundle() -> Path:
    path = bundled_tiny()
    assert path is not None, "thyme-tiny is not bundled: run `make tiny`"
    return Path(path)


def held_out(task: str, level: str, seed: int, tmp_path: Path) -> tuple[Path, str, str]:
    """(image, question, gold) of a test-split toy-world sample, never trained on."""
    _, _, draft = draft_sample(get_task(task), SPLIT_SPAN + seed, level)
    image = tmp_path / f"{task}-{level}-{seed}.png"
    draft.image.save(image)
    return image, draft.question, str(draft.answer)


def test_the_bundle_is_whole_small_and_measured(bundle):
    names = {p.name for p in bundle.iterdir()}
    assert names >= BUNDLED, BUNDLED - names
    size = sum(p.stat().st_size for p in bundle.iterdir()) / 2**20
    assert size <= MAX_BUNDLE_MIB, f"{size:.1f} MiB"
    results = json.loads((bundle / "results.json").read_text())
    assert results["sft_minutes"] > 0 and results["rl_minutes"] > 0
    for stage in ("sft", "grpo"):
        assert set(results[stage]) == {"find", "add", "mul"}
        for row in results[stage].values():
            assert 0 <= row["tools"] <= 100 and 0 <= row["direct"] <= 100
    assert json.loads((bundle / "thyme.json").read_text())["preset"] == "compact"


@pytest.mark.parametrize(("task", "level"), [("zoom", "find"), ("compute", "mul-text")])
def test_thyme_tiny_thinks_with_code_on_held_out_images(task, level, tmp_path):
    """Loaded by name, offline: it decides to write code, the sandbox runs it, and it answers."""
    image, question, _gold = held_out(task, level, 11, tmp_path)
    with Agent.from_pretrained("thyme-tiny", device="cpu") as agent:
        with_tools = agent.run(image=image, question=question)
        direct = agent.run(image=image, question=question, tools=False)
    assert with_tools.final.tool_calls >= 1 and with_tools.answer, with_tools.text
    assert direct.final.tool_calls == 0


def test_thyme_run_and_eval_load_it_by_name(tmp_path):
    image, question, _ = held_out("compute", "add-text", 5, tmp_path)
    run = subprocess.run(
        [*THYME, "run", question, "--model", "thyme-tiny", "--image", str(image), "--json",
         "--device", "cpu"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "answer" in json.loads(run.stdout)
    data = tmp_path / "test"
    synth = [*THYME, "synth", "--task", "compute", "--level", "add-text", "--n", "4", "--seed", "0"]
    made = subprocess.run([*synth, "--split", "test", "--out", str(data)], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    evaluated = subprocess.run(
        [*THYME, "eval", "--task", "toyworld_compute", "--model", "thyme-tiny", "--data", str(data),
         "--out", str(tmp_path / "eval"), "--device", "cpu", "--max-steps", "3"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    records = (tmp_path / "eval" / "tools" / "results.jsonl").read_text().splitlines()
    assert len(records) == 4


def test_demo_runs_thyme_tiny_live_and_writes_the_trajectory(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([*THYME, "demo", "--task", "compute", "--seed", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "gold answer" in done.stdout and "not bundled" not in done.stdout
    assert (out / "trajectory.html").is_file() and (out / "image.png").is_file()


def test_sigterm_stops_the_demo_and_removes_its_temporary_folders(tmp_path):
    """SIGTERM while thyme-tiny runs: a clean exit, no traceback, no `thyme-*` folder left behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [*THYME, "demo", "--out", str(tmp_path / "demo")],
        env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(tmp.glob("thyme-agent-*")):  # loaded: the agent is up and starts generating
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr  # stopped mid-run, cleanly
    assert list(tmp.glob("thyme-*")) == []
