"""The combined reward: the formula by hand, the holes closed end to end, TRL's calling convention, the
metrics it reports, and the registry."""

from __future__ import annotations

import dataclasses
import logging
import threading

import pytest

from thyme.config import ConfigError, build
from thyme.rewards import (
    PartReward,
    RewardConfig,
    RewardInput,
    RewardParts,
    ThymeReward,
    get_reward,
    register_reward,
    registry,
    reward_function,
    reward_names,
    score_parts,
    thyme_reward,
    total,
)
from thyme.rewards import parts as parts_module

RIGHT = "<think>Cropping the label, it reads 42</think> <answer>42</answer>"
RIGHT_INCONSISTENT = "<think>Cropping the label, it reads 17</think> <answer>42</answer>"
WRONG = "<think>Cropping the label, it reads 41</think> <answer>41</answer>"
RIGHT_UNFORMATTED = "<think>It reads 42</think><answer>42</answer>"  # no whitespace before <answer>
HOLES = {
    "empty answer": "<think>it reads 42</think> <answer></answer>",
    "whitespace answer": "<think>it reads 42</think> <answer>  \n</answer>",
    "lead-in only": "<think>it reads 42</think> <answer>The answer is</answer>",
    "missing </answer>": "<think>it reads 42</think> <answer>42",
    "no answer": "<think>it reads 42</think>",
    "two answers": "<think>it reads 42</think> <answer>42</answer><answer>41</answer>",
    "duplicated completion": RIGHT + " " + RIGHT,
    "nothing": "",
}


def parts(fmt, result, consistency=None, code=0.0, **extra) -> RewardParts:
    return RewardParts(
        format=fmt, result=result, consistency=consistency, code_success=code, answered=True, **extra
    )


# -- the formula -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "result", "consistency", "expected"),
    [
        (1.0, 1.0, 1.0, 2.0),  # 1 x (1 + 0.5 x 1) + 0.5 x 1
        (1.0, 1.0, 0.0, 1.5),
        (1.0, 1.0, None, 1.5),  # no verdict: no bonus
        (0.0, 1.0, 1.0, 1.5),
        (1.0, 0.0, None, 0.5),
        (1.0, 0.0, 1.0, 0.5),  # consistency counts only for a right answer
        (0.0, 0.0, None, 0.0),
        (1.0, None, None, 0.5),  # gold missing: result counts as 0
    ],
)
def test_default_formula(fmt, result, consistency, expected):
    assert total(parts(fmt, result, consistency), RewardConfig()) == pytest.approx(expected)


def test_configurable_coefficients():
    config = RewardConfig(
        result_weight=2.0, consistency_bonus=0.25, format_weight=0.1, code_success_weight=0.3
    )
    # 2 x 1 x (1 + 0.25 x 1) + 0.1 x 1 + 0.3 x 1
    assert total(parts(1.0, 1.0, 1.0, code=1.0), config) == pytest.approx(2.9)
    assert total(parts(1.0, 0.0, None, code=1.0), config) == pytest.approx(0.4)


# -- end to end, no judge ----------------------------------------------------------------------------------
def call(reward, completions, answers, **columns):
    return reward(prompts=[[{"role": "user", "content": "q"}]] * len(completions), completions=completions,
                  completion_ids=None, answer=answers, **columns)  # fmt: skip


def test_without_a_judge_consistency_is_off_and_said_once(caplog):
    with caplog.at_level(logging.WARNING, logger="thyme.rewards"):
        reward = ThymeReward()
        first = call(reward, [RIGHT, RIGHT_INCONSISTENT, WRONG, RIGHT_UNFORMATTED], ["42"] * 4)
        second = call(reward, [RIGHT], ["42"])
    # Right and well-formed: 1 x (1 + 0) + 0.5; wrong but well-formed: 0.5; right, unformatted: 1.
    assert first == [1.5, 1.5, 0.5, 1.0]
    assert second == [1.5]
    notes = [r for r in caplog.records if "consistency is off" in r.getMessage()]
    assert len(notes) == 1 and "no judge" in notes[0].getMessage()


@pytest.mark.parametrize("name", sorted(HOLES))
def test_no_hole_pays(name):
    reward = ThymeReward()
    assert call(reward, [HOLES[name]], ["42"]) == [0.0]
    assert thyme_reward(RewardInput(completion=HOLES[name], answer="42")) == 0.0


