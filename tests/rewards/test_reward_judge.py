"""The reward judge over real HTTP (the stand-in server of reward_judge_server.py): what is asked, when, and
what a failure turns into."""

from __future__ import annotations

import logging

import pytest
from reward_judge_server import KEY, MODEL

from thyme.eval.judge import Judge, parse_verdict
from thyme.rewards import JudgeSettings, RewardInput, RewardJudge, accuracy_reward, consistency_reward

CONSISTENT = "<think>Cropping the label, it reads 42</think> <answer>42</answer>"
INCONSISTENT = "<think>Cropping the label, it reads 17</think> <answer>42</answer>"


def row(completion: str, answer: str = "42", **fields) -> RewardInput:
    return RewardInput(completion=completion, answer=answer, question="What does the label say?", **fields)


# -- accuracy ----------------------------------------------------------------------------------------------
def test_the_judge_decides_only_what_the_rules_leave_open(judge_server, reward_judge):
    half = "<think>a</think> <answer>one half</answer>"
    assert accuracy_reward(row(half, "0.5")) == 0.0  # rules alone
    assert judge_server.asked == []
    assert accuracy_reward(row(half, "0.5"), reward_judge) == 1.0  # the judge knows better
    assert accuracy_reward(row("<think>a</think> <answer>three</answer>", "0.5"), reward_judge) == 0.0
    assert judge_server.asked == [("correct", "one half"), ("correct", "three")]
    assert accuracy_reward(row(CONSISTENT), reward_judge) == 1.0  # the rules match: nobody is asked
    mcq = row("<think>a</think> <answer>A</answer>", "B", choices={"A": "red", "B": "blue"})
    assert accuracy_reward(mcq, reward_judge) == 0.0  # letters are decided by rules
    empty = row("<think>a</think> <answer> </answer>", "0.5")
    assert accuracy_reward(empty, reward_judge) == 0.0  # a blank answer is never sent
    assert len(judge_server.asked) == 2
    assert (reward_judge.asked, reward_judge.failures) == (2, 0)


def test_a_judge_set_not_to_grade_answers_is_not_asked(judge_server, judge_settings):
    settings = JudgeSettings(**{**judge_settings.__dict__, "accuracy": False})
    with RewardJudge.from_settings(settings) as judge:
        assert accuracy_reward(row("<think>a</think> <answer>one half</answer>", "0.5"), judge) == 0.0
    assert judge_server.asked == []


# -- consistency -------------------------------------------------------------------------------------------
def test_consistency_is_asked_only_for_a_right_answer(judge_server, reward_judge):
    assert consistency_reward(row(CONSISTENT), reward_judge) == 1.0
    assert consistency_reward(row(INCONSISTENT), reward_judge) == 0.0
    assert judge_server.asked == [("consistent", "42"), ("consistent", "42")]
    wrong = "<think>Cropping the label, it reads 41</think> <answer>41</answer>"  # consistent, but wrong
    assert consistency_reward(row(wrong), reward_judge) == 0.0
    assert consistency_reward(row("<think>it reads 42</think> <answer></answer>"), reward_judge) == 0.0
    assert consistency_reward(row(CONSISTENT), reward_judge, result=0.0) == 0.0  # accuracy given
    # Only the correctness of "41" was asked (the rules left it open); no consistency for a wrong answer.
    assert judge_server.asked[2:] == [("correct", "41")]


def test_the_consistency_judge_reads_the_end_of_the_reasoning(judge_server, reward_judge):
    completion = "<think>" + "It reads 17. " * 100 + "On closer look it reads 42</think> <answer>42</answer>"
    assert consistency_reward(row(completion), reward_judge) == 1.0
    assert judge_server.asked == [("consistent", "42")]


# -- failures ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["garbage", "error", "broken"])
def test_a_failed_verdict_is_none_counted_and_logged_never_raised(judge_server, reward_judge, mode, caplog):
    judge_server.mode = mode
    with caplog.at_level(logging.WARNING):
        assert consistency_reward(row(CONSISTENT), reward_judge) is None
        assert accuracy_reward(row("<think>a</think> <answer>one half</answer>", "0.5"), reward_judge) == 0.0
    assert (reward_judge.asked, reward_judge.failures) == (2, 2)
    assert "judge" in caplog.text
    judge_server.mode = "json"
    assert consistency_reward(row(CONSISTENT), reward_judge) == 1.0  # a failure is not cached


def test_a_consistency_judge_is_optional(judge_settings):
    settings = JudgeSettings(**{**judge_settings.__dict__, "consistency": False})
    with RewardJudge.from_settings(settings) as judge:
        assert consistency_reward(row(CONSISTENT), judge) is None


# -- the shared client: keyed questions ----------------------------------------------------------------------
def test_ask_uses_its_own_key_and_cache(judge_server):
    from thyme.rewards.judge import CONSISTENCY_PROMPT, CONSISTENCY_SYSTEM

    prompt = CONSISTENCY_PROMPT.format(question="q", reasoning="so it is 7", answer="7")
    with Judge(judge_server.url, MODEL, KEY, backoff_s=0.0) as judge:
        assert judge.ask(CONSISTENCY_SYSTEM, prompt, key="Consistency") is True
        assert judge.ask(CONSISTENCY_SYSTEM, prompt, key="Consistency") is True
        assert len(judge_server.asked) == 1
        assert judge.verdict("q", "7", "7") is True  # verdicts and asks do not share cache entries
        assert len(judge_server.asked) == 2


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"Consistency": 1}', 1),
        ('{"consistency": "0"}', 0),
        ("Consistency: 1", 1),
        ('{"Correctness": 1}', None),  # another question's key
    ],
)
def test_parse_verdict_with_a_key(reply, expected):
    assert parse_verdict(reply, key="Consistency") == expected


def test_parse_verdict_defaults_to_correctness():
    assert parse_verdict('{"Consistency": 1}') is None
    assert parse_verdict('{"Correctness": 1}') == 1


# -- settings ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "gpu-box:8000"}, "http"),
        ({"model": ""}, "model"),
        ({"workers": 0}, "workers"),
        ({"temperature": -1.0}, "temperature"),
        ({"accuracy": False, "consistency": False}, "both off"),
    ],
)
def test_judge_settings_say_what_to_fix(changes, message):
    with pytest.raises(ValueError, match=message):
        JudgeSettings(**{"url": "http://127.0.0.1:1/v1", "model": "m", **changes})


def test_a_missing_key_file_is_named(tmp_path):
    settings = JudgeSettings(url="http://127.0.0.1:1/v1", model="m", api_key_file=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="api_key_file"):
        RewardJudge.from_settings(settings)


def test_describe_records_the_judge_but_never_the_key(reward_judge):
    card = reward_judge.describe()
    assert card["model"] == MODEL and card["consistency"] is True
    assert KEY not in repr(card)
