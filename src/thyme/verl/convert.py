"""A Thyme trajectory as the fields of verl's `AgentLoopOutput`: one pure function, no verl needed.

verl trains on what an agent loop returns: `prompt_ids`, `response_ids`, `response_mask` (1 = the policy
wrote it, 0 = the environment did), optional `response_logprobs`, and `multi_modal_data={"images": [...]}`
from which it re-computes `pixel_values` / `image_grid_thw` for the forward pass. Thyme's assistant turn
holds the sandbox's output, images included, inside the same turn; all of it becomes the response:

    prompt_ids    the system and user turns, the assistant turn opened (the user image's vision tokens in it)
    response_ids  model pieces and sandbox pieces exactly as `Encoder.example` lays them out (the generated
                  ids of model pieces; `<sandbox_output>`, the fed-back images' vision tokens or the printed
                  text, `</sandbox_output>` tokenised as the loop appended them)
    response_mask 1 on model tokens, 0 on every sandbox token (tags, text, vision tokens): the loss of
                  REFERENCE.md section 3
    logprobs      the engine's log-probs of the sampled tokens; 0.0 on sandbox tokens, as verl's own loops
                  write for tool tokens (they are masked, and verl pads with 0.0). A model token whose
                  sampling log-prob is unknown also gets 0.0 and is counted in `logprobs_unknown`.
    images        the user's image, then every fed-back image, in sequence order, as RGB PIL images;
                  `mm_processor_kwargs` carries the encoder's pixel bounds so verl's re-processing gives the
                  same grids as the vision tokens in the ids.

There is no end-of-turn token: a Thyme turn ends at `</answer>` (a stop string), and the TRL trainer encodes
rollouts the same way (`end_of_turn=False`). Only one encoder exists (`thyme.models.encoding.Encoder`); this
module calls it and never tokenises on its own.

    fields = trajectory_to_agent_output(traj, encoder, logprobs=per_model_piece, response_length=4096)
    AgentLoopOutput(**fields.as_kwargs())          # inside verl (thyme.verl.agent_loop does this)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from thyme.agent.conversation import Conversation
from thyme.models.encoding import Encoder, load_image
from thyme.train.masks import MODEL, SANDBOX
from thyme.train.rollout import RolloutFacts

if TYPE_CHECKING:
    from thyme.agent.trajectory import Trajectory
    from thyme.data.sample import Sample


@dataclass(frozen=True)
class VerlRollout:
    """The fields of verl's `AgentLoopOutput` for one trajectory, plus what the conversion decided.

    images:           user image then fed-back images (only those whose tokens are in the ids), RGB.
    image_tokens:     vision pad tokens per image, in the same order (== grid product / merge_size**2).
    truncated:        the response was cut to `response_length` (a whole sandbox output is dropped rather
                      than cut inside it, so no image loses part of its tokens).
    logprobs_unknown: model tokens whose sampling log-prob was not given (written as 0.0).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float] | None
    images: list[Image.Image]
    image_tokens: list[int]
    mm_processor_kwargs: dict[str, Any]
    num_turns: int
    metrics: dict[str, float]
    extra_fields: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False
    logprobs_unknown: int = 0

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `verl.experimental.agent_loop.AgentLoopOutput` (verl 0.9.1)."""
        return {
            "prompt_ids": self.prompt_ids,
            "response_ids": self.response_ids,
            "response_mask": self.response_mask,
            "response_logprobs": self.response_logprobs,
            "multi_modal_data": {"images": self.images} if self.images else {},
            "mm_processor_kwargs": self.mm_processor_kwargs,
            "num_turns": self.num_turns,
            "metrics": self.metrics,
            "extra_fields": self.extra_fields,
        }


def trajectory_to_agent_output(
    source: Trajectory | Sample,
    encoder: Encoder,
    *,
    logprobs: Sequence[Sequence[float] | None] | None = None,
    response_length: int | None = None,
    timings: dict[str, float] | None = None,
) -> VerlRollout:
    """Encode a trajectory (or the `Sample` made from it) as verl's agent-loop output fields.

    source:          a `thyme.agent.Trajectory` or a `thyme.data.sample.Sample`.
    logprobs:        None (verl did not ask for log-probs), or one entry per model piece of the assistant
                     turn, in order: that piece's sampling log-probs (one per generated id) or None when
                     unknown.
    response_length: verl's `rollout.response_length`; a longer response is cut (see `VerlRollout.truncated`).
    timings:         seconds for verl's metrics (`generation_s`, `sandbox_s`); a trajectory's own by default.
    """
    conv: Conversation = source.conversation() if callable(source.conversation) else source.conversation
    example = encoder.example(conv, end_of_turn=False)
    start = example.prompt_len
    ids, roles = example.ids[start:], example.roles[start:]
    scores = _response_logprobs(conv, encoder, logprobs, roles) if logprobs is not None else None
    cut = _cut(roles, response_length)
    truncated = cut < len(ids)
    ids, roles = ids[:cut], roles[:cut]
    scores = scores[:cut] if scores is not None else None
    unknown = sum(1 for s in scores if s is None) if scores is not None else 0
    image_tokens = [_image_tokens(encoder, grid) for grid in example.grids]
    kept = _images_in(example.ids[:start] + ids, encoder, image_tokens)
    images = [load_image(p) for p in conv.images[:kept]]

    facts = _facts(source, conv)
    spent = timings if timings is not None else getattr(source, "timings", None) or {}
    return VerlRollout(
        prompt_ids=example.ids[:start],
        response_ids=ids,
        response_mask=[1 if r == MODEL else 0 for r in roles],
        response_logprobs=[s if s is not None else 0.0 for s in scores] if scores is not None else None,
        images=images,
        image_tokens=image_tokens[:kept],
        mm_processor_kwargs=dict(encoder.image_kwargs),
        # verl counts the user turn, every assistant generation and every tool response.
        num_turns=1 + facts["steps"] + facts["code_calls"],
        metrics={
            "generate_sequences": float(spent.get("generation_s", 0.0)),
            "tool_calls": float(spent.get("sandbox_s", 0.0)),
        },
        extra_fields={
            # verl's own loops always set these two; a stable schema lets batches of mixed loops concatenate.
            "turn_scores": [],
            "tool_rewards": [],
            **{f"thyme_{k}": v for k, v in facts.items()},
            "thyme_response_cut": truncated,
        },
        truncated=truncated,
        logprobs_unknown=unknown,
    )


def _response_logprobs(
    conv: Conversation, encoder: Encoder, logprobs: Sequence[Sequence[float] | None], roles: Sequence[int]
) -> list[float | None]:
    """Per response token: its sampling log-prob, 0.0 on sandbox tokens, None on model tokens not given.

    `Encoder.example` encodes every model piece alone, so the response's model tokens are the model pieces'
    ids one after the other."""
    model_pieces = [p for p in conv.assistant if p.source == "model"]
    if len(logprobs) != len(model_pieces):
        raise ValueError(
            f"{len(logprobs)} log-prob entries for {len(model_pieces)} model pieces; give one per model piece"
        )
    model_scores: list[float | None] = []
    for piece, scores in zip(model_pieces, logprobs, strict=True):
        n = len(encoder.pieces([piece]).ids)
        if scores is not None and len(scores) != n:
            raise ValueError(f"a model piece of {n} tokens came with {len(scores)} log-probs")
        model_scores += [float(s) for s in scores] if scores is not None else [None] * n
    if len(model_scores) != sum(1 for r in roles if r == MODEL):  # the encoder's own layout: an invariant
        raise AssertionError("model pieces and model tokens of the response disagree")
    given = iter(model_scores)
    return [next(given) if r == MODEL else 0.0 for r in roles]


def _cut(roles: Sequence[int], response_length: int | None) -> int:
    """How many response tokens fit in `response_length`: model text may be cut anywhere, a sandbox output
    only before it starts (cutting inside one could split an image's vision tokens)."""
    if response_length is None or response_length >= len(roles):
        return len(roles)
    cut = max(response_length, 0)
    while 0 < cut < len(roles) and roles[cut] == SANDBOX and roles[cut - 1] == SANDBOX:
        cut -= 1
    return cut


def _image_tokens(encoder: Encoder, grid) -> int:
    """Vision pad tokens of one image: its (t, h, w) patch grid merged merge_size x merge_size."""
    merge = encoder.processor.image_processor.merge_size
    return int(grid.prod()) // merge**2


def _images_in(ids: Sequence[int], encoder: Encoder, image_tokens: Sequence[int]) -> int:
    """How many images (in order) have all their vision pad tokens inside `ids`."""
    pad = encoder.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    present = sum(1 for t in ids if t == pad)
    kept, total = 0, 0
    for n in image_tokens:
        if total + n > present:
            break
        total += n
        kept += 1
    return kept


def _facts(source, conv: Conversation) -> dict[str, Any]:
    """What happened, for verl's logs: a trajectory's `RolloutFacts` (the TRL trainer's too); a `Sample` has
    no events, so only what its pieces show (steps = model pieces, code calls = sandbox outputs)."""
    if getattr(source, "events", None):
        facts = RolloutFacts.of(source)
        return {**facts.as_dict(), "answer": facts.answer}
    return {
        "steps": sum(1 for p in conv.assistant if p.source == "model"),
        "code_calls": getattr(source, "code_rounds", 0),
        "answer": getattr(source, "answer", None),
    }
