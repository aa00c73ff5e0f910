"""One trajectory as a state machine: what to generate next, what to run, when it is over.

The Thyme semantics live here and nowhere else. `Agent` drives episodes one at a time (`run`, `stream`),
in lock-step batches (`run_batch`: one `generate()` per round for every open episode) or concurrently
(`arun`); evaluation and RL rollouts drive them the same way. An episode never calls a model or a sandbox
itself; its driver does, and hands the results back:

    ep = Episode(...)
    while (request := ep.request()) is not None:
        events = ep.on_generation(backend.generate([request])[0])
        if ep.pending_code is not None:
            events += ep.on_result(session.run(ep.pending_code))

Semantics (REFERENCE.md section 1): generation stops at `</code>`, `</answer>` or EOS; a dropped stop string
is restored; the code just closed runs in the trajectory's sandbox session and its output is fed back inside
the same assistant turn; steps, images and tokens are capped; an execution error is fed back (RL style) or
the step is rolled back and resampled (the reference evaluation), by config; a trajectory that ends without
an answer gets one direct-answer fallback prompt; the answer comes from `thyme.protocol.extract_answer`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from thyme.agent.backends.base import BackendError, ContextOverflowError, Generation, GenerationRequest
from thyme.agent.config import AgentConfig
from thyme.agent.conversation import Conversation
from thyme.agent.events import CodeCall, Error, Event, Final, FinalReason, ModelText, Observation, Resample
from thyme.protocol import (
    ANSWER_CLOSE,
    IMAGE_PLACEHOLDER,
    STOP_STRINGS,
    ImagePart,
    PromptPreset,
    TextPart,
    extract_answer,
    flatten_parts,
    pending_code,
    render_feedback,
    restore_stop_string,
)


@dataclass(frozen=True)
class Prompt:
    """The inputs of one episode: the question, the image, and how the code will see the image."""

    question: str
    image: Path | None
    image_size: tuple[int, int] | None = None
    sandbox_image_path: str | None = None  # the path stated in prompts that name it (released preset)


def user_parts(preset: PromptPreset, prompt: Prompt) -> tuple[tuple, str]:
    """The user message's parts (image first, then the text) and the text alone."""
    text = preset.user_text(
        prompt.question,
        image_path=(prompt.sandbox_image_path or str(prompt.image)) if preset.needs_image_path else None,
        image_size=prompt.image_size if preset.needs_image_size else None,
    )
    parts: list = [ImagePart(prompt.image)] if prompt.image is not None else []
    parts.append(TextPart(text))
    return tuple(parts), text


