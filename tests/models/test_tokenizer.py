"""Our offline BPE tokenizer: Thyme tags and Qwen specials as single ids, lossless round trips, the Qwen2.5-VL
chat template, and byte-identical files from every build."""

from __future__ import annotations

import hashlib
import pathlib
import subprocess
import sys

import pytest
import transformers  # noqa: F401  (the models extra: make test installs it)
from model_samples import ASSISTANT_TURN, user_turn

from thyme.models import tokenizer as tk
from thyme.protocol import grammar

IMAGE_ITEM = "<|vision_start|><|image_pad|><|vision_end|>"
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


@pytest.fixture(scope="module")
def tok():
    return tk.build_tokenizer()


def test_every_tag_is_one_token_and_the_turn_round_trips(tok):
    ids = tok.encode(ASSISTANT_TURN)
    tokens = tok.convert_ids_to_tokens(ids)
    for tag in tk.THYME_TAGS:
        tag_id = tok.convert_tokens_to_ids(tag)
        assert tokens.count(tag) == 1, tag
        assert tok.encode(tag) == [tag_id]
        assert tok.decode([tag_id]) == tag
    assert tok.decode(ids) == ASSISTANT_TURN
    # Tags are not "special": skipping specials drops the end of turn and keeps every tag.
    ended = tok.encode(ASSISTANT_TURN + tk.IM_END)
    assert tok.decode(ended, skip_special_tokens=True) == ASSISTANT_TURN


def test_tags_match_the_protocol_and_stop_strings(tok):
    assert set(grammar.STOP_STRINGS) <= set(tk.THYME_TAGS)
    assert len(tk.THYME_TAGS) == 2 * len(grammar.TAG_NAMES)
    assert all(f"<{name}>" in tk.THYME_TAGS and f"</{name}>" in tk.THYME_TAGS for name in grammar.TAG_NAMES)


def test_qwen_special_tokens_are_single_special_ids(tok):
    for token in tk.SPECIAL_TOKENS:
        assert len(tok.encode(token)) == 1, token
        assert token in tok.all_special_tokens
    assert tok.eos_token == tk.IM_END and tok.pad_token == tk.ENDOFTEXT and tok.bos_token is None
    ids = tk.special_token_ids(tok)
    assert len(set(ids.values())) == len(tk.SPECIAL_TOKENS)
    # Specials and tags take the last ids, after the BPE vocabulary (Qwen's layout).
    assert sorted(tok.convert_tokens_to_ids(list(tk.SPECIAL_TOKENS + tk.THYME_TAGS))) == list(
        range(len(tok) - len(tk.SPECIAL_TOKENS) - len(tk.THYME_TAGS), len(tok))
    )


def test_vocabulary_size_and_qwen_pretokenization(tok):
    assert 2000 <= len(tok) <= 4200
    assert len(tok.encode("4721")) == 4  # digits one by one, as in Qwen2
    assert tok.convert_ids_to_tokens(tok.encode(" import")) == ["Ġimport"]
    # Common code words are whole tokens, so code-heavy turns stay short.
    assert len(tok.encode(ASSISTANT_TURN)) < len(ASSISTANT_TURN) / 2.5


@pytest.mark.parametrize(
    "text", ["naïve café, 東京 and ≤ 🙂", "\t\tindented\r\n", "<thinking> is not <think>", "a</code>b"]
)
def test_any_text_round_trips_byte_level(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_chat_template_user_turn_with_image(tok):
    chat = user_turn("What is written on the label?")
    rendered = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert rendered == (
        f"{DEFAULT_SYSTEM}<|im_start|>user\n{IMAGE_ITEM}What is written on the label?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, *chat]
    rendered = tok.apply_chat_template(with_system, add_generation_prompt=False, tokenize=False)
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert rendered.endswith("<|im_end|>\n") and "assistant" not in rendered


def test_chat_template_continues_an_assistant_turn_with_sandbox_images(tok):
    partial = ASSISTANT_TURN.split(grammar.SANDBOX_OPEN)[0] + grammar.SANDBOX_OPEN
    chat = [
        *user_turn("What does the label say?"),
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": partial},
                {"type": "image"},
                {"type": "text", "text": grammar.SANDBOX_CLOSE},
            ],
        },
    ]
    rendered = tok.apply_chat_template(chat, continue_final_message=True, tokenize=False)
    assert rendered.endswith(f"<|im_start|>assistant\n{partial}{IMAGE_ITEM}{grammar.SANDBOX_CLOSE}")
    assert rendered.count(IMAGE_ITEM) == 2
    # A string-content assistant turn continues the same way.
    chat[-1] = {"role": "assistant", "content": partial}
    assert tok.apply_chat_template(chat, continue_final_message=True, tokenize=False).endswith(partial)


def _digest(directory: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.mark.slow  # starts a second interpreter that imports transformers (~4 s)
def test_builds_are_byte_identical_across_processes(tok, tmp_path):
    tok.save_pretrained(tmp_path / "here")
    code = (
        "import sys; from thyme.models.tokenizer import build_tokenizer; "
        "build_tokenizer().save_pretrained(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there")], check=True, timeout=120)
    here, there = _digest(tmp_path / "here"), _digest(tmp_path / "there")
    assert "tokenizer.json" in here
    assert here == there
