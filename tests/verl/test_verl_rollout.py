"""The adapter's rollout without verl: `thyme.agent.Episode` through `ServerManagerBackend` (verl's server
manager API, here backed by the real scripted model) and a real `thyme sandbox serve` session."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import pytest
from PIL import Image

from thyme.agent import Agent, AgentConfig, SamplingParams
from thyme.agent.episode import Prompt
from thyme.agent.loop import check_image
from thyme.protocol import CODE_CLOSE, CODE_OPEN, STOP_STRINGS
from thyme.sandbox.client import SandboxClient
from thyme.verl.backend import PromptTooLong, ServerManagerBackend, read_token_output
from thyme.verl.config import VerlLoopConfig, sampling_from_verl
from thyme.verl.convert import trajectory_to_agent_output
from thyme.verl.rollout import RowError, image_file, prompt_inputs, run_episode

ZOOM = "Zoom in on the corner."
# verl's sampling dict; top_k=1 makes the sampled text leg deterministic while ATS still splits the step.
VERL_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 1, "repetition_penalty": 1.0, "logprobs": True}


def rollout(
    server, encoder, service, image, question, *, sampling=VERL_SAMPLING, response_length=1024, **options
):
    """One trajectory the way `ThymeAgentLoop.run` makes it (minus verl): (trajectory, logprobs, backend)."""
    url, token_file = service
    config = VerlLoopConfig(sandbox_url=url, sandbox_token_file=str(token_file), **options)

    async def go(artifacts):
        artifacts.mkdir(parents=True, exist_ok=True)
        backend = ServerManagerBackend(
            server,
            encoder,
            request_id="r1",
            logprobs=bool(sampling.get("logprobs")),
            prompt_length=1024,
            response_length=response_length,
        )
        params = sampling_from_verl(sampling, config.max_new_tokens or response_length)
        with SandboxClient(url, token=config.token()) as client:
            path, size = check_image(image)
            session = client.session([path])
            try:
                traj, logprobs = await run_episode(
                    Prompt(question, path, size, session.inputs[0]),
                    backend=backend,
                    session=session,
                    config=config.agent_config(params),
                    artifacts=artifacts,
                )
                return (
                    traj,
                    logprobs,
                    backend,
                    trajectory_to_agent_output(
                        traj, encoder, logprobs=logprobs, response_length=response_length
                    ),
                )
            finally:
                session.close()

    return go


def test_rollout_matches_the_loop_on_the_same_model(
    model_server, verl_encoder, sandbox_service, verl_image, verl_model_dir, verl_sandbox, tmp_path
):
    traj, logprobs, _, out = asyncio.run(
        rollout(model_server, verl_encoder, sandbox_service, verl_image, ZOOM)(tmp_path)
    )
    assert traj.answer == "red" and traj.final.reason == "answer"
    assert out.extra_fields["thyme_code_calls"] == 1 and out.extra_fields["thyme_code_errors"] == 0
    assert len(out.images) == 2 and out.images[1].size == (192, 192)  # the zoom came back from the service

    # What the server was fed last is exactly what verl will train on, up to that step's generation.
    last = model_server.calls[-1]
    assert out.prompt_ids + out.response_ids == last.prompt_ids + last.token_ids[: len(out.response_ids)]
    assert last.images == 2

    # The same model through the transformers backend and the local sandbox writes the same tokens.
    from thyme.agent.backends.transformers import TransformersBackend

    local = TransformersBackend.from_pretrained(str(verl_model_dir), device="cpu")
    with Agent(local, sandbox=verl_sandbox, config=AgentConfig(fallback=False)) as agent:
        reference = agent.run(image=verl_image, question=ZOOM)
        expected = trajectory_to_agent_output(reference, verl_encoder)
    assert out.response_ids == expected.response_ids and out.response_mask == expected.response_mask

    # Log-probs: one per generated id, from the engine; 0.0 on the sandbox's tokens.
    model_pieces = [p for p in traj.conversation.assistant if p.source == "model"]
    assert [len(lp) for lp in logprobs] == [len(p.token_ids) for p in model_pieces]
    assert all(x <= 0 for lp in logprobs for x in lp) and out.logprobs_unknown == 0
    on_model = [x for x, m in zip(out.response_logprobs, out.response_mask, strict=True) if m]
    assert on_model == [x for lp in logprobs for x in lp]


def test_ats_text_leg_sampled_code_leg_greedy(
    model_server, verl_encoder, sandbox_service, verl_image, tmp_path
):
    traj, _, backend, _ = asyncio.run(
        rollout(model_server, verl_encoder, sandbox_service, verl_image, ZOOM)(tmp_path)
    )
    legs = model_server.calls
    assert backend.calls == len(legs) == 3  # text to <code>, code to </code>, then text to </answer>
    text, code, answer = (leg.sampling_params for leg in legs)
    assert text["temperature"] == 1.0 and CODE_OPEN in text["stop"] and text["top_k"] == 1
    assert code["temperature"] == 0.0 and CODE_CLOSE in code["stop"] and CODE_OPEN not in code["stop"]
    assert answer["temperature"] == 1.0 and set(STOP_STRINGS) <= set(answer["stop"])
    assert all(leg.sampling_params["logprobs"] is True for leg in legs)
    assert legs[1].prompt_ids == legs[0].prompt_ids + legs[0].token_ids  # the code leg continues the ids
    steps = [e for e in traj.events if e.kind == "model_text"]
    assert [s.code_greedy for s in steps] == [True, False]
    assert steps[0].text.endswith(CODE_CLOSE)

    # Without ATS (one temperature) a step is one engine request.
    model_server.calls.clear()
    asyncio.run(
        rollout(model_server, verl_encoder, sandbox_service, verl_image, ZOOM, code_temperature=None)(
            tmp_path / "plain"
        )
    )
    assert len(model_server.calls) == 2 and CODE_OPEN not in model_server.calls[0].sampling_params["stop"]


def test_response_budget_ends_the_trajectory(
    model_server, verl_encoder, sandbox_service, verl_image, tmp_path
):
    traj, _, _, out = asyncio.run(
        rollout(model_server, verl_encoder, sandbox_service, verl_image, ZOOM, response_length=20)(tmp_path)
    )
    assert traj.answer is None and traj.final.reason in ("context", "length")
    assert len(out.response_ids) <= 20 and len(out.response_logprobs) == len(out.response_ids)
    calls = model_server.calls
    assert sum(len(c.token_ids) for c in calls) <= 20  # each leg asked for what was left of the budget
    assert [c.sampling_params["max_tokens"] for c in calls] == [
        20 - sum(len(c.token_ids) for c in calls[:i]) for i in range(len(calls))
    ]


def test_prompt_longer_than_verl_allows_is_an_error(model_server, verl_encoder, verl_image):
    backend = ServerManagerBackend(
        model_server, verl_encoder, request_id="r", logprobs=False, prompt_length=8, response_length=64
    )
    from thyme.agent import GenerationRequest
    from thyme.agent.conversation import Conversation
    from thyme.protocol import ImagePart, TextPart

    request = GenerationRequest(Conversation("sys", (ImagePart(verl_image), TextPart("q"))), SamplingParams())
    with pytest.raises(PromptTooLong, match="prompt_length=8"):
        asyncio.run(backend.agenerate(request))
    assert model_server.calls == []


# -- pure parts --------------------------------------------------------------------------------------------
def test_read_token_output_canonical_form(verl_encoder):
    tok = verl_encoder.tokenizer
    end = verl_encoder.end_of_turn_id
    ids = tok.encode("look <code>", add_special_tokens=False)
    out, scores = read_token_output(ids, [-0.1] * len(ids), stops=[CODE_OPEN], eos_ids={end}, tokenizer=tok)
    assert (out.text, out.reason, out.stop, list(out.token_ids)) == ("look <code>", "stop", CODE_OPEN, ids)
    assert scores == [-0.1] * len(ids)

    out, scores = read_token_output(
        [*ids[:-1], end], [-1.0] * len(ids), stops=["</answer>"], eos_ids={end}, tokenizer=tok
    )
    assert out.reason == "eos" and out.generated == len(ids) and len(scores) == len(ids) - 1

    # A token past the stop string: the text is cut, the ids re-tokenised, unknown log-probs are 0.0.
    more = ids + tok.encode(" tail", add_special_tokens=False)
    lp = [-0.2 - i / 100 for i in range(len(more))]
    out, scores = read_token_output(more, lp, stops=[CODE_OPEN], eos_ids={end}, tokenizer=tok)
    assert out.text == "look <code>" and list(out.token_ids) == ids and scores == lp[: len(ids)]

    out, scores = read_token_output(ids[:2], None, stops=["</answer>"], eos_ids={end}, tokenizer=tok)
    assert out.reason == "length" and scores is None


def test_prompt_inputs_from_verl_rows(tmp_path, verl_image):
    pil = Image.open(verl_image)
    raw = [
        {"role": "system", "content": "ignored"},
        {
            "role": "user",
            "content": [{"type": "image", "image": pil}, {"type": "text", "text": "<image>What?"}],
        },
    ]
    question, image = prompt_inputs(raw)
    assert question == "What?" and image is pil
    assert prompt_inputs(raw, {"question": "Stored question"})[0] == "Stored question"
    assert prompt_inputs([{"role": "user", "content": "Text only"}]) == ("Text only", None)
    with pytest.raises(RowError, match="no user message"):
        prompt_inputs([{"role": "system", "content": "x"}])

    saved = image_file(pil, tmp_path)
    assert saved.name == "input.png" and Image.open(saved).size == pil.size
    assert image_file(str(verl_image), tmp_path) == verl_image
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    assert Image.open(image_file({"bytes": buffer.getvalue()}, tmp_path)).size == pil.size
    with pytest.raises(RowError, match="not a readable file"):
        image_file(str(tmp_path / "missing.png"), tmp_path)


def test_config_from_options_names_the_bad_key(tmp_path):
    with pytest.raises(ValueError, match=r"unknown option.*sandbox_ulr"):
        VerlLoopConfig.from_options({"sandbox_ulr": "http://x:1"})
    with pytest.raises(ValueError, match="needs sandbox_url"):
        VerlLoopConfig.from_options({})
    with pytest.raises(ValueError, match="preset"):
        VerlLoopConfig(sandbox_url="http://127.0.0.1:1", preset="nope")
    VerlLoopConfig(sandbox_url=["http://sandbox-a:8765", "http://sandbox-b:8765"])  # several sandbox hosts
    with pytest.raises(ValueError, match=r"sandbox_url: .*'nope'.* several hosts: a list or comma-separated"):
        VerlLoopConfig(sandbox_url="http://sandbox-a:8765,nope")
    config = VerlLoopConfig.from_options({"sandbox_url": "http://127.0.0.1:1", "max_steps": 3})
    agent = config.agent_config(sampling_from_verl({"temperature": 0.7, "top_k": -1}, 256))
    assert agent.max_steps == 3 and not agent.fallback
    assert (
        agent.sampling.temperature == 0.7
        and agent.sampling.top_k == 0
        and agent.sampling.code_temperature == 0.0
    )
    assert agent.sampling.ats and agent.sampling.max_new_tokens == 256


def test_aborted_request_is_a_backend_error(verl_encoder, verl_image):
    class Aborting:
        async def generate(self, request_id, **kwargs):
            return SimpleNamespace(token_ids=[], log_probs=None, stop_reason="aborted")

    from thyme.agent import BackendError, GenerationRequest
    from thyme.agent.conversation import Conversation
    from thyme.protocol import TextPart

    backend = ServerManagerBackend(
        Aborting(), verl_encoder, request_id="r", logprobs=False, prompt_length=512, response_length=64
    )
    request = GenerationRequest(Conversation("sys", (TextPart("q"),)), SamplingParams())
    with pytest.raises(BackendError, match="aborted"):
        asyncio.run(backend.agenerate(request))
