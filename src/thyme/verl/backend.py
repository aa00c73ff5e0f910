"""verl's server manager as a `thyme.agent` backend: token ids in, token ids and log-probs out.

verl's rollout servers (vLLM, SGLang behind `LLMServerClient`) take a prompt as token ids plus the images
whose vision tokens it holds (every image of the sequence, in order, with their vision tokens expanded in the
ids), and return the generated ids with their log-probs. So this backend never renders a chat template
after the first step: the ids it sends are exactly `Encoder.example(conversation).ids` (the prompt, the
model's own generated ids, each sandbox output tokenised as the loop appends it), which is also what verl
trains on. A trajectory's state keeps those ids, so a step only encodes the pieces added since.

ATS is segment-wise, as for the vLLM and HTTP backends (`thyme.agent.ats.plan_leg`): a text leg at verl's
temperature that also stops at `<code>`, then a greedy leg from the prompt plus the ids so far until
`</code>`. Each leg is one `server_manager.generate` call with the same request id (the server keeps the
trajectory's prefix cache). The log-probs are what the server's `logprobs_mode` gives (verl's default,
`processed_logprobs`, applies each leg's own temperature); with ATS set `rollout.logprobs_mode=raw_logprobs`
so that greedy code tokens carry temperature-1 log-probs like the text (REFERENCE.md section 3).

Limits: every step stops at the trajectory's response budget (verl's `rollout.response_length`), reported as
"context"; a prompt longer than `rollout.prompt_length` is a configuration error, as in verl's own loops
(image tokens cannot be cut).

    backend = ServerManagerBackend(server_manager, encoder, request_id=uuid4().hex, logprobs=True,
                                   prompt_length=2048, response_length=4096)
    generation = await backend.agenerate(episode.request())      # a `ScoredGeneration`
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from thyme.agent.ats import plan_leg
from thyme.agent.backends.base import BackendError, Generation, GenerationRequest
from thyme.agent.backends.vllm import LegOutput, apply_repetition_guard, engine_sampling_kwargs
from thyme.agent.conversation import Conversation, Piece
from thyme.agent.repetition import RepetitionConfig, RepetitionDetector
from thyme.models.encoding import Encoder, EncodingError, load_image, piece_groups
from thyme.protocol import CODE_OPEN, ImagePart, TextPart, cut_at_first_stop, is_code_open

log = logging.getLogger(__name__)


class PromptTooLong(ValueError):
    """The encoded prompt is longer than verl's `rollout.prompt_length` (a configuration error)."""


@dataclass(frozen=True)
class ScoredGeneration(Generation):
    """A `Generation` with the engine's log-prob of each of its `token_ids` (None when not asked for).

    A token the canonical form re-tokenised (a stop string's token that carried text after it) has no
    sampled log-prob; it gets 0.0.
    """

    logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class _Prefix:
    """A trajectory's ids so far and the assistant pieces they cover (the backend's `Generation.state`)."""

    covers: tuple[Piece, ...]
    ids: tuple[int, ...]
    prompt_len: int
    images: tuple[Image.Image, ...]


def read_token_output(
    token_ids: Sequence[int],
    log_probs: Sequence[float] | None,
    *,
    stops: Sequence[str],
    eos_ids: Collection[int],
    tokenizer,
) -> tuple[LegOutput, list[float] | None]:
    """One leg's generated ids in the canonical form of `thyme.agent.backends.base`, with their log-probs.

    The ids end at the first stop string (the token that completed it may carry text after it: then the
    text is cut and re-tokenised) or at an end-of-sequence id (dropped, reason "eos"); otherwise the token
    budget ran out ("length").
    """
    ids = list(token_ids)
    scores = list(log_probs) if log_probs is not None else None
    if scores is not None and len(scores) != len(ids):
        raise BackendError(f"the rollout server returned {len(ids)} ids with {len(scores)} log-probs")
    eos = bool(ids) and ids[-1] in eos_ids
    if eos:
        ids.pop()
        if scores is not None:
            scores.pop()
    raw = tokenizer.decode(ids, skip_special_tokens=False)
    text, stop = cut_at_first_stop(raw, stops)
    if text != raw:
        kept = tokenizer.encode(text, add_special_tokens=False)
        if scores is not None:
            scores = _aligned(ids, scores, kept)
        ids = kept
    reason = "stop" if stop is not None else "eos" if eos else "length"
    return LegOutput(text, tuple(ids), reason, stop, len(ids) + (reason == "eos")), scores


