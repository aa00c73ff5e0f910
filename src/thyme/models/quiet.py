"""Load and save checkpoints without transformers' progress bars.

transformers draws a bar while it loads weights ("Loading weights: 100%|...| 56/56") and while it saves
shards; a command already says what it is doing (`loading M`), so the bars are noise on every run. Used
around `from_pretrained` by the transformers backend and around `save_pretrained` by the tiny-model factory.

    with no_progress_bars():
        model = AutoModelForImageTextToText.from_pretrained(path)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from transformers.utils import logging as hf_logging


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off while inside; on again afterwards only if they were on before."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
