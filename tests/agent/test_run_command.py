"""`thyme run` as a real subprocess, on the scripted tiny model: live output, --json, --html, --save, and
one-line errors with nothing written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from PIL import Image


def thyme(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "thyme", *args], capture_output=True, text=True, timeout=timeout
    )


def test_run_renders_steps_and_writes_html_and_save(scripted_model_dir, noise_png, tmp_path):
    html, save = tmp_path / "t.html", tmp_path / "saved"
    result = thyme(
        "run", "Zoom in on the corner.", "--model", str(scripted_model_dir), "--image", str(noise_png),
        "--html", str(html), "--save", str(save), "--max-new-tokens", "160",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "answer: red" in result.stdout and "crop.save(processed_path)" in result.stdout
    page = html.read_text()
    assert "data:image/png;base64," in page and "red" in page
    saved = json.loads((save / "trajectory.json").read_text())
    assert saved["answer"] == "red" and (save / saved["image"]).is_file()


def test_run_json_is_one_object_with_answer(scripted_model_dir, noise_png):
    result = thyme(
        "run", "What is six times seven?", "-m", str(scripted_model_dir), "-i", str(noise_png), "--json",
        "--max-new-tokens", "160",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["answer"] == "42" and data["schema"] == "thyme.trajectory/1"
    assert [e["kind"] for e in data["events"]][-1] == "final"


def test_run_no_tools(scripted_model_dir, noise_png):
    result = thyme(
        "run", "What is six times seven?", "-m", str(scripted_model_dir), "-i", str(noise_png), "--json",
        "--no-tools", "--max-new-tokens", "60",
    )  # fmt: skip
    data = json.loads(result.stdout)
    assert data["tools"] is False and not any(e["kind"] == "code_call" for e in data["events"])


def test_run_bad_inputs_are_one_line_and_write_nothing(scripted_model_dir, noise_png, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    html = tmp_path / "out.html"
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    cases = [
        (["-m", str(scripted_model_dir), "-i", str(tmp_path / "missing.png")], "does not exist"),
        (["-m", str(scripted_model_dir), "-i", str(corrupt)], "not a readable image"),
        (["-m", str(tmp_path / "no-model"), "-i", str(noise_png)], "cannot load model"),
        (["-m", "m", "-i", str(noise_png), "--backend", "openai"], "needs --base-url"),
        (["-m", "m", "-i", str(noise_png), "--backend", "openai", "--base-url", closed], "cannot list"),
        (
            ["-m", str(scripted_model_dir), "-i", str(noise_png), "--on-error", "explode"],
            "--on-error must be",
        ),
        (
            ["-m", str(scripted_model_dir), "-i", str(noise_png), "--max-steps", "0"],
            "--max-steps must be >= 1",
        ),
        (["-m", str(scripted_model_dir), "-i", str(noise_png), "--preset", "nope"], "--preset 'nope' is not"),
    ]
    for args, message in cases:
        result = thyme("run", "q", *args, "--html", str(html))
        assert result.returncode == 2, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert not html.exists()


def test_run_context_overflow_is_one_line(scripted_model_dir, noise_png, tmp_path):
    html = tmp_path / "out.html"
    question = "Describe every detail of the picture, please. " * 600  # far beyond the 4096-token context
    result = thyme("run", question, "-m", str(scripted_model_dir), "-i", str(noise_png), "--html", str(html))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    config = json.loads((scripted_model_dir / "config.json").read_text())
    limit = config["text_config"]["max_position_embeddings"]  # the model's own, named in the message
    assert len(lines) == 1 and f"does not fit the model's {limit}-token context" in lines[0], result.stderr
    assert not html.exists()


def test_run_refuses_an_unusable_image_in_one_line_before_loading(noise_png, tmp_path):
    """Each case is refused before the model loads (the model path does not exist), exactly once, exit 2."""
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 megapixels in ~50 KB
    photo = tmp_path / "photo.jpg"
    Image.open(noise_png).convert("RGB").save(photo, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])
    wide = tmp_path / "wide.png"
    Image.new("RGB", (8000, 1)).save(wide)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cases = [
        (["-i", str(bomb)], "too many pixels to decode safely"),
        (["-i", str(truncated)], "image file is truncated"),
        (["-i", str(wide)], "is 8000x1: its long side is over 200 times its short side"),
        (
            ["-i", str(text)],
            f"image {str(text)!r} is not a readable image (not an image format PIL can read)",
        ),
        ([], "thyme run needs --image PATH"),
    ]
    for args, message in cases:
        result = thyme("run", "q", "-m", str(tmp_path / "no-model"), *args)
        assert result.returncode == 2, (args, result.stderr)
        printed = result.stdout + result.stderr
        assert "Traceback" not in printed and printed.count(message) == 1, printed
        lines = [line for line in printed.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], printed


def test_run_prints_no_path_into_its_temporary_folders(scripted_model_dir, noise_png, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "thyme", "run", "Zoom in on the corner.", "-m", str(scripted_model_dir), "-i",
         str(noise_png), "--max-new-tokens", "160"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "TMPDIR": str(tmp), "COLUMNS": "300"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "image: 192x192 px" in result.stdout  # the zoomed crop, by size
    assert "Loading weights" not in result.stderr  # no transformers progress bar by default
    # Those folders are gone once it exits: the one mention left is the code's own print(processed_path),
    # the sandbox output the model saw, shown as it was.
    mentions = [line for line in (result.stdout + result.stderr).splitlines() if str(tmp) in line]
    assert len(mentions) == 1 and "/out/zoom.png" in mentions[0] and "image:" not in mentions[0], mentions


def test_html_and_save_get_the_users_umask(scripted_model_dir, noise_png, tmp_path):
    html, save = tmp_path / "t.html", tmp_path / "saved"
    result = subprocess.run(
        [sys.executable, "-m", "thyme", "run", "Zoom in on the corner.", "-m", str(scripted_model_dir), "-i",
         str(noise_png), "--html", str(html), "--save", str(save), "--max-new-tokens", "160"],
        capture_output=True, text=True, timeout=180, preexec_fn=lambda: os.umask(0o027),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = [html, save / "trajectory.json", *(save / "images").iterdir()]
    assert len(files) >= 4 and {p.stat().st_mode & 0o777 for p in files} == {0o640}
    assert {p.stat().st_mode & 0o777 for p in (save, save / "images")} == {0o750}
