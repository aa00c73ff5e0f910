"""The vLLM backend around its interface: pure parts, and the backend end to end through a stand-in engine.

vLLM needs a CUDA GPU, so `TransformersLLM` stands in for `vllm.LLM`: the same `generate(prompts,
sampling_params, use_tqdm=...)` and output objects shaped like vLLM's, backed by the real tiny Qwen2.5-VL
through `TransformersBackend.generate_rendered`. The prompts the vLLM backend renders therefore go through a
real processor and model; what the stand-in reports is what vLLM reports (stop string kept, the EOS id at the
end of `token_ids`, `stop_reason` the matched string or None, a prompt over `max_model_len` refused with
ValueError). One GPU test runs the real engine where vLLM and CUDA are present.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import types

import numpy as np
import pytest
from PIL import Image

from thyme.agent import Agent, AgentConfig, BackendError, Conversation, GenerationRequest, SamplingParams
from thyme.agent.backends.base import ModelNotFoundError
from thyme.agent.backends.vllm import (
    Leg,
    LegOutput,
    VLLMBackend,
    apply_repetition_guard,
    count_prompt_tokens,
    engine_prompt,
    engine_sampling_kwargs,
    plan_leg,
    read_output,
    render_prompt,
    repetition_cut,
    vision_bad_words,
)
from thyme.agent.repetition import RepetitionConfig, RepetitionDetector, is_degenerate
from thyme.models import vision_token_ids
from thyme.protocol import ANSWER_CLOSE, CODE_CLOSE, CODE_OPEN, STOP_STRINGS, ImagePart, TextPart

# Fields of vllm.SamplingParams (vLLM 0.10 and later) that the backend may set; a typo would be a TypeError
# in vLLM, so the stand-in's parameter class has exactly these.
VLLM_SAMPLING_FIELDS = {
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "max_tokens",
    "stop",
    "include_stop_str_in_output",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "seed",
    "bad_words",
}
# transformers 5.x deprecates min/max pixels as processor-call arguments (vLLM's transformers 4.x reads them).
PIXEL_BOUNDS_DEPRECATED = pytest.mark.filterwarnings(
    "ignore:Passing `min_pixels` and `max_pixels`:FutureWarning"
)


# -- the stand-in engine --------------------------------------------------------------------------------
@dataclasses.dataclass
class EngineSamplingParams:
    """The `vllm.SamplingParams` fields the backend sets, with vLLM's defaults."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    max_tokens: int | None = 16
    stop: list[str] = dataclasses.field(default_factory=list)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    seed: int | None = None
    bad_words: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class CompletionOutput:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: str | int | None


@dataclasses.dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


class TransformersLLM:
    """`vllm.LLM.generate` over the real tiny model (transformers on CPU); records every call."""

    def __init__(self, model_dir, max_model_len: int | None = None, **image_kwargs: int) -> None:
        from thyme.agent.backends.transformers import TransformersBackend

        self.backend = TransformersBackend.from_pretrained(str(model_dir), device="cpu", **image_kwargs)
        self.max_model_len = max_model_len or self.backend.context_length
        self.image_kwargs = image_kwargs  # the engine's mm_processor_kwargs
        self.calls: list[list[tuple[dict, EngineSamplingParams]]] = []
        self.outputs: list[list[RequestOutput]] = []

    def generate(self, prompts, sampling_params, *, use_tqdm: bool = True) -> list[RequestOutput]:
        assert len(prompts) == len(sampling_params)
        self.calls.append(list(zip(prompts, sampling_params, strict=True)))
        self.outputs.append([self._one(p, sp) for p, sp in zip(prompts, sampling_params, strict=True)])
        return self.outputs[-1]

    def _one(self, prompt: dict, sp: EngineSamplingParams) -> RequestOutput:
        tokenizer = self.backend.tokenizer
        images = prompt.get("multi_modal_data", {}).get("image", [])
        batch = self.backend.processor(text=[prompt["prompt"]], images=images or None, **self.image_kwargs)
        prompt_ids = list(batch["input_ids"][0])
        if len(prompt_ids) >= self.max_model_len:  # vLLM refuses the request, failing the whole call
            raise ValueError(
                f"The decoder prompt (length {len(prompt_ids)}) is longer than the maximum model length "
                f"of {self.max_model_len}."
            )
        assert len(prompt_ids) + sp.max_tokens <= self.max_model_len
        assert sp.include_stop_str_in_output and not sp.skip_special_tokens
        assert tokenizer.convert_tokens_to_ids(sp.bad_words) == list(self.backend._suppress.token_ids)
        params = SamplingParams(
            temperature=sp.temperature,
            top_p=sp.top_p,
            top_k=max(sp.top_k, 0),
            repetition_penalty=sp.repetition_penalty,
            max_new_tokens=sp.max_tokens,
            seed=sp.seed,
        )
        gen = self.backend.generate_rendered(prompt["prompt"], images, params, sp.stop)
        ids = list(gen.token_ids)
        text = tokenizer.decode(ids, skip_special_tokens=False)
        hits = sorted((text.find(s), s) for s in sp.stop if s in text)
        if hits:  # the earliest stop string ends the request and stays in the text
            at, stop = hits[0]
            out = CompletionOutput(text[: at + len(stop)], ids, "stop", stop)
        elif gen.finish_reason == "eos":  # the EOS id ends token_ids; decoded into the text (special kept)
            eos = tokenizer.eos_token_id
            out = CompletionOutput(text + tokenizer.decode([eos]), [*ids, eos], "stop", None)
        else:
            out = CompletionOutput(text, ids, "length", None)
        return RequestOutput(prompt_ids, [out])


