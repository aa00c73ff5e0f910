"""parse_assistant, pending_code and is_code_open on realistic and malformed assistant turns."""

from __future__ import annotations

import random

import pytest
from protocol_samples import COMPUTE, CONTRAST, CROP, ERROR_FIX, MULTI, REALISTIC, ROTATE

from thyme.protocol import (
    AnswerSegment,
    CodeSegment,
    SandboxOutputSegment,
    TextSegment,
    ThinkTag,
    code_blocks,
    is_code_open,
    parse_assistant,
    pending_code,
)

FENCE = "```"


def kinds(text: str) -> list[str]:
    return [type(s).__name__ for s in parse_assistant(text)]


def only_code(text: str) -> CodeSegment:
    blocks = code_blocks(text)
    assert len(blocks) == 1, blocks
    return blocks[0]


def assert_tiles(text: str) -> None:
    """Segments are contiguous, each raw span is the input slice, and together they rebuild the input."""
    segments = parse_assistant(text)
    pos = 0
    for segment in segments:
        assert segment.start == pos
        assert segment.end > segment.start
        assert text[segment.start : segment.end] == segment.raw
        pos = segment.end
    assert pos == len(text)
    assert "".join(s.raw for s in segments) == text


def test_crop_trajectory_segments_in_order():
    assert kinds(CROP) == [
        "ThinkTag",
        "TextSegment",
        "CodeSegment",
        "SandboxOutputSegment",
        "TextSegment",
        "ThinkTag",
        "TextSegment",
        "AnswerSegment",
    ]


def test_crop_code_is_the_python_source_without_fence():
    block = only_code(CROP)
    assert block.complete
    assert block.code.startswith("from PIL import Image\nimport os\n")
    assert block.code.endswith("print(processed_path)")
    assert FENCE not in block.code
    assert block.raw.startswith("<code>\n```python") and block.raw.endswith("```\n</code>")
    assert CROP[block.start : block.end] == block.raw


@pytest.mark.parametrize("sample", [ROTATE, CONTRAST, COMPUTE], ids=["rotate", "contrast", "compute"])
def test_single_block_samples_give_compilable_code(sample):
    block = only_code(sample)
    compile(block.code, "<model>", "exec")
    assert block.complete


def test_rotation_code_keeps_its_call():
    assert "img.rotate(180, expand=True)" in only_code(ROTATE).code


def test_contrast_code_keeps_its_call():
    assert "ImageEnhance.Contrast(img).enhance(2.5)" in only_code(CONTRAST).code


def test_computation_output_is_a_sandbox_segment():
    outputs = [s for s in parse_assistant(COMPUTE) if isinstance(s, SandboxOutputSegment)]
    assert [o.text for o in outputs] == ["7006652"]
    assert outputs[0].complete


def test_multi_block_has_outputs_between_blocks():
    segments = [s for s in parse_assistant(MULTI) if isinstance(s, (CodeSegment, SandboxOutputSegment))]
    assert [type(s).__name__ for s in segments] == ["CodeSegment", "SandboxOutputSegment"] * 2
    assert "chart_8k_lower" in segments[0].code and "chart_8k_row2" in segments[2].code


def test_error_correction_keeps_error_text_out_of_code():
    blocks = code_blocks(ERROR_FIX)
    assert [b.complete for b in blocks] == [True, True]
    assert "img.crop(300, 200, 600, 500)" in blocks[0].code
    assert "img.crop((300, 200, 600, 500))" in blocks[1].code
    assert all("TypeError" not in b.code for b in blocks)


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_realistic_samples_round_trip(name):
    assert_tiles(REALISTIC[name])


def test_think_tags_are_markers():
    segments = parse_assistant(CROP)
    tags = [s for s in segments if isinstance(s, ThinkTag)]
    assert [t.closing for t in tags] == [False, True]
    assert [t.raw for t in tags] == ["<think>", "</think>"]


def test_mixed_case_tags():
    text = (
        f"<THINK>x<CODE>\n{FENCE}Python\nprint(1)\n{FENCE}\n</Code><Sandbox_Output>1</SANDBOX_OUTPUT></think>"
    )
    segments = parse_assistant(text)
    assert isinstance(segments[0], ThinkTag) and not segments[0].closing
    assert only_code(text).code == "print(1)" and only_code(text).complete
    assert any(isinstance(s, SandboxOutputSegment) and s.text == "1" for s in segments)


def test_missing_fence():
    block = only_code("<code>\nx = 6 * 7\nprint(x)\n</code>")
    assert block.code == "x = 6 * 7\nprint(x)" and block.complete


def test_bare_fence_without_language():
    assert only_code(f"<code>\n{FENCE}\nprint(2)\n{FENCE}\n</code>").code == "print(2)"


@pytest.mark.parametrize("language", ["python", "py", "Python", "PY", "python3"])
def test_fence_language_words(language):
    assert only_code(f"<code>\n{FENCE}{language}\nprint(3)\n{FENCE}\n</code>").code == "print(3)"


def test_fence_and_code_on_one_line():
    assert only_code(f"<code>{FENCE}python print(6 * 7){FENCE}</code>").code == "print(6 * 7)"


def test_code_right_after_fence_without_language():
    assert only_code(f"<code>{FENCE}import math; print(math.pi){FENCE}</code>").code == (
        "import math; print(math.pi)"
    )


