"""The OpenAI-compatible HTTP backend: vLLM and SGLang servers, `thyme.serve.generation`, hosted APIs.

HTTP through httpx (one keep-alive pool per backend, shared by the threads of a batch); a client box needs no
torch:

    backend = OpenAIBackend.from_pretrained("Kwai-Keye/Thyme-RL", base_url="http://gpu-box:8000/v1")
    agent = Agent(backend)          # or Agent.from_pretrained(name, backend="openai", base_url=...)

How a step is sent. The loop continues one assistant turn that holds the model's text and the sandbox
feedback (images included), so the backend has two ways to send it:
- continuation (vLLM, SGLang, our server): the whole turn so far as one final assistant message, with
  `continue_final_message: true, add_generation_prompt: false`; the model sees exactly the released
  protocol's prompt. `continuation="auto"` (the default) starts here.
- turns (hosted APIs; `continuation="never"`, or "auto" once the endpoint rejected continuation with a 400):
  the model's text up to each `</code>` is an assistant message and each `<sandbox_output>` block (with its
  images) a user message. The model then starts a new assistant message after every feedback: an
  approximation of the protocol, good enough for capable hosted models.

Stops: the request's stop strings are sent; servers drop the matched one, so it is put back (vLLM's
`stop_reason` / SGLang's `matched_stop` when present, else `thyme.protocol.restore_stop_string`) and the
text is cut with `cut_at_first_stop`, like every backend.
ATS (`code_temperature` set): segment-wise, with the legs of `thyme.agent.ats.plan_leg`. A text leg at the
text temperature also stops at `<code>`; then a code leg continues the turn at the code temperature (greedy
for GRPO-ATS) until `</code>`. It needs continuation. Repetition guard: with `repetition_threshold` set the
reply is streamed, the text deltas (characters, not tokens) feed a `RepetitionDetector`, and when it fires the
connection is closed (vLLM aborts a request whose client left) and the step ends with "repetition".
Failures: connection errors, timeouts, 429 and 5xx are retried with exponential backoff and jitter; other
4xx are not. A prompt over the context is not an exception but a `Generation` with finish_reason "context".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx

from thyme.agent.ats import plan_leg
from thyme.agent.backends.base import (
    AuthenticationError,
    BackendError,
    EndpointError,
    Generation,
    GenerationRequest,
    ModelNotFoundError,
    model_preset,
)
from thyme.agent.backends.openai_http import (
    HTTPError,
    Reply,
    Transport,
    chat_messages,
    error_details,
)
from thyme.agent.config import SamplingParams
from thyme.agent.conversation import Conversation
from thyme.agent.repetition import RepetitionConfig, RepetitionDetector
from thyme.protocol import CODE_OPEN, cut_at_first_stop, is_code_open, restore_stop_string

log = logging.getLogger(__name__)

Continuation = Literal["auto", "always", "never"]
_CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}
_MAX_BACKOFF_S = 30.0
_MAX_THREADS = 64  # requests in flight at once through `agenerate`


# -- the backend -------------------------------------------------------------------------------------------
class OpenAIBackend:
    """Generation over an OpenAI-compatible `/chat/completions` endpoint.

    model:        the served model name (`GET {base_url}/models` lists them).
    base_url:     the API root, usually ending in /v1 (http://localhost:8000/v1).
    api_key:      sent as a bearer token; never read from the environment (the CLI passes --api-key).
    timeout_s:    per connect and per read of the reply.
    max_retries:  retries after the first attempt for connection errors, timeouts, 429 and 5xx.
    backoff_s:    the first retry's delay; it doubles per retry (capped at 30 s), with jitter.
    continuation: "auto" | "always" | "never" (see the module docstring).
    extra_body:   fields merged into every request (e.g. {"top_k": 20} or a provider's options).
    """

    name = "openai"
    batched = False

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        continuation: Continuation = "auto",
        default_preset: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if continuation not in ("auto", "always", "never"):
            raise ValueError(f"continuation must be 'auto', 'always' or 'never', got {continuation!r}")
        if timeout_s <= 0 or max_retries < 0 or backoff_s < 0:
            raise ValueError("timeout_s must be > 0, max_retries >= 0 and backoff_s >= 0")
        self.model_id = model
        self.default_preset = default_preset or model_preset(model)
        self.continuation = continuation
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.extra_body = dict(extra_body or {})
        self._transport = Transport(base_url, api_key, timeout_s)
        # Whether the endpoint continues an assistant message: None = not known yet ("auto").
        self._continues: bool | None = {"auto": None, "always": True, "never": False}[continuation]
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, model: str, *, base_url: str | None = None, **options: Any) -> OpenAIBackend:
        """The backend for `model` served at `base_url` (options: see the class docstring)."""
        if not base_url:
            raise ValueError(
                "the openai backend needs the endpoint: pass base_url= (--base-url), e.g. http://localhost:8000/v1"
            )
        return cls(model, base_url=base_url, **options)

    @property
    def url(self) -> str:
        return self._transport.base_url + "/chat/completions"

    @property
    def continues(self) -> bool:
        """Requests continue the assistant message (False once turn-based feedback is in use)."""
        return self._continues is not False

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        self._transport.close()

    # -- generation -------------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return [self._generate_one(r) for r in requests]

    async def agenerate(self, request: GenerationRequest) -> Generation:
        """`generate` in a thread of the backend's own pool (asyncio's default pool has only a few)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_MAX_THREADS, thread_name_prefix="thyme-openai")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._generate_one, request)

    def _generate_one(self, request: GenerationRequest) -> Generation:
        """One step: one leg, or with ATS alternating text and code legs; text, usage and time summed."""
        start = time.perf_counter()
        params, conv = request.params, request.conversation
        inside = is_code_open(conv.assistant_text)
        text, prompt_tokens, completion_tokens, code_greedy = "", None, 0, False
        spent = 0  # the token budget used, >= 1 per leg so that the legs end even when usage is missing
        while True:
            leg_params, stops, code_leg = _plan_leg(params, request.stops, inside)
            leg_params = dataclasses.replace(leg_params, max_new_tokens=params.max_new_tokens - spent)
            leg_conv = conv
            if text:
                leg_conv = conv.copy()
                leg_conv.add_model(text)
            try:
                reply = self._send(
                    leg_conv, leg_params, stops, text, request.repetition_threshold, params.ats
                )
            except HTTPError as exc:
                if not exc.context_overflow:
                    raise self._error(exc) from None
                log.info("the endpoint reports a context overflow: %s", exc.message)
                reply = Reply("", None, overflow=True)
            prompt_tokens = reply.prompt_tokens if prompt_tokens is None else prompt_tokens
            completion_tokens += reply.completion_tokens
            spent += max(reply.completion_tokens, 1)
            piece, reason, stop = _canonical(conv.assistant_text + text, reply, stops)
            text += piece
            code_greedy |= code_leg and leg_params.greedy and bool(piece)
            if reason == "stop" and stop not in request.stops:  # an ATS segment ended, the step goes on
                inside = stop == CODE_OPEN
                if spent < params.max_new_tokens:
                    continue
                reason, stop = "length", None
            return Generation(
                text=text,
                finish_reason=reason,
                stop=stop,
                prompt_tokens=prompt_tokens or 0,
                completion_tokens=completion_tokens,
                duration_s=time.perf_counter() - start,
                code_greedy=code_greedy,
            )

    def _send(
        self,
        conv: Conversation,
        params: SamplingParams,
        stops: tuple[str, ...],
        guard_prefix: str,
        threshold: float | None,
        ats: bool,
    ) -> Reply:
        """One completion; in "auto" mode a 400 to a continuation request switches to turn-based feedback."""
        continuing = bool(conv.assistant) and self._continues is not False
        if ats and self._continues is False:
            raise BackendError(
                "ATS (code_temperature) needs an endpoint that continues the assistant message "
                "(continue_final_message, as vLLM and SGLang do); use continuation='auto' with such a "
                "server, or drop code_temperature"
            )
        try:
            reply = self._call(
                self._payload(conv, params, stops, continuing, threshold), guard_prefix, threshold
            )
        except HTTPError as exc:
            rejected = (
                continuing and self._continues is None and exc.status == 400 and not exc.context_overflow
            )
            if not rejected:
                raise
            if ats:
                raise BackendError(
                    f"ATS (code_temperature) needs continue_final_message, which the endpoint rejected "
                    f"({exc.message}); drop code_temperature for this endpoint"
                ) from None
            try:
                reply = self._call(
                    self._payload(conv, params, stops, False, threshold), guard_prefix, threshold
                )
            except HTTPError:
                raise exc from None
            log.warning(
                "the endpoint rejected continue_final_message (%s); using turn-based feedback", exc.message
            )
            self._continues = False
            return reply
        if continuing and self._continues is None:
            self._continues = True
        return reply

    def _payload(
        self,
        conv: Conversation,
        params: SamplingParams,
        stops: tuple[str, ...],
        continuing: bool,
        threshold: float | None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model_id,
            "messages": chat_messages(conv, continuation=continuing),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        # Only what differs from the defaults: hosted APIs reject fields they do not know (top_k...).
        if params.top_k:
            payload["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            payload["repetition_penalty"] = params.repetition_penalty
        if params.seed is not None:
            payload["seed"] = params.seed
        if stops:
            payload["stop"] = list(stops)
        if threshold is not None:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        if continuing:
            payload.update(_CONTINUE)
        payload.update(self.extra_body)
        return payload

    # -- one HTTP exchange, with retries ----------------------------------------------------------------
    def _call(self, payload: dict[str, Any], guard_prefix: str, threshold: float | None) -> Reply:
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                response = self._transport.request("POST", "/chat/completions", payload)
                try:
                    if payload.get("stream"):
                        return self._read_stream(response, guard_prefix, threshold)
                    return self._read_json(response)
                finally:
                    response.close()  # a reply not read to the end drops its connection
            except HTTPError as exc:
                if not exc.retriable or attempt + 1 == attempts:
                    raise
                delay = self._delay(attempt, exc.retry_after)
                log.warning(
                    "%s answered HTTP %d; retry %d in %.1f s", self.url, exc.status, attempt + 1, delay
                )
            except httpx.TransportError as exc:
                if attempt + 1 == attempts:
                    reason = str(exc) or type(exc).__name__
                    if isinstance(exc, httpx.TimeoutException):
                        reason = f"timed out after {self._transport.timeout_s:g} s"
                    raise EndpointError(
                        f"cannot reach {self.url} after {attempts} attempt(s): {reason}; check --base-url "
                        "and that the server is running"
                    ) from None
                delay = self._delay(attempt, None)
                log.warning("%s failed (%s); retry %d in %.1f s", self.url, exc, attempt + 1, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.backoff_s * 2**attempt, _MAX_BACKOFF_S) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            with contextlib.suppress(ValueError):  # an HTTP date instead of seconds: keep our own delay
                delay = max(delay, min(float(retry_after), _MAX_BACKOFF_S))
        return delay

    def _read_json(self, response: httpx.Response) -> Reply:
        data = response.read()
        try:
            reply = json.loads(data)
            choice = reply["choices"][0]
            content = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(f"{self.url} did not answer with a chat completion: {data[:200]!r}") from None
        out = Reply(content, choice.get("finish_reason"))
        _read_stop(out, choice)
        _read_usage(out, reply.get("usage"))
        return out

    def _read_stream(self, response, guard_prefix: str, threshold: float | None) -> Reply:
        """Server-sent events; the repetition guard closes the connection as soon as it fires."""
        detector = (
            RepetitionDetector(RepetitionConfig(threshold=threshold)) if threshold is not None else None
        )
        if detector is not None:
            detector.feed_text(guard_prefix)  # earlier legs of this step count
        out = Reply("", None)
        pieces: list[str] = []
        finished = False
        for raw in response.iter_lines():
            line = raw.strip()
            if finished or not line.startswith("data:"):
                continue  # read on after [DONE] to the body's end, so the connection can be reused
            data = line[5:].strip()
            if data == "[DONE]":
                finished = True
                continue
            try:
                chunk = json.loads(data)
            except ValueError:
                raise BackendError(f"{self.url} sent a malformed stream event: {data[:200]!r}") from None
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                message, _ = error_details(data.encode())
                raise BackendError(f"{self.url} failed while streaming: {message}")
            for choice in chunk.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content") or ""
                if delta:
                    pieces.append(delta)
                    if detector is not None and detector.feed_text(delta):
                        response.close()  # the server sees the disconnect and stops generating
                        out.content, out.repeated = "".join(pieces), True
                        out.completion_tokens = len(pieces)  # one delta per token on vLLM-like servers
                        return out
                if choice.get("finish_reason"):
                    out.finish = choice["finish_reason"]
                    _read_stop(out, choice)
            _read_usage(out, chunk.get("usage"))
        if not finished:  # the stream ended early: retried like a reset
            raise httpx.RemoteProtocolError("the stream ended before its [DONE] event")
        out.content = "".join(pieces)
        return out

    def _error(self, exc: HTTPError) -> BackendError:
        """The typed error for a reply the backend cannot use (the caller handles context overflows)."""
        where, status, message = self.url, exc.status, exc.message
        if status in (401, 403):
            return AuthenticationError(
                f"the endpoint {where} refused the API key (HTTP {status}: {message}); pass --api-key KEY "
                "(api_key= in Python)"
            )
        if status == 404:
            return self._not_found(message)
        if exc.retriable:
            return EndpointError(
                f"{where} answered HTTP {status} after {self.max_retries + 1} attempt(s): {message}; "
                "try again later or raise max_retries"
            )
        return BackendError(f"the endpoint rejected the request (HTTP {status}): {message}")

    def served_models(self) -> list[str]:
        """The model names `GET {base_url}/models` lists (raises `EndpointError` when it cannot)."""
        try:
            response = self._transport.request("GET", "/models")
            try:
                data = json.loads(response.read())
            finally:
                response.close()
            return [str(m["id"]) for m in data["data"]]
        except (HTTPError, httpx.TransportError, ValueError, KeyError, TypeError) as exc:
            raise EndpointError(
                f"cannot list the models at {self._transport.base_url}/models ({exc})"
            ) from None

    def check(self) -> None:
        """Fail fast, before any work: the endpoint answers (else `EndpointError`) and serves this model
        (else `ModelNotFoundError` naming the models it does serve)."""
        served = self.served_models()
        if served and self.model_id not in served:
            raise ModelNotFoundError(
                f"{self._transport.base_url} does not serve {self.model_id!r}; it serves "
                f"{', '.join(served)}: pass one of them as the model"
            )

    def _not_found(self, message: str) -> BackendError:
        """A 404 means an unknown model or a wrong base URL; the model list tells which."""
        try:
            served = self.served_models()
        except EndpointError:
            return EndpointError(
                f"{self.url} answered 404 ({message}); check --base-url (it usually ends in /v1) and --model"
            )
        if self.model_id not in served:
            return ModelNotFoundError(
                f"{self._transport.base_url} does not serve model {self.model_id!r}; it serves "
                f"{', '.join(served) or 'nothing'}: pass one of them as the model"
            )
        return BackendError(f"{self.url} answered 404 for the served model {self.model_id!r}: {message}")


def _plan_leg(
    params: SamplingParams, stops: Sequence[str], inside: bool
) -> tuple[SamplingParams, tuple, bool]:
    """(sampling, stops, is a code leg) of the next leg: the whole step, or an ATS segment."""
    if not params.ats:
        return params, tuple(stops), False
    leg = plan_leg(params, stops, inside)
    return leg.params, leg.stops, leg.code


def _read_stop(out: Reply, choice: dict[str, Any]) -> None:
    for key in ("stop_reason", "matched_stop"):
        if key in choice:
            out.matched, out.says_stop = choice[key], True
            return


def _read_usage(out: Reply, usage: Any) -> None:
    if isinstance(usage, dict):
        out.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        out.completion_tokens = int(usage.get("completion_tokens") or 0)


def _canonical(before: str, reply: Reply, stops: tuple[str, ...]) -> tuple[str, str, str | None]:
    """(text, finish_reason, stop) of one leg in the canonical form: ends with its stop string, no more.

    before: the assistant turn before this leg (an open block tells which stop a silent server dropped).
    """
    if reply.overflow:
        return "", "context", None
    if reply.repeated:
        return reply.content, "repetition", None
    text = reply.content
    if reply.finish == "stop" and not reply.says_stop:
        text = restore_stop_string(before + text, "stop")[len(before) :]
    elif reply.finish == "stop" and isinstance(reply.matched, str) and reply.matched in stops:
        text = text if text.endswith(reply.matched) else text + reply.matched
    text, stop = cut_at_first_stop(text, stops)
    if stop is not None:
        return text, "stop", stop
    if reply.finish == "length":
        return text, "length", None
    return text, "eos", None
