"""The command line, run as a real subprocess the way users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from PIL import Image


def thyme(*args: str, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "thyme", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def test_help_lists_commands():
    result = thyme("--help")
    assert result.returncode == 0
    for name in ("demo", "sandbox", "run", "serve", "eval", "synth", "models"):
        assert name in result.stdout


def test_version():
    result = thyme("--version")
    assert result.returncode == 0 and "thyme-vl" in result.stdout


def test_sandbox_check_reports_layers_and_passes_selftest():
    result = thyme("sandbox", "check", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = {layer["name"]: layer["active"] for layer in report["layers"]}
    assert names["process"] is True and names["wall_clock"] is True
    assert "seccomp" in names  # reported, active or not
    assert report["checks"] and all(c["passed"] for c in report["checks"])


def test_sandbox_check_runs_the_selftest_in_the_filesystem_view_or_says_why_not():
    result = thyme("sandbox", "check", "--json", "--filesystem", "view")
    report = json.loads(result.stdout)
    view = next(layer for layer in report["layers"] if layer["name"] == "fs_view")
    if os.geteuid() == 0:
        assert result.returncode == 0, result.stderr
        assert view["active"] and all(c["passed"] for c in report["checks"])
    else:  # an ordinary user gets no view: the check fails and says why
        assert result.returncode == 1 and not view["active"] and "root parent" in view["detail"]


def test_sandbox_commands_refuse_an_unknown_filesystem_in_one_line():
    result = thyme("sandbox", "check", "--filesystem", "chroot")
    assert result.returncode == 2
    expected = "error: SandboxConfig.filesystem='chroot': use one of auto, landlock, view"
    assert result.stderr.strip() == expected


def test_sandbox_exec_runs_files_in_one_session(tmp_path, small_png):
    (tmp_path / "a.py").write_text("value = 21\n")
    (tmp_path / "b.py").write_text(
        "from PIL import Image\nprint(value * 2)\nprocessed_path = '/mnt/data/temp_processed_images/c.png'\n"
        "Image.open(image_path).crop((0, 0, 100, 80)).save(processed_path)\n"
    )
    out = tmp_path / "crops"
    result = thyme(
        "sandbox",
        "exec",
        str(tmp_path / "a.py"),
        str(tmp_path / "b.py"),
        "--image",
        str(small_png),
        "--json",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[1]["stdout"] == "42\n" and lines[1]["error"] is None
    assert Image.open(lines[1]["images"][0]).size == (100, 80)


def test_sandbox_exec_failure_exit_code(tmp_path):
    (tmp_path / "bad.py").write_text("raise RuntimeError('nope')\n")
    result = thyme("sandbox", "exec", str(tmp_path / "bad.py"))
    assert result.returncode == 1
    assert "RuntimeError: nope" in result.stderr


def test_sandbox_exec_missing_file_is_one_clear_line(tmp_path):
    result = thyme("sandbox", "exec", str(tmp_path / "missing.py"))
    assert result.returncode == 2
    assert "is not a file" in result.stderr and "Traceback" not in result.stderr


def test_demo_runs_thyme_tiny_end_to_end(tmp_path):
    """The bundled model answers a freshly drawn zoom question with code: its code ran, an image came back,
    and the trajectory page was written."""
    result = thyme("demo", "--out", str(tmp_path / "demo"), "--seed", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "demo" / "image.png").exists() and (tmp_path / "demo" / "trajectory.html").exists()
    for shown in ("question", "code (step 1)", "sandbox", "image:", "answer:", "gold answer"):
        assert shown in result.stdout, shown


def test_demo_bad_options_are_one_line(tmp_path):
    result = thyme("demo", "--task", "bogus", "--out", str(tmp_path / "d"))
    assert result.returncode == 2 and "choose one of: zoom, compute" in result.stdout
    (tmp_path / "file").write_text("x")
    result = thyme("demo", "--out", str(tmp_path / "file"))
    assert result.returncode == 2 and "is a file" in result.stdout and "Traceback" not in result.stderr


def test_models_tiny_builds_offline(tmp_path):
    out = tmp_path / "tiny"
    result = thyme("models", "tiny", "--out", str(out), "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    again = thyme("models", "tiny", "--out", str(out))
    assert again.returncode == 2 and "Traceback" not in again.stderr


def test_synth_writes_samples(tmp_path):
    out = tmp_path / "compute"
    result = thyme("synth", "--task", "compute", "--n", "5", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and rows[0]["seed"] == 3 and (out / rows[0]["image"]).is_file()
    assert "samples/s" in result.stderr + result.stdout
    again = thyme("synth", "--task", "compute", "--n", "5", "--seed", "3", "--out", str(out))
    assert again.returncode == 2 and "overwrite" in again.stderr


def test_eval_unknown_task_is_one_line(tmp_path):
    result = thyme("eval", "--task", "nope", "--model", "m", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "toyworld_zoom" in errors[0], result.stderr
