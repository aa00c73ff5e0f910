"""`thyme.verl.reward.compute_score`: the Thyme reward as verl calls a custom reward function.

The scoring runs everywhere (no verl needed); the last test loads the function the way verl does
(`get_custom_reward_fn` with `pkg://thyme.verl.reward` and `reward_kwargs`) where verl is installed
(`make test-verl`).
"""

from __future__ import annotations

import importlib.util

import pytest

from thyme.verl.reward import compute_score

GOOD = "<think>The sum is 12.</think> <answer>12</answer>"


def test_the_default_combination_and_its_parts():
    right = compute_score("toy", GOOD, "12")
    assert right == {"score": 1.5, "format": 1.0, "accuracy": 1.0, "consistency": 0.0, "code_success": 0.0}
    assert compute_score("toy", GOOD, "13")["score"] == 0.5  # format only
    assert compute_score("toy", "The sum is 12.", "12")["score"] == 0.0  # no answer pays nothing
    twice = "<think>x</think> <answer>12</answer><answer>12</answer>"
    assert compute_score("toy", twice, "12")["score"] == 0.0  # a repeated answer neither


def test_gold_forms_choices_and_rollout_facts():
    assert compute_score("toy", GOOD, ["12"])["accuracy"] == 1.0
    assert compute_score("toy", GOOD, 12)["accuracy"] == 1.0
    mcq = "<think>It is blue.</think> <answer>B</answer>"
    info = {"question": "Which colour?", "choices": {"A": "red", "B": "blue"}}
    assert compute_score("toy", mcq, "blue", info)["accuracy"] == 1.0
    facts = {"thyme_code_calls": 2, "thyme_code_errors": 0}
    ran = compute_score("toy", GOOD, "12", facts, code_success_weight=0.25)
    assert ran["code_success"] == 1.0 and ran["score"] == 1.75
    cut = compute_score("toy", GOOD, "12", {"thyme_response_cut": True})
    assert cut["format"] == 0.0 and cut["score"] == 1.0  # a turn cut by a limit has no valid format
    with pytest.raises(ValueError, match="judge_url and judge_model"):
        compute_score("toy", GOOD, "12", judge_url="http://judge:8000/v1")


NO_VERL = importlib.util.find_spec("verl.trainer") is None  # verl has its own environment: make test-verl


@pytest.mark.skipif(NO_VERL, reason="verl runs in its own environment")
def test_verl_loads_and_calls_it_as_a_custom_reward_function():
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": "pkg://thyme.verl.reward",
                    "name": "compute_score",
                    "reward_kwargs": {"format_weight": 1.0},
                }
            }
        }
    )
    score = get_custom_reward_fn(config)
    facts = {"thyme_code_calls": 1}
    result = score(data_source="toy", solution_str=GOOD, ground_truth="12", extra_info=facts)
    assert result["score"] == 2.0 and result["format"] == 1.0
