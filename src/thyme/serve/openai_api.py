"""The OpenAI chat-completions request format, validated: what the thyme servers accept and answer.

`parse_chat_request` turns a request body into a `ChatRequest` (chat-template messages with image items,
decoded images, sampling parameters, stops, vLLM's continuation flags) or refuses it with an `ApiError`
whose body is OpenAI-shaped. `Completion` is what a server produced, before it becomes JSON or stream
chunks. Shared by the generation server (`thyme serve --raw`) and the loop server (`thyme serve`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from thyme.agent.config import SamplingParams
from thyme.agent.loop import InputError, check_image_shape
from thyme.errors import image_error

DEFAULT_MAX_REQUEST_BYTES = 64 << 20
DEFAULT_MAX_IMAGE_BYTES = 20 << 20
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
MAX_STOPS = 16
_ROLES = ("system", "user", "assistant")


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


# -- request parsing ---------------------------------------------------------------------------------------
def parse_chat_request(
    payload: dict[str, Any],
    *,
    model_name: str,
    default_max_tokens: int,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ChatRequest:
    """Validate an OpenAI chat completion body; `ApiError` (400/404) says what is wrong and how to fix it."""
    model = payload.get("model", model_name)
    if model != model_name:
        raise ApiError(
            404,
            f"The model `{model}` does not exist; this server serves `{model_name}` (see GET /v1/models)",
            code="model_not_found",
            param="model",
        )
    if payload.get("n") not in (None, 1):
        raise ApiError(400, "only n=1 is supported; send one request per sample", param="n")
    if payload.get("tools"):
        raise ApiError(400, "tool calls are not supported by this server", param="tools")
    logit_bias = payload.get("logit_bias")
    if logit_bias is not None and not isinstance(logit_bias, dict):
        raise ApiError(400, "logit_bias must be an object mapping token ids to biases", param="logit_bias")
    continue_final = _flag(payload, "continue_final_message", False)
    add_prompt = _flag(payload, "add_generation_prompt", not continue_final)
    if continue_final and add_prompt:
        raise ApiError(
            400,
            "cannot set both continue_final_message and add_generation_prompt to true; "
            "continuing the last assistant message needs add_generation_prompt=false",
        )
    images: list[Image.Image] = []
    messages = _parse_messages(payload.get("messages"), images, max_image_bytes, max_image_pixels)
    if continue_final and messages[-1]["role"] != "assistant":
        raise ApiError(
            400, "continue_final_message needs an assistant message last", param="continue_final_message"
        )
    stream_options = payload.get("stream_options") or {}
    return ChatRequest(
        messages=messages,
        images=images,
        params=_sampling(payload, default_max_tokens),
        stops=_stops(payload.get("stop")),
        stream=_flag(payload, "stream", False),
        include_usage=isinstance(stream_options, dict) and bool(stream_options.get("include_usage")),
        add_generation_prompt=add_prompt,
        continue_final_message=continue_final,
        include_stop=_flag(payload, "include_stop_str_in_output", False),
    )


def _flag(payload: dict[str, Any], name: str, default: bool) -> bool:
    value = payload.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, got {value!r}", param=name)
    return value


def _number(payload: dict[str, Any], name: str, default: float | None, kind: type = float) -> Any:
    value = payload.get(name)
    if value is None:
        return default
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (kind is int and value != int(value)):
        raise ApiError(400, f"{name} must be {'an integer' if kind is int else 'a number'}", param=name)
    return kind(value)


def _sampling(payload: dict[str, Any], default_max_tokens: int) -> SamplingParams:
    max_tokens = _number(payload, "max_completion_tokens", None, int)
    if max_tokens is None:
        max_tokens = _number(payload, "max_tokens", default_max_tokens, int)
    top_k = _number(payload, "top_k", 0, int)
    try:
        return SamplingParams(
            temperature=_number(payload, "temperature", 1.0),
            top_p=_number(payload, "top_p", 1.0),
            top_k=max(top_k, 0),  # vLLM spells "off" as -1
            repetition_penalty=_number(payload, "repetition_penalty", 1.0),
            max_new_tokens=max_tokens,
            seed=_number(payload, "seed", None, int),
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def _stops(stop: Any) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "stop must be a non-empty string or a list of them", param="stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"at most {MAX_STOPS} stop strings are supported", param="stop")
    return tuple(stops)


def _parse_messages(raw: Any, images: list[Image.Image], max_bytes: int, max_pixels: int) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise ApiError(
                400, f"messages[{i}] must be an object with role one of {_ROLES}", param="messages"
            )
        content = message.get("content")
        if content is None or isinstance(content, str):
            parts = [{"type": "text", "text": content or ""}]
        elif isinstance(content, list):
            parts = [_parse_part(part, f"messages[{i}]", images, max_bytes, max_pixels) for part in content]
        else:
            raise ApiError(
                400, f"messages[{i}].content must be a string or a list of parts", param="messages"
            )
        messages.append({"role": message["role"], "content": parts})
    return messages


def _parse_part(part: Any, where: str, images: list[Image.Image], max_bytes: int, max_pixels: int) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise ApiError(400, f"{where}: image_url needs a url", param="messages")
        images.append(decode_data_url(url, f"uploaded image {len(images) + 1}", max_bytes, max_pixels))
        return {"type": "image"}
    raise ApiError(
        400, f"{where}: unsupported content part {kind!r}; use 'text' or 'image_url'", param="messages"
    )


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


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return payload