def _aligned(sampled: Sequence[int], scores: Sequence[float], kept: Sequence[int]) -> list[float]:
    """Log-probs for `kept`: the sampled ones over the common prefix, 0.0 for re-tokenised ids."""
    same = 0
    while same < min(len(sampled), len(kept)) and sampled[same] == kept[same]:
        same += 1
    return list(scores[:same]) + [0.0] * (len(kept) - same)


class ServerManagerBackend:
    """Steps of one trajectory through verl's `LLMServerClient` (one instance per trajectory).

    server_manager:  verl's server manager, or anything with its `async generate(request_id, *, prompt_ids,
                     sampling_params, image_data, mm_processor_kwargs) -> TokenOutput`.
    encoder:         the encoder of the policy's processor (its pixel bounds are sent with every request).
    request_id:      the trajectory's id (sticky routing to one server).
    logprobs:        ask the engine for the sampled tokens' log-probs (verl's `calculate_log_probs`).
    prompt_length, response_length: verl's `rollout.prompt_length` / `rollout.response_length`.
    eos_ids:         ids that end a sequence; the tokenizer's EOS and `<|im_end|>` by default.
    """

    name = "verl"
    batched = False

    def __init__(
        self,
        server_manager,
        encoder: Encoder,
        *,
        request_id: str,
        logprobs: bool,
        prompt_length: int,
        response_length: int,
        eos_ids: Collection[int] | None = None,
        model_id: str = "",
        default_preset: str = "default",
    ) -> None:
        self.server_manager = server_manager
        self.encoder = encoder
        self.tokenizer = encoder.tokenizer
        self.request_id = request_id
        self.logprobs = logprobs
        self.prompt_length = prompt_length
        self.response_length = response_length
        self.eos_ids = set(eos_ids or ()) | {self.tokenizer.eos_token_id, encoder.end_of_turn_id}
        self.model_id = model_id
        self.default_preset = default_preset
        self.calls = 0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        raise BackendError("the verl backend is asynchronous: drive it with `await backend.agenerate(...)`")

    def close(self) -> None:
        """Nothing to release: the server manager belongs to verl."""

    async def agenerate(self, request: GenerationRequest) -> ScoredGeneration:
        """One step: legs until a stop the caller asked for, EOS, the step's token budget or the response
        budget."""
        start = time.perf_counter()
        prefix = self._prefix(request.conversation, request.state)
        params = request.params
        detector = None
        if request.repetition_threshold is not None:
            detector = RepetitionDetector(RepetitionConfig(threshold=request.repetition_threshold))
        inside = is_code_open(request.conversation.assistant_text)
        text, ids, scores = "", [], []
        generated, code_greedy = 0, False
        reason, stop = None, None
        while reason is None:
            budget = params.max_new_tokens - generated
            room = self.response_length - (len(prefix.ids) - prefix.prompt_len) - len(ids)
            if room <= 0:
                reason = "context"  # the trajectory's response budget is spent
                break
            if budget <= 0:
                reason = "length"
                break
            leg = plan_leg(params, request.stops, inside)
            max_tokens = min(budget, room)
            out = await self.server_manager.generate(
                self.request_id,
                prompt_ids=[*prefix.ids, *ids],
                sampling_params=self._sampling(leg.params, leg.stops, max_tokens),
                image_data=list(prefix.images) or None,
                mm_processor_kwargs=dict(self.encoder.image_kwargs) or None,
            )
            self.calls += 1
            if getattr(out, "stop_reason", None) == "aborted":
                raise BackendError(
                    "the rollout server aborted the request (it is pausing); retry the rollout"
                )
            leg_out, leg_scores = read_token_output(
                out.token_ids,
                out.log_probs if self.logprobs else None,
                stops=leg.stops,
                eos_ids=self.eos_ids,
                tokenizer=self.tokenizer,
            )
            if detector is not None:
                leg_out = apply_repetition_guard(leg_out, detector, self.tokenizer)
            text += leg_out.text
            ids += leg_out.token_ids
            generated += leg_out.generated
            if leg_scores is not None:
                scores += leg_scores[: len(leg_out.token_ids)]
            code_greedy |= leg.code and leg.params.greedy and bool(leg_out.token_ids)
            if leg_out.reason == "stop" and leg_out.stop not in request.stops:
                inside = leg_out.stop == CODE_OPEN  # an ATS segment ended: the next leg continues the step
            elif leg_out.reason == "length" and max_tokens < budget:
                reason = "context"  # cut by the response budget, not by the step's max_new_tokens
            else:
                reason, stop = leg_out.reason, leg_out.stop
        piece = Piece(TextPart(text), "model", tuple(ids))
        state = _Prefix((*prefix.covers, piece), (*prefix.ids, *ids), prefix.prompt_len, prefix.images)
        return ScoredGeneration(
            text=text,
            finish_reason=reason,  # type: ignore[arg-type]
            stop=stop,
            token_ids=tuple(ids),
            prompt_tokens=len(prefix.ids),
            completion_tokens=generated,
            duration_s=time.perf_counter() - start,
            code_greedy=code_greedy,
            state=state if text else None,
            logprobs=tuple(scores) if self.logprobs else None,
        )

    # -- encoding ---------------------------------------------------------------------------------------
    def _prefix(self, conv: Conversation, state: Any) -> _Prefix:
        """The ids of the conversation so far: `state` extended by the pieces added since, or from scratch."""
        try:
            if isinstance(state, _Prefix):
                n = len(state.covers)
                new = conv.assistant[n:]
                if tuple(conv.assistant[:n]) == state.covers and not (
                    new
                    and new[0].source == "sandbox"
                    and state.covers
                    and state.covers[-1].source == "sandbox"
                ):
                    return self._extend(state, new)
                log.debug("state does not match the conversation (rolled back?): encoding from scratch")
            return self._fresh(conv)
        except EncodingError as exc:
            raise BackendError(str(exc)) from exc

    def _fresh(self, conv: Conversation) -> _Prefix:
        example = self.encoder.example(conv, end_of_turn=False)
        if example.prompt_len > self.prompt_length:
            raise PromptTooLong(
                f"the prompt has {example.prompt_len} tokens, more than rollout.prompt_length="
                f"{self.prompt_length}; image tokens cannot be cut: raise prompt_length or lower max_pixels"
            )
        images = tuple(load_image(p) for p in conv.images)
        return _Prefix(tuple(conv.assistant), tuple(example.ids), example.prompt_len, images)

    def _extend(self, state: _Prefix, pieces: Sequence[Piece]) -> _Prefix:
        ids = list(state.ids)
        for group in piece_groups(pieces):
            ids += self.encoder.pieces(group).ids
        images = [load_image(p.part.path) for p in pieces if isinstance(p.part, ImagePart)]
        return dataclasses.replace(
            state, covers=(*state.covers, *pieces), ids=tuple(ids), images=(*state.images, *images)
        )

    def _sampling(self, params, stops: Sequence[str], max_tokens: int) -> dict[str, Any]:
        """The server's sampling dict: vLLM `SamplingParams` keywords (verl passes them through), plus
        verl's `logprobs` switch. Vision placeholders are banned by verl's server itself."""
        sampling: dict[str, Any] = engine_sampling_kwargs(
            params, stops=stops, max_tokens=max_tokens, bad_words=()
        )
        sampling.pop("bad_words")
        sampling["logprobs"] = self.logprobs
        return sampling
