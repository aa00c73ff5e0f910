"""Frozen, validated configuration of the agent loop and of sampling.

`SamplingParams` is what one generation step asks of a backend; `AgentConfig` is how the loop behaves around
it (steps, limits, error policy, fallback). Defaults follow the released evaluation protocol (REFERENCE.md
section 1): stops at `</code>` / `</answer>`, 2048 new tokens per step, at most 5 steps, greedy decoding.

    sampling = SamplingParams(temperature=1.0, top_p=0.9, code_temperature=0.0)
    config = AgentConfig(max_steps=4, sampling=sampling)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from thyme.errors import FieldError

ErrorPolicy = Literal["feedback", "resample"]


@dataclass(frozen=True)
class SamplingParams:
    """How one step samples.

    temperature:        text temperature; 0 means greedy.
    code_temperature:   temperature inside `<code>...</code>`; None = same as `temperature`. GRPO-ATS sets 0:
                        text is sampled, code is decoded greedily (`thyme.agent.ats`).
    top_p, top_k:       nucleus and top-k filters (top_k 0 = off); only used when sampling.
    repetition_penalty: the usual multiplicative penalty (1.0 = off).
    max_new_tokens:     tokens one step may generate.
    seed:               seed for sampling backends that take one (transformers: torch's generator).
    """

    temperature: float = 0.0
    code_temperature: float | None = None
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 2048
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise FieldError(
                "temperature", "temperature", f"must be >= 0 (0 = greedy), got {self.temperature}"
            )
        if self.code_temperature is not None and self.code_temperature < 0:
            raise FieldError(
                "code_temperature", "code_temperature", f"must be >= 0 or None, got {self.code_temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise FieldError("max_new_tokens", "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        """Text is decoded greedily."""
        return self.temperature == 0

    @property
    def ats(self) -> bool:
        """Code is decoded at another temperature than text (segment-wise sampling is needed)."""
        return self.code_temperature is not None and self.code_temperature != self.temperature

    def for_code(self) -> SamplingParams:
        """These parameters as used inside a code span (ATS: greedy code)."""
        if self.code_temperature is None:
            return self
        return replace(self, temperature=self.code_temperature, code_temperature=None)


@dataclass(frozen=True)
class AgentConfig:
    """How the loop runs one trajectory.

    preset:            prompt preset name (`thyme.protocol.PRESETS`); None = the model's default (the released
                       prompt for released Thyme checkpoints, the preset a checkpoint's `thyme.json` names,
                       `default` otherwise).
    direct_preset:     preset for `tools=False` runs and for the fallback; None = the preset's own direct
                       counterpart (`released_direct` for `released`, `direct` for `default`).
    max_steps:         generation rounds per trajectory (each ends at `</code>`, `</answer>` or EOS).
    max_images:        images fed back per trajectory; beyond it the code's images are not shown (a note is).
    max_context_tokens: prompt + generation budget of a trajectory; once a step reaches it, the trajectory
                       ends (reason "context"). None = only the model's own context limit applies.
    on_error:          "feedback": an execution error goes back inside `<sandbox_output>` (RL style);
                       "resample": the step is rolled back and generated again, up to `max_resamples` times,
                       then fed back (the reference evaluation retries instead of showing errors).
    max_resamples:     see on_error.
    fallback:          when a tool trajectory ends without an answer, ask once more with the direct preset.
    kv_reuse:          local backends keep the KV cache between the steps of a trajectory (single trajectory
                       runs; batched runs re-encode the prompt each round).
    sampling:          `SamplingParams` of every step.
    repetition_threshold: stop a step when one substring covers more than this share of it (None = off).
    """

    preset: str | None = None
    direct_preset: str | None = None
    max_steps: int = 5
    max_images: int = 10
    max_context_tokens: int | None = None
    on_error: ErrorPolicy = "feedback"
    max_resamples: int = 2
    fallback: bool = True
    kv_reuse: bool = True
    sampling: SamplingParams = field(default_factory=SamplingParams)
    repetition_threshold: float | None = 0.5

    def __post_init__(self) -> None:
        from thyme.protocol import PRESETS

        for name in ("preset", "direct_preset"):
            value = getattr(self, name)
            if value is not None and value not in PRESETS:
                problem = f"{value!r} is not a prompt preset; choose one of {', '.join(sorted(PRESETS))}"
                raise FieldError(name, name, problem)
        if self.max_steps < 1:
            raise FieldError("max_steps", "max_steps", f"must be >= 1, got {self.max_steps}")
        if self.max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {self.max_images}")
        if self.max_context_tokens is not None and self.max_context_tokens < 16:
            raise ValueError(f"max_context_tokens must be >= 16 or None, got {self.max_context_tokens}")
        if self.on_error not in ("feedback", "resample"):
            raise FieldError(
                "on_error", "on_error", f"must be 'feedback' or 'resample', got {self.on_error!r}"
            )
        if self.max_resamples < 0:
            raise ValueError(f"max_resamples must be >= 0, got {self.max_resamples}")
        if not isinstance(self.sampling, SamplingParams):
            raise TypeError("sampling must be a thyme.agent.SamplingParams")
        if self.repetition_threshold is not None and not 0 < self.repetition_threshold <= 1:
            raise ValueError(
                f"repetition_threshold must be in (0, 1] or None, got {self.repetition_threshold}"
            )
