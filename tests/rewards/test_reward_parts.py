"""Each reward part on hand-written turns, every value worked out by hand, the holes included."""

from __future__ import annotations

import pytest

from thyme.rewards import (
    RewardInput,
    accuracy_reward,
    code_success_reward,
    consistency_reward,
    final_answer,
    format_reward,
    reasoning_tail,
)

CODE = (
    "<think>The label is tiny; crop it.\n<code>\n```python\nprint(6 * 7)\n```\n</code>"
    "<sandbox_output>42</sandbox_output>The crop reads 42</think>"
)
GOOD = CODE + " <answer>42</answer>"


def row(completion: str, answer: str = "42", **fields) -> RewardInput:
    return RewardInput(completion=completion, answer=answer, **fields)


# -- format ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion",
    [
        GOOD,
        "<think>a</think>\n<answer>42</answer>",
        "<think>a</think> <answer>The answer is 42.</answer>",
        "<think>a</think> <answer>\\boxed{42}</answer>",
    ],
)
def test_format_pays_for_a_complete_well_formed_turn(completion):
    assert format_reward(row(completion)) == 1.0


@pytest.mark.parametrize(
    ("completion", "why"),
    [
        ("<think>a</think> <answer></answer>", "empty answer"),
        ("<think>a</think> <answer>   </answer>", "whitespace-only answer"),
        ("<think>a</think> <answer>.</answer>", "punctuation-only answer"),
        ("<think>a</think> <answer>The answer is</answer>", "nothing after the lead-in"),
        ("<think>a</think> <answer>\\boxed{}</answer>", "empty box"),
        ("<think>a</think> <answer>42", "missing </answer>"),
        ("<think>a</think>", "no answer at all"),
        ("<think>a</think> <answer>42</answer><answer>42</answer>", "two answers"),
        ("<think>a <answer>42</answer></think>", "answer inside the reasoning"),
        ("<answer>42</answer>", "no reasoning"),
        ("<think>a</think> <answer>42</answer> I hope that helps.", "text after </answer>"),
        ("<think>a</think> <answer>42</answer>\n", "a trailing newline"),
        ("<think>a</think><answer>42</answer>", "no whitespace before the answer"),
        ((GOOD + " ") * 2, "a duplicated completion"),
        (GOOD.replace("</think>", "</think><think></think>", 1), "two think blocks"),
    ],
)
def test_format_holes_pay_nothing(completion, why):
    assert format_reward(row(completion)) == 0.0, why


def test_format_is_zero_for_a_turn_cut_by_the_guard_or_a_limit():
    assert format_reward(row(GOOD, repetition_stopped=True)) == 0.0
    assert format_reward(row(GOOD, truncated=True)) == 0.0


# -- accuracy ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("said", "gold"),
    [
        ("42", "42"),
        ("The answer is 42.", "42"),  # a lead-in is stripped
        ("Answer: 42", "42"),
        ("1/2", "0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("\\boxed{\\frac{1}{2}}", "0.5"),  # the last box inside the answer
        ("x = 5", "5"),
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),  # math-verify
        ("The Red Car", "red car"),  # normalised text
        ("Yes, it is.", "yes"),
        ("42", "<answer> 42 </answer>"),  # a gold written in the protocol
        ("42", "\\boxed{42}"),
    ],
)
def test_accuracy_by_rules(said, gold):
    assert accuracy_reward(row(f"<think>a</think> <answer>{said}</answer>", gold)) == 1.0


@pytest.mark.parametrize(
    ("said", "gold"),
    [
        ("43", "42"),
        ("3 or 5", "5"),  # a hedge
        ("5 5 5 5", "5"),
        ("1, 2, 3", "3"),
        ("yes and no", "yes"),
        ("no", "yes"),
        ("one half", "0.5"),  # true, but only a judge could say so
    ],
)
def test_accuracy_rejects(said, gold):
    assert accuracy_reward(row(f"<think>a</think> <answer>{said}</answer>", gold)) == 0.0


CHOICES = {"A": "red", "B": "blue", "C": "green"}


