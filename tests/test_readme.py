"""The README's Python examples that need no model run as written, in a fresh interpreter."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

from PIL import Image

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_sandbox_example_runs_as_written(tmp_path):
    [block] = [b for b in python_blocks() if ".arun(" in b and "Sandbox(" in b]
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "photo.jpg")
    (tmp_path / "example.py").write_text(block, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "(64, 48)" in result.stdout and "64\n" in result.stdout
    assert "['42\\n', '1024\\n']" in result.stdout
