"""What `thyme run` and `thyme demo` print for each event: model text that cannot drive the terminal, code
with its lines as written, images by size (their files are temporary)."""

from __future__ import annotations

import io

from PIL import Image
from rich.console import Console

from thyme.agent.console import EventPrinter
from thyme.agent.events import CodeCall, Final, ModelText, Observation


def render(events, width: int = 80) -> str:
    buffer = io.StringIO()
    printer = EventPrinter(Console(file=buffer, width=width, force_terminal=True, color_system=None))
    for index, event in enumerate(events):
        printer(index, event)
    return buffer.getvalue()


def test_control_characters_from_the_model_are_shown_escaped():
    hostile = "\x1b[2J\x1b]0;owned\x07\r\x9b"
    out = render([
        ModelText(1, f"<think>{hostile}", "stop", stop="</code>"),
        CodeCall(1, f"print('{hostile}')"),
        Observation(1, hostile, hostile, False, (), (), 0.1),
        Final(hostile, "answer", 1, 1),
    ])  # fmt: skip
    assert not any(ch in out for ch in "\x1b\x07\r\x9b"), repr(out)
    assert out.count("\\x1b[2J\\x1b]0;owned\\x07\\r\\x9b") == 5  # text, code, stdout, error, answer


def test_code_keeps_its_lines_at_any_console_width():
    line = "total = " + " + ".join(f"value_{i}" for i in range(20))
    assert len(line) > 200
    out = render([CodeCall(1, f"{line}\nprint(total)")], width=60)
    assert f"\n{line}\nprint(total)\n" in out


def test_images_are_shown_by_size_not_by_a_temporary_path(tmp_path):
    image = tmp_path / "artifact" / "000.png"
    image.parent.mkdir()
    Image.new("RGB", (192, 96)).save(image)
    out = render([Observation(1, "", None, False, (image,), (), 0.1)])
    assert "image: 192x96 px" in out and str(tmp_path) not in out
