"""`thyme serve`: an OpenAI-compatible `/v1/chat/completions` that runs the whole Thyme loop server-side.

A client sends one question about one image, exactly as to any vision chat model (a message without an
image is a 400: the loop's prompts describe the image; `thyme serve --raw` chats without one); the server
runs the agent (the model writes code, the server's sandbox runs it, the output goes back, until an
answer) and replies with the whole assistant turn as `message.content` (`<image>` where an image was fed
back), plus a `thyme` object: the extracted answer, why the trajectory ended, its steps and tool calls,
and the trajectory itself (`thyme.trajectory/1`, image paths left out).

    curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{
      "model": "M", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
        {"type": "text", "text": "What is written on the sign?"}]}],
      "thyme": {"tools": true, "max_steps": 5}}'

With `"stream": true` the run streams as it goes, as OpenAI chat-completion chunks (server-sent events), so
any OpenAI client's streaming shows the steps live. After the role chunk, every chunk has a `thyme` object
whose `type` says what it is:
    text         the model's text as it is generated (`delta.content`; live with the transformers backend,
                 one piece per step otherwise), `step`
    code         the code block the step just closed (`code`; its text already came as `text`)
    observation  the sandbox's result (`stdout`, `error`, `timed_out`, `repairs`, `note`, `images` as data
                 URLs); `delta.content` is the output as fed back (`<sandbox_output>...</sandbox_output>`)
    resample     the step was rolled back (on_error="resample"): its text, already sent, is not in the turn
    error        the loop failed (`message`, `category`); an OpenAI error event follows
    final        with `finish_reason`: `answer`, `reason`, `steps`, `tool_calls`, `trajectory` (as above)
then the usage chunk when `stream_options.include_usage`, then `[DONE]`. The `delta.content` pieces join to
the non-streamed `message.content`, except that a rolled-back step's text stays in the stream and a
direct-answer fallback's text (reason "fallback") is streamed after the turn. A client that disconnects ends
the run at the next token. Errors found before the first chunk (a bad request, an unreadable image) are plain
JSON errors with their status.

The HTTP side (auth, limits, errors, the event stream) is the generation server's (`thyme.serve.generation`);
this module only replaces what one completion does. Sampling fields of the request (`temperature`,
`top_p`, `top_k`, `seed`, `max_tokens` per step) override the agent's; without `temperature` the agent's
own decoding applies (greedy by default). Requests run concurrently, and with a local backend their steps
share generation (`thyme.serve.batching`): the steps in flight go to the model as one batch, so throughput
grows with clients (`max_batch` requests per call, `thyme serve --max-batch`; 1 turns sharing off).
"""

from __future__ import annotations

import base64
import dataclasses
import mimetypes
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from thyme.agent import Agent, AgentConfig, InputError
from thyme.agent.backends.base import TokenStreaming
from thyme.agent.events import CodeCall, Error, Event, ModelText, Observation, Resample
from thyme.agent.trajectory import Trajectory
from thyme.protocol import STOP_STRINGS
from thyme.sandbox.client import SandboxClient, ServiceError
from thyme.serve.batching import DEFAULT_MAX_BATCH, SharedGeneration
from thyme.serve.generation import ROLE_DELTA, GenerationServer, LiveText
from thyme.serve.openai_api import ApiError, ChatCompletionRequest, ChatRequest, Completion


class ThymeOptions(BaseModel):
    """The request's `thyme` object: tools on or off, and the most steps this run may take."""

    model_config = ConfigDict(extra="forbid", strict=True)
    tools: bool = True
    max_steps: int | None = Field(None, ge=1)


class AgentChatRequest(ChatCompletionRequest):
    """A chat completion request plus the optional `thyme` object."""

    thyme: ThymeOptions | None = None


@dataclasses.dataclass(frozen=True)
class AgentRequest(ChatRequest):
    """A chat request plus this run's agent configuration and whether tools are on."""

    config: AgentConfig | None = None
    tools: bool = True


@dataclasses.dataclass(frozen=True)
class AgentCompletion(Completion):
    """A completion plus the `thyme` extension object of the reply."""

    thyme: dict[str, Any] = dataclasses.field(default_factory=dict)


