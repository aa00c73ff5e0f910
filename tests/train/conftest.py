"""Fixtures for training tests: a tiny random Qwen2.5-VL built offline, its encoder, and small images."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    from thyme.models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("train-models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def encoder(tiny_model_dir):
    from thyme.models import load_processor
    from thyme.models.encoding import Encoder

    return Encoder(load_processor(tiny_model_dir))


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> list[pathlib.Path]:
    """Three noise images of different sizes (the user's, and two fed back)."""
    root = tmp_path_factory.mktemp("train-images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(320, 240), (112, 112), (168, 84)]):
        path = root / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def train_sandbox():
    from thyme.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(timeout_s=20, pool_size=2)) as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory, train_sandbox, images) -> pathlib.Path:
    """A tiny model that learned `thyme.testing.scripted.SCRIPTS` on images[0]: it writes code, reads the
    sandbox's output and answers."""
    from thyme.testing.scripted import build_scripted

    return build_scripted(tmp_path_factory.mktemp("train-scripted") / "m", images[0], sandbox=train_sandbox)


@pytest.fixture(scope="session")
def scripted_generation(tmp_path_factory, train_sandbox, images, scripted_model):
    """(backend, trajectory, ids) of a real two-step zoom trajectory of the scripted tiny model: `ids` is what
    the backend fed to its last `generate()` plus the tokens it generated there."""
    from thyme.agent import Agent, AgentConfig, Trajectory
    from thyme.agent.backends.transformers import TransformersBackend

    backend = TransformersBackend.from_pretrained(str(scripted_model), device="cpu")
    seen: list[list[int]] = []
    original = backend._generate_encoded

    def recording(requests, encoded, start, on_tokens=None):
        results = original(requests, encoded, start, on_tokens)
        seen.append(encoded[0].ids + list(results[0].token_ids))
        return results

    backend._generate_encoded = recording
    agent = Agent(backend, config=AgentConfig(), sandbox=train_sandbox)
    with agent:
        traj = agent.run(image=images[0], question="Zoom in on the corner.")
        saved = traj.save(tmp_path_factory.mktemp("train-trajectory"))  # the agent's artifacts go with it
    traj = Trajectory.load(saved)
    assert traj.answer == "red" and len(seen) == 2, (traj.answer, traj.text)
    return backend, traj, seen[-1]


@pytest.fixture(scope="session")
def compute_data(tmp_path_factory) -> pathlib.Path:
    """24 toy-world compute samples (gold + direct variants), gold outputs computed here (not re-run)."""
    from thyme.data.toyworld import generate

    out = tmp_path_factory.mktemp("train-data") / "compute"
    generate("compute", 24, 0, out, level="add-text", verify=False)
    return out


@pytest.fixture(scope="session")
def zoom_data(tmp_path_factory) -> pathlib.Path:
    """8 toy-world zoom samples: large images with a labelled target box (regions for the auxiliary loss)."""
    from thyme.data.toyworld import generate

    out = tmp_path_factory.mktemp("train-data") / "zoom"
    generate("zoom", 8, 0, out, level="colour", verify=False)
    return out
