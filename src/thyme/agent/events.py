"""Typed events of the agent loop: what the CLI, the server, the web demo, evaluation and RL consume.

One trajectory yields, in order: `ModelText` for each generation step, `CodeCall` when a step ended at
`</code>`, `Observation` with the sandbox's result, possibly `Resample` (a step rolled back) and `Error`
(a loop-level failure: backend error, limit hit), and always exactly one `Final` last.

Every event is a frozen dataclass with `kind` and `to_dict()`, so trajectories serialise without guessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

FinishReason = Literal["stop", "eos", "length", "repetition", "context"]
FinalReason = Literal["answer", "eos", "max_steps", "length", "repetition", "context", "error", "fallback"]


@dataclass(frozen=True)
class ModelText:
    """What the model generated in one step (stop string included, as the canonical form keeps it)."""

    kind: ClassVar[str] = "model_text"
    step: int
    text: str
    finish_reason: FinishReason
    stop: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_s: float = 0.0
    code_greedy: bool = False  # ATS: the code span of this step was decoded greedily

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class CodeCall:
    """A complete code block the loop is about to run."""

    kind: ClassVar[str] = "code_call"
    step: int
    code: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Observation:
    """The sandbox's result of a `CodeCall`, as fed back (or not, when resampled)."""

    kind: ClassVar[str] = "observation"
    step: int
    stdout: str
    error: str | None
    timed_out: bool
    images: tuple[Path, ...]
    repairs: tuple[str, ...]
    duration_s: float
    fed_back: bool = True
    note: str | None = None  # e.g. the image limit was reached
    feedback: str = ""  # what it added to the turn (`<sandbox_output>...`, `<image>` per image), or ""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["images"] = [str(p) for p in self.images]
        d["repairs"] = list(self.repairs)
        return {"kind": self.kind, **d}


@dataclass(frozen=True)
class Resample:
    """A step was rolled back after an execution error (on_error="resample") and is generated again."""

    kind: ClassVar[str] = "resample"
    step: int
    attempt: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Error:
    """A loop-level failure: the backend failed, a limit was hit. The trajectory still ends with `Final`."""

    kind: ClassVar[str] = "error"
    step: int
    message: str
    category: Literal["backend", "context", "limit", "sandbox"] = "backend"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Final:
    """The end of a trajectory: the extracted answer (None when there is none) and why it ended."""

    kind: ClassVar[str] = "final"
    answer: str | None
    reason: FinalReason
    steps: int
    tool_calls: int
    text: str = ""  # the whole assistant turn, `<image>` per fed-back image
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


Event = ModelText | CodeCall | Observation | Resample | Error | Final
EVENT_TYPES: dict[str, type] = {
    cls.kind: cls for cls in (ModelText, CodeCall, Observation, Resample, Error, Final)
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Inverse of `to_dict` (trajectory JSON files)."""
    data = dict(data)
    cls = EVENT_TYPES.get(data.pop("kind", None))
    if cls is None:
        raise ValueError(f"unknown event kind in {data!r}; expected one of {sorted(EVENT_TYPES)}")
    if cls is Observation:
        data["images"] = tuple(Path(p) for p in data["images"])
        data["repairs"] = tuple(data["repairs"])
    return cls(**data)
