"""Fixed trajectories a tiny model learns by heart, so the loop's tool path runs on a real model.

Each script is a question and the model-written pieces of one trajectory; the sandbox pieces in between are
produced by running the code in the real sandbox when the training conversations are built
(`scripted_conversations`), exactly as the loop produces them later. Tests, benchmarks and smoke runs use
`build_scripted`, which builds a random tiny model and teaches it these scripts (a few CPU seconds):

    path = build_scripted("models/scripted", image="scene.png")
    agent = Agent.from_pretrained(str(path))
    agent.run(image="scene.png", question="What is six times seven?").answer   # "42"
"""

from __future__ import annotations

import shutil
from pathlib import Path

from thyme.agent.conversation import Conversation
from thyme.agent.episode import Prompt, user_parts
from thyme.protocol import get_preset, render_feedback

ZOOM_CODE = (
    "from PIL import Image\n"
    "img = Image.open(image_path)\n"
    "crop = img.crop((0, 0, 96, 96)).resize((192, 192))\n"
    'processed_path = "/mnt/data/temp_processed_images/zoom.png"\n'
    "crop.save(processed_path)\n"
    "print(processed_path)"
)


def _code(source: str) -> str:
    return f"<code>\n```python\n{source}\n```\n</code>"


# question -> model-written pieces; a code piece is followed by its sandbox output in the conversation.
SCRIPTS: dict[str, list[str]] = {
    "What is six times seven?": [
        "<think>Multiply with code. " + _code("print(6 * 7)"),
        "The product is 42.</think> <answer>42</answer>",
    ],
    "Zoom in on the corner.": [
        "<think>Crop the corner. " + _code(ZOOM_CODE),
        "The corner is red.</think> <answer>red</answer>",
    ],
    "Divide one by zero.": [
        "<think>Try it. " + _code("print(1 / 0)"),
        "That failed, so the answer is undefined.</think> <answer>undefined</answer>",
    ],
    "Laugh.": ["<think>" + "ha " * 80 + "</think> <answer>ha</answer>"],
    "Count forever.": [
        "<think>Count. " + _code("print(1)"),
        "Again. " + _code("print(2)"),
        "Again. " + _code("print(3)"),
        "Done.</think> <answer>3</answer>",
    ],
}


def scripted_conversations(
    sandbox, image: Path, keep_dir: Path, preset_name: str = "default"
) -> list[Conversation]:
    """The scripts as training conversations, with the real sandbox output after each code piece.

    Output images are copied into `keep_dir` (the sandbox deletes its copies when it closes).
    """
    preset = get_preset(preset_name)
    conversations = []
    from PIL import Image

    with Image.open(image) as img:
        size = img.size
    for question, pieces in SCRIPTS.items():
        with sandbox.session(inputs=[image]) as session:
            parts, _ = user_parts(preset, Prompt(question, image, size, session.inputs[0]))
            conv = Conversation(preset.system, parts)
            for piece in pieces:
                conv.add_model(piece)
                if piece.endswith("</code>"):
                    code = piece.rsplit("```python\n", 1)[1].rsplit("\n```", 1)[0]
                    result = session.run(code)
                    kept = []
                    for src in result.images:
                        kept.append(keep_dir / f"{len(list(keep_dir.iterdir())):03d}{src.suffix}")
                        shutil.copyfile(src, kept[-1])
                    conv.add_feedback(render_feedback(result.text, kept))
            conversations.append(conv)
    return conversations


def build_scripted(
    out_dir: str | Path, image: str | Path, *, sandbox=None, steps: int = 600, seed: int = 0
) -> Path:
    """Build a random tiny model in `out_dir` and teach it `SCRIPTS` (answers hold for this `image`)."""
    import tempfile

    from thyme.models.tiny import build_tiny
    from thyme.sandbox import Sandbox, SandboxConfig
    from thyme.testing.memorize import memorize

    model_dir = build_tiny(out_dir, seed=seed)
    own = sandbox is None
    sandbox = sandbox or Sandbox(SandboxConfig(timeout_s=15))
    try:
        with tempfile.TemporaryDirectory(prefix="thyme-scripted-") as keep:
            conversations = scripted_conversations(sandbox, Path(image), Path(keep))
            loss = memorize(model_dir, conversations, steps=steps)
    finally:
        if own:
            sandbox.close()
    if loss > 0.05:
        raise RuntimeError(f"the tiny model did not learn the scripts (loss {loss:.3f}); raise steps")
    return Path(model_dir)
