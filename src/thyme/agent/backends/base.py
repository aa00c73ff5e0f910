"""The one interface every model backend implements, and the errors they raise.

The loop asks a backend for one generation step per trajectory: "continue this conversation's assistant turn
until a stop string, end-of-sequence or the token budget". Backends differ in how (local batched
`generate()`, vLLM's engine, an HTTP endpoint), never in what comes back:

- `Generation.text` is canonical: it ends with the stop string that ended it, and nothing after it
  (`thyme.protocol.stops`), whatever the engine did with the stop string.
- `Generation.state` is the backend's memory of this trajectory (token ids, a KV cache...). The loop passes it
  back with the next request of the same trajectory; a backend must check it still matches the conversation
  (pieces are append-only, but a resample rolls back) and fall back to encoding from scratch when not.

Backends are registered by name (`BACKENDS`) and imported lazily, so `thyme.agent` imports without torch,
vLLM or an HTTP client installed.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from thyme.agent.config import SamplingParams
from thyme.agent.conversation import Conversation
from thyme.agent.events import FinishReason
from thyme.protocol import STOP_STRINGS


class BackendError(RuntimeError):
    """A backend could not produce a generation; the message says what to do."""


class ContextOverflowError(BackendError):
    """The prompt (plus the images) does not fit in the model's context."""


class EndpointError(BackendError):
    """An HTTP endpoint is unreachable, timed out, or answered with a server error after retries."""


class AuthenticationError(BackendError):
    """The endpoint refused the credentials (HTTP 401/403)."""


class ModelNotFoundError(BackendError):
    """The model name or path does not resolve to a model this backend can load or the endpoint serves."""


@dataclass(frozen=True)
class GenerationRequest:
    """Continue `conversation`'s assistant turn (or start it) with `params` until one of `stops`.

    repetition_threshold: stop when one substring covers more than this share of the step (None = off).
    state: what the backend returned with this trajectory's previous `Generation`, or None.
    reuse_cache: keep this trajectory's KV cache in the returned state for its next step (local backends;
                 honoured when the request is generated alone, since batch padding would misalign it).
    """

    conversation: Conversation
    params: SamplingParams
    stops: tuple[str, ...] = STOP_STRINGS
    repetition_threshold: float | None = None
    state: Any = None
    reuse_cache: bool = False


@dataclass(frozen=True)
class Generation:
    """One step's output.

    finish_reason: "stop" (a stop string; `stop` says which), "eos", "length" (max_new_tokens),
                   "repetition" (the guard fired), "context" (the context window is full).
    token_ids:     ids of the generated tokens when the backend has them (local backends), else None.
    code_greedy:   the code span was decoded greedily (ATS) while text was sampled.
    """

    text: str
    finish_reason: FinishReason
    stop: str | None = None
    token_ids: tuple[int, ...] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_s: float = 0.0
    code_greedy: bool = False
    state: Any = None


@runtime_checkable
class Backend(Protocol):
    """What the agent loop needs from a model backend.

    name:           registry name ("transformers", "vllm", "openai").
    model_id:       the model as the user named it (path, hub id, or served name).
    default_preset: the prompt preset this model expects when the user names none.
    batched:        `generate` runs several requests in one batch (local engines); HTTP backends run many
                    trajectories concurrently through `agenerate` instead.
    """

    name: str
    model_id: str
    default_preset: str
    batched: bool

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]: ...

    async def agenerate(self, request: GenerationRequest) -> Generation: ...

    def close(self) -> None: ...


TokenCallback = Callable[[list[int]], bool]


@runtime_checkable
class TokenStreaming(Protocol):
    """A backend that streams one request's tokens as they are generated (a server's live text).

    `generate([request], on_tokens=f)` calls `f` after every token with the ids generated so far in this
    step; returning False ends the step there. `tokenizer` decodes the ids; `eos_ids` are the ids that end
    a sequence (not text).
    """

    tokenizer: Any
    eos_ids: set[int]

    def generate(
        self, requests: Sequence[GenerationRequest], on_tokens: TokenCallback | None = None
    ) -> list[Generation]: ...


