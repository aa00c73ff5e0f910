"""The tag grammar of a Thyme assistant turn: the one place that spells the tags.

An assistant turn reads

    <think>reasoning <code>```python ...```</code><sandbox_output>...</sandbox_output> more</think>
    <answer>final answer</answer>

with zero or more code blocks, each followed by the sandbox output that the agent loop inserts into the same
assistant message. Generation pauses at `STOP_STRINGS`: at `</code>` the loop runs the code, at `</answer>`
the turn is over. Everything else in `thyme.protocol` (parser, answer extraction, feedback rendering, prompt
presets) and every consumer (agent loop, SFT masks, RL rewards, evaluation) imports the tags from here.
"""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
CODE_OPEN = "<code>"
CODE_CLOSE = "</code>"
SANDBOX_OPEN = "<sandbox_output>"
SANDBOX_CLOSE = "</sandbox_output>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

# The tag names above without brackets, in the order the parser's tokenizer lists them.
TAG_NAMES = ("think", "code", "sandbox_output", "answer")

# Generation stops right after either string (plus the tokenizer's end-of-sequence token). Released
# checkpoints were evaluated and trained with exactly these two.
STOP_STRINGS = (CODE_CLOSE, ANSWER_CLOSE)

# ms-swift's image placeholder. Thyme-SFT/RL data mark each image's position with it, and the released
# user prompt begins with it (the released evaluation sends the image item first and keeps this line as text).
IMAGE_PLACEHOLDER = "<image>"

# Markdown code fence and the info strings that mean "this is Python" inside `<code>`.
CODE_FENCE = "```"
PYTHON_FENCE_LANGUAGES = frozenset({"python", "python3", "py", "py3"})
