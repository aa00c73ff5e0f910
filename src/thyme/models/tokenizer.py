"""Our own offline byte-level BPE tokenizer, shaped like Qwen2.5-VL's, for tiny test models.

Why: tests and `thyme-tiny` must never download anything, yet they need a tokenizer that behaves like the one
the released Thyme checkpoints use: the same pre-tokenization (Qwen2's regex, digits one by one, byte-level
BPE), the same chat markers and vision placeholders as special tokens, the same chat template. On top, every
Thyme tag from `thyme.protocol.grammar` is one added token, so stop strings, loss masks and the ATS logits
processor see a tag as a single id. The tags are added as *non-special* tokens: `decode(...,
skip_special_tokens=True)` drops `<|im_end|>` but keeps `<think>`, `</code>`, ... as their text.

Training is deterministic (a fixed corpus in a fixed order; a test compares the files written by two
processes), so every build gives byte-identical files.

    tok = build_tokenizer()          # transformers PreTrainedTokenizerFast, ~3K ids
    tok.save_pretrained("out/")
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from thyme.models.corpus import corpus_texts
from thyme.protocol import grammar

# Qwen2.5-VL's special tokens (the ones a Qwen2.5-VL processor, model config and chat template refer to).
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

# The Thyme tags, one token each, in grammar order.
THYME_TAGS = (
    grammar.THINK_OPEN,
    grammar.THINK_CLOSE,
    grammar.CODE_OPEN,
    grammar.CODE_CLOSE,
    grammar.SANDBOX_OPEN,
    grammar.SANDBOX_CLOSE,
    grammar.ANSWER_OPEN,
    grammar.ANSWER_CLOSE,
)

# Qwen2's pre-tokenizer pattern: contractions, words with one leading non-letter, single digits, punctuation
# runs, newlines, other whitespace.
_QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# Qwen2.5-VL's chat template: a default system turn when none is given, image items rendered as
# `<|vision_start|><|image_pad|><|vision_end|>` in any role's content (so sandbox images fed back inside an
# assistant turn render the same way), `add_generation_prompt` opens an assistant turn. Continuing a final
# assistant message is `apply_chat_template(..., continue_final_message=True)`: transformers cuts the render
# right after that message's last text block.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Cap on the BPE vocabulary before the special tokens and tags are appended. The corpus runs out of pairs seen
# twice at 3013 entries, so the whole tokenizer has 3028 ids.
DEFAULT_VOCAB_SIZE = 3072
MODEL_MAX_LENGTH = 32768


def train_bpe(vocab_size: int = DEFAULT_VOCAB_SIZE, *, seed: int = 0) -> Tokenizer:
    """Train the raw `tokenizers.Tokenizer` on the built-in corpus, then append specials and tags.

    Special tokens and tags are appended after training, so they take the last ids (as in Qwen) and no merge
    is spent on their pieces.
    """
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus_texts(seed), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THYME_TAGS])
    return tok


def build_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE, *, seed: int = 0) -> PreTrainedTokenizerFast:
    """Our tokenizer as a transformers fast tokenizer with Qwen2.5-VL's roles for the special tokens.

    `<|im_end|>` ends a turn (eos), `<|endoftext|>` pads, there is no BOS (Qwen adds none); the processor
    finds `<|image_pad|>`/`<|video_pad|>` by name.
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(vocab_size, seed=seed),
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens=list(SPECIAL_TOKENS),  # Qwen lists them too: all_special_tokens sees them
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="left",  # batched generation pads on the left
        clean_up_tokenization_spaces=False,
    )


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Ids of Qwen2.5-VL's special tokens, keyed by token text (what a model config needs)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(
            f"tokenizer lacks the Qwen2.5-VL special tokens {missing}; build it with build_tokenizer()"
        )
    return ids