def make_backend(model_dir, *, max_model_len: int | None = None, **options) -> VLLMBackend:
    """The vLLM backend over the stand-in engine, constructed as `from_pretrained` constructs it."""
    engine = TransformersLLM(model_dir, max_model_len)
    return VLLMBackend(
        engine,
        engine.backend.processor,
        model_config=engine.backend.model.config,
        max_model_len=engine.max_model_len,
        model_id=str(model_dir),
        eos_token_ids=engine.backend.eos_ids,
        sampling_params_cls=EngineSamplingParams,
        **options,
    )


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_backend(random_model_dir) -> VLLMBackend:
    return make_backend(random_model_dir)


@pytest.fixture(scope="module")
def tokenizer(random_backend):
    return random_backend.tokenizer


@pytest.fixture(scope="module")
def scripted(scripted_model_dir) -> VLLMBackend:
    return make_backend(scripted_model_dir)


@pytest.fixture(scope="module")
def scripted_prompts(agent_sandbox, noise_png, tmp_path_factory) -> dict[str, Conversation]:
    """Each script's question as the model saw it in training, the assistant turn still empty."""
    from thyme.testing.scripted import SCRIPTS, scripted_conversations

    convs = scripted_conversations(agent_sandbox, noise_png, tmp_path_factory.mktemp("vllm-feedback"))
    for conv in convs:
        conv.truncate(0)
    return dict(zip(SCRIPTS, convs, strict=True))


@pytest.fixture(scope="module")
def wide_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("vllm-inputs") / "wide.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, size=(300, 900, 3), dtype=np.uint8)).save(path)
    return path


def _conv(*images, question="Describe the image.") -> Conversation:
    return Conversation(
        system="You are a helpful assistant.", user=(*(ImagePart(p) for p in images), TextPart(question))
    )


# -- pure parts ----------------------------------------------------------------------------------------------
def test_engine_sampling_kwargs():
    sampled = SamplingParams(temperature=0.8, top_p=0.9, top_k=0, repetition_penalty=1.1, seed=7)
    kwargs = engine_sampling_kwargs(sampled, stops=STOP_STRINGS, max_tokens=64, bad_words=["<|image_pad|>"])
    assert set(kwargs) <= VLLM_SAMPLING_FIELDS
    assert kwargs == {
        "temperature": 0.8,
        "top_p": 0.9,
        "top_k": -1,  # off: every vLLM release reads -1 as off, releases before mid-2025 reject 0
        "repetition_penalty": 1.1,
        "max_tokens": 64,
        "stop": ["</code>", "</answer>"],
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
        "seed": 7,
        "bad_words": ["<|image_pad|>"],
    }
    greedy = engine_sampling_kwargs(SamplingParams(top_k=20), stops=(), max_tokens=1, bad_words=[])
    assert greedy["temperature"] == 0 and greedy["top_k"] == 20 and "seed" not in greedy


def test_plan_leg_without_ats_is_one_leg_with_the_callers_stops():
    for params in (
        SamplingParams(),
        SamplingParams(temperature=1.0),
        SamplingParams(0.5, code_temperature=0.5),
    ):
        for inside in (False, True):
            assert plan_leg(params, STOP_STRINGS, inside) == Leg(params, STOP_STRINGS, code=False)


