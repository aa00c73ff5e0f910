"""Hostile and odd inputs: tags inside code, nested or duplicated tags, megabyte inputs in linear time."""

from __future__ import annotations

import time

import pytest

from thyme.protocol import (
    AnswerSegment,
    CodeSegment,
    SandboxOutputSegment,
    TextSegment,
    code_blocks,
    extract_answer,
    is_code_open,
    last_boxed,
    parse_assistant,
    pending_code,
    strip_answer_leadins,
)

FENCE = "```"
MEGABYTE = 1 << 20
# A quadratic parser needs minutes for a megabyte of unclosed tags; linear takes about a second here.
LIMIT_S = 5.0


def round_trips(text: str) -> bool:
    return "".join(s.raw for s in parse_assistant(text)) == text


def test_close_tag_inside_a_string_literal_ends_the_block():
    # Generation stops at the first "</code>", so the parser closes the block there too: the code is cut.
    text = f'<code>\n{FENCE}python\nprint("</code>")\n{FENCE}\n</code>'
    blocks = code_blocks(text)
    assert len(blocks) == 1 and blocks[0].complete
    assert blocks[0].code == 'print("'
    assert isinstance(parse_assistant(text)[-1], TextSegment)
    assert round_trips(text)


def test_other_tags_inside_a_closed_block_are_code():
    code = 's = "<think>"\nt = "</think><answer>"\nu = "<code>"\nprint(s, t, u)'
    text = f"<code>\n{FENCE}python\n{code}\n{FENCE}\n</code>"
    block = pending_code(text)
    assert block is not None and block.code == code
    compile(block.code, "<model>", "exec")


def test_sandbox_output_tag_inside_code_means_the_close_was_lost():
    # Only the agent loop writes <sandbox_output>; seeing it first means "</code>" never came.
    text = '<code>\nprint("<sandbox_output>")\n</code>'
    blocks = code_blocks(text)
    assert len(blocks) == 1 and not blocks[0].complete
    assert pending_code(text) is None


def test_duplicated_open_tag_inside_a_block_is_code_text():
    text = "<code><code>\nprint(1)\n</code>"
    assert [b.code for b in code_blocks(text)] == ["<code>\nprint(1)"]


def test_duplicated_close_tag_is_prose():
    text = "<code>print(1)</code></code>"
    segments = parse_assistant(text)
    assert isinstance(segments[0], CodeSegment) and segments[0].complete
    assert segments[1] == TextSegment("</code>", len(text) - 7, len(text))


def test_nested_think_tags_do_not_break_parsing():
    text = "<think><think>inner</think><code>print(2)</code></think>"
    assert [b.code for b in code_blocks(text)] == ["print(2)"]
    assert round_trips(text)


def test_code_tags_inside_an_answer_are_answer_text():
    text = "<think>ok</think>\n<answer>write <code>x</code> then <think>stop</answer>"
    answer = [s for s in parse_assistant(text) if isinstance(s, AnswerSegment)]
    assert answer[0].text == "write <code>x</code> then <think>stop"
    assert code_blocks(text) == []


def test_answer_printed_by_the_sandbox_is_not_the_answer():
    code = "<code>print('<ans' + 'wer>42</ans' + 'wer>')</code>"
    text = code + "<sandbox_output><answer>42</answer></sandbox_output>"
    assert extract_answer(text) is None


def test_unclosed_sandbox_output_runs_to_the_end():
    text = "<code>print(1)</code><sandbox_output>1\n<code>print(2)</code>"
    last = parse_assistant(text)[-1]
    assert isinstance(last, SandboxOutputSegment) and not last.complete
    assert pending_code(text) is None


def test_kelvin_sign_is_not_the_letter_k():
    text = "<thin\u212a>not a tag</thin\u212a>"
    assert parse_assistant(text) == [TextSegment(text, 0, len(text))]


def test_answer_close_inside_code_means_the_close_was_lost():
    # "</answer>" is a stop string too: generation would have stopped there.
    text = "<code>print('</answer>')</code>"
    assert [b.complete for b in code_blocks(text)] == [False]


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


@pytest.mark.parametrize(
    "unit",
    [
        "<code>",  # every block unclosed: a naive parser searches to the end for each one
        "<sandbox_output>",
        "<answer>",
        "<code>```python\n",
        "<code>x</code><sandbox_output>",
        "```",
        "<<<<code",
        "</code></think><answer",
    ],
)
def test_megabyte_inputs_parse_in_linear_time(unit):
    text = unit * (MEGABYTE // len(unit))
    assert timed(parse_assistant, text) < LIMIT_S
    assert round_trips(text)


def test_megabyte_unclosed_code_is_open_fast():
    text = f"<code>\n{FENCE}python\n" + "x = 1\n" * (MEGABYTE // 6)
    start = time.perf_counter()
    assert is_code_open(text)
    assert time.perf_counter() - start < LIMIT_S


def test_megabyte_of_boxes_and_leadins_is_linear():
    boxes = "\\boxed{" * (MEGABYTE // 7)
    assert timed(last_boxed, boxes) < LIMIT_S
    leadins = "Answer: " * (MEGABYTE // 8)
    assert timed(strip_answer_leadins, leadins) < LIMIT_S
    assert strip_answer_leadins(leadins + "B") == "B"
