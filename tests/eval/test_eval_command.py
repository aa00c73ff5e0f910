"""`thyme eval`'s implementation end to end: both modes and the printed table, --limit, the OpenAI-compatible
backend over real HTTP, one-line errors for bad input, the protocol refusal, and a real kill: a subprocess
SIGKILLed mid-run, then interrupted with SIGINT, then finished, ends with every sample exactly once and the
same scores as an uninterrupted run.

The model is the tiny Qwen2.5-VL that learned `thyme.testing.scripted.SCRIPTS`; the task registered here asks
those questions (cycled), so the tool trajectories are real and their scores known.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from scripted_eval import scripted_model, scripted_task

from thyme.eval import TaskSpec, register_task
from thyme.eval.eval_command import eval_command

TASK = "eval-command-scripted"
N = 10
EXPECTED = {f"s{i}": 0.0 if i % 5 == 4 else 1.0 for i in range(N)}

# Runs eval_command in a fresh interpreter with this module's task registered: argv[1] is the JSON of the
# keyword arguments (paths as strings).
LAUNCHER = """
import json, sys
from pathlib import Path
from rich.console import Console
sys.path.insert(0, {here!r})
from test_eval_command import make_task
from thyme.eval import register_task
from thyme.eval.eval_command import eval_command

# Each generation call waits a little, so a signal sent once a result line appears lands before the run ends
# even on a loaded machine (without it the remaining samples can all finish first).
import time
from thyme.agent.backends.transformers import TransformersBackend
_generate = TransformersBackend.generate
def _slow(self, *args, **kw):
    time.sleep(0.3)
    return _generate(self, *args, **kw)
TransformersBackend.generate = _slow

# A process started in the background by a non-interactive shell inherits SIGINT ignored, and Python then
# installs no KeyboardInterrupt handler: give it the one an interactive user's `thyme eval` has.
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)