def test_plan_leg_with_ats_alternates_text_and_code_legs():
    params = SamplingParams(temperature=1.0, code_temperature=0.0, top_p=0.9, seed=3)
    text = plan_leg(params, STOP_STRINGS, inside_code=False)
    assert text.stops == (*STOP_STRINGS, CODE_OPEN) and not text.code
    assert text.params == dataclasses.replace(params, code_temperature=None) and not text.params.ats
    code = plan_leg(params, STOP_STRINGS, inside_code=True)
    assert code.stops == STOP_STRINGS and code.code
    assert code.params.greedy and code.params.top_p == 0.9 and not code.params.ats
    # a direct-answer step (no `</code>` stop) still ends its code leg at `</code>`
    assert plan_leg(params, (ANSWER_CLOSE,), inside_code=True).stops == (ANSWER_CLOSE, CODE_CLOSE)
    warm = plan_leg(SamplingParams(temperature=1.0, code_temperature=0.3), STOP_STRINGS, inside_code=True)
    assert warm.params.temperature == 0.3 and warm.code


def test_engine_prompt():
    image = Image.new("RGB", (32, 32))
    assert engine_prompt("text", []) == {"prompt": "text"}
    assert engine_prompt("t", [image, image]) == {
        "prompt": "t",
        "multi_modal_data": {"image": [image, image]},
    }


def test_render_prompt_starts_or_continues_the_assistant_turn(random_backend, noise_png):
    conv = _conv(noise_png)
    fresh = render_prompt(random_backend.processor, conv)
    assert fresh.endswith("<|im_start|>assistant\n")
    assert fresh.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    conv.add_model("<think>Let me look. ")
    continued = render_prompt(random_backend.processor, conv)
    assert continued == fresh + "<think>Let me look. "  # the open turn, exactly: no end-of-turn marker


@PIXEL_BOUNDS_DEPRECATED
@pytest.mark.parametrize("image_kwargs", [{}, {"min_pixels": 56 * 56, "max_pixels": 112 * 112}])
def test_count_prompt_tokens_matches_the_processor(random_backend, noise_png, wide_png, image_kwargs):
    processor = random_backend.processor
    conv = _conv(noise_png, wide_png)
    conv.add_model("<think>Two images. ")
    prompt = render_prompt(processor, conv)
    images = [Image.open(p).convert("RGB") for p in (noise_png, wide_png)]
    expected = len(processor(text=[prompt], images=images, **image_kwargs)["input_ids"][0])
    assert count_prompt_tokens(processor, prompt, [im.size for im in images], image_kwargs) == expected
    assert count_prompt_tokens(processor, "no images", [], image_kwargs) == len(
        processor.tokenizer("no images")["input_ids"]
    )


def test_count_prompt_tokens_refuses_a_placeholder_without_its_image(random_backend):
    processor = random_backend.processor
    prompt = render_prompt(processor, _conv(question="What is <|image_pad|>?"))
    with pytest.raises(BackendError, match="1 image placeholders for 0 images"):
        count_prompt_tokens(processor, prompt, [], {})


def test_vision_bad_words_are_the_vision_tokens(random_backend, tokenizer):
    config = random_backend.llm.backend.model.config
    words = vision_bad_words(tokenizer, vision_token_ids(config))
    assert tokenizer.convert_tokens_to_ids(words) == list(vision_token_ids(config))
    assert "<|image_pad|>" in words and random_backend.bad_words == words
    (word,) = tokenizer.encode(" the", add_special_tokens=False)  # its token "Ġthe" encodes as other ids
    with pytest.raises(BackendError, match="not a single special token"):
        vision_bad_words(tokenizer, [word])


def _completion(ids, finish, stop_reason=None, text=""):
    return CompletionOutput(text, list(ids), finish, stop_reason)


def test_read_output_stop_string_kept_and_nothing_after(tokenizer):
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    ids = encode("look <code>print(1)</code>") + encode(" trailing")
    out = read_output(
        _completion(ids, "stop", CODE_CLOSE), stops=STOP_STRINGS, eos_ids={0}, tokenizer=tokenizer
    )
    assert (out.text, out.reason, out.stop) == ("look <code>print(1)</code>", "stop", CODE_CLOSE)
    assert tokenizer.decode(list(out.token_ids)) == out.text and out.generated == len(out.token_ids)
    segment = read_output(
        _completion(encode("think <code>"), "stop", CODE_OPEN),
        stops=(CODE_OPEN,),
        eos_ids={0},
        tokenizer=tokenizer,
    )
    assert (segment.text, segment.stop) == ("think <code>", CODE_OPEN)


