"""Prompt presets: the system prompt and the user text for one way of asking a question.

A preset is data. Its strings live in `thyme/protocol/prompts/*.txt`, read once at import, each file holding
the exact string (a trailing newline is part of it when present):

- `released`: what the released Thyme checkpoints were trained and evaluated with. `released_system.txt`
  and `released_user.txt` are interface constants, verbatim from the reference (`scripts/prompt.txt`,
  `eval/VLMEvalKit/vlmeval/vlm/thyme/utils.py`). The user text states the image path and size, and starts
  with a literal `<image>` line: the released evaluation sends the image item first and then this text
  unchanged, so we do the same to reproduce its numbers.
- `released_direct`: the released fallback after failed tool trajectories (no tags requested).
- `default`: our own wording of the same grammar, for models we train; no file path in the prompt (the
  sandbox gives the code `image_path`).
- `direct`: our own direct-answer prompt for `tools=False` baselines; asks for `<answer>` tags.
- `compact` / `compact_direct`: the same grammar in one sentence and the bare question, for small models
  trained from scratch (thyme-tiny), where a long constant prompt would cost most of every step.

Each tool-using preset names its direct-answer counterpart (`direct`), used for `tools=False` runs and the
fallback.

In every preset the user message is: the image item first, then `preset.user_text(...)`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

_PLACEHOLDER_RE = re.compile(r"\{(\w+)\}")
_PLACEHOLDERS = frozenset({"question", "image_path", "image_size"})


def read_prompt_file(name: str) -> str:
    """The exact text of one file under `thyme/protocol/prompts/`."""
    return resources.files("thyme.protocol").joinpath("prompts", name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class PromptPreset:
    """One way of prompting: system prompt, user-text template, and what the model is asked to do.

    user_template: text with `{question}`, and optionally `{image_path}` and `{image_size}` ("WxH").
    tools:         the prompt invites code (the agent loop should stop at `</code>` and run it).
    answer_tagged: the prompt asks for `<answer>...</answer>`; when False, an untagged reply is the answer.
    direct:        the name of the direct-answer preset that goes with this one (None for direct presets).
    """

    name: str
    system: str
    user_template: str
    tools: bool
    answer_tagged: bool
    description: str
    direct: str | None = None

    def __post_init__(self) -> None:
        used = set(_PLACEHOLDER_RE.findall(self.user_template))
        unknown = used - _PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"prompt preset {self.name!r} uses unknown placeholders {sorted(unknown)}; "
                f"allowed are {sorted(_PLACEHOLDERS)}"
            )
        if "question" not in used:
            raise ValueError(f"prompt preset {self.name!r} has no {{question}} in its user template; add one")

    @property
    def needs_image_path(self) -> bool:
        """The user text states the image's path (the released prompt does)."""
        return "{image_path}" in self.user_template

    @property
    def needs_image_size(self) -> bool:
        """The user text states the image's size."""
        return "{image_size}" in self.user_template

    def user_text(
        self,
        question: str,
        *,
        image_path: str | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> str:
        """The user text for `question` (the image item goes before it in the same user message).

        image_path: the path as the model should see it (the code will open it); needed by `released`.
        image_size: (width, height) in pixels of the original image; needed by `released` and `default`.
        """
        values = {"question": question}
        if self.needs_image_path:
            if image_path is None:
                raise ValueError(
                    f"prompt preset {self.name!r} states the image path; pass image_path= "
                    "(the path the model's code will open)"
                )
            values["image_path"] = str(image_path)
        if self.needs_image_size:
            values["image_size"] = _format_size(self.name, image_size)
        # One pass: placeholders inside the question itself are left alone.
        return _PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), self.user_template)


def _format_size(preset: str, image_size: tuple[int, int] | None) -> str:
    if image_size is None:
        raise ValueError(f"prompt preset {preset!r} states the image size; pass image_size=(width, height)")
    width, height = image_size
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise ValueError(f"image_size must be two positive integers (width, height), got {image_size!r}")
    return f"{width}x{height}"


def _load_presets() -> Mapping[str, PromptPreset]:
    presets = (
        PromptPreset(
            name="released",
            system=read_prompt_file("released_system.txt"),
            user_template=read_prompt_file("released_user.txt"),
            tools=True,
            answer_tagged=True,
            description="the released Thyme checkpoints' prompt (states image path and size)",
            direct="released_direct",
        ),
        PromptPreset(
            name="released_direct",
            system=read_prompt_file("released_direct_system.txt"),
            user_template=read_prompt_file("released_direct_user.txt"),
            tools=False,
            answer_tagged=False,
            description="the released direct-answer fallback prompt (no code, no tags requested)",
        ),
        PromptPreset(
            name="default",
            system=read_prompt_file("default_system.txt"),
            user_template=read_prompt_file("default_user.txt"),
            tools=True,
            answer_tagged=True,
            description="our wording of the Thyme grammar; no file path in the prompt",
            direct="direct",
        ),
        PromptPreset(
            name="direct",
            system=read_prompt_file("direct_system.txt"),
            user_template=read_prompt_file("direct_user.txt"),
            tools=False,
            answer_tagged=True,
            description="direct answer without code, in <answer> tags (tools=False baselines)",
        ),
        PromptPreset(
            name="compact",
            system=read_prompt_file("compact_system.txt"),
            user_template=read_prompt_file("compact_user.txt"),
            tools=True,
            answer_tagged=True,
            description="the Thyme grammar in one sentence, for small models trained from scratch",
            direct="compact_direct",
        ),
        PromptPreset(
            name="compact_direct",
            system=read_prompt_file("compact_direct_system.txt"),
            user_template=read_prompt_file("compact_direct_user.txt"),
            tools=False,
            answer_tagged=True,
            description="direct answer in <answer> tags, the compact preset's counterpart",
        ),
    )
    return MappingProxyType({preset.name: preset for preset in presets})


PRESETS: Mapping[str, PromptPreset] = _load_presets()


def get_preset(name: str) -> PromptPreset:
    """The preset called `name`; the error lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown prompt preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def direct_preset(preset: PromptPreset) -> PromptPreset:
    """The direct-answer preset that goes with `preset` (a direct preset is its own)."""
    return get_preset(preset.direct) if preset.direct else preset
