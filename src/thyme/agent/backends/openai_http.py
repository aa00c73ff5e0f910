"""The OpenAI wire format for `OpenAIBackend`: chat messages from a `Conversation`, and a keep-alive
HTTP transport (httpx) whose errors keep the status, the message and the server's code.

Split from `openai.py` so that the backend module reads as the step logic (legs, retries, streaming guard).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import itertools
import json
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from thyme.agent.backends.base import BackendError
from thyme.agent.conversation import Conversation
from thyme.protocol import ImagePart


# -- messages ----------------------------------------------------------------------------------------------
def chat_messages(conv: Conversation, *, continuation: bool) -> list[dict[str, Any]]:
    """The conversation as OpenAI chat messages, images as data URLs.

    continuation: the assistant turn is one final assistant message (send it with `continue_final_message`);
                  otherwise model text becomes assistant messages and sandbox feedback user messages.
    """
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": conv.system},
        {"role": "user", "content": _content(conv.user)},
    ]
    if not conv.assistant:
        return messages
    if continuation:
        messages.append({"role": "assistant", "content": _content([p.part for p in conv.assistant])})
        return messages
    for source, pieces in itertools.groupby(conv.assistant, key=lambda piece: piece.source):
        role = "assistant" if source == "model" else "user"
        messages.append({"role": role, "content": _content([p.part for p in pieces])})
    return messages


def _content(parts: Sequence) -> str | list[dict[str, Any]]:
    """Content parts with neighbouring text joined; a single text part as a plain string."""
    items: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, ImagePart):
            items.append({"type": "image_url", "image_url": {"url": image_data_url(part.path)}})
        elif items and items[-1]["type"] == "text":
            items[-1] = {"type": "text", "text": items[-1]["text"] + part.text}
        else:
            items.append({"type": "text", "text": part.text})
    if len(items) == 1 and items[0]["type"] == "text":
        return items[0]["text"]
    return items


def image_data_url(path: str | os.PathLike[str]) -> str:
    """`data:<mime>;base64,...` for an image file (the mime type from the format PIL detects)."""
    try:
        st = os.stat(path)
        return _data_url(str(path), st.st_mtime_ns, st.st_size)
    except (OSError, ValueError) as exc:
        raise BackendError(f"cannot read image {path}: {exc}") from exc


@functools.lru_cache(maxsize=16)
def _data_url(path: str, mtime_ns: int, size: int) -> str:
    """Cached per file version: every step of a trajectory resends the same images."""
    with Image.open(path) as img:
        mime = Image.MIME.get(img.format or "", "")
    if not mime.startswith("image/"):
        raise ValueError("unsupported image format; save it as PNG or JPEG")
    data = Path(path).read_bytes()
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# -- HTTP --------------------------------------------------------------------------------------------------
class HTTPError(Exception):
    """A non-2xx reply: status, the server's message and error code, its Retry-After header."""

    def __init__(self, status: int, message: str, code: Any, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.code, self.retry_after = status, message, code, retry_after

    @property
    def context_overflow(self) -> bool:
        # OpenAI sends a code; vLLM and SGLang only a 400 whose message names the limit, so the message is
        # the one signal there is.
        text = self.message.lower()
        return self.code == "context_length_exceeded" or "maximum context length" in text

    @property
    def retriable(self) -> bool:
        return self.status == 429 or self.status >= 500


def error_details(body: bytes) -> tuple[str, Any]:
    """(message, code) from an error body: OpenAI's `{"error": {...}}`, vLLM's flat form, or plain text."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return body.decode("utf-8", "replace").strip()[:300] or "(empty body)", None
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error)[:500], error.get("code")
    return str(error)[:500], None


class Transport:
    """JSON requests to one base URL through one `httpx.Client`: a keep-alive connection pool that the
    threads of a batch share (a connection per request in flight, reused afterwards)."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url {base_url!r} is not an http(s) URL; e.g. http://localhost:8000/v1")
        self.base_url = base_url.rstrip("/")
        headers = {"User-Agent": "thyme-vl"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s = timeout_s
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            trust_env=False,  # a proxy from the environment must not see the API key or the images
        )

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, payload: Any = None) -> httpx.Response:
        """The response of a 2xx reply, its body not read yet (read it or iterate it, then `close()` it;
        closing a response that was not read to the end drops its connection, which a streaming server
        sees as the client leaving). `HTTPError` for other statuses; `httpx.TransportError` when the
        transport fails."""
        request = self._client.build_request(method, self.base_url + path, json=payload)
        response = self._client.send(request, stream=True)
        if response.status_code >= 300:
            try:
                data = response.read()
            finally:
                response.close()
            message, code = error_details(data)
            raise HTTPError(response.status_code, message, code, response.headers.get("Retry-After"))
        return response


@dataclasses.dataclass
class Reply:
    """One completion as the server sent it."""

    content: str
    finish: str | None
    matched: Any = None  # the stop the server reports (str, token id, None = end-of-sequence)
    says_stop: bool = False  # the server reports which stop matched (vLLM, SGLang); OpenAI does not
    prompt_tokens: int = 0
    completion_tokens: int = 0
    repeated: bool = False  # the repetition guard closed the stream
    overflow: bool = False  # the endpoint refused the prompt as longer than the context
