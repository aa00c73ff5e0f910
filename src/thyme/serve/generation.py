"""An OpenAI-compatible generation server over a `TransformersBackend` (what `vllm serve` does, on the CPU).

Any OpenAI client, and `thyme.agent.backends.openai.OpenAIBackend` in particular, can then drive a local
checkpoint over HTTP: tests run the HTTP backend against a real model this way, and a CPU box can serve
`thyme-tiny` to remote rollout workers.

    with GenerationServer(TransformersBackend.from_pretrained("models/tiny"), port=0) as server:
        server.start()
        print(server.url)                     # http://127.0.0.1:PORT; the API lives under /v1
    serve_generation("models/tiny", port=8000, token="s3cret")   # blocks until Ctrl-C / SIGTERM

Endpoints:
    GET  /health                no token needed; 200 while serving
    GET  /v1/models             the one served model (`id`, `max_model_len`)
    POST /v1/chat/completions   OpenAI chat completions, `stream` included (server-sent events)

What a request may hold: `model` (must name the served model, else 404 `model_not_found`), `messages`
(system / user / assistant; content a string or a list of `text` and `image_url` parts, images as
`data:image/...;base64,` URLs only), `max_tokens` / `max_completion_tokens`, `temperature` (default 1),
`top_p`, `top_k`, `repetition_penalty`, `seed`, `stop` (string or list), `stream`, `stream_options`,
`logit_bias` (accepted and ignored: the backend already suppresses the vision placeholder tokens, the one
bias Thyme clients need), `n` (1 only), and vLLM's `add_generation_prompt` (default true),
`continue_final_message` (default false: continue the last assistant message instead of starting a new
one) and `include_stop_str_in_output`.
The reply follows OpenAI: `message.content` without the matched stop string, `finish_reason` "stop" or
"length", `usage`; plus vLLM's `stop_reason` (the matched stop string, or null at end-of-sequence).
Errors are OpenAI-shaped, `{"error": {"message", "type", "param", "code"}}`; a prompt that fills the context
is a 400 with code `context_length_exceeded`.

Streaming is live: each token's text is sent as it is generated, except text that could still turn out to
start a requested stop string (held back until it cannot) and partial UTF-8 characters. A client that
disconnects mid-stream stops the generation at the next token.
Limits: one generation at a time (a lock: the model is not thread safe; other endpoints stay responsive),
request bodies and images are size-capped.
The HTTP side is a FastAPI app served by uvicorn (`thyme.asgi`), as vLLM serves: the request schema is
`thyme.serve.openai_api.ChatCompletionRequest` (pydantic; schema errors are OpenAI-shaped 400s), the API is
described at /docs and /openapi.json (no token needed), and on SIGTERM the server stops accepting, lets the
requests in flight finish (up to `drain_s`, default 30 s), then exits.
What the server does not do: TLS (put it behind a proxy when it leaves the host), fetch http(s) image URLs,
tool calls, or several choices per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from thyme.asgi import DEFAULT_DRAIN_S, BodyLimit, UvicornServer, bearer_ok, check_port, serve_until_signal
from thyme.protocol import cut_at_first_stop
from thyme.serve.openai_api import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_REQUEST_BYTES,
    ApiError,
    ChatCompletionRequest,
    ChatRequest,
    Completion,
    parse_chat_request,
    validation_message,
)

log = logging.getLogger(__name__)


# -- generation --------------------------------------------------------------------------------------------
def openai_finish(
    text: str, backend_reason: str, backend_stop: str | None, stops: tuple[str, ...], include_stop: bool
):
    """(content, finish_reason, stop_reason) in OpenAI terms from the backend's canonical generation.

    The earliest requested stop string ends the content (kept only with `include_stop`); without one, an
    end-of-sequence is "stop" with stop_reason null, and a budget or context cap is "length".
    """
    if stops:
        cut, stop = cut_at_first_stop(text, stops)
        if stop is not None:
            return (cut if include_stop else cut[: -len(stop)]), "stop", stop
    if backend_reason == "eos":
        return text, "stop", None
    if backend_reason == "stop":  # a protocol stop string the client did not ask for ended the backend
        return text, "stop", backend_stop
    return text, "length", None


class GenerationServer:
    """Serves one backend's `generate_rendered` as OpenAI chat completions; the caller owns the backend.

    backend:    a `TransformersBackend` (anything with `processor`, `tokenizer`, `model_id`, `context_length`
                and `generate_rendered`).
    token:      bearer token clients must send (`Authorization: Bearer ...`); None = open API.
    model_name: the name clients use in `model`; default the backend's `model_id`.
    """

    def __init__(
        self,
        backend,
        host: str = "127.0.0.1",
        port: int = 8000,
        token: str | None = None,
        *,
        model_name: str | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        keepalive_s: float = 75.0,
        drain_s: float = DEFAULT_DRAIN_S,
    ) -> None:
        self.backend = backend
        self.token = token
        self.model_name = model_name or backend.model_id
        self.max_request_bytes = max_request_bytes
        self.max_image_bytes = max_image_bytes
        self.context_length: int | None = getattr(backend, "context_length", None)
        self._lock = threading.Lock()
        self.app = self._build_app()
        limited = BodyLimit(self.app, max_request_bytes, lambda message: ApiError(413, message).body)
        self._http = UvicornServer(
            limited, host, port, keepalive_s=keepalive_s, drain_s=drain_s, name="thyme-generation-http"
        )

    @property
    def url(self) -> str:
        return self._http.url

    def start(self) -> GenerationServer:
        """Serve in a background thread; returns once the server accepts connections."""
        self._http.start()
        return self

    def close(self) -> None:
        """Stop accepting, let the requests in flight finish (up to `drain_s`), stop; idempotent. The
        backend stays open."""
        self._http.close()

    def __enter__(self) -> GenerationServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the HTTP app ---------------------------------------------------------------------------------------
    request_model: type[ChatCompletionRequest] = ChatCompletionRequest  # the body schema (and /docs)

    def _build_app(self) -> FastAPI:
        """The FastAPI app: /health, /v1/models, /v1/chat/completions, /docs; errors OpenAI-shaped."""
        app = FastAPI(
            title=f"thyme: {self.model_name}",
            summary="OpenAI-compatible chat completions (see the thyme-vl README)",
            version="1",
        )
        routes = {"/health": "GET", "/v1/models": "GET", "/v1/chat/completions": "POST"}

        def authorized(request: Request) -> None:
            if not bearer_ok(request.headers.get("authorization"), self.token):
                raise ApiError(
                    401,
                    "missing or wrong API key; send 'Authorization: Bearer <token>'",
                    type_="authentication_error",
                    code="invalid_api_key",
                )

        @app.get("/health")
        def health() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/v1/models")
        def models(request: Request) -> dict[str, Any]:
            authorized(request)
            return self.models()

        async def chat(request: Request, body: ChatCompletionRequest) -> Response:
            authorized(request)
            if body.stream:
                return await self._event_stream(await run_in_threadpool(self.parse, body))
            return await run_in_threadpool(self._answer, body)  # the event loop only moves bytes

        chat.__annotations__ = {"request": Request, "body": self.request_model, "return": Response}
        app.post("/v1/chat/completions", response_model=None)(chat)

        @app.exception_handler(ApiError)
        def api_error(_request: Request, exc: ApiError) -> JSONResponse:
            headers = {"WWW-Authenticate": 'Bearer realm="thyme"'} if exc.status == 401 else None
            return JSONResponse(exc.body, status_code=exc.status, headers=headers)

        @app.exception_handler(RequestValidationError)
        def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
            message, param = validation_message(exc.errors())
            return JSONResponse(ApiError(400, message, param=param).body, status_code=400)

        @app.exception_handler(StarletteHTTPException)
        def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
            path = request.url.path
            if exc.status_code == 404:
                message = f"no endpoint {path}; see /v1/models and /v1/chat/completions"
            elif exc.status_code == 405:
                message = f"{request.method} is not supported on {path}; use {routes.get(path, 'another')}"
            else:
                message = str(exc.detail)
            return JSONResponse(ApiError(exc.status_code, message).body, status_code=exc.status_code)

        @app.exception_handler(Exception)
        def crashed(request: Request, exc: Exception) -> JSONResponse:
            log.error("request %s %s failed", request.method, request.url.path, exc_info=exc)
            message = f"internal server error ({type(exc).__name__}); see the server log"
            return JSONResponse(ApiError(500, message, type_="server_error").body, status_code=500)

        return app

    def _answer(self, body: ChatCompletionRequest) -> Response:
        """A non-streamed completion as a ready JSON response (runs in a worker thread)."""
        data = json.dumps(self.response(self.complete(self.parse(body))), separators=(",", ":"))
        return Response(data.encode(), media_type="application/json")

    async def _event_stream(self, request: ChatRequest) -> Response:
        """Server-sent events as `stream` produces chunks (in a worker thread). The response starts with
        the first chunk: an error raised before is still a plain JSON error; one raised after is an OpenAI
        error event (which OpenAI clients raise), then `[DONE]`. A client that goes away makes `emit`
        return False, which ends the work."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        gone = threading.Event()

        def put(item: tuple[str, Any]) -> bool:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the server was stopped without draining: its loop is gone
                gone.set()
            return not gone.is_set()

        def emit(chunk: dict[str, Any]) -> bool:
            return not gone.is_set() and put(("chunk", chunk))

        def work() -> None:
            try:
                self.stream(request, emit)
                item: tuple[str, Any] = ("end", None)
            except BaseException as exc:
                item = ("error", exc)
            put(item)

        threading.Thread(target=work, name="thyme-stream", daemon=True).start()
        first = await queue.get()
        if first[0] == "error":
            gone.set()
            raise first[1]

        async def events() -> AsyncIterator[bytes]:
            kind, value = first
            try:
                while True:
                    if kind == "chunk":
                        yield _event(value)
                    elif kind == "error":
                        yield _event(_error_body(value))
                        break
                    else:
                        break
                    kind, value = await queue.get()
                yield b"data: [DONE]\n\n"
            finally:
                gone.set()  # done, or the client left (the generator is closed)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    def models(self) -> dict[str, Any]:
        entry = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "thyme"}
        if self.context_length is not None:
            entry["max_model_len"] = self.context_length
        return {"object": "list", "data": [entry]}

    def parse(self, body: ChatCompletionRequest) -> ChatRequest:
        return parse_chat_request(
            body,
            model_name=self.model_name,
            default_max_tokens=self.context_length or 2048,
            max_image_bytes=self.max_image_bytes,
        )

    def complete(
        self, request: ChatRequest, on_text: Callable[[str], bool] | None = None, head: dict | None = None
    ) -> Completion:
        """Render the messages with the checkpoint's chat template and generate (one at a time).

        on_text: streaming; called with each new piece of content as it is generated (maybe empty), and
        the generation stops when it returns False. The Completion's `pieces` then hold what remains.
        head: the completion's id and created time, when the caller already announced them.
        """
        head = head or self.head()
        try:
            prompt = self.backend.processor.apply_chat_template(
                request.messages,
                tokenize=False,
                add_generation_prompt=request.add_generation_prompt,
                continue_final_message=request.continue_final_message,
            )
        except (ValueError, TypeError) as exc:  # e.g. continue_final_message with no text to continue
            raise ApiError(400, f"cannot render the messages with the chat template: {exc}") from None
        with self._lock:  # the tokenizer is not safe to share across threads either
            live = None
            if on_text is not None:
                live = LiveText(self.backend, request.stops, request.include_stop, on_text)
            gen = self.backend.generate_rendered(
                prompt,
                request.images,
                request.params,
                request.stops,
                on_tokens=live.on_tokens if live is not None else None,
            )
            content, reason, stop = openai_finish(
                gen.text, gen.finish_reason, gen.stop, request.stops, request.include_stop
            )
            pieces = (live.rest(content),) if live is not None else ()
        if gen.finish_reason == "context" and gen.completion_tokens == 0:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.context_length} tokens. However, your "
                f"messages resulted in {gen.prompt_tokens} tokens. Shorten the messages or send fewer or "
                "smaller images.",
                code="context_length_exceeded",
                param="messages",
            )
        return Completion(
            content=content,
            finish_reason=reason,
            stop_reason=stop,
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.completion_tokens,
            id=head["id"],
            created=head["created"],
            pieces=tuple(p for p in pieces if p),
        )

    def stream(self, request: ChatRequest, emit: Callable[[dict[str, Any]], bool]) -> None:
        """Answer `request` as stream chunks handed to `emit` as they are ready (`emit` returns False once the
        client is gone: the generation stops). The first chunk goes out with the first generated token, so
        an error found before (a prompt that fills the context) is still raised as an `ApiError`."""
        head = self.head()
        state = {"role_sent": False, "alive": True}

        def on_text(delta: str) -> bool:
            if not state["role_sent"]:
                state["role_sent"] = True
                state["alive"] = emit(self.chunk(head, ROLE_DELTA))
            if delta and state["alive"]:
                state["alive"] = emit(self.chunk(head, {"content": delta}))
            return state["alive"]

        completion = self.complete(request, on_text, head)
        if not state["alive"]:
            return
        for chunk in self.chunks(completion, request.include_usage, role_sent=state["role_sent"]):
            if not emit(chunk):
                return

    def head(self) -> dict[str, Any]:
        """A new completion's id and created time, as every stream chunk repeats them."""
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time())}

    def response(self, c: Completion) -> dict[str, Any]:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": c.content},
            "logprobs": None,
            "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason,
        }
        return {
            "id": c.id,
            "object": "chat.completion",
            "created": c.created,
            "model": self.model_name,
            "choices": [choice],
            "usage": c.usage(),
        }

    def chunk(
        self, head: dict[str, Any], delta: dict[str, Any], reason: str | None = None, stop: str | None = None
    ) -> dict[str, Any]:
        """One stream chunk of the completion named by `head`."""
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        if reason is not None:
            choice["stop_reason"] = stop
        return {**head, "object": "chat.completion.chunk", "model": self.model_name, "choices": [choice]}

    def chunks(self, c: Completion, include_usage: bool, role_sent: bool = False) -> Iterator[dict[str, Any]]:
        """The rest of a completion as stream chunks: the role (unless sent), its pieces, the finish, maybe
        the usage."""
        head = {"id": c.id, "created": c.created}
        if not role_sent:
            yield self.chunk(head, ROLE_DELTA)
        for piece in c.pieces:
            yield self.chunk(head, {"content": piece})
        yield self.chunk(head, {}, c.finish_reason, c.stop_reason)
        if include_usage:
            yield {**self.chunk(head, {}), "choices": [], "usage": c.usage()}


