"""Prompt presets: the released interface constants stay byte-exact, our presets keep the grammar."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from thyme.protocol import (
    CODE_CLOSE,
    CODE_OPEN,
    PRESETS,
    SANDBOX_CLOSE,
    SANDBOX_OPEN,
    PromptPreset,
    get_preset,
)
from thyme.protocol.presets import direct_preset, read_prompt_file

# SHA-256 of the released strings, checked against the reference (scripts/prompt.txt and
# eval/VLMEvalKit/vlmeval/vlm/thyme/utils.py, with the f-string fields renamed to our placeholders).
# If one of these changes, the released checkpoints no longer see the prompt they were trained on.
RELEASED_SHA256 = {
    "released_system.txt": "c5e7db63596377f9a1afef0dd131d282b2f9e6c873058c056c5c0aa5a89f99a7",
    "released_user.txt": "ec82feda750417b5e8cb888f55ab48745f93634ec8446b584fd919196d6b393f",
    "released_direct_system.txt": "75357d685f238b6afd7738be9786fdafde641eb6ca9a3be7471939715a68a4de",
    "released_direct_user.txt": "0165a2f9afdcafcd187a2f21a4792fca88ff491951f8ec9b4e201218956c1038",
}


@pytest.mark.parametrize("name", sorted(RELEASED_SHA256))
def test_released_prompt_files_are_byte_exact(name):
    digest = hashlib.sha256(read_prompt_file(name).encode("utf-8")).hexdigest()
    assert digest == RELEASED_SHA256[name]


def test_released_system_prompt_shape():
    system = get_preset("released").system
    assert system.startswith("You are a helpful assistant.\n\nSolve the following problem step by step")
    assert "    <code>\n    ```python\n    # your code.\n    ```\n    </code>\n" in system
    assert system.endswith("for further processing in a sandbox environment.")


def test_released_user_text_lines():
    text = get_preset("released").user_text(
        "What is the color of the bag?", image_path="/data/vstar/sa_1.jpg", image_size=(2250, 1500)
    )
    lines = text.split("\n")
    assert lines[:3] == ["<image>", "What is the color of the bag?", ""]
    assert lines[3] == '### User Image Path:** "/data/vstar/sa_1.jpg"'
    assert lines[4] == '### User Image Size:** "2250x1500"'
    assert lines[6] == "### **Output Format (strict adherence required):**"
    assert lines[8].startswith("<think>") and lines[8].endswith("</think>")
    assert lines[9].startswith("<answer>") and lines[9].endswith("</answer>")
    assert text.endswith("</answer>\n")


def test_braces_and_placeholders_in_the_question_are_left_alone():
    question = "Is {image_path} set? Compute {x: 1}."
    text = get_preset("released").user_text(question, image_path="/p.png", image_size=(1, 2))
    assert "\n" + question + "\n" in text
    assert text.count("/p.png") == 1


def test_released_preset_requires_path_and_size():
    preset = get_preset("released")
    with pytest.raises(ValueError, match="image_path"):
        preset.user_text("q", image_size=(10, 10))
    with pytest.raises(ValueError, match="image_size"):
        preset.user_text("q", image_path="/p.png")


@pytest.mark.parametrize("size", [(0, 10), (10, -1), (1.5, 2)])
def test_bad_image_sizes_are_rejected(size):
    with pytest.raises(ValueError, match="positive integers"):
        get_preset("default").user_text("q", image_size=size)


def test_default_preset_teaches_the_same_grammar_without_a_path():
    preset = get_preset("default")
    for tag in (CODE_OPEN, "```python", CODE_CLOSE, SANDBOX_OPEN, SANDBOX_CLOSE, "<answer>", "</think>"):
        assert tag in preset.system
    assert "image_path" in preset.system and "processed_path" in preset.system
    assert not preset.needs_image_path
    text = preset.user_text("How many cars?", image_size=(640, 480))
    assert text.startswith("How many cars?\n") and "640x480" in text
    assert "<image>" not in text


def test_direct_presets():
    direct, released_direct = get_preset("direct"), get_preset("released_direct")
    assert not direct.tools and direct.answer_tagged
    assert "<answer></answer>" in direct.user_text("What color?")
    assert not released_direct.tools and not released_direct.answer_tagged
    assert released_direct.system == "You are a helpful assistant."
    assert released_direct.user_text("What color?").endswith('**User\'s Question:** "What color?"\n')


def test_tool_presets_invite_code():
    assert get_preset("released").tools and get_preset("default").tools and get_preset("compact").tools


def test_every_tool_preset_names_its_direct_counterpart():
    pairs = {name: direct_preset(preset).name for name, preset in PRESETS.items() if preset.tools}
    assert pairs == {"released": "released_direct", "default": "direct", "compact": "compact_direct"}
    for preset in PRESETS.values():
        assert not direct_preset(preset).tools
        if not preset.tools:
            assert direct_preset(preset) is preset


def test_compact_preset_is_the_grammar_in_one_sentence_and_the_bare_question():
    compact, direct = get_preset("compact"), get_preset("compact_direct")
    for tag in (CODE_OPEN, SANDBOX_OPEN, "<answer>", "<think>"):
        assert tag in compact.system
    assert compact.system.count(".") <= 3 and len(compact.system) < len(get_preset("default").system) / 4
    assert compact.user_text("What colour?") == direct.user_text("What colour?") == "What colour?"
    assert direct.answer_tagged and CODE_OPEN not in direct.system


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError) as excinfo:
        get_preset("relased")
    message = str(excinfo.value)
    assert "'relased'" in message
    for name in PRESETS:
        assert name in message


def test_presets_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("default").system = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        PRESETS["mine"] = get_preset("default")  # type: ignore[index]


@pytest.mark.parametrize(
    ("template", "match"),
    [("Q: {question} {imagepath}", "unknown placeholders"), ("no question here", "no \\{question\\}")],
)
def test_preset_templates_are_validated(template, match):
    with pytest.raises(ValueError, match=match):
        PromptPreset("mine", "sys", template, tools=True, answer_tagged=True, description="test")
