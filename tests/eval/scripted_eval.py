"""The scripted tiny model and its questions, shared by the runner, report and command tests.

`scripted_model` builds the model once per test session under the session's base temp directory (~15 s),
so every eval test module reuses it; `scripted_task` asks its questions as an eval task.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from thyme.eval import EvalSample, TaskSpec

# (question, gold, category); the last gold is wrong on purpose, so one sample is always incorrect.
QA = [
    ("What is six times seven?", "42", "compute"),
    ("Zoom in on the corner.", "red", "zoom"),
    ("Divide one by zero.", "undefined", "compute"),
    ("Count forever.", "3", "count"),
    ("What is six times seven?", "41", "trick"),
]


def scripted_model(tmp_path_factory) -> tuple[Path, Path]:
    """(model dir, image) of the scripted tiny model (`thyme.testing.scripted`)."""
    from thyme.testing.scripted import build_scripted

    root = tmp_path_factory.getbasetemp() / "eval-scripted-model"
    model, image = root / "model", root / "noise.png"
    if not (root / "ready").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)).save(image)
        build_scripted(model, image)
        (root / "ready").touch()
    return model, image


def scripted_task(name: str, image: Path, n: int = len(QA), version: str = "1") -> TaskSpec:
    """The scripted questions (cycled to `n` samples) as a task: exact-match scoring."""
    rows = itertools.islice(itertools.cycle(QA), n)
    samples = [EvalSample(f"s{i}", q, a, image=image, category=c) for i, (q, a, c) in enumerate(rows)]
    return TaskSpec(
        name=name,
        version=version,
        description="the scripted tiny model's questions",
        load=lambda data, cache_dir: iter(samples),
        prompt=lambda sample: sample.question,
        extract=lambda answer, sample: answer.strip() if answer else None,
        score=lambda prediction, sample: float(prediction == sample.answer),
        data_hint="any file (the samples are built in)",
    )