# name -> "module:Class"; each class has `from_pretrained(model, **options)`.
BACKENDS: dict[str, str] = {
    "transformers": "thyme.agent.backends.transformers:TransformersBackend",
    "vllm": "thyme.agent.backends.vllm:VLLMBackend",
    "openai": "thyme.agent.backends.openai:OpenAIBackend",
}


def load_backend(name: str, model: str, **options: Any) -> Backend:
    """Create the backend registered as `name` for `model` (options go to its `from_pretrained`)."""
    target = BACKENDS.get(name)
    if target is None:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if (exc.name or "").startswith("thyme"):
            raise
        extra = {"transformers": "models", "vllm": "vllm"}.get(name, "models")
        raise BackendError(
            f"the {name} backend needs packages that are not installed ({exc.name}); "
            f"install them with: pip install 'thyme-vl[{extra}]'"
        ) from exc
    return getattr(module, class_name).from_pretrained(model, **options)


_RELEASED_RE = re.compile(r"thyme-(sft|rl)(\b|[-_.])", re.IGNORECASE)


def backend_options(
    backend: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    device: str = "auto",
    max_pixels: int | None = None,
) -> dict[str, Any]:
    """The `from_pretrained` options a command line's flags mean for `backend` (ValueError when one the
    backend needs is missing)."""
    if backend == "openai":
        if not base_url:
            raise ValueError("the openai backend needs --base-url (e.g. http://localhost:8000/v1)")
        return {"base_url": base_url, "api_key": api_key}
    if backend == "transformers":
        check_device(device, "--device")
        return {"device": device, "max_pixels": max_pixels}
    if backend == "vllm":
        return {"max_pixels": max_pixels}
    return {}


def check_device(device: str, name: str = "device") -> None:
    """A one-line ValueError, before any model loads, unless `device` is auto, cpu, cuda or cuda:N and torch
    can use it (a CPU-only torch build has no cuda; cuda:N must be a GPU torch sees). `name` is how the
    caller calls the setting in the message ("--device" on the command line)."""
    kind, colon, index = device.partition(":")
    if device in ("auto", "cpu"):
        return
    if kind != "cuda" or (colon and not index.isdigit()):
        raise ValueError(f"{name} {device!r} is not a device; use auto, cpu, cuda or cuda:N")
    try:
        import torch
    except ImportError:
        return  # loading the backend says that torch is missing
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "it finds no GPU"
        raise ValueError(f"{name} {device!r}: torch cannot use CUDA ({why}); use auto or cpu")
    if colon and int(index) >= count:
        raise ValueError(
            f"{name} {device!r}: torch sees {count} GPU(s); use auto, cpu or cuda:0..{count - 1}"
        )


def released_checkpoint(model_id: str) -> bool:
    """The name is a released Thyme checkpoint: `Kwai-Keye/Thyme-SFT`, `Thyme-RL`, or local copies named so
    (`/models/Thyme-RL`, `thyme-rl-7b`). Anything else gets our default preset unless the user names one."""
    tail = model_id.rstrip("/").rsplit("/", 1)[-1]
    return _RELEASED_RE.match(tail) is not None


# A checkpoint directory may name the prompt preset it was trained with: {"preset": "compact"}. Training
# writes it (`thyme train sft|grpo`), so a model trained on a short prompt is asked with that prompt.
MODEL_CARD = "thyme.json"


def model_preset(model_id: str) -> str:
    """The preset a model expects when the user names none: `released` for released Thyme checkpoints, the
    one its directory's `thyme.json` names, `default` otherwise."""
    if released_checkpoint(model_id):
        return "released"
    card = Path(model_id) / MODEL_CARD
    if card.is_file():
        try:
            preset = json.loads(card.read_text(encoding="utf-8")).get("preset")
        except (OSError, ValueError, AttributeError) as exc:
            raise ValueError(f"{card}: not a JSON object ({exc}); fix or delete it") from None
        if preset:
            return str(preset)
    return "default"
