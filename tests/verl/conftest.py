"""Fixtures for the verl adapter: the scripted tiny model, its encoder, a real sandbox and a real
`thyme sandbox serve` on loopback, and a model-backed stand-in for verl's server manager.

The scripted model (`thyme.testing.scripted.build_scripted`) learned a few tool trajectories by heart, so a
greedy rollout writes the code, stops at `</code>`, reads the real sandbox output (a zoomed image for
"Zoom in on the corner.") and answers: the trajectories converted here are real ones.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

TOKEN = "verl-test-token-51c2"


@pytest.fixture(scope="session")
def verl_image(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("verl-inputs") / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def verl_sandbox():
    from thyme.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(timeout_s=15, pool_size=2)) as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
def verl_model_dir(tmp_path_factory, verl_sandbox, verl_image) -> pathlib.Path:
    from thyme.testing.scripted import build_scripted

    return build_scripted(
        tmp_path_factory.mktemp("verl-models") / "scripted", verl_image, sandbox=verl_sandbox
    )


@pytest.fixture(scope="session")
def verl_encoder(verl_model_dir):
    from thyme.models.encoding import Encoder
    from thyme.models.processor import load_processor

    return Encoder(load_processor(str(verl_model_dir)))


@pytest.fixture(scope="session")
def sandbox_service(tmp_path_factory):
    """`thyme sandbox serve` in its own process on 127.0.0.1 (a free port) with a token: (url, token file)."""
    token_file = tmp_path_factory.mktemp("verl-service") / "token.txt"
    token_file.write_text(TOKEN + "\n")
    command = [sys.executable, "-m", "thyme", "sandbox", "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--token-file", str(token_file), "--timeout", "15"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        if "listening on " not in line:
            raise RuntimeError(f"thyme sandbox serve did not start (printed {line!r})")
        yield line.split("listening on ", 1)[1].strip(), token_file
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def model_server(verl_model_dir):
    from verl_model_server import ModelServerManager

    return ModelServerManager(verl_model_dir)
