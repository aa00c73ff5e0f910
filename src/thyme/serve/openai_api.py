"""The OpenAI chat-completions request format, validated: what the thyme servers accept and answer.

`ChatCompletionRequest` is the body's schema (pydantic; the servers' FastAPI apps validate with it and show
it at /docs), and `parse_chat_request` turns a validated body into a `ChatRequest` (chat-template messages
with image items, decoded images, sampling parameters, stops, vLLM's continuation flags) or refuses it with
an `ApiError` whose body is OpenAI-shaped. `Completion` is what a server produced, before it becomes JSON
or stream chunks. Shared by the generation server (`thyme serve --raw`) and the loop server (`thyme serve`).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from thyme.agent.config import SamplingParams
from thyme.agent.loop import InputError, check_image_shape
from thyme.errors import image_error

DEFAULT_MAX_REQUEST_BYTES = 64 << 20
DEFAULT_MAX_IMAGE_BYTES = 20 << 20
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
MAX_STOPS = 16


class ApiError(Exception):
    """A request the server refuses: HTTP status plus an OpenAI-style error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat completion request, ready for the chat template and the backend.

    messages: chat-template messages, every image part replaced by `{"type": "image"}`.
    images:   the decoded images, in the order their parts appear.
    """

    messages: list[dict[str, Any]]
    images: list[Image.Image]
    params: SamplingParams
    stops: tuple[str, ...]
    stream: bool = False
    include_usage: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    include_stop: bool = False


@dataclass(frozen=True)
class Completion:
    """What one chat completion produced, before it is shaped as JSON or as stream chunks."""

    content: str
    finish_reason: str  # "stop" | "length"
    stop_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    id: str
    created: int
    pieces: tuple[str, ...] = ()  # `content` cut at token boundaries, for streaming

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


# -- the request schema (pydantic: FastAPI validates bodies with it and documents it at /docs) --------------
class _Open(BaseModel):
    """Fields OpenAI clients send that thyme does not use (`user`, `frequency_penalty`...) are accepted."""

    model_config = ConfigDict(extra="allow", strict=True)


Number = Annotated[float, Field(allow_inf_nan=False)]


class ImageURL(_Open):
    url: str
    detail: str | None = None


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL | str = Field(description="a data:image/...;base64, URL (images are never fetched)")


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Open):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(_Open):
    """An OpenAI chat completion request, with vLLM's continuation flags (`add_generation_prompt`,
    `continue_final_message`, `include_stop_str_in_output`) and `top_k` / `repetition_penalty`."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: int | None = None
    repetition_penalty: Number | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = None
    tools: list[Any] | None = None
    logit_bias: dict[str, Number] | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    include_stop_str_in_output: bool | None = None


def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """(one sentence, the top-level field) for pydantic's errors about a request body."""
    first = errors[0]
    loc = [part for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "parse error")
        return f"the request body is not valid JSON ({reason})", None
    if not loc:
        if first.get("type") == "missing":
            return "the request body is empty; send a JSON object", None
        return "the request body must be a JSON object", None
    where = str(loc[0]) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}", str(loc[0])


# -- request parsing ---------------------------------------------------------------------------------------
def parse_chat_request(
    body: ChatCompletionRequest,
    *,
    model_name: str,
    default_max_tokens: int,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ChatRequest:
    """What the schema cannot say about a validated body (the served model, n, the continuation flags,
    the images); `ApiError` (400/404) says what is wrong and how to fix it."""
    model = body.model if body.model is not None else model_name
    if model != model_name:
        raise ApiError(
            404,
            f"The model `{model}` does not exist; this server serves `{model_name}` (see GET /v1/models)",
            code="model_not_found",
            param="model",
        )
    if body.n not in (None, 1):
        raise ApiError(400, "only n=1 is supported; send one request per sample", param="n")
    if body.tools:
        raise ApiError(400, "tool calls are not supported by this server", param="tools")
    continue_final = bool(body.continue_final_message)
    add_prompt = (not continue_final) if body.add_generation_prompt is None else body.add_generation_prompt
    if continue_final and add_prompt:
        raise ApiError(
            400,
            "cannot set both continue_final_message and add_generation_prompt to true; "
            "continuing the last assistant message needs add_generation_prompt=false",
        )
    images: list[Image.Image] = []
    messages = [
        _message(m, i, images, max_image_bytes, max_image_pixels) for i, m in enumerate(body.messages)
    ]
    if continue_final and messages[-1]["role"] != "assistant":
        raise ApiError(
            400, "continue_final_message needs an assistant message last", param="continue_final_message"
        )
    return ChatRequest(
        messages=messages,
        images=images,
        params=_sampling(body, default_max_tokens),
        stops=_stops(body.stop),
        stream=bool(body.stream),
        include_usage=body.stream_options is not None and bool(body.stream_options.include_usage),
        add_generation_prompt=add_prompt,
        continue_final_message=continue_final,
        include_stop=bool(body.include_stop_str_in_output),
    )


def _sampling(body: ChatCompletionRequest, default_max_tokens: int) -> SamplingParams:
    max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
    try:
        return SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=max(body.top_k or 0, 0),  # vLLM spells "off" as -1
            repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
            max_new_tokens=max_tokens,
            seed=body.seed,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if not all(stops):
        raise ApiError(400, "stop must be a non-empty string or a list of them", param="stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"at most {MAX_STOPS} stop strings are supported", param="stop")
    return tuple(stops)


def _message(message: ChatMessage, i: int, images: list[Image.Image], max_bytes: int, max_pixels: int):
    content = message.content
    if content is None or isinstance(content, str):
        parts = [{"type": "text", "text": content or ""}]
    else:
        parts = [_part(part, f"messages[{i}]", images, max_bytes, max_pixels) for part in content]
    return {"role": message.role, "content": parts}


def _part(part: TextPart | ImagePart, where: str, images: list[Image.Image], max_bytes: int, max_pixels: int):
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
    images.append(decode_data_url(url, f"uploaded image {len(images) + 1}", max_bytes, max_pixels))
    return {"type": "image"}


def decode_data_url(url: str, name: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """A `data:image/...;base64,` URL as an RGB image; `ApiError` 400 for anything else."""
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else "a bare string"
        raise ApiError(
            400,
            f"{name}: only data URLs are accepted (data:image/png;base64,...), got {scheme}; "
            "this server does not fetch images, so send the bytes inline",
            param="messages",
        )
    header, _, data = url[5:].partition(",")
    if not header.endswith(";base64"):
        raise ApiError(400, f"{name}: the data URL must be base64-encoded (data:image/png;base64,...)")
    if len(data) * 3 // 4 > max_bytes:
        raise ApiError(400, f"{name} is larger than the server's limit of {max_bytes >> 20} MiB")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{name}: the data URL is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ApiError(400, f"{name} has {width}x{height} pixels, above the limit of {max_pixels}")
            check_image_shape(width, height, name=name)
            return img.convert("RGB")
    except ApiError:
        raise
    except InputError as exc:
        raise ApiError(400, str(exc), param="messages") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ApiError(
            400, f"{name} is not a readable image ({image_error(exc)}); send a PNG or JPEG"
        ) from None
