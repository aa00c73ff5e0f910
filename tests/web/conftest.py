"""Fixtures for the web page: the bundled thyme-tiny with the real sandbox, a held-out toy-world image, and
the page served on loopback (in this process, so tests can compare the page with the loop's own result)."""

from __future__ import annotations

import os
import pathlib

import pytest

from thyme.agent import Agent
from thyme.data.toyworld import SPLIT_SPAN, draft_sample, get_task

# A held-out zoom sample: the label is too small to read, thyme-tiny crops it with code and reads the chip.
TASK, LEVEL, SEED = "zoom", "find", 2


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> tuple[pathlib.Path, str]:
    """(image, question) of a test-split toy-world sample, never trained on."""
    _, _, draft = draft_sample(get_task(TASK), SPLIT_SPAN + SEED, LEVEL)
    path = tmp_path_factory.mktemp("web-inputs") / f"{TASK}-{LEVEL}-{SEED}.png"
    draft.image.save(path)
    return path, draft.question


@pytest.fixture(scope="session")
def agent():
    with Agent.from_pretrained("thyme-tiny", device="cpu") as agent:
        yield agent


@pytest.fixture(scope="session")
def expected(agent, toy):
    """The loop's own trajectory for the toy question, to compare the page with (greedy: deterministic)."""
    image, question = toy
    trajectory = agent.run(image=image, question=question)
    assert trajectory.answer and trajectory.observations and trajectory.observations[0].images, (
        trajectory.text
    )
    return trajectory


@pytest.fixture(scope="session")
def gradio_cache(tmp_path_factory):
    """Gradio's cache in a test folder (as `thyme web` gives it a folder of its own), not /tmp/gradio."""
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio-cache"))
    yield pathlib.Path(os.environ["GRADIO_TEMP_DIR"])
    if previous is None:
        del os.environ["GRADIO_TEMP_DIR"]
    else:
        os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(scope="session")
def web_server(agent, gradio_cache):
    """The page for thyme-tiny on a free loopback port, served from this process."""
    from thyme.web import WebServer

    with WebServer(agent, port=0, model_name="thyme-tiny") as server:
        yield server
