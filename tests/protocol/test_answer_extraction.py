"""extract_answer, last_boxed, strip_answer_leadins and the RL format check."""

from __future__ import annotations

import pytest
from protocol_samples import COMPUTE, CONTRAST, CROP, ERROR_FIX, MULTI, REALISTIC, ROTATE

from thyme.protocol import extract_answer, has_valid_format, last_boxed, strip_answer_leadins


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (CROP, "EXIT 12"),
        (ROTATE, "23.40"),
        (CONTRAST, "meet at noon"),
        (MULTI, "41.7%"),
        (ERROR_FIX, "(B) 3:10"),
    ],
    ids=["crop", "rotate", "contrast", "multi", "error_fix"],
)
def test_realistic_answers(sample, expected):
    assert extract_answer(sample) == expected


def test_boxed_answer_is_unwrapped():
    assert extract_answer(COMPUTE) == "7006652"


def test_answer_is_stripped_and_case_insensitive():
    assert extract_answer("<think>x</think>\n<ANSWER>\n  Paris \n</Answer>") == "Paris"


def test_first_answer_wins():
    assert extract_answer("<answer>first</answer> then <answer>second</answer>") == "first"


def test_no_answer_or_unclosed_answer_gives_none():
    assert extract_answer("<think>still thinking</think>") is None
    assert extract_answer("<think>done</think>\n<answer>truncat") is None


def test_empty_answer_is_an_empty_string():
    assert extract_answer("<think>x</think> <answer>  </answer>") == ""


def test_untagged_reply_when_tags_are_not_required():
    assert extract_answer("  The sign says STOP. ", require_tags=False) == "The sign says STOP."
    assert extract_answer("Result: \\boxed{12}", require_tags=False) == "12"
    assert extract_answer("<answer>B</answer>", require_tags=False) == "B"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{42}", "42"),
        ("so \\boxed{\\frac{1}{2}} it is", "\\frac{1}{2}"),
        ("\\boxed{1} or rather \\boxed{2}", "2"),
        ("\\boxed{ {a}{b} }", "{a}{b}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{7} then \\boxed{8", "7"),
        ("cut off \\boxed{12", "12"),
        ("no box here", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_boxed_inside_answer_with_prose():
    assert extract_answer("<answer>The area is \\boxed{3\\sqrt{2}} square units.</answer>") == "3\\sqrt{2}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The answer is B", "B"),
        ("the answer is: 12.", "12"),
        ("Answer: (C)", "(C)"),
        ("Final answer: 3.5.", "3.5"),
        ("The correct answer is A. red car", "A. red car"),
        ("The best option is D", "D"),
        ("Answer: The answer is 7", "7"),
        ("  Best answer:   yes ", "yes"),
        ("Therefore, the answer is 10", "10"),
        ("Paris", "Paris"),
        ("2.", "2."),
    ],
)
def test_strip_answer_leadins(raw, expected):
    assert strip_answer_leadins(raw) == expected


def test_leadin_only_stripped_at_the_start():
    assert strip_answer_leadins("I think the answer is B") == "I think the answer is B"


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_realistic_samples_have_valid_format(name):
    assert has_valid_format(REALISTIC[name])


@pytest.mark.parametrize(
    "completion",
    [
        "<think>a</think>\n<answer>b</answer>",
        "<think>a</think> <answer>b</answer>",
        "<think>a</think>\t<answer></answer>",
        "prefix <think>a</think> <answer>b</answer>",
    ],
)
def test_valid_formats(completion):
    assert has_valid_format(completion)


@pytest.mark.parametrize(
    ("completion", "why"),
    [
        ("<think>a</think><answer>b</answer>", "no whitespace"),
        ("<think>a</think>\n\n<answer>b</answer>", "two whitespace characters"),
        ("<think>a</think> <answer>b</answer>\n", "trailing newline"),
        ("<think>a</think> <answer>b</answer> more", "text after the answer"),
        ("<think>a</think> <answer>b</answer><answer>c</answer>", "two answers"),
        ("<think>a<think>b</think> <answer>c</answer>", "two think tags"),
        ("a</think> <answer>b</answer>", "no think open"),
        ("</think> <answer><think>b</answer>", "think open after think close"),
        ("<think>a</think> <ANSWER>b</ANSWER>", "tags are case-sensitive here"),
        ("<think>a <answer>b</answer>", "no think close"),
        ("", "empty"),
    ],
)
def test_invalid_formats(completion, why):
    assert not has_valid_format(completion), why
