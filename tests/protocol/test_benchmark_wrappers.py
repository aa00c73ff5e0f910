"""Benchmark wrappers reproduce the released evaluation's question layout exactly."""

from __future__ import annotations

import pytest

from thyme.protocol import wrap_mcq, wrap_short_vqa, wrap_yes_no


def test_mcq_with_mapping_options():
    wrapped = wrap_mcq("What is the color of the bag?", {"A": "red", "B": "blue", "C": "white", "D": "black"})
    assert wrapped == (
        "Question: What is the color of the bag?\n"
        "Options:\n"
        "A. red\n"
        "B. blue\n"
        "C. white\n"
        "D. black\n"
        "Please select the correct answer from the options above."
    )


def test_mcq_with_hint_and_sequence_options():
    wrapped = wrap_mcq("Which is larger?", ["the cup", "the bowl"], hint="Look at the table.")
    assert wrapped == (
        "Hint: Look at the table.\n"
        "Question: Which is larger?\n"
        "Options:\n"
        "A. the cup\n"
        "B. the bowl\n"
        "Please select the correct answer from the options above."
    )


@pytest.mark.parametrize("hint", [None, "", "   "])
def test_mcq_without_hint_has_no_hint_line(hint):
    assert wrap_mcq("Q?", ["x", "y"], hint=hint).startswith("Question: Q?\n")


def test_mcq_options_are_in_letter_order():
    wrapped = wrap_mcq("Q?", {"b": "second", "A": "first"})
    assert wrapped.index("A. first") < wrapped.index("B. second")


def test_mcq_without_options_is_just_the_question():
    assert wrap_mcq("What is shown?", []) == "Question: What is shown?"


def test_mcq_with_cjk_text_uses_the_letter_instruction():
    wrapped = wrap_mcq("\u56fe\u4e2d\u7684\u5305\u662f\u4ec0\u4e48\u989c\u8272?", ["red", "blue"])
    assert wrapped.endswith("B. blue\n\u8bf7\u76f4\u63a5\u56de\u7b54\u9009\u9879\u5b57\u6bcd\u3002")
    assert "Please select" not in wrapped


def test_mcq_trailing_whitespace_removed():
    assert not wrap_mcq("Q?", ["a", "b  "]).endswith((" ", "\n"))


def test_yes_no_suffix():
    assert (
        wrap_yes_no("Is there a dog in the image?") == "Is there a dog in the image? Please answer yes or no."
    )


def test_short_vqa_suffix():
    assert wrap_short_vqa("What is written on the sign?") == (
        "What is written on the sign?\n"
        "Please try to answer the question with short words or phrases if possible."
    )


def test_mcq_rejects_non_letter_keys():
    with pytest.raises(ValueError, match="single letter"):
        wrap_mcq("Q?", {"1": "x"})