class AgentServer(GenerationServer):
    """Serves `agent` (its backend and sandbox) as OpenAI chat completions; the caller owns the agent.

    max_batch: with a batched (local) backend, the most requests' steps one shared `generate()` call takes
               (`thyme.serve.batching`); 1 runs each step on its own.
    """

    def __init__(
        self,
        agent: Agent,
        host: str = "127.0.0.1",
        port: int = 8000,
        token: str | None = None,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        **kw,
    ):
        super().__init__(agent.backend, host, port, token, **kw)
        self.agent = agent
        self.shared: SharedGeneration | None = None
        self._runner: Agent | None = None
        if max_batch > 1 and agent.backend.batched:
            self.shared = SharedGeneration(agent.backend, max_batch)
            self._runner = agent.sharing(self.shared)  # type: ignore[arg-type]  # a Backend by delegation

    def close(self) -> None:
        """Stop listening (see `GenerationServer.close`), then the shared generation queue."""
        super().close()
        if self.shared is not None:
            self.shared.close()

    def runner(self) -> Agent:
        """The agent requests run on: `agent` itself, or (sharing generation) `agent.sharing(queue)`."""
        return self.agent if self._runner is None else self._runner

    request_model = AgentChatRequest

    def parse(self, body: AgentChatRequest) -> AgentRequest:  # type: ignore[override]
        options = body.thyme or ThymeOptions()
        given = body.model_fields_set
        request = super().parse(body)
        config = self.agent.config
        sampling = request.params if "temperature" in given else config.sampling
        if given & {"max_tokens", "max_completion_tokens"}:
            sampling = dataclasses.replace(sampling, max_new_tokens=request.params.max_new_tokens)
        else:
            sampling = dataclasses.replace(sampling, max_new_tokens=config.sampling.max_new_tokens)
        max_steps = config.max_steps if options.max_steps is None else options.max_steps
        try:
            run_config = dataclasses.replace(config, sampling=sampling, max_steps=max_steps)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"thyme.max_steps: {exc}", param="thyme") from None
        fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
        return AgentRequest(**fields, config=run_config, tools=options.tools)

    def complete(self, request: AgentRequest, on_text=None, head: dict | None = None) -> AgentCompletion:
        """Run the whole loop and answer with the turn (`on_text` unused: `stream` streams the loop)."""
        traj = self._run(request)
        try:
            return self._completion(traj, head or self.head())
        finally:
            shutil.rmtree(traj.root, ignore_errors=True)

    def stream(self, request: AgentRequest, emit: Callable[[dict[str, Any]], bool]) -> None:
        """Run the loop and stream it as it goes: the model's text as generated, each code block, each
        sandbox output with its images, the answer (see the module docstring for the chunks). Nothing is
        sent before the first step produces something, so input errors are still plain 400s."""
        head = self.head()
        live = _LiveRun(self, head, emit)
        tokens = live.on_tokens if isinstance(self.agent.backend, TokenStreaming) else None
        try:
            traj = self._run(request, on_event=live.on_event, on_tokens=tokens)
        except _ClientGone:
            return
        try:
            completion = self._completion(traj, head)
        finally:
            shutil.rmtree(traj.root, ignore_errors=True)
        try:
            final = {"type": "final", **completion.thyme}
            live.send("", final, finish=(completion.finish_reason, completion.stop_reason))
        except _ClientGone:
            return
        if request.include_usage:
            emit({**self.chunk(head, {}), "choices": [], "usage": completion.usage()})

    def _run(self, request: AgentRequest, **hooks: Any) -> Trajectory:
        """The agent's trajectory for the request's question and image (hooks: `Agent.run`'s callbacks)."""
        question, image = _question_and_image(request)
        with tempfile.TemporaryDirectory(prefix="thyme-serve-") as tmp:
            path = Path(tmp) / "image.png"
            image.save(path)
            try:
                return self.runner().run(
                    image=path, question=question, tools=request.tools, config=request.config, **hooks
                )
            except InputError as exc:  # the question or image the loop cannot take (parsing caught most)
                raise ApiError(400, str(exc), param="messages") from None

    def _completion(self, traj: Trajectory, head: dict[str, Any]) -> AgentCompletion:
        final = traj.final
        if final is not None and final.reason == "error":
            raise ApiError(502, f"the run failed: {traj.error}", type_="server_error")
        record = traj.to_dict()
        for piece in record["assistant"]:
            piece.pop("image", None)
        record["image"] = None
        tokens = traj.tokens
        return AgentCompletion(
            content=traj.text,
            finish_reason="stop" if final is not None and final.answer is not None else "length",
            stop_reason=None,
            prompt_tokens=tokens["prompt"],
            completion_tokens=tokens["completion"],
            id=head["id"],
            created=head["created"],
            thyme={
                "answer": traj.answer,
                "reason": final.reason if final else None,
                "steps": traj.steps,
                "tool_calls": final.tool_calls if final else 0,
                "trajectory": record,
            },
        )

    def response(self, c: AgentCompletion) -> dict[str, Any]:
        return {**super().response(c), "thyme": c.thyme}


class _ClientGone(Exception):
    """The streaming client went away: end the run."""