class Episode:
    """The loop's state for one trajectory.

    artifacts: a directory this episode owns; fed-back images are copied here the moment they arrive, so
               the trajectory keeps them after the sandbox session is gone.
    """

    def __init__(
        self,
        prompt: Prompt,
        *,
        preset: PromptPreset,
        direct_preset: PromptPreset,
        config: AgentConfig,
        tools: bool,
        artifacts: Path,
    ) -> None:
        self.prompt = prompt
        self.config = config
        self.tools = tools
        self.preset = preset if tools else direct_preset
        self.direct_preset = direct_preset
        self.artifacts = artifacts
        parts, self.user_text = user_parts(self.preset, prompt)
        self.conversation = Conversation(self.preset.system, parts)
        self.events: list[Event] = []
        self.step = 0
        self.tool_calls = 0
        self.images_fed = 0
        self.pending_code: str | None = None
        self.final: Final | None = None
        self.timings = {"generation_s": 0.0, "sandbox_s": 0.0, "overhead_s": 0.0}
        self._state = None  # the backend's memory of this trajectory
        self._before_step = 0  # assistant length before the current step (for resampling)
        self._state_before_step = None
        self._resamples = 0
        self._fallback: Conversation | None = None
        self._fallback_from: FinalReason | None = None
        self._started = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.final is not None

    # -- what the driver asks --------------------------------------------------------------------------
    def request(self) -> GenerationRequest | None:
        """The next generation this episode needs, or None when it is over (or waits for code to run)."""
        if self.done or self.pending_code is not None:
            return None
        started = time.perf_counter()
        if self._fallback is not None:
            request = GenerationRequest(self._fallback, self.config.sampling, stops=(ANSWER_CLOSE,))
        else:
            stops = self._stops()
            request = GenerationRequest(
                self.conversation,
                self.config.sampling,
                stops=stops,
                repetition_threshold=self.config.repetition_threshold,
                state=self._state,
                reuse_cache=self.config.kv_reuse,
            )
            self._before_step = len(self.conversation.assistant)
            self._state_before_step = self._state
        self.timings["overhead_s"] += time.perf_counter() - started
        return request

    def _stops(self) -> tuple[str, ...]:
        return STOP_STRINGS if self.tools else (ANSWER_CLOSE,)

    # -- what the driver hands back --------------------------------------------------------------------
    def on_generation(self, gen: Generation) -> list[Event]:
        """Record one generated step; sets `pending_code` when the step closed a code block."""
        started = time.perf_counter()
        self.timings["generation_s"] += gen.duration_s
        events = self._on_fallback(gen) if self._fallback is not None else self._on_step(gen)
        self.events.extend(events)
        self.timings["overhead_s"] += time.perf_counter() - started
        return events

    def _on_step(self, gen: Generation) -> list[Event]:
        self.step += 1
        text = gen.text
        before = self.conversation.assistant_text
        if gen.finish_reason == "stop" and gen.stop is None:
            # The backend dropped the stop string and does not know which one matched.
            text = restore_stop_string(before + text, "stop")[len(before) :]
        intact = text == gen.text  # a restored stop string is not among the ids the backend holds
        self.conversation.add_model(text, gen.token_ids if intact else None)
        self._state = gen.state if intact else None
        events: list[Event] = [_model_text(self.step, text, gen)]
        turn = self.conversation.assistant_text
        answer = extract_answer(turn) if self.preset.answer_tagged else None
        if answer is not None:
            return events + self._finish(answer, "answer")
        if not self.tools:
            if gen.finish_reason in ("stop", "eos"):
                return events + self._finish(extract_answer(turn, require_tags=False), "answer")
            return events + self._finish(None, _end_reason(gen.finish_reason))
        code = pending_code(turn) if gen.finish_reason == "stop" else None
        budget = self.config.max_context_tokens
        if budget is not None and gen.prompt_tokens + gen.completion_tokens >= budget:
            return events + self._no_answer("context")
        if code is not None and self.step < self.config.max_steps:
            self.pending_code = code.code
            return [*events, CodeCall(step=self.step, code=code.code)]
        if code is not None:
            return events + self._no_answer("max_steps")
        if gen.finish_reason in ("eos", "length", "repetition", "context"):
            return events + self._no_answer(_end_reason(gen.finish_reason))
        if self.step >= self.config.max_steps:
            return events + self._no_answer("max_steps")
        return events  # stopped at a stop string that closed nothing runnable: keep generating

    def on_result(self, result) -> list[Event]:
        """Feed a sandbox `ExecutionResult` back (or roll the step back to resample it)."""
        started = time.perf_counter()
        self.timings["sandbox_s"] += result.duration_s
        self.pending_code = None
        self.tool_calls += 1
        failed = result.error is not None or result.timed_out
        events: list[Event] = []
        if failed and self.config.on_error == "resample" and self._resamples < self.config.max_resamples:
            self._resamples += 1
            events.append(self._observation(result, [], fed_back=False))
            events.append(
                Resample(step=self.step, attempt=self._resamples, reason=_summary_line(result.text))
            )
            self.conversation.truncate(self._before_step)
            self._state = self._state_before_step
            self.step -= 1
        else:
            images, note = self._take_images(result.images)
            text = result.text if not note else (result.text + "\n" + note).strip()
            parts = render_feedback(text, images)
            self.conversation.add_feedback(parts)
            feedback = flatten_parts(parts, IMAGE_PLACEHOLDER)
            events.append(self._observation(result, images, fed_back=True, note=note, feedback=feedback))
        self.events.extend(events)
        self.timings["overhead_s"] += time.perf_counter() - started
        return events

    def on_error(self, exc: BaseException) -> list[Event]:
        """A backend or sandbox failure: record it and end (context overflow still gets the fallback)."""
        self.pending_code = None
        if isinstance(exc, ContextOverflowError):
            events: list[Event] = [Error(step=self.step, message=str(exc), category="context")]
            self.events.extend(events)
            if self._fallback is None:
                more = self._no_answer("context")
                self.events.extend(more)
                return events + more
        category = "backend" if isinstance(exc, BackendError) else "sandbox"
        events = [
            Error(step=self.step, message=_summary_line(str(exc)) or type(exc).__name__, category=category)
        ]
        self.events.extend(events)
        final = self._finish(None, "error")
        self.events.extend(final)
        return events + final

    # -- internals --------------------------------------------------------------------------------------
    def _take_images(self, images: list[Path]) -> tuple[list[Path], str | None]:
        """Copy the images that fit under max_images into the artifacts directory."""
        room = max(self.config.max_images - self.images_fed, 0)
        kept = []
        for src in images[:room]:
            dst = self.artifacts / f"step{self.step}_{self.images_fed:02d}{src.suffix.lower() or '.png'}"
            shutil.copyfile(src, dst)
            kept.append(dst)
            self.images_fed += 1
        note = None
        if len(images) > room:
            limit = self.config.max_images
            note = f"[{len(images) - room} image(s) not shown: the limit of {limit} was reached]"
        return kept, note

    def _observation(
        self, result, images, *, fed_back: bool, note: str | None = None, feedback: str = ""
    ) -> Observation:
        return Observation(
            step=self.step,
            stdout=result.stdout,
            error=result.error if not result.timed_out else (result.error or "timed out"),
            timed_out=result.timed_out,
            images=tuple(images),
            repairs=tuple(result.repairs),
            duration_s=result.duration_s,
            fed_back=fed_back,
            note=note,
            feedback=feedback,
        )

    def _no_answer(self, reason: FinalReason) -> list[Event]:
        """The tool trajectory ended without an answer: ask once more directly, or finish empty-handed."""
        if self.config.fallback and self._fallback is None:
            parts, _ = user_parts(self.direct_preset, self.prompt)
            self._fallback = Conversation(self.direct_preset.system, parts)
            self._fallback_from = reason
            return []
        return self._finish(None, reason)

    def _on_fallback(self, gen: Generation) -> list[Event]:
        text = gen.text
        event = _model_text(self.step + 1, text, gen)
        self._fallback.add_model(text, gen.token_ids)
        tagged = self.direct_preset.answer_tagged
        answer = extract_answer(text, require_tags=tagged)
        if answer is None and tagged and gen.finish_reason in ("stop", "eos"):
            answer = extract_answer(text, require_tags=False)
        extra = {"fallback_from": self._fallback_from, "fallback_text": text}
        return [event, *self._finish(answer, "fallback", extra=extra)]

    def _finish(self, answer: str | None, reason: FinalReason, extra: dict | None = None) -> list[Event]:
        self.pending_code = None
        self.timings["total_s"] = time.perf_counter() - self._started
        self.final = Final(
            answer=answer,
            reason=reason,
            steps=self.step,
            tool_calls=self.tool_calls,
            text=self.conversation.assistant_text,
            extra=extra or {},
        )
        return [self.final]


def _model_text(step: int, text: str, gen: Generation) -> ModelText:
    """The event for one generated step (`text`: the generation's text, its stop string restored)."""
    return ModelText(
        step=step,
        text=text,
        finish_reason=gen.finish_reason,
        stop=gen.stop,
        prompt_tokens=gen.prompt_tokens,
        completion_tokens=gen.completion_tokens,
        duration_s=gen.duration_s,
        code_greedy=gen.code_greedy,
    )


def _end_reason(finish: str) -> FinalReason:
    return {"eos": "eos", "length": "length", "repetition": "repetition", "context": "context"}.get(
        finish, "eos"
    )


def _summary_line(text: str) -> str:
    """The last non-empty line (a traceback's last line names the exception), capped."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
