"""Fixtures: the stand-in reward judge of `reward_judge_server` on loopback, and settings pointing at it."""

from __future__ import annotations

import threading

import pytest
from reward_judge_server import KEY, MODEL, RewardJudgeServer

from thyme.rewards import JudgeSettings, RewardJudge


@pytest.fixture
def judge_server():
    server = RewardJudgeServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def judge_settings(judge_server, tmp_path) -> JudgeSettings:
    key_file = tmp_path / "judge.key"
    key_file.write_text(KEY + "\n")
    return JudgeSettings(
        url=judge_server.url,
        model=MODEL,
        api_key_file=str(key_file),
        max_retries=0,
        timeout_s=5,
        workers=4,
    )


@pytest.fixture
def reward_judge(judge_settings):
    with RewardJudge.from_settings(judge_settings) as judge:
        yield judge
