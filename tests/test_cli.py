"""The command line, run as a real subprocess the way users run it."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
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
    assert names["lineage"] is (os.geteuid() != 0)  # an ordinary user's containment; root has its uids
    assert report["checks"] and all(c["passed"] for c in report["checks"])
    assert {"what it started dies with it", "processes are capped"} <= {c["name"] for c in report["checks"]}


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
    assert result.stderr.strip() == "error: --filesystem 'chroot' is not one of auto, landlock, view"
    result = thyme("sandbox", "exec", __file__, "--timeout", "-1")  # the flag, not SandboxConfig.timeout_s
    assert (
        result.returncode == 2 and result.stderr.strip() == "error: --timeout must be > 0 seconds, got -1.0"
    )


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


def test_sandbox_exec_without_out_prints_no_path_that_vanishes(tmp_path, small_png):
    (tmp_path / "crop.py").write_text(
        "from PIL import Image\nprocessed_path = '/mnt/data/temp_processed_images/c.png'\n"
        "Image.open(image_path).crop((0, 0, 100, 80)).save(processed_path)\nprint('\\x1b[2Jdone')\n"
    )
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "COLUMNS": "300"}
    for json_flag in ([], ["--json"]):
        result = subprocess.run(
            [sys.executable, "-m", "thyme", "sandbox", "exec", str(tmp_path / "crop.py"), "-i",
             str(small_png), *json_flag],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert str(tmp) not in result.stdout + result.stderr
        if json_flag:
            [name] = json.loads(result.stdout)["images"]
            assert name.endswith(".png") and "/" not in name
        else:  # named, with how to keep it; the code's output cannot drive the terminal
            assert re.search(r"images: \S+\.png \(not kept: pass --out DIR to keep them\)", result.stdout)
            assert "\x1b" not in result.stdout and "\\x1b[2Jdone" in result.stdout


def test_sandbox_exec_failure_exit_code(tmp_path):
    (tmp_path / "bad.py").write_text("raise RuntimeError('nope')\n")
    result = thyme("sandbox", "exec", str(tmp_path / "bad.py"))
    assert result.returncode == 1
    assert "RuntimeError: nope" in result.stderr


def test_sandbox_exec_missing_file_is_one_clear_line(tmp_path):
    result = thyme("sandbox", "exec", str(tmp_path / "missing.py"))
    assert result.returncode == 2
    assert "is not a file" in result.stderr and "Traceback" not in result.stderr


def test_demo_without_a_bundled_model_says_so_and_runs_the_sandbox_demo(tmp_path, monkeypatch):
    """Without a bundled thyme-tiny (a checkout before `make tiny` installs one) the demo says so and runs
    released-model-shaped code in the real sandbox. (`thyme demo` with the model: tests/models.)"""
    from rich.console import Console

    import thyme.agent.loop
    from thyme.demo import run_demo

    monkeypatch.setattr(thyme.agent.loop, "bundled_tiny", lambda: None)
    console = Console(record=True, width=100)
    assert run_demo(tmp_path / "demo", console) == 0
    shown = console.export_text()
    assert "thyme-tiny is not bundled" in shown
    zoom = tmp_path / "demo" / "crop_and_zoom_0.png"
    assert zoom.exists()
    # The 60x25 box ran off the image; the crop was clamped inside it and enlarged to 64 px per side,
    # then zoomed 4x by the code.
    assert Image.open(zoom).size == (256, 256)
    assert "crop_clamp" in shown and "image_path" in shown
    assert "180.5" in shown


def test_demo_bad_options_are_one_line(tmp_path):
    result = thyme("demo", "--task", "bogus", "--out", str(tmp_path / "d"))
    assert result.returncode == 2 and "choose one of: zoom, compute" in result.stdout
    result = thyme("demo", "--seed", "-1", "--out", str(tmp_path / "d"))
    assert result.returncode == 2 and "the test split's seeds" in result.stdout
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
    assert "pass --overwrite" in again.stderr and "overwrite=True" not in again.stderr  # the flag, not Python


def test_synth_writes_samples(tmp_path):
    out = tmp_path / "compute"
    result = thyme("synth", "--task", "compute", "--n", "5", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and rows[0]["seed"] == 3 and (out / rows[0]["image"]).is_file()
    assert "samples/s" in result.stderr + result.stdout
    again = thyme("synth", "--task", "compute", "--n", "5", "--seed", "3", "--out", str(out))
    assert (
        again.returncode == 2 and "pass --overwrite" in again.stderr and "overwrite=True" not in again.stderr
    )


def test_eval_unknown_task_is_one_line(tmp_path):
    result = thyme("eval", "--task", "nope", "--model", "m", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "toyworld_zoom" in errors[0], result.stderr


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error")]


@pytest.fixture(scope="module")
def toy_set(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("toy") / "compute"
    result = thyme("synth", "--task", "compute", "--level", "add-text", "--n", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("models") / "tiny"
    result = thyme("models", "tiny", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("device", ["bogus", "cuda:x", "cuda"])
def test_a_device_torch_cannot_use_is_one_line_before_any_model_loads(device, tmp_path, small_png, toy_set):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this torch can use CUDA")
    missing = tmp_path / "no-model"  # never loaded: the device is checked first
    commands = {
        "run": ["run", "q", "-m", str(missing), "-i", str(small_png)],
        "eval": ["eval", "-t", "toyworld_compute", "-m", str(missing), "--data", str(toy_set), "--out",
                 str(tmp_path / "o")],
        "serve": ["serve", "-m", str(missing), "--port", "0"],
    }  # fmt: skip
    for name, args in commands.items():
        result = thyme(*args, "--device", device)
        assert result.returncode == 2, (name, result.stderr)
        [line] = error_lines(result)
        assert line.startswith(f"error: --device {device!r}") and "auto" in line and "cpu" in line, line


def test_a_failed_eval_leaves_no_empty_folders(tmp_path, toy_set):
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    existing.mkdir()
    for out in (fresh, existing):
        args = ["eval", "-t", "toyworld_compute", "-m", "m", "--data", str(toy_set), "--out", str(out)]
        result = thyme(*args, "--device", "bogus")
        assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert not fresh.exists()  # created by the run, and nothing was written
    assert existing.is_dir() and not (existing / "cache").exists()


def test_out_that_is_a_file_says_so_in_one_line(tmp_path, toy_set):
    (tmp_path / "code.py").write_text("print(1)\n")
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        commands = [
            ["eval", "-t", "toyworld_compute", "-m", "m", "--data", str(toy_set), "--out", str(out)],
            ["synth", "--task", "compute", "--n", "2", "--out", str(out)],
            ["sandbox", "exec", str(tmp_path / "code.py"), "--out", str(out)],
            ["models", "tiny", "--out", str(out)],
        ]
        for args in commands:
            result = thyme(*args)
            assert result.returncode == 2, (args, result.stderr)
            [line] = error_lines(result)
            where = "which is a file" if out.name == "sub" else "is a file"
            assert f"--out {out}" in line and where in line and "give a directory" in line, line


def test_sandbox_exec_refuses_files_that_are_not_python_text(tmp_path, small_png):
    latin1 = tmp_path / "latin1.py"
    latin1.write_bytes(b"print('caf\xe9')\n")
    for path in (latin1, small_png):
        result = thyme("sandbox", "exec", str(path))
        assert result.returncode == 2, result.stderr
        [line] = error_lines(result)
        assert line == f"error: {path} is not UTF-8 text; pass Python source files (images go with --image)"


def test_a_bad_port_is_refused_before_any_model_loads(tmp_path):
    result = thyme("serve", "-m", str(tmp_path / "no-model"), "--port", "99999")
    assert result.returncode == 2
    assert error_lines(result) == [
        "error: --port 99999 is not a TCP port; use 1-65535, or 0 to pick a free one"
    ]
    result = thyme("sandbox", "serve", "--port", "-1")
    assert result.returncode == 2 and error_lines(result)[0].startswith("error: --port -1 is not a TCP port")


def test_sigterm_stops_eval_like_ctrl_c_and_removes_its_temporary_folders(tmp_path, tiny_model, toy_set):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "thyme", "eval", "-t", "toyworld_compute", "-m", str(tiny_model), "--data",
         str(toy_set), "--out", str(tmp_path / "out"), "--device", "cpu", "--max-new-tokens", "64",
         "--concurrency", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp.glob("thyme-*"))) < 2:  # the agent's artifacts and the sandbox are up
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    assert list(tmp.glob("thyme-*")) == []


def test_sandbox_serve_names_its_flags_in_config_errors():
    cases = {
        "--max-sessions": ("0", "error: --max-sessions must be >= 1, got 0"),
        "--idle-ttl": ("0", "error: --idle-ttl must be > 0 seconds, got 0.0"),
        "--max-request-mb": ("0", "error: --max-request-mb must be at least 1 KiB (1024 bytes), got 0 bytes"),
    }
    for option, (value, message) in cases.items():
        result = thyme("sandbox", "serve", "--port", "0", option, value)
        assert result.returncode == 2 and error_lines(result) == [message], result.stderr


def start_in(tmp: pathlib.Path, *args: str) -> subprocess.Popen:
    """`thyme args` with its temporary folders under `tmp`."""
    return subprocess.Popen(
        [sys.executable, "-m", "thyme", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip


def wait_for(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)


@pytest.mark.parametrize("command", ["run", "synth"])
def test_sigterm_stops_long_commands_and_removes_their_temporary_folders(
    command, tmp_path, tiny_model, small_png
):
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    tmp.mkdir()
    if command == "run":  # a random model writes until --max-new-tokens: seconds of generation
        args = ["run", "What is here?", "-m", str(tiny_model), "-i", str(small_png), "--device", "cpu",
                "--max-new-tokens", "20000"]  # fmt: skip
        made = ("thyme-agent-*", "thyme-sandbox-*")
    else:
        args = ["synth", "--task", "zoom", "--n", "2000", "--out", str(out)]
        made = ("thyme-sandbox-*",)
    proc = start_in(tmp, *args)
    try:
        wait_for(proc, lambda: all(list(tmp.glob(pattern)) for pattern in made))
        time.sleep(1.5)  # past the sandbox's start, into the work
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    assert list(tmp.glob("thyme-*")) == []
    assert not out.exists() or list(out.iterdir()) == []  # synth's staging folder went too


@pytest.mark.parametrize("command", ["serve", "sandbox serve"])
def test_sigterm_stops_servers_cleanly_and_removes_their_temporary_folders(command, tmp_path, tiny_model):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    if command == "serve":
        args = ["serve", "-m", str(tiny_model), "--port", "0", "--device", "cpu"]
    else:
        args = ["sandbox", "serve", "--port", "0"]
    proc = start_in(tmp, *args)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://"), proc.communicate()
        assert list(tmp.glob("thyme-*"))  # the sandbox (and the agent's artifacts) are up
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert list(tmp.glob("thyme-*")) == []


def command_paths() -> list[list[str]]:
    """Every command and group of `thyme`, as the words that name it (`[]` is `thyme` itself)."""
    from thyme.cli import command

    paths, todo = [], [([], command())]
    while todo:
        path, cmd = todo.pop()
        paths.append(path)
        todo.extend(([*path, name], sub) for name, sub in getattr(cmd, "commands", {}).items())
    return sorted(paths)


def test_every_command_takes_h_and_shows_no_value_type_for_flags():
    paths = command_paths()
    assert ["sandbox", "serve"] in paths and ["train", "sft"] in paths
    for path in paths:
        result = thyme(*path, "-h")
        assert result.returncode == 0 and "Usage:" in result.stdout, (path, result.stderr)
        assert "<bool>" not in result.stdout, path  # a flag takes no value: `--json true` is an error
    assert thyme("sandbox", "check", "--json", "true").returncode == 2


def test_the_readme_lists_every_flag_of_every_command():
    from thyme.cli import command

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    listing = readme.split("## Command line\n", 1)[1].split("```\n", 2)[1]
    entries: dict[str, str] = {}  # "sandbox exec" -> its lines in the listing
    for line in listing.splitlines():
        if line.startswith("thyme "):
            name = " ".join(w for w in line.split()[1:3] if re.fullmatch(r"[a-z][a-z-]*", w))
            current = entries.setdefault(name, "")
        entries[name] = current = current + line + "\n"
    root, missing = command(), {}
    for path in command_paths():
        cmd = root
        for word in path:
            cmd = cmd.commands[word]
        if getattr(cmd, "commands", None):
            continue
        name = " ".join(path)
        flags = [o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
        text = entries.get(name, "")
        absent = [f for f in flags if not re.search(re.escape(f) + r"(?![\w-])", text)]
        if absent:
            missing[name] = absent
    assert missing == {}, "\n".join(f"{k}: {v}" for k, v in missing.items())


def modes(root: pathlib.Path) -> set[tuple[str, int]]:
    """(kind, permission bits) of `root` and everything under it."""
    return {("dir" if p.is_dir() else "file", p.stat().st_mode & 0o777) for p in [root, *root.rglob("*")]}


def test_outputs_a_user_keeps_get_their_umask(tmp_path):
    umask = lambda: os.umask(0o027)  # noqa: E731
    out = tmp_path / "model"
    result = subprocess.run(
        [sys.executable, "-m", "thyme", "models", "tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=120, preexec_fn=umask,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert modes(out) == {("dir", 0o750), ("file", 0o640)}