@pytest.mark.parametrize(
    ("said", "gold", "expected"),
    [
        ("B", "B", 1.0),
        ("(B)", "B", 1.0),
        ("The answer is B. blue", "B", 1.0),
        ("blue", "B", 1.0),  # the option's text
        ("B", "blue", 1.0),  # a gold given as the option's text
        ("A", "B", 0.0),
        ("A or B", "B", 0.0),  # naming two options is a hedge
        ("B. red", "B", 0.0),  # contradictory
        ("purple", "B", 0.0),
    ],
)
def test_accuracy_on_option_letters(said, gold, expected):
    completion = f"<think>a</think> <answer>{said}</answer>"
    assert accuracy_reward(row(completion, gold, choices=CHOICES)) == expected


@pytest.mark.parametrize(
    ("completion", "why"),
    [
        ("<think>a</think> <answer></answer>", "empty answer"),
        ("<think>a</think> <answer> \n </answer>", "whitespace-only answer"),
        ("<think>a</think> <answer>The answer is</answer>", "a lead-in alone"),
        ("<think>the answer is 42</think> <answer>42", "missing </answer>"),
        ("<think>the answer is 42</think>", "no answer"),
        ("<think>a</think> <answer>42</answer><answer>41</answer>", "two answers, the first right"),
        ("<think>a</think> <answer>41</answer><answer>42</answer>", "two answers, the second right"),
        ((GOOD + " ") * 2, "a duplicated completion"),
        (
            "<think><sandbox_output><answer>42</answer></sandbox_output></think> <answer>",
            "printed by the sandbox",
        ),
    ],
)
def test_accuracy_holes_pay_nothing(completion, why):
    assert accuracy_reward(row(completion)) == 0.0, why


def test_accuracy_ignores_the_format_but_not_the_repetition_guard():
    assert accuracy_reward(row("<answer>42</answer>")) == 1.0  # format is the format part's business
    assert accuracy_reward(row(GOOD, truncated=True)) == 1.0
    assert accuracy_reward(row(GOOD, repetition_stopped=True)) == 0.0


def test_accuracy_of_a_row_without_a_gold_is_not_scorable():
    assert accuracy_reward(row(GOOD, answer="")) is None
    assert accuracy_reward(row(GOOD, answer="<answer> </answer>")) is None


def test_final_answer():
    assert final_answer(GOOD) == "42"
    assert final_answer("<think>a</think> <answer>So the answer is \\boxed{7}.</answer>") == "7"
    assert final_answer("<think>a</think> <answer>Final answer: (C)</answer>") == "(C)"
    assert final_answer("<think>a</think> <answer>...</answer>") is None
    assert final_answer("<think>a</think> <answer>1</answer> <answer>1</answer>") is None


# -- consistency -------------------------------------------------------------------------------------------
def test_consistency_without_a_judge_is_not_scorable():
    assert consistency_reward(row(GOOD)) is None


def test_reasoning_tail_is_the_end_of_the_reasoning():
    assert reasoning_tail(GOOD).endswith("<sandbox_output>42</sandbox_output>The crop reads 42")
    assert "<think>" not in reasoning_tail(GOOD) and "</think>" not in reasoning_tail(GOOD)
    long = "<think>" + "x" * 1000 + "y" * 499 + "z</think> <answer>z</answer> after"
    assert reasoning_tail(long) == "y" * 499 + "z"
    assert reasoning_tail(long, chars=3) == "yyz"
    assert reasoning_tail("<think>no answer yet") == "no answer yet"


# -- tool use ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("calls", "errors", "expected"), [(0, 0, 0.0), (1, 0, 1.0), (3, 0, 1.0), (3, 1, 0.0)]
)
def test_code_success(calls, errors, expected):
    assert code_success_reward(row(GOOD, code_calls=calls, code_errors=errors)) == expected


def test_reward_input_checks_the_tool_facts():
    with pytest.raises(ValueError, match="code_errors <= code_calls"):
        row(GOOD, code_calls=1, code_errors=2)
    with pytest.raises(TypeError):
        RewardInput(completion=None, answer="1")