def test_python_variable_named_like_a_language_is_kept():
    # The reference's regex would eat "python" here; without a fence it is code.
    assert only_code("<code>\npython_version = 3\nprint(python_version)\n</code>").code.startswith(
        "python_version = 3"
    )


def test_missing_closing_fence_with_close_tag():
    block = only_code(f"<code>\n{FENCE}python\nprint(4)\n</code>")
    assert block.code == "print(4)" and block.complete


def test_stray_closing_fence_without_opening():
    assert only_code(f"<code>\nprint(5)\n{FENCE}\n</code>").code == "print(5)"


def test_stray_whitespace_around_code():
    block = only_code(f"<code>  \n\n   {FENCE}python   \n\n    x = 1\n    print(x)\n   {FENCE}  \n\n</code>")
    assert block.code == "x = 1\nprint(x)"


def test_indented_code_as_in_the_system_prompt_is_dedented():
    text = f"    <code>\n    {FENCE}python\n    y = 2\n    if y:\n        print(y)\n    {FENCE}\n    </code>"
    code = only_code(text).code
    assert code == "y = 2\nif y:\n    print(y)"
    compile(code, "<model>", "exec")


def test_unclosed_code_at_end_is_incomplete():
    text = f"<think>Let me crop.\n<code>\n{FENCE}python\nfrom PIL import Image\nimg = Image.op"
    block = only_code(text)
    assert not block.complete
    assert block.end == len(text)
    assert block.code == "from PIL import Image\nimg = Image.op"


def test_close_tag_missing_but_fence_closed_then_prose():
    text = (
        f"<think><code>\n{FENCE}python\nprint(7)\n{FENCE}\nThe result will tell.</think>\n<answer>7</answer>"
    )
    block = only_code(text)
    assert block.code == "print(7)" and not block.complete
    assert block.raw.endswith(FENCE)
    prose = [s for s in parse_assistant(text) if isinstance(s, TextSegment)]
    assert [p.text for p in prose] == ["\nThe result will tell.", "\n"]
    assert_tiles(text)


def test_close_tag_lost_before_sandbox_output():
    text = f"<code>\n{FENCE}python\nprint(8)\n{FENCE}\n<sandbox_output>8</sandbox_output>Done."
    segments = parse_assistant(text)
    assert isinstance(segments[0], CodeSegment) and not segments[0].complete
    assert segments[0].code == "print(8)"
    assert isinstance(segments[1], SandboxOutputSegment) and segments[1].text == "8"


def test_unclosed_unfenced_code_stops_at_think_close():
    text = "<think><code>print(9)\n</think>\n<answer>9</answer>"
    block = only_code(text)
    assert block.code == "print(9)" and not block.complete
    assert isinstance(parse_assistant(text)[-1], AnswerSegment)


def test_stray_closing_tags_are_prose():
    text = "Some text</code> and </answer> and </sandbox_output> here"
    assert parse_assistant(text) == [TextSegment(text, 0, len(text))]


def test_empty_and_plain_text():
    assert parse_assistant("") == []
    assert kinds("no tags at all") == ["TextSegment"]


def test_pending_code_after_generation_stopped_at_close():
    turn = CROP[: CROP.index("</code>") + len("</code>")]
    block = pending_code(turn)
    assert block is not None and block.code == only_code(CROP).code


def test_pending_code_none_once_output_follows():
    assert pending_code(CROP) is None
    turn = CROP[: CROP.index("</sandbox_output>") + len("</sandbox_output>")]
    assert pending_code(turn) is None


def test_pending_code_is_the_second_block_of_a_multi_step_turn():
    second_close = MULTI.index("</code>", MULTI.index("</code>") + 1) + len("</code>")
    block = pending_code(MULTI[:second_close])
    assert block is not None and "chart_8k_row2" in block.code


def test_pending_code_ignores_incomplete_blocks():
    assert pending_code(f"<think><code>\n{FENCE}python\nprint(1)") is None


def test_pending_code_ignores_code_inside_sandbox_output():
    printed = f"<code>{FENCE}python\nimport os\n{FENCE}</code>"
    text = f"<code>print(1)</code><sandbox_output>{printed}</sandbox_output>"
    assert pending_code(text) is None
    assert len(code_blocks(text)) == 1


def test_pending_code_ignores_code_inside_an_answer():
    text = "<think>Simple.</think>\n<answer>Use <code>print(1)</code> to print.</answer>"
    assert pending_code(text) is None
    assert code_blocks(text) == []


def test_is_code_open_at_every_prefix_of_a_streamed_turn():
    code_start = CROP.index("<code>") + len("<code>")
    code_end = CROP.index("</code>") + len("</code>")
    for cut in range(len(CROP) + 1):
        expected = code_start <= cut < code_end
        assert is_code_open(CROP[:cut]) == expected, (cut, CROP[max(0, cut - 20) : cut])


def test_is_code_open_false_after_answer_and_for_prose():
    assert not is_code_open(CROP)
    assert not is_code_open("I think the answer is 4.")


def test_random_tag_soup_round_trips():
    tags = ["<code>", "</code>", "<CODE>", "<think>", "</think>", "<answer>", "</answer>"]
    tags += ["<sandbox_output>", "</sandbox_output>"]
    pieces = [*tags, FENCE, f"{FENCE}python\n", "\n", " ", "x = 1", "print(x)", "<", ">", "<cod"]
    rng = random.Random(1234)
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        assert_tiles(text)