def test_a_turn_cut_by_the_guard_pays_nothing_and_a_truncated_one_loses_format():
    reward = ThymeReward()
    rollouts = [{"repetition_stopped": True}, {"truncated": True}]
    assert call(reward, [RIGHT, RIGHT], ["42", "42"], rollout=rollouts) == [0.0, 1.0]


def test_trl_columns_and_message_completions():
    reward = ThymeReward(RewardConfig(code_success_weight=0.25))

    class Facts:  # what thyme's trainer passes: an object with the facts as attributes
        code_calls, code_errors, repetition_stopped, truncated = 2, 0, False, False

    messages = [
        [{"role": "assistant", "content": [{"type": "text", "text": RIGHT}]}],
        [{"role": "assistant", "content": "<think>it is the blue one</think> <answer>(B)</answer>"}],
        "<think>a</think> <answer>blue</answer>",
    ]
    choices = [None, {"A": "red", "B": "blue", "C": None}, {"A": "red", "B": "blue"}]  # a datasets struct
    rewards = call(
        reward,
        messages,
        ["42", "B", "A"],
        question=["What does the label say?", "Which colour?", "Which colour?"],
        choices=choices,
        rollout=[Facts(), {"code_calls": 1, "code_errors": 1}, None],
        trainer_state=object(),  # TRL's other keywords are ignored
    )
    assert rewards == [1.5 + 0.25, 1.5, 0.5]


def test_columns_are_checked():
    reward = ThymeReward()
    with pytest.raises(ValueError, match="`answer` column"):
        reward(prompts=["q"], completions=[RIGHT], solution=["42"])
    with pytest.raises(ValueError, match="one value per completion"):
        reward(prompts=["q", "q"], completions=[RIGHT, RIGHT], answer=["42"])
    with pytest.raises(TypeError, match="assistant turn"):
        reward(prompts=["q"], completions=[42], answer=["42"])


def test_log_metric_gets_each_part_mean_and_log_extra_each_row():
    metrics: dict[str, float] = {}
    extra: dict[str, list] = {}
    reward = ThymeReward(RewardConfig(code_success_weight=0.5))
    completions = [RIGHT, WRONG, HOLES["empty answer"], RIGHT_UNFORMATTED]
    rollouts = [{"code_calls": 1}, {"code_calls": 1, "code_errors": 1}, None, None]
    call(reward, completions, ["42"] * 4, rollout=rollouts, log_metric=metrics.__setitem__,
         log_extra=extra.__setitem__)  # fmt: skip
    assert metrics == {
        "thyme/format": pytest.approx(2 / 4),
        "thyme/result": pytest.approx(2 / 4),
        "thyme/code_success": pytest.approx(1 / 4),
        "thyme/answered": pytest.approx(3 / 4),
    }
    assert extra == {
        "thyme/format": [1.0, 1.0, 0.0, 0.0],
        "thyme/result": [1.0, 0.0, 0.0, 1.0],
        "thyme/consistency": [None, None, None, None],  # no judge
    }


# -- end to end, with the judge (conftest.py's server) -----------------------------------------------------
def test_with_a_judge(judge_server, judge_settings):
    metrics: dict[str, list[float]] = {}
    log_metric = lambda name, value: metrics.setdefault(name, []).append(value)  # noqa: E731
    half = "<think>Half of it: one half</think> <answer>one half</answer>"
    completions = [RIGHT, RIGHT_INCONSISTENT, WRONG, half, HOLES["empty answer"]]
    with ThymeReward(RewardConfig(judge=judge_settings)) as reward:
        rewards = call(reward, completions, ["42", "42", "42", "0.5", "42"], log_metric=log_metric)
    # 2.0: right and consistent; 1.5: right, inconsistent; 0.5: wrong (judge says so); "one half": right by
    # the judge and consistent; an empty answer: nothing, and nobody is asked about it.
    assert rewards == [2.0, 1.5, 0.5, 2.0, 0.0]
    assert sorted(judge_server.asked) == sorted(
        [("correct", "41"), ("correct", "one half"), ("consistent", "42"), ("consistent", "42"),
         ("consistent", "one half")]
    )  # fmt: skip
    assert metrics["thyme/consistency"] == [pytest.approx(2 / 3)]  # among the right answers
    assert metrics["thyme/result"] == [pytest.approx(3 / 5)]
    assert metrics["thyme/judge_failures"] == [0.0]