def test_read_output_eos_and_length(tokenizer):
    ids = tokenizer.encode("the answer is 4", add_special_tokens=False)
    eos = tokenizer.eos_token_id
    for stop_reason in (None, eos):  # the primary EOS, or an EOS id from the generation config
        out = read_output(
            _completion([*ids, eos], "stop", stop_reason),
            stops=STOP_STRINGS,
            eos_ids={eos},
            tokenizer=tokenizer,
        )
        assert (out.text, out.reason, out.stop) == ("the answer is 4", "eos", None)
        assert out.token_ids == tuple(ids) and out.generated == len(ids) + 1
    out = read_output(_completion(ids, "length"), stops=STOP_STRINGS, eos_ids={eos}, tokenizer=tokenizer)
    assert (out.text, out.reason, out.generated) == ("the answer is 4", "length", len(ids))


def test_read_output_trusts_the_engine_when_decodings_disagree(tokenizer):
    ids = tokenizer.encode("x = 1", add_special_tokens=False)  # our decoding shows no stop string
    out = read_output(
        _completion(ids, "stop", CODE_CLOSE, text="x = 1</code>"),
        stops=STOP_STRINGS,
        eos_ids=set(),
        tokenizer=tokenizer,
    )
    assert (out.text, out.reason, out.stop) == ("x = 1</code>", "stop", CODE_CLOSE)
    assert tokenizer.decode(list(out.token_ids)) == "x = 1</code>"


def test_read_output_refuses_an_aborted_request(tokenizer):
    with pytest.raises(BackendError, match="finish_reason='abort'"):
        read_output(_completion([5], "abort"), stops=STOP_STRINGS, eos_ids=set(), tokenizer=tokenizer)


def test_repetition_cut_is_where_the_incremental_guard_fires(tokenizer):
    ids = tokenizer.encode("<think>" + "ha " * 100 + "</think>", add_special_tokens=False)
    config = RepetitionConfig(threshold=0.5)
    cut = repetition_cut(RepetitionDetector(config), ids)
    assert cut is not None and cut < len(ids)
    assert is_degenerate(ids[:cut], config) and not is_degenerate(ids[: cut - 1], config)
    assert repetition_cut(RepetitionDetector(config), ids[:40]) is None
    assert repetition_cut(RepetitionDetector(config), list(range(500))) is None


def test_repetition_guard_cuts_the_text_and_respects_a_stop(tokenizer):
    ids = tuple(tokenizer.encode("<think>" + "ha " * 100, add_special_tokens=False))
    config = RepetitionConfig(threshold=0.5)
    cut = repetition_cut(RepetitionDetector(config), ids)
    length = LegOutput(tokenizer.decode(list(ids)), ids, "length", None, len(ids))
    out = apply_repetition_guard(length, RepetitionDetector(config), tokenizer)
    assert (out.reason, out.stop, out.token_ids, out.generated) == ("repetition", None, ids[:cut], cut)
    assert out.text == tokenizer.decode(list(ids[:cut])) and length.text.startswith(out.text)
    # firing on the token that completed a stop string leaves the stop; before an EOS, the guard wins
    stopped = LegOutput("...", ids[:cut], "stop", ANSWER_CLOSE, cut)
    assert apply_repetition_guard(stopped, RepetitionDetector(config), tokenizer) == stopped
    eos = LegOutput("...", ids[:cut], "eos", None, cut + 1)
    assert apply_repetition_guard(eos, RepetitionDetector(config), tokenizer).reason == "repetition"
    clean = LegOutput("...", ids[:20], "length", None, 20)
    assert apply_repetition_guard(clean, RepetitionDetector(config), tokenizer) == clean


