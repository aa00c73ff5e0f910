"""An image-only Qwen2.5-VL processor, for machines where torchvision is absent.

Why: in transformers 5.x `Qwen2_5_VLProcessor` requires a video processor, and `Qwen2VLVideoProcessor` needs
torchvision, which does not import beside a CPU-only torch build. Thyme never feeds videos, so this subclass
drops the `video_processor` attribute and keeps everything else of the upstream class (image token expansion,
`mm_token_type_ids`, decoding). The image side is `Qwen2VLImageProcessorPil` (PIL + numpy, no torchvision),
which resizes with the same `smart_resize` rule as the released models.

Importing this module registers the class with `AutoProcessor`, so a directory whose `processor_config.json`
names `Qwen2_5_VLImageOnlyProcessor` (every model `thyme.models.build_tiny` writes) loads with
`AutoProcessor.from_pretrained(dir)`. Without that import AutoProcessor does not fail: it silently returns
the bare tokenizer. Backends therefore call `load_processor(dir)`, which also covers released Qwen2.5-VL
checkpoints: the upstream processor where torchvision is installed, this one where it is not.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from typing import Any

from transformers import (
    AutoProcessor,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
)

log = logging.getLogger(__name__)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor: images and text only.

    Sub-processors are `image_processor` (a Qwen2-VL image processor, PIL backend where torchvision is
    missing) and `tokenizer`; `get_attributes()` reads them from this `__init__` signature, which is why
    `video_processor` must not appear in it.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The upstream __init__ passes (image_processor, tokenizer, video_processor) positionally to
        # ProcessorMixin, which zips them with our two attributes, so the trailing None is dropped.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        """The image processor's and the tokenizer's inputs plus Qwen2.5-VL's own two, as transformers 5.25
        lists them (5.5's property reads a video processor, which this class does not have)."""
        names = [*self.image_processor.model_input_names, *self.tokenizer.model_input_names]
        return [*dict.fromkeys(names), "second_per_grid_ts", "mm_token_type_ids"]

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs: Any):
        if videos is not None:
            raise ValueError(
                "Qwen2_5_VLImageOnlyProcessor handles images and text only; "
                "install torchvision and use Qwen2_5_VLProcessor for videos"
            )
        return super().__call__(images=images, text=text, audio=audio, **kwargs)


def image_processor(*, min_pixels: int, max_pixels: int) -> Qwen2VLImageProcessorPil:
    """A Qwen2-VL PIL image processor whose images resize to between min and max pixels (multiples of 28)."""
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


@functools.cache
def torchvision_available() -> bool:
    """Whether torchvision imports (installed is not enough: a build for another torch fails on import)."""
    try:
        importlib.import_module("torchvision")
    except Exception:  # ImportError, or RuntimeError/OSError from a mismatched binary build
        return False
    return True


def load_processor(path: str | os.PathLike[str], **kwargs: Any):
    """Load the processor of a Qwen2.5-VL-family checkpoint directory, image-only where torchvision is absent.

    Directories written by `thyme.models` name the image-only class and load as is; a released checkpoint
    names `Qwen2_5_VLProcessor`, whose video processor cannot be built without torchvision, so there the
    image-only processor is built from the same files instead.
    """
    if torchvision_available():
        return AutoProcessor.from_pretrained(path, **kwargs)
    log.debug("torchvision is absent: loading %s with the image-only processor", path)
    return Qwen2_5_VLImageOnlyProcessor.from_pretrained(path, **kwargs)


# AutoProcessor resolves the `processor_class` named in processor_config.json among the classes registered
# with it. The key is a name, not `Qwen2_5_VLConfig`: some transformers 5.x releases silently ignore
# registrations under a library config class, and a name leaves the upstream mapping of Qwen2.5-VL configs
# untouched.
AutoProcessor.register(Qwen2_5_VLImageOnlyProcessor.__name__, Qwen2_5_VLImageOnlyProcessor, exist_ok=True)
