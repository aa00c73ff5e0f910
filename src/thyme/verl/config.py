"""The options of the verl agent loop `thyme`, as one frozen, validated dataclass.

verl builds an agent loop from an entry of the YAML file named by
`actor_rollout_ref.rollout.agent.agent_loop_config_path`; every key of the entry except `name` and `_target_`
reaches the constructor as a keyword argument, and `ThymeAgentLoop` hands those to `VerlLoopConfig`, so a
misspelt key is an error naming it, not a silently ignored option:

    - name: thyme
      _target_: thyme.verl.agent_loop.ThymeAgentLoop
      sandbox_url: http://sandbox-host:8765      # several hosts: a list, or comma-separated
      sandbox_token_file: /etc/thyme/sandbox-token
      max_steps: 4

Sampling itself (text temperature, top-p, top-k, log-probs) comes from verl's rollout config with every
request; only what verl has no word for lives here: the code temperature of ATS, the Thyme turn limits and
the sandbox service.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thyme.agent.config import AgentConfig, ErrorPolicy, SamplingParams
from thyme.sandbox.hosts import split_urls


@dataclass(frozen=True)
class VerlLoopConfig:
    """How one verl rollout of the Thyme loop runs.

    sandbox_url:        base URL of `thyme sandbox serve` (one session per trajectory); several hosts as a
                        list or one comma-separated string: each trajectory's session goes to a host at
                        random among those that answer (every trajectory has its own client), stays there,
                        and a trajectory whose host dies under it ends with a sandbox error (`SessionLost`).
    sandbox_token_file: a file holding the server's bearer token (read once per trajectory); or give
                        `sandbox_token` itself. Neither: the server must run without a token.
    sandbox_timeout_s:  socket timeout of one sandbox request; keep it above the server's `--timeout`.
    preset:             prompt preset (`thyme.protocol.PRESETS`): "default", or "released" for the released
                        Thyme checkpoints.
    max_steps:          generation rounds per trajectory (REFERENCE.md section 3: up to 4 in RL).
    max_images:         images fed back per trajectory (beyond: a note instead of the image).
    code_temperature:   temperature inside `<code>...</code>`; 0 = greedy code (GRPO-ATS), None = the text
                        temperature throughout (no ATS, one engine request per step).
    max_new_tokens:     tokens one step may generate; None = verl's `rollout.response_length` (the whole
                        response budget, which caps every step anyway).
    repetition_threshold: stop a step when one substring covers more than this share of it (None = off).
    on_error:           "feedback" (RL: the error goes back to the model) or "resample".
    min_pixels, max_pixels: the image resize bounds; None = verl's `data.mm_processor_kwargs` (its
                        `min_pixels` / `max_pixels`), else the processor's own. Every image is encoded, sent
                        to the server and re-processed for training with the same bounds.
    """

    sandbox_url: str | list[str]
    sandbox_token: str | None = None
    sandbox_token_file: str | None = None
    sandbox_timeout_s: float = 600.0
    preset: str = "default"
    max_steps: int = 4
    max_images: int = 10
    code_temperature: float | None = 0.0
    max_new_tokens: int | None = None
    repetition_threshold: float | None = 0.5
    on_error: ErrorPolicy = "feedback"
    min_pixels: int | None = None
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        try:
            split_urls(self.sandbox_url)
        except ValueError as exc:
            raise ValueError(
                f"sandbox_url: {exc} (a `thyme sandbox serve`; several hosts: a list or comma-separated)"
            ) from None
        if self.sandbox_token is not None and self.sandbox_token_file is not None:
            raise ValueError("give sandbox_token or sandbox_token_file, not both")
        if self.sandbox_token_file is not None and not Path(self.sandbox_token_file).is_file():
            raise ValueError(f"sandbox_token_file {self.sandbox_token_file!r} is not a readable file")
        if self.sandbox_timeout_s <= 0:
            raise ValueError(f"sandbox_timeout_s must be > 0, got {self.sandbox_timeout_s}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 or None, got {self.max_new_tokens}")
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        # The loop's own checks (preset names, limits, error policy, code temperature) say what to fix.
        self.agent_config(SamplingParams())

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> VerlLoopConfig:
        """The config from an agent-loop YAML entry's keys; an unknown key is a one-line error naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for the thyme agent loop; known: {sorted(known)}")
        if "sandbox_url" not in options:
            raise ValueError(
                "the thyme agent loop needs sandbox_url: add it to its entry in the YAML file named by "
                "actor_rollout_ref.rollout.agent.agent_loop_config_path"
            )
        return cls(**dict(options))

    def token(self) -> str | None:
        """The sandbox server's bearer token, if one is configured."""
        if self.sandbox_token_file is not None:
            return Path(self.sandbox_token_file).read_text().strip()
        return self.sandbox_token

    def agent_config(self, sampling: SamplingParams) -> AgentConfig:
        """The episode's `AgentConfig` for one rollout sampled with `sampling`.

        No direct-answer fallback: RL trains on the tool turn it scores, so a trajectory without an answer
        ends without one (its reward says so).
        """
        if self.code_temperature is not None:
            sampling = dataclasses.replace(sampling, code_temperature=self.code_temperature)
        return AgentConfig(
            preset=self.preset,
            max_steps=self.max_steps,
            max_images=self.max_images,
            on_error=self.on_error,
            fallback=False,
            kv_reuse=False,
            sampling=sampling,
            repetition_threshold=self.repetition_threshold,
        )


def sampling_from_verl(params: Mapping[str, Any], max_new_tokens: int) -> SamplingParams:
    """verl's per-request sampling dict (`temperature`, `top_p`, `top_k`, `repetition_penalty`, `seed`) as
    our `SamplingParams` for the text; verl's top_k <= 0 means off, as our 0 does."""
    top_k = params.get("top_k")
    return SamplingParams(
        temperature=float(params.get("temperature", 1.0)),
        top_p=float(params.get("top_p", 1.0)),
        top_k=max(0, int(top_k)) if top_k is not None else 0,
        repetition_penalty=float(params.get("repetition_penalty", 1.0)),
        max_new_tokens=max_new_tokens,
        seed=params.get("seed"),
    )
