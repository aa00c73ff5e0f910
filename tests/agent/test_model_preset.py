"""A checkpoint names the prompt it was trained with (`thyme.json`); the agent asks it in that prompt."""

from __future__ import annotations

import json
import shutil

import pytest

from thyme.agent import Agent
from thyme.agent.backends.base import MODEL_CARD, model_preset


def test_released_names_default_and_a_model_card(tmp_path):
    assert model_preset("Kwai-Keye/Thyme-RL") == "released"
    assert model_preset(str(tmp_path)) == "default"
    (tmp_path / MODEL_CARD).write_text(json.dumps({"preset": "compact"}))
    assert model_preset(str(tmp_path)) == "compact"
    (tmp_path / MODEL_CARD).write_text("[1, 2")
    with pytest.raises(ValueError, match=r"thyme\.json: not a JSON object.*fix or delete it"):
        model_preset(str(tmp_path))


def test_the_agent_uses_the_card_preset_and_its_direct_counterpart(random_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(random_model_dir, model)
    (model / MODEL_CARD).write_text(json.dumps({"preset": "compact"}))
    agent = Agent.from_pretrained(str(model), device="cpu")
    try:
        assert (agent.preset.name, agent.direct_preset.name) == ("compact", "compact_direct")
    finally:
        agent.close()
    plain = Agent.from_pretrained(str(random_model_dir), device="cpu")
    try:
        assert (plain.preset.name, plain.direct_preset.name) == ("default", "direct")
    finally:
        plain.close()