# -- the backend through the stand-in engine -----------------------------------------------------------------
def test_batch_is_one_engine_call_and_matches_the_transformers_backend(random_backend, noise_png, wide_png):
    continued = _conv(noise_png, wide_png)
    continued.add_model("<think>Two images. ")
    requests = [
        GenerationRequest(_conv(noise_png), SamplingParams(max_new_tokens=12), stops=()),
        GenerationRequest(continued, SamplingParams(max_new_tokens=9), stops=()),
        GenerationRequest(_conv(question="No image here?"), SamplingParams(max_new_tokens=7), stops=()),
    ]
    engine = random_backend.llm
    engine.calls.clear()
    got = random_backend.generate(requests)
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 3
    images = [len(p.get("multi_modal_data", {}).get("image", [])) for p, _ in engine.calls[0]]
    assert images == [1, 2, 0]
    reference = [engine.backend.generate([r])[0] for r in requests]
    for mine, theirs in zip(got, reference, strict=True):
        assert (mine.text, mine.token_ids, mine.finish_reason) == (theirs.text, theirs.token_ids, "length")
        assert mine.prompt_tokens == theirs.prompt_tokens and mine.completion_tokens == len(mine.token_ids)
        assert not mine.code_greedy and mine.state is None


def test_prompt_over_the_context_is_not_submitted_and_the_batch_goes_on(random_model_dir, noise_png):
    probe = make_backend(random_model_dir)
    short = GenerationRequest(_conv(noise_png), SamplingParams(max_new_tokens=6), stops=())
    fits = probe.generate([short])[0]
    backend = make_backend(random_model_dir, max_model_len=fits.prompt_tokens + 40)
    long = GenerationRequest(
        _conv(noise_png, question="why " * 60), SamplingParams(max_new_tokens=6), stops=()
    )
    over, ok = backend.generate([long, short])
    assert (over.finish_reason, over.text, over.completion_tokens) == ("context", "", 0)
    assert over.prompt_tokens > backend.context_length
    assert ok.text == fits.text and ok.finish_reason == "length"
    assert len(backend.llm.calls) == 1 and len(backend.llm.calls[0]) == 1  # the long prompt never went out


def test_a_step_cut_short_by_the_context_ends_with_context(random_model_dir, noise_png):
    probe = make_backend(random_model_dir)
    request = GenerationRequest(_conv(noise_png), SamplingParams(max_new_tokens=30), stops=())
    free = probe.generate([request])[0]
    backend = make_backend(random_model_dir, max_model_len=free.prompt_tokens + 5)
    cut = backend.generate([request])[0]
    assert (cut.finish_reason, cut.completion_tokens) == ("context", 5)
    assert cut.token_ids == free.token_ids[:5]
    sp = backend.llm.calls[0][0][1]
    assert sp.max_tokens == 5


def test_too_many_images_end_with_context(random_model_dir, noise_png, wide_png):
    backend = make_backend(random_model_dir, max_images=1)
    request = GenerationRequest(_conv(noise_png, wide_png), SamplingParams(max_new_tokens=4), stops=())
    assert backend.generate([request])[0].finish_reason == "context"
    assert backend.llm.calls == []


def test_an_engine_refusal_is_a_backend_error(random_model_dir, noise_png):
    backend = make_backend(random_model_dir)
    backend.llm.max_model_len = 20  # the engine's limit is tighter than the backend was told
    request = GenerationRequest(_conv(noise_png), SamplingParams(max_new_tokens=4), stops=())
    with pytest.raises(BackendError, match="vLLM refused the batch: The decoder prompt"):
        backend.generate([request])


def test_stop_string_sampling_and_seed_reach_the_engine(random_backend, noise_png):
    params = SamplingParams(temperature=1.0, top_k=5, max_new_tokens=12, seed=11)
    request = GenerationRequest(_conv(noise_png), params)
    engine = random_backend.llm
    engine.calls.clear()
    a, b = random_backend.generate([request, request])
    assert a.token_ids == b.token_ids  # seeded per request
    (_, sp), _ = engine.calls[0]
    assert (sp.temperature, sp.top_k, sp.seed, sp.max_tokens, sp.stop) == (1.0, 5, 11, 12, list(STOP_STRINGS))