ROLE_DELTA = {"role": "assistant", "content": ""}


class LiveText:
    """Turns the ids generated so far into content that is safe to send already: never past the first
    requested stop string, nor into a tail that may still grow into one; never a partial UTF-8 character or
    an end-of-sequence token. What it sent is always a prefix of the final content (byte-level BPE decodes
    piecewise), which `rest` checks."""

    def __init__(self, backend, stops: tuple[str, ...], include_stop: bool, on_text: Callable[[str], bool]):
        self.tokenizer, self.eos_ids = backend.tokenizer, backend.eos_ids
        self.stops, self.include_stop, self.on_text = stops, include_stop, on_text
        self.hold = max((len(stop) for stop in stops), default=1) - 1
        self.stable_ids, self.stable_text = 0, ""  # decoded ids that end on a whole character
        self.sent = ""
        self.done = False  # a stop string was seen: nothing more to send before the end
        self.alive = True

    def on_tokens(self, ids: list[int]) -> bool:
        if self.done or not self.alive:
            return self.alive
        end = next((i for i in range(self.stable_ids, len(ids)) if ids[i] in self.eos_ids), len(ids))
        self.done = end < len(ids)
        tail = self.tokenizer.decode(ids[self.stable_ids : end], skip_special_tokens=False)
        text = self.stable_text + tail
        if not tail.endswith("\ufffd"):
            self.stable_ids, self.stable_text = end, text
        else:
            text = text.rstrip("\ufffd")
        cut, stop = cut_at_first_stop(text, self.stops) if self.stops else (text, None)
        if stop is not None:
            safe, self.done = (cut if self.include_stop else cut[: -len(stop)]), True
        else:
            safe = text if self.done else text[: max(0, len(text) - self.hold)]
        delta = safe[len(self.sent) :] if len(safe) > len(self.sent) else ""
        self.sent += delta
        self.alive = self.on_text(delta)
        return self.alive

    def rest(self, content: str) -> str:
        """What of the final content is still to send."""
        if not content.startswith(self.sent):  # cannot happen with byte-level BPE; never resend
            log.error("streamed text %r is not a prefix of the content %r", self.sent[-40:], content[-40:])
            return ""
        return content[len(self.sent) :]


def serve_generation(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    token: str | None = None,
    model_name: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Load `model` with the transformers backend and serve it until SIGINT or SIGTERM (`thyme serve`).

    model_name defaults to `model` as given (as `vllm serve` does); on_ready(url) runs once listening.
    """
    from thyme.agent.backends.transformers import TransformersBackend
    from thyme.agent.loop import resolve_model

    check_port(port)
    backend = TransformersBackend.from_pretrained(resolve_model(model), device=device, dtype=dtype)
    server = GenerationServer(backend, host, port, token, model_name=model_name or model)
    serve_until_signal(server, on_ready, also_close=backend.close)


def _event(chunk: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()


def _error_body(exc: BaseException) -> dict[str, Any]:
    """An exception raised mid-stream as the OpenAI error object sent in the stream."""
    if isinstance(exc, ApiError):
        return exc.body
    log.error("streaming failed", exc_info=exc)
    message = f"internal server error ({type(exc).__name__}); see the server log"
    return ApiError(500, message, type_="server_error").body