class _LiveRun:
    """Turns one run's events (and, with a token-streaming backend, its tokens) into stream chunks.

    Content deltas carry the turn exactly as `message.content` would: the model's text as it is generated
    (never past a stop string nor into a partial character), then each sandbox output as fed back. Every
    chunk after the role says what it is in `thyme.type`.
    """

    def __init__(self, server: AgentServer, head: dict[str, Any], emit: Callable[[dict[str, Any]], bool]):
        self.server, self.head, self.emit = server, head, emit
        self.started = False
        self.gone = False  # the client left: every later callback ends the run at once
        self.step = 1  # the step being generated
        self.text: LiveText | None = None  # this step's live text, while tokens arrive

    def send(self, content: str, thyme: dict[str, Any], finish: tuple[str, str | None] | None = None) -> None:
        """One chunk (after the role chunk, sent first); `_ClientGone` when the client has left."""
        chunk = self.server.chunk
        if not self.started:
            self.started = True
            self.gone = not self.emit(chunk(self.head, ROLE_DELTA))
        delta = {"content": content} if content else {}
        if self.gone or not self.emit({**chunk(self.head, delta, *(finish or (None, None))), "thyme": thyme}):
            self.gone = True
            raise _ClientGone

    def on_tokens(self, ids: list[int]) -> bool:
        if self.gone:
            return False
        if self.text is None:
            backend = self.server.agent.backend
            self.text = LiveText(backend, STOP_STRINGS, True, self._text_delta)
        return self.text.on_tokens(ids)

    def _text_delta(self, delta: str) -> bool:
        if delta:
            try:
                self.send(delta, {"type": "text", "step": self.step})
            except _ClientGone:
                return False
        return True

    def on_event(self, _index: int, event: Event) -> None:
        if self.gone:
            raise _ClientGone
        live, self.text = self.text, None
        if isinstance(event, ModelText):
            rest = live.rest(event.text) if live is not None else event.text
            if rest:
                self.send(rest, {"type": "text", "step": event.step})
            self.step = event.step + 1
        elif isinstance(event, CodeCall):
            self.send("", {"type": "code", "step": event.step, "code": event.code})
        elif isinstance(event, Observation):
            self.send(event.feedback, _observation(event))
        elif isinstance(event, Resample):
            self.step = event.step
            self.send("", {"type": "resample", "step": event.step, "attempt": event.attempt,
                           "reason": event.reason})  # fmt: skip
        elif isinstance(event, Error):
            self.send("", {"type": "error", "step": event.step, "message": event.message,
                           "category": event.category})  # fmt: skip


def _observation(event: Observation) -> dict[str, Any]:
    """An observation for a stream chunk: its fields, images as data URLs."""
    images = []
    for path in event.images:
        kind = mimetypes.guess_type(path.name)[0] or "image/png"
        images.append(f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode())
    return {
        "type": "observation",
        "step": event.step,
        "stdout": event.stdout,
        "error": event.error,
        "timed_out": event.timed_out,
        "repairs": list(event.repairs),
        "fed_back": event.fed_back,
        "note": event.note,
        "images": images,
    }


def _question_and_image(request: ChatRequest):
    """The last user message's text and its image (at most one; `ApiError` otherwise)."""
    users = [m for m in request.messages if m["role"] == "user"]
    if not users:
        raise ApiError(
            400, "send one user message with the question (and at most one image)", param="messages"
        )
    content = users[-1]["content"]
    parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
    question = "\n".join(p["text"] for p in parts if p.get("type") == "text").strip()
    if not question:
        raise ApiError(400, "the user message has no question text", param="messages")
    if len(request.images) != 1:
        raise ApiError(
            400,
            f"send exactly one image with the question (got {len(request.images)}): the loop answers "
            "questions about an image; use `thyme serve --raw` for text-only chat",
            param="messages",
        )
    return question, request.images[0]


def serve_agent(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    token: str | None = None,
    model_name: str | None = None,
    config: AgentConfig | None = None,
    sandbox_config=None,
    sandbox_urls: str | Sequence[str] | None = None,
    sandbox_token: str | None = None,
    on_ready=None,
    max_batch: int = DEFAULT_MAX_BATCH,
    **backend_options: Any,
) -> None:
    """Load `model` (transformers backend) and serve the loop until SIGINT or SIGTERM.

    sandbox_urls: run the code on these `thyme sandbox serve` hosts (a list, or comma-separated; sessions
                  spread over them, see `thyme.sandbox.client`) instead of a local sandbox pool.
    """
    from thyme.asgi import check_port, serve_until_signal

    check_port(port)
    remote = None
    agent = None

    def close() -> None:
        if agent is not None:
            agent.close()  # its artifacts folder and the sandbox's
        if remote is not None:
            remote.close()

    if sandbox_urls:
        remote = remote_sandbox(sandbox_urls, sandbox_token)
    try:
        agent = Agent.from_pretrained(
            model, config=config, sandbox=remote, sandbox_config=sandbox_config, **backend_options
        )
        _ = agent.sandbox  # start the pool now: a missing confinement layer fails here, not at a request
        server = AgentServer(agent, host, port, token, model_name=model_name or model, max_batch=max_batch)
    except BaseException:  # a failed start, or SIGTERM / Ctrl-C while loading
        close()
        raise

    serve_until_signal(server, on_ready, also_close=close)


def remote_sandbox(urls: str | Sequence[str], token: str | None) -> SandboxClient:
    """A client over the sandbox hosts `urls`, after checking that at least one answers (a `ValueError`
    that names them otherwise); hosts that do not answer yet are retried by the client later."""
    client = SandboxClient(urls, token=token)
    failures = []
    for url in client.urls:
        try:
            client.health(url)
        except ServiceError as exc:
            failures.append(str(exc))
    if len(failures) == len(client.urls):
        client.close()
        raise ValueError(
            f"no sandbox host answers ({'; '.join(failures)}); start `thyme sandbox serve` there"
        )
    return client
