"""Fixtures for the agent loop: a real sandbox, a random tiny model, and a tiny model that learned scripts.

`scripted_model_dir` is a tiny Qwen2.5-VL trained (a few seconds) on `thyme.testing.scripted.SCRIPTS`, with
the real sandbox output in between, so that with greedy decoding it writes the code, stops at `</code>`,
reads the fed-back output and answers: the loop's tool path on a real model, not on canned strings.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def noise_png(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("agent-inputs") / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def agent_sandbox():
    from thyme.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(timeout_s=15, pool_size=2)) as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> pathlib.Path:
    from thyme.models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("agent-models") / "random", seed=0)


@pytest.fixture(scope="session")
def scripted_model_dir(tmp_path_factory, agent_sandbox, noise_png) -> pathlib.Path:
    from thyme.testing.scripted import build_scripted

    root = tmp_path_factory.mktemp("agent-models")
    return build_scripted(root / "scripted", noise_png, sandbox=agent_sandbox)


@pytest.fixture(scope="session")
def scripted_backend(scripted_model_dir):
    from thyme.agent.backends.transformers import TransformersBackend

    return TransformersBackend.from_pretrained(str(scripted_model_dir), device="cpu")