def test_a_failing_judge_costs_the_bonus_not_the_run(judge_server, judge_settings):
    metrics: dict[str, float] = {}
    judge_server.mode = "garbage"
    with ThymeReward(RewardConfig(judge=judge_settings)) as reward:
        rewards = call(reward, [RIGHT, WRONG], ["42", "42"], log_metric=metrics.__setitem__)
    assert rewards == [1.5, 0.5]  # no bonus; the wrong answer stays wrong
    assert metrics["thyme/judge_failures"] == 2.0  # the consistency of RIGHT and the correctness of WRONG
    assert "thyme/consistency" not in metrics


def test_the_batch_gives_what_each_row_gives_and_keeps_the_rules_on_this_thread(judge_settings, monkeypatch):
    threads = set()
    rule_match = parts_module.rule_match

    def recording(*args, **kwargs):
        threads.add(threading.current_thread())
        return rule_match(*args, **kwargs)

    monkeypatch.setattr(parts_module, "rule_match", recording)
    half = "<think>Half of it: one half</think> <answer>one half</answer>"
    pairs = [
        (RIGHT, "42"),
        (RIGHT_INCONSISTENT, "42"),
        (WRONG, "42"),
        (half, "0.5"),
        (HOLES["two answers"], "42"),
    ]
    rows = [RewardInput(completion=c, answer=a) for c, a in pairs]
    config = RewardConfig(judge=judge_settings)
    with ThymeReward(config) as reward:
        batch = reward.score(rows)
        assert threads == {threading.current_thread()}  # math-verify's time limit needs the main thread
        assert batch == [score_parts(row, reward.judge, config) for row in rows]


def test_a_judge_without_the_consistency_question_says_so(judge_settings, caplog):
    settings = dataclasses.replace(judge_settings, consistency=False)
    with caplog.at_level(logging.WARNING, logger="thyme.rewards"), ThymeReward(RewardConfig(judge=settings)):
        pass
    assert "consistency is off (the judge is set not to ask it)" in caplog.text


# -- config and registry -----------------------------------------------------------------------------------
def test_config_from_plain_data():
    config = build(RewardConfig, {"format_weight": 0.25, "judge": {"url": "http://h:8000/v1", "model": "m"}})
    assert config.format_weight == 0.25 and config.judge.model == "m"
    with pytest.raises(ConfigError, match="did you mean 'format_weight'"):
        build(RewardConfig, {"format_weigth": 0.25})
    with pytest.raises(ConfigError, match="must be a finite number >= 0"):
        build(RewardConfig, {"result_weight": -1})
    with pytest.raises(ConfigError, match="http"):
        build(RewardConfig, {"judge": {"url": "h:8000", "model": "m"}})


def test_registry_lists_the_built_in_parts():
    assert {"format", "accuracy", "consistency", "code_success", "thyme"} <= set(reward_names())
    assert get_reward("thyme") is thyme_reward
    with pytest.raises(ValueError, match="unknown reward 'acuracy'; valid rewards: accuracy, ") as err:
        get_reward("acuracy")
    assert "\n" not in str(err.value)


def test_a_registered_part_plugs_into_the_formula_and_into_trl(monkeypatch):
    monkeypatch.setattr(registry, "_REWARDS", dict(registry._REWARDS))

    @register_reward("few_calls")
    def few_calls(inp: RewardInput, judge=None) -> float:
        return float(inp.code_calls <= 1)

    with pytest.raises(ValueError, match="already registered"):
        register_reward("few_calls")(lambda inp, judge=None: 0.0)
    reward = ThymeReward(RewardConfig(extra_terms={"few_calls": -0.5}))
    assert call(reward, [RIGHT, RIGHT], ["42", "42"], rollout=[{"code_calls": 1}, {"code_calls": 3}]) == [
        1.0,  # 1.5 - 0.5
        1.5,
    ]
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        RewardConfig(extra_terms={"nope": 1.0})
    with pytest.raises(ValueError, match="built-in"):
        RewardConfig(extra_terms={"format": 1.0})


def test_reward_functions_by_name_for_trl():
    fmt = reward_function("format")
    assert isinstance(fmt, PartReward) and fmt.__name__ == "format"
    assert call(fmt, [RIGHT, HOLES["empty answer"]], ["42", "42"]) == [1.0, 0.0]
    assert call(reward_function("consistency"), [RIGHT], ["42"]) == [None]  # no judge: not scorable
    combined = reward_function("thyme", RewardConfig(format_weight=0.0))
    assert isinstance(combined, ThymeReward) and combined.__name__ == "thyme"
    assert call(combined, [RIGHT], ["42"]) == [1.0]
    with pytest.raises(ValueError, match="valid rewards"):
        reward_function("nope")
