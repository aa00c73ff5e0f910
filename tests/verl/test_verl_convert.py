"""`trajectory_to_agent_output`: real trajectories of the scripted tiny model, encoded by the real encoder.

No verl here: the conversion is a pure function of a `Trajectory` (or its `Sample`) and an `Encoder`.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from thyme.agent import Agent, AgentConfig
from thyme.data.sample import Sample
from thyme.models.encoding import load_image
from thyme.train.masks import MODEL
from thyme.verl.convert import trajectory_to_agent_output

ZOOM = "Zoom in on the corner."
PRODUCT = "What is six times seven?"


@pytest.fixture(scope="module")
def trajectories(verl_model_dir, verl_sandbox, verl_image):
    from thyme.agent.backends.transformers import TransformersBackend

    backend = TransformersBackend.from_pretrained(str(verl_model_dir), device="cpu")
    with Agent(backend, sandbox=verl_sandbox, config=AgentConfig(fallback=False)) as agent:
        runs = {q: agent.run(image=verl_image, question=q) for q in (ZOOM, PRODUCT)}
        # The conversion reads the fed-back images, which live as long as the agent's artifacts.
        yield runs


def _runs(ids, token):
    """[start, end) of each run of `token` in `ids`."""
    runs, start = [], None
    for i, t in enumerate([*ids, None]):
        if t == token and start is None:
            start = i
        elif t != token and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_ids_and_mask_are_the_encoders(trajectories, verl_encoder):
    traj = trajectories[ZOOM]
    assert traj.answer == "red" and len(traj.conversation.feedback_images) == 1
    example = verl_encoder.example(traj.conversation, end_of_turn=False)
    out = trajectory_to_agent_output(traj, verl_encoder)

    assert out.prompt_ids + out.response_ids == example.ids
    assert len(out.prompt_ids) == example.prompt_len
    assert out.response_mask == [int(r == MODEL) for r in example.roles[example.prompt_len :]]
    # The model's own generated ids are the response's model tokens, piece after piece.
    generated = [t for p in traj.conversation.assistant if p.source == "model" for t in p.token_ids]
    assert [t for t, m in zip(out.response_ids, out.response_mask, strict=True) if m] == generated
    assert out.response_logprobs is None and not out.truncated
    assert out.num_turns == 1 + 2 + 1  # the user turn, two generations, one sandbox output
    assert out.extra_fields["thyme_code_calls"] == 1 and out.extra_fields["thyme_code_errors"] == 0
    assert out.extra_fields["thyme_answer"] == "red" and out.extra_fields["thyme_reason"] == "answer"
    assert out.metrics["generate_sequences"] > 0 and out.metrics["tool_calls"] > 0


def test_sandbox_output_is_masked_tags_and_image_tokens_included(trajectories, verl_encoder):
    out = trajectory_to_agent_output(trajectories[ZOOM], verl_encoder)
    tok = verl_encoder.tokenizer
    unmasked = tok.decode([t for t, m in zip(out.response_ids, out.response_mask, strict=True) if m])
    masked = tok.decode([t for t, m in zip(out.response_ids, out.response_mask, strict=True) if not m])
    assert "<sandbox_output>" in masked and "</sandbox_output>" in masked
    assert "<sandbox_output>" not in unmasked and "<|image_pad|>" not in unmasked
    assert "<code>" in unmasked and "<answer>red</answer>" in unmasked
    pads = [i for i, t in enumerate(out.response_ids) if t in verl_encoder.vision_ids]
    assert pads and all(out.response_mask[i] == 0 for i in pads)


def test_images_in_sequence_order_with_their_token_counts(trajectories, verl_encoder, verl_image):
    traj = trajectories[ZOOM]
    out = trajectory_to_agent_output(traj, verl_encoder)
    example = verl_encoder.example(traj.conversation, end_of_turn=False)

    assert len(out.images) == 2 and all(im.mode == "RGB" for im in out.images)
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(load_image(verl_image)))
    fed_back = load_image(traj.conversation.feedback_images[0])
    assert np.array_equal(np.asarray(out.images[1]), np.asarray(fed_back))
    assert out.images[1].size == (192, 192)  # the scripted zoom: a 96 px corner enlarged twice

    pad = verl_encoder.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    runs = _runs(out.prompt_ids + out.response_ids, pad)
    merge = verl_encoder.processor.image_processor.merge_size
    assert [e - s for s, e in runs] == out.image_tokens
    assert out.image_tokens == [int(g.prod()) // merge**2 for g in example.grids]
    assert runs[0][1] <= len(out.prompt_ids) < runs[1][0]  # the user image in the prompt, the zoom after it
    assert out.as_kwargs()["multi_modal_data"] == {"images": out.images}
    assert out.mm_processor_kwargs == verl_encoder.image_kwargs


def test_text_output_and_the_sample_form_agree(trajectories, verl_encoder):
    traj = trajectories[PRODUCT]
    assert traj.answer == "42"
    out = trajectory_to_agent_output(traj, verl_encoder)
    assert len(out.images) == 1  # only the user's image: the code printed text
    assert "42" in verl_encoder.tokenizer.decode(
        [t for t, m in zip(out.response_ids, out.response_mask, strict=True) if not m]
    )
    sample = trajectory_to_agent_output(Sample.from_trajectory(traj), verl_encoder)
    assert (sample.prompt_ids, sample.response_ids, sample.response_mask) == (
        out.prompt_ids,
        out.response_ids,
        out.response_mask,
    )
    assert sample.extra_fields["thyme_code_calls"] == 1 and sample.extra_fields["thyme_answer"] == "42"


def test_logprobs_on_model_tokens_zero_on_sandbox_tokens(trajectories, verl_encoder):
    traj = trajectories[ZOOM]
    model_pieces = [p for p in traj.conversation.assistant if p.source == "model"]
    given = [tuple(-0.5 - i - j / 1000 for j in range(len(p.token_ids))) for i, p in enumerate(model_pieces)]
    out = trajectory_to_agent_output(traj, verl_encoder, logprobs=given)
    assert len(out.response_logprobs) == len(out.response_ids)
    on_model = [lp for lp, m in zip(out.response_logprobs, out.response_mask, strict=True) if m]
    assert on_model == [x for g in given for x in g]
    assert all(lp == 0.0 for lp, m in zip(out.response_logprobs, out.response_mask, strict=True) if not m)
    assert out.logprobs_unknown == 0

    unknown = trajectory_to_agent_output(traj, verl_encoder, logprobs=[given[0], None])
    assert unknown.logprobs_unknown == len(given[1])
    assert unknown.response_logprobs[-1] == 0.0

    with pytest.raises(ValueError, match="one per model piece"):
        trajectory_to_agent_output(traj, verl_encoder, logprobs=[given[0]])
    with pytest.raises(ValueError, match="log-probs"):
        trajectory_to_agent_output(traj, verl_encoder, logprobs=[given[0][:-1], given[1]])


def test_response_length_never_cuts_inside_a_sandbox_output(trajectories, verl_encoder):
    traj = trajectories[ZOOM]
    full = trajectory_to_agent_output(traj, verl_encoder)
    first_sandbox = full.response_mask.index(0)
    inside = first_sandbox + 3  # a budget ending inside the sandbox output (before its image ends)
    cut = trajectory_to_agent_output(traj, verl_encoder, response_length=inside, logprobs=[None, None])
    assert cut.truncated and cut.extra_fields["thyme_response_cut"]
    assert cut.response_ids == full.response_ids[:first_sandbox]
    assert len(cut.response_logprobs) == len(cut.response_ids)
    assert cut.logprobs_unknown == first_sandbox  # counted over what was kept
    assert len(cut.images) == 1 and cut.image_tokens == full.image_tokens[:1]

    text_cut = trajectory_to_agent_output(traj, verl_encoder, response_length=first_sandbox - 2)
    assert text_cut.response_ids == full.response_ids[: first_sandbox - 2]
    assert all(text_cut.response_mask)

    assert trajectory_to_agent_output(traj, verl_encoder, response_length=10_000) == full


def _verl_installed() -> bool:
    # tests/verl itself is importable as a namespace package "verl" here; verl's own package has submodules.
    try:
        return importlib.util.find_spec("verl.experimental") is not None
    except ImportError:
        return False


@pytest.mark.skipif(_verl_installed(), reason="verl is installed in this environment")
def test_thyme_verl_imports_without_verl():
    import thyme.verl

    assert thyme.verl.trajectory_to_agent_output is trajectory_to_agent_output
    with pytest.raises(ImportError, match="needs verl"):
        _ = thyme.verl.ThymeAgentLoop