kwargs = json.loads(sys.argv[1])
register_task(make_task(Path(kwargs.pop("image"))), replace=True)
kwargs["out"] = Path(kwargs["out"])
sys.exit(eval_command(console=Console(), err_console=Console(stderr=True), **kwargs))
"""


def make_task(image: Path) -> TaskSpec:
    return scripted_task(TASK, image, N)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model, image = scripted_model(tmp_path_factory)
    register_task(make_task(image), replace=True)
    return model, image


def options(model_dir: Path, out: Path, **overrides) -> dict:
    kwargs = dict(
        task=TASK,
        model=str(model_dir),
        data=None,
        out=out,
        limit=None,
        tools=True,
        backend="transformers",
        base_url=None,
        api_key=None,
        concurrency=5,
        max_steps=5,
        max_new_tokens=128,
        temperature=0.0,
        max_pixels=None,
        judge_url=None,
        judge_model=None,
        force=False,
        both=False,
        device="cpu",
    )
    kwargs.update(overrides)
    return kwargs


def run(**kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = eval_command(
        console=Console(file=out, width=160), err_console=Console(file=err, width=400), **kwargs
    )
    return status, out.getvalue(), err.getvalue()


def scores(out: Path, mode: str = "tools") -> list[tuple[str, float]]:
    lines = (out / mode / "results.jsonl").read_text().splitlines()
    return sorted((r["id"], r["score"]) for r in map(json.loads, lines))


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """An uninterrupted run of both modes through the command."""
    out = tmp_path_factory.mktemp("eval-command-ref")
    status, printed, errors = run(**options(model[0], out, both=True))
    assert status == 0, errors
    return out, printed


def test_both_modes_print_the_table_and_write_the_report(reference):
    out, printed = reference
    assert scores(out) == sorted(EXPECTED.items())
    assert len(scores(out, "direct")) == N
    assert "80.0%" in printed and "tools" in printed and "direct" in printed
    assert "sandbox" in printed and "generation" in printed and f"wrote {out / 'report.md'}" in printed
    report = (out / "report.md").read_text()
    assert "| **all** | 80.0% | 10 |" in report and (out / "index.html").is_file()


def test_limit_takes_the_first_samples(model, tmp_path):
    status, _, errors = run(**options(model[0], tmp_path, limit=3))
    assert status == 0, errors
    assert scores(tmp_path) == [("s0", 1.0), ("s1", 1.0), ("s2", 1.0)]


def test_other_protocol_is_refused_in_one_line_unless_forced(model, tmp_path):
    assert run(**options(model[0], tmp_path, limit=1))[0] == 0
    status, _, errors = run(**options(model[0], tmp_path, limit=2, max_new_tokens=100))
    assert status == 2 and errors.count("\n") == 1
    assert "decoding.max_new_tokens: 128 -> 100" in errors and "--force" in errors
    assert scores(tmp_path) == [("s0", 1.0)]
    status, _, errors = run(**options(model[0], tmp_path, limit=2, max_new_tokens=100, force=True))
    assert status == 0, errors
    assert [i for i, _ in scores(tmp_path)] == ["s0", "s1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_inputs_are_one_line_errors(model, tmp_path):
    cases = [
        (dict(task="no-such-task"), "unknown task 'no-such-task'; known tasks:"),
        (dict(data=tmp_path / "missing.tsv"), "data file"),
        (dict(model=str(tmp_path / "no-model")), "cannot load model"),
        (dict(backend="openai"), "needs --base-url"),
        (dict(backend="openai", base_url=f"http://127.0.0.1:{free_port()}/v1"), "cannot reach the endpoint"),
        (dict(limit=0), "--limit must be >= 1"),
        (dict(temperature=-1.0), "temperature must be >= 0"),
        (dict(mcq_matching="fuzzy"), "has no scoring choice mcq_matching"),
    ]
    for overrides, message in cases:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        status, _, errors = run(**options(model[0], out, **overrides))
        assert status == 2, (overrides, errors)
        assert errors.startswith("error: ") and errors.count("\n") == 1, errors
        assert message in errors, errors
        assert not (out / "tools" / "results.jsonl").exists()
    status, _, errors = run(**options(model[0], tmp_path / "x", task="no-such-task"))
    assert TASK in errors and "vstar" in errors  # the known tasks are listed


def test_openai_backend_over_http(model, reference, tmp_path):
    """The HTTP path (asyncio, many requests in flight) gives the same scores as the batched local one."""
    from thyme.agent.backends.transformers import TransformersBackend
    from thyme.serve.generation import GenerationServer

    backend = TransformersBackend.from_pretrained(str(model[0]), device="cpu")
    with GenerationServer(backend, "127.0.0.1", 0, model_name="scripted") as server:
        server.start()
        url = server.url + "/v1"
        status, _, errors = run(
            **options("scripted", tmp_path, backend="openai", base_url=url, concurrency=4)
        )
        assert status == 0, errors
        assert scores(tmp_path) == scores(reference[0])
        card = json.loads((tmp_path / "tools" / "protocol.json").read_text())
        assert card["protocol"]["backend"] == "openai" and card["run"]["base_url"].startswith(url)
        status, _, errors = run(**options("other", tmp_path / "o", backend="openai", base_url=url))
        assert status == 2 and "serves scripted" in errors and errors.count("\n") == 1


def start(model, out: Path, launcher: Path) -> subprocess.Popen:
    kwargs = options(model[0], out, concurrency=1)
    kwargs.update(out=str(out), image=str(model[1]))
    return subprocess.Popen(
        [sys.executable, str(launcher), json.dumps(kwargs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            have = path.read_bytes().count(b"\n")
            if have >= count:
                return have
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {count} lines in {timeout} s")


def test_kill_interrupt_and_resume_lose_and_duplicate_nothing(model, reference, tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(here=str(Path(__file__).parent)))
    out = tmp_path / "out"
    results = out / "tools" / "results.jsonl"

    killed = start(model, out, launcher)
    wait_for_lines(results, 2, killed)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=30)
    after_kill = [json.loads(line) for line in results.read_text().splitlines()]
    assert 2 <= len(after_kill) < N  # killed mid-run

    interrupted = start(model, out, launcher)
    wait_for_lines(results, len(after_kill) + 1, interrupted)
    interrupted.send_signal(signal.SIGINT)
    _, stderr = interrupted.communicate(timeout=60)
    assert interrupted.returncode == 130, stderr
    assert "interrupted" in stderr and "run the same command again to resume" in stderr
    after_interrupt = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(after_kill) < len(after_interrupt) <= N
    assert after_interrupt[: len(after_kill)] == after_kill  # nothing rewritten

    status, _, errors = run(**options(model[0], out))
    assert status == 0, errors
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines()]
    assert sorted(ids) == sorted(EXPECTED) and len(ids) == N  # every id exactly once
    assert scores(out) == scores(reference[0]) == sorted(EXPECTED.items())
    card = json.loads((out / "tools" / "protocol.json").read_text())
    assert len(card["run"]["resumed"]) == 2
    assert os.path.isfile(out / "report.md")
