"""Shared fixtures: real images on disk and a real sandbox (no fakes)."""

from __future__ import annotations

import os
import pathlib

# Nothing is ever downloaded in tests. huggingface_hub reads this once, at its first import, so it is set
# here, before any test module can import transformers.
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def scene_jpeg(tmp_path_factory) -> pathlib.Path:
    """A 2000x1500 JPEG with a gradient and noise, like a high-resolution benchmark photo."""
    path = tmp_path_factory.mktemp("inputs") / "scene.jpg"
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1500, 0:2000]
    base = np.stack([x * 255 // 2000, y * 255 // 1500, (x + y) * 255 // 3500], axis=-1)
    pixels = (base + rng.integers(0, 30, size=base.shape)).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


@pytest.fixture(scope="session")
def small_png(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("inputs") / "small.png"
    Image.new("RGB", (320, 240), (10, 200, 30)).save(path)
    return path
