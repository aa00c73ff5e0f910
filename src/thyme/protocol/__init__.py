"""The Thyme conversation protocol: one definition of prompts, tags, parsing, answers and feedback.

Every consumer (agent loop, backends, evaluation, SFT data checks, RL rewards, demo) imports these instead of
re-spelling a tag or re-parsing chat text:

- `grammar`:  tag constants, `STOP_STRINGS`.                     - `stops`:    canonical stop handling.
- `presets`:  `PromptPreset`, `get_preset` (released, default...). - `wrappers`: MCQ / yes-no / short VQA.
- `parser`:   `parse_assistant`, `pending_code`, `is_code_open`.   - `segments`: the typed segments.
- `answer`:   `extract_answer`, `last_boxed`, `has_valid_format`.  - `choices`:  MCQ option letters.
- `feedback`: sandbox output rendered back into the same assistant turn.

Example:
    preset = get_preset("released")
    user_text = preset.user_text(question, image_path="/data/cat.jpg", image_size=(1024, 768))
    ... generate until a stop string ...
    block = pending_code(turn)            # run block.code in a sandbox session
    turn += feedback_text(result.text, result.images, image_placeholder="<image>")
    answer = extract_answer(turn)
"""

from thyme.protocol.answer import (
    ANSWER_LEADINS,
    extract_answer,
    has_valid_format,
    last_boxed,
    strip_answer_leadins,
)
from thyme.protocol.choices import extract_option_letter, normalize_options
from thyme.protocol.feedback import (
    FeedbackPart,
    ImagePart,
    RendersAsFeedback,
    TextPart,
    feedback_text,
    flatten_parts,
    render_error,
    render_feedback,
    render_result,
)
from thyme.protocol.grammar import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    CODE_CLOSE,
    CODE_OPEN,
    IMAGE_PLACEHOLDER,
    SANDBOX_CLOSE,
    SANDBOX_OPEN,
    STOP_STRINGS,
    THINK_CLOSE,
    THINK_OPEN,
)
from thyme.protocol.parser import code_blocks, is_code_open, parse_assistant, pending_code
from thyme.protocol.presets import PRESETS, PromptPreset, direct_preset, get_preset
from thyme.protocol.segments import (
    AnswerSegment,
    CodeSegment,
    SandboxOutputSegment,
    Segment,
    TextSegment,
    ThinkTag,
)
from thyme.protocol.stops import cut_at_first_stop, restore_stop_string
from thyme.protocol.wrappers import wrap_mcq, wrap_short_vqa, wrap_yes_no

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_LEADINS",
    "ANSWER_OPEN",
    "CODE_CLOSE",
    "CODE_OPEN",
    "IMAGE_PLACEHOLDER",
    "PRESETS",
    "SANDBOX_CLOSE",
    "SANDBOX_OPEN",
    "STOP_STRINGS",
    "THINK_CLOSE",
    "THINK_OPEN",
    "AnswerSegment",
    "CodeSegment",
    "FeedbackPart",
    "ImagePart",
    "PromptPreset",
    "RendersAsFeedback",
    "SandboxOutputSegment",
    "Segment",
    "TextPart",
    "TextSegment",
    "ThinkTag",
    "code_blocks",
    "cut_at_first_stop",
    "direct_preset",
    "extract_answer",
    "extract_option_letter",
    "feedback_text",
    "flatten_parts",
    "get_preset",
    "has_valid_format",
    "is_code_open",
    "last_boxed",
    "normalize_options",
    "parse_assistant",
    "pending_code",
    "render_error",
    "render_feedback",
    "render_result",
    "restore_stop_string",
    "strip_answer_leadins",
    "wrap_mcq",
    "wrap_short_vqa",
    "wrap_yes_no",
]