def test_agent_runs_tool_trajectories_through_the_vllm_backend(scripted_model_dir, agent_sandbox, noise_png):
    backend = make_backend(scripted_model_dir)
    engine = backend.llm
    config = AgentConfig(sampling=SamplingParams(max_new_tokens=160))
    with Agent(backend, config=config, sandbox=agent_sandbox) as agent:  # closes the backend on exit
        product, zoom = agent.run_batch(
            [("What is six times seven?", noise_png), ("Zoom in on the corner.", noise_png)]
        )
    assert (product.answer, zoom.answer) == ("42", "red")
    assert "</code><sandbox_output>42</sandbox_output>The product" in product.text
    assert [e.stop for e in product.events if e.kind == "model_text"] == [CODE_CLOSE, ANSWER_CLOSE]
    assert len(engine.calls) == 2  # two rounds, both trajectories in each
    second_round = engine.calls[1]
    assert [len(p["multi_modal_data"]["image"]) for p, _ in second_round] == [1, 2]  # the zoom fed back
    model_pieces = [p for p in product.conversation.assistant if p.source == "model"]
    assert all(p.token_ids for p in model_pieces)


def test_ats_samples_text_then_decodes_the_code_greedily(scripted, scripted_prompts):
    conv = scripted_prompts["What is six times seven?"]
    params = SamplingParams(temperature=0.7, code_temperature=0.0, max_new_tokens=160, seed=0)
    engine = scripted.llm
    engine.calls.clear()
    gen = scripted.generate([GenerationRequest(conv, params)])[0]
    assert gen.text == "<think>Multiply with code. <code>\n```python\nprint(6 * 7)\n```\n</code>"
    assert (gen.finish_reason, gen.stop, gen.code_greedy) == ("stop", CODE_CLOSE, True)
    assert scripted.tokenizer.decode(list(gen.token_ids)) == gen.text
    assert gen.completion_tokens == len(gen.token_ids)
    (text_prompt, text_sp), (code_prompt, code_sp) = engine.calls[0][0], engine.calls[1][0]
    assert (text_sp.temperature, text_sp.seed, text_sp.stop) == (0.7, 0, [*STOP_STRINGS, CODE_OPEN])
    assert (code_sp.temperature, code_sp.stop) == (0.0, list(STOP_STRINGS))
    assert code_prompt["prompt"] == text_prompt["prompt"] + "<think>Multiply with code. <code>"
    assert code_prompt["multi_modal_data"] == text_prompt["multi_modal_data"]
    text_leg = scripted.tokenizer.encode("<think>Multiply with code. <code>", add_special_tokens=False)
    assert (text_sp.max_tokens, code_sp.max_tokens) == (160, 160 - len(text_leg))


def test_repetition_guard_matches_the_transformers_backend(scripted, scripted_prompts):
    conv = scripted_prompts["Laugh."]
    request = GenerationRequest(conv, SamplingParams(max_new_tokens=200), repetition_threshold=0.5)
    engine = scripted.llm
    engine.calls.clear()
    mine = scripted.generate([request])[0]
    theirs = engine.backend.generate([request])[0]
    assert (mine.finish_reason, mine.stop) == ("repetition", None) == (theirs.finish_reason, theirs.stop)
    assert (mine.text, mine.token_ids) == (theirs.text, theirs.token_ids)
    free = scripted.generate([dataclasses.replace(request, repetition_threshold=None)])[0]
    assert (
        free.finish_reason == "stop" and free.text.startswith(mine.text) and len(free.text) > len(mine.text)
    )


def test_agenerate_equals_generate(random_backend, noise_png):
    request = GenerationRequest(_conv(noise_png), SamplingParams(max_new_tokens=6), stops=())
    assert (
        asyncio.run(random_backend.agenerate(request)).token_ids
        == random_backend.generate([request])[0].token_ids
    )


def test_closed_backend_says_so(random_model_dir):
    backend = make_backend(random_model_dir)
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.generate([])


# -- without vLLM, and with it --------------------------------------------------------------------------
def test_imports_without_vllm_and_from_pretrained_says_how_to_install(monkeypatch, random_model_dir):
    from thyme.agent.backends.base import load_backend

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, installed or not
    import thyme.agent.backends.vllm as module

    assert module.VLLMBackend.name == "vllm"
    with pytest.raises(BackendError, match=r"pip install 'thyme-vl\[vllm\]'"):
        module.VLLMBackend.from_pretrained(str(random_model_dir))
    with pytest.raises(BackendError, match=r"pip install 'thyme-vl\[vllm\]'"):
        load_backend("vllm", str(random_model_dir))


