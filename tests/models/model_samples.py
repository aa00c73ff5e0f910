"""Shared inputs for the model-factory tests (not a test module): a realistic Thyme turn and chat builders."""

from __future__ import annotations

from thyme.protocol import grammar

FENCE = "```"

# A full assistant turn as the agent loop leaves it (sandbox output inserted), every Thyme tag present.
ASSISTANT_TURN = (
    f"{grammar.THINK_OPEN}The label in the lower right corner is only a few pixels tall, so I will crop it "
    "and enlarge it 4x.\n"
    f"{grammar.CODE_OPEN}\n{FENCE}python\n"
    "import os\n"
    "from PIL import Image\n\n"
    "img = Image.open(image_path)\n"
    "x1, y1, x2, y2 = 1510, 1120, 1780, 1300\n"
    "cropped = img.crop((x1, y1, x2, y2)).resize((1080, 720), Image.LANCZOS)\n"
    'processed_path = os.path.join(output_dir, "label_4x.png")\n'
    "cropped.save(processed_path)\n"
    "print(processed_path)\n"
    f"{FENCE}\n{grammar.CODE_CLOSE}"
    f"{grammar.SANDBOX_OPEN}/mnt/data/temp_processed_images/label_4x.png{grammar.SANDBOX_CLOSE}"
    'The enlarged crop reads "EXIT 12"; 12 * 347 = 4164.'
    f"{grammar.THINK_CLOSE}\n{grammar.ANSWER_OPEN}EXIT 12{grammar.ANSWER_CLOSE}"
)


def user_turn(question: str) -> list[dict]:
    """A chat with one user turn: an image item, then the question (the released order)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
