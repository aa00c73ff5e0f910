"""Fixtures for the offline model factory: one tiny Qwen2.5-VL per session, built with no network.

The hub is switched off before anything imports huggingface_hub (it reads the switch once, at import), so a
test that would reach for a download fails instead of quietly fetching.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> pathlib.Path:
    import thyme.models as models

    return models.build_tiny(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def noise_image() -> Image.Image:
    """A 320x240 RGB image of noise: its vision features differ from patch to patch."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8))