@PIXEL_BOUNDS_DEPRECATED
def test_from_pretrained_starts_the_engine_with_our_options(monkeypatch, random_model_dir, noise_png):
    """`from_pretrained` against a `vllm` module whose `LLM` is the stand-in: the engine options it passes,
    and a backend that then generates."""
    started: dict = {}

    def start_engine(**options):
        started.update(options)
        pixels = options["mm_processor_kwargs"]
        engine = TransformersLLM(options["model"], options["max_model_len"], **pixels)
        engine.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=600))
        return engine

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = start_engine, EngineSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", fake)
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    backend = VLLMBackend.from_pretrained(
        str(random_model_dir), max_model_len=600, enforce_eager=True, **pixels
    )
    assert started == {
        "model": str(random_model_dir),
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.85,
        "seed": 0,
        "limit_mm_per_prompt": {"image": 11},
        "max_model_len": 600,
        "mm_processor_kwargs": pixels,
        "enforce_eager": True,
    }
    assert (backend.name, backend.model_id, backend.default_preset) == (
        "vllm",
        str(random_model_dir),
        "default",
    )
    assert backend.context_length == 600 and backend.eos_ids >= {backend.tokenizer.eos_token_id}
    request = GenerationRequest(_conv(noise_png), SamplingParams(max_new_tokens=5), stops=())
    gen = backend.generate([request])[0]
    assert gen.finish_reason == "length" and len(gen.token_ids) == 5
    assert gen.prompt_tokens == len(
        backend.llm.outputs[0][0].prompt_token_ids
    )  # counted with the pixel bounds
    with pytest.raises(ModelNotFoundError, match="cannot load model"):
        VLLMBackend.from_pretrained(str(random_model_dir / "missing"))


@pytest.mark.gpu
def test_real_engine_generates_on_the_tiny_model(random_model_dir, noise_png):
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    backend = VLLMBackend.from_pretrained(
        str(random_model_dir), gpu_memory_utilization=0.2, max_model_len=1024, enforce_eager=True
    )
    try:
        request = GenerationRequest(_conv(noise_png), SamplingParams(max_new_tokens=8), stops=())
        gen = backend.generate([request, request])
        assert gen[0].finish_reason in ("length", "eos") and gen[0].token_ids == gen[1].token_ids
        assert gen[0].prompt_tokens > 20 and 0 < gen[0].completion_tokens <= 8
        vision = set(vision_token_ids(backend.llm.llm_engine.model_config.hf_config))
        assert not vision & set(gen[0].token_ids)
    finally:
        backend.close()


# -- GRPO's colocated engine (thyme.train.vllm_rollouts) -----------------------------------------------------
class ColocatedGeneration:
    """TRL's `VLLMGeneration` in colocate mode as `ColocatedRollouts` uses it: the engine (the stand-in,
    with `llm_engine.model_config.max_model_len` and sleep/wake), `sync_weights`, the sleep-mode flags;
    records the calls."""

    mode = "colocate"
    tensor_parallel_size = 1

    def __init__(self, engine: TransformersLLM, sleep: bool) -> None:
        self.llm = engine
        self.enable_sleep_mode = sleep
        self._llm_weights_sleeping = sleep  # TRL puts a new engine to sleep at once in sleep mode
        self.log: list[str] = []
        model_config = types.SimpleNamespace(max_model_len=engine.max_model_len)
        engine.llm_engine = types.SimpleNamespace(model_config=model_config)
        engine.sleep = lambda level: self.log.append(f"sleep {level}")
        engine.wake_up = lambda tags: self.log.append(f"wake {','.join(tags)}")
        real_generate = engine.generate

        def generate(*args, **kwargs):
            self.log.append("generate")
            return real_generate(*args, **kwargs)

        engine.generate = generate

    def sync_weights(self) -> None:
        self.log.append("sync")
        self._llm_weights_sleeping = False


@pytest.mark.parametrize("sleep", [False, True])
def test_grpo_rollouts_on_the_colocated_engine(sleep, scripted_model_dir, agent_sandbox, noise_png):
    """The agent loop on TRL's colocated engine: weights synced once per optimizer step (and after every
    level-2 sleep), the engine awake only while rolling out, the trajectories those of the vLLM backend."""
    from thyme.train.vllm_rollouts import ColocatedRollouts

    engine = TransformersLLM(scripted_model_dir)
    generation = ColocatedGeneration(engine, sleep)
    rollouts = ColocatedRollouts(
        generation,
        engine.backend.processor,
        engine.backend.model.config,
        preset="default",
        pixel_bounds={"min_pixels": None, "max_pixels": None},
        max_images=11,
        eos_token_ids=sorted(engine.backend.eos_ids),
        sampling_params_cls=EngineSamplingParams,
    )
    trainer = types.SimpleNamespace(state=types.SimpleNamespace(global_step=0), _last_loaded_step=-1)
    config = AgentConfig(sampling=SamplingParams(max_new_tokens=160))
    answers = []
    for step in (0, 0, 1):  # two rollout batches in step 0 (gradient accumulation), one in step 1
        trainer.state.global_step = step
        with rollouts.ready(trainer) as backend:
            agent = Agent(backend, config=config, sandbox=agent_sandbox)
            answers += [t.answer for t in agent.run_batch([("What is six times seven?", noise_png)] * 2)]
    assert answers == ["42"] * 6 and trainer._last_loaded_step == 1
    batch = ["wake kv_cache", "generate", "generate", "sleep 2"] if sleep else ["generate", "generate"]
    if sleep:  # a level-2 sleep drops the weights: every batch syncs
        assert generation.log == ["sync", *batch] * 3
    else:  # weights pushed when the step changes only
        assert generation.log == ["sync", *batch, *batch, "sync", *batch]


def test_colocated_rollouts_refuse_what_they_cannot_follow(random_model_dir):
    from thyme.train.vllm_rollouts import ColocatedRollouts

    engine = TransformersLLM(random_model_dir)
    generation = ColocatedGeneration(engine, sleep=False)
    generation.tensor_parallel_size = 2
    with pytest.raises(ValueError, match="tensor_parallel_size 1"):
        ColocatedRollouts(generation, engine.backend.processor, engine.backend.model.config,
                          preset="default", pixel_bounds={}, max_images=11,
                          sampling_params_cls=EngineSamplingParams)  # fmt: skip


# -- GRPO's server mode: the OpenAI backend over a `vllm serve` node (here `thyme serve --raw`) -----------
class ServerGeneration:
    """TRL's `VLLMGeneration` in server mode as `ServerRollouts` uses it: where the server is, and
    `sync_weights` (recorded; TRL broadcasts the weights to the server over NCCL there)."""

    mode = "server"
    server_host, server_port = "0.0.0.0", 8000

    def __init__(self, base_url: str) -> None:
        self.server_base_url = base_url
        self.log: list[str] = []

    def sync_weights(self) -> None:
        self.log.append("sync")


def test_grpo_rollouts_on_a_vllm_server(scripted_backend, agent_sandbox, noise_png):
    """Server mode: weights synced once per optimizer step, the rollouts sent over HTTP as continuations
    of the assistant turn, the same trajectories as the local backend gives."""
    from thyme.serve.generation import GenerationServer
    from thyme.train.vllm_rollouts import ServerRollouts

    config = AgentConfig(sampling=SamplingParams(max_new_tokens=160))
    tasks = [("What is six times seven?", noise_png), ("Zoom in on the corner.", noise_png)]
    local = Agent(scripted_backend, config=config, sandbox=agent_sandbox).run_batch(tasks)
    with GenerationServer(scripted_backend, "127.0.0.1", 0, model_name="policy") as server:
        server.start()
        generation = ServerGeneration(server.url)
        rollouts = ServerRollouts(generation, preset="default", timeout_s=60)
        assert rollouts.backend.model_id == "policy" and rollouts.backend.continuation == "always"
        trainer = types.SimpleNamespace(state=types.SimpleNamespace(global_step=0), _last_loaded_step=-1)
        texts = []
        for step in (0, 0, 1):
            trainer.state.global_step = step
            with rollouts.ready(trainer) as backend:
                agent = Agent(backend, config=config, sandbox=agent_sandbox)
                texts.append([t.text for t in agent.run_batch(tasks)])
        rollouts.close()
    assert generation.log == ["sync", "sync"] and trainer._last_loaded_step == 1
    assert texts == [[t.text for t in local]] * 3


def test_server_rollouts_refuse_other_modes_and_a_server_without_models():
    from thyme.train.vllm_rollouts import ServerRollouts

    with pytest.raises(ValueError, match="server mode"):
        ServerRollouts(types.SimpleNamespace(mode="colocate"), preset="default")
    with pytest.raises(BackendError, match="cannot list the models"):
        ServerRollouts(ServerGeneration("http://127.0.0.1:9"), preset="default", timeout_s=2)
