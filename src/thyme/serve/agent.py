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

The HTTP side (auth, limits, errors, streaming) is the generation server's (`thyme.serve.generation`);
this module only replaces what one completion does. Sampling fields of the request (`temperature`,
`top_p`, `top_k`, `seed`, `max_tokens` per step) override the agent's; without `temperature` the agent's
own decoding applies (greedy by default). Requests run concurrently; the backend serialises generation.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from thyme.agent import Agent, AgentConfig, InputError
from thyme.serve.generation import GenerationServer
from thyme.serve.openai_api import ApiError, ChatRequest, Completion


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
    """Serves `agent` (its backend and sandbox) as OpenAI chat completions; the caller owns the agent."""

    def __init__(
        self, agent: Agent, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, **kw
    ):
        super().__init__(agent.backend, host, port, token, **kw)
        self.agent = agent

    def parse(self, payload: dict[str, Any]) -> AgentRequest:
        options = payload.pop("thyme", None) or {}
        if not isinstance(options, dict) or set(options) - {"tools", "max_steps"}:
            raise ApiError(
                400, 'thyme must be an object with "tools" (bool) and "max_steps" (int)', param="thyme"
            )
        sampling_given = "temperature" in payload
        request = super().parse(payload)
        config = self.agent.config
        sampling = request.params if sampling_given else config.sampling
        if "max_tokens" in payload or "max_completion_tokens" in payload:
            sampling = dataclasses.replace(sampling, max_new_tokens=request.params.max_new_tokens)
        else:
            sampling = dataclasses.replace(sampling, max_new_tokens=config.sampling.max_new_tokens)
        try:
            run_config = dataclasses.replace(
                config, sampling=sampling, max_steps=int(options.get("max_steps", config.max_steps))
            )
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"thyme.max_steps: {exc}", param="thyme") from None
        fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
        return AgentRequest(**fields, config=run_config, tools=bool(options.get("tools", True)))

    def complete(self, request: AgentRequest, on_text=None, head: dict | None = None) -> AgentCompletion:
        """Run the whole loop; a stream gets the run's text in one piece when it ends (`on_text` unused)."""
        head = head or self.head()
        question, image = _question_and_image(request)
        with tempfile.TemporaryDirectory(prefix="thyme-serve-") as tmp:
            path = Path(tmp) / "image.png"
            image.save(path)
            try:
                traj = self.agent.run(
                    image=path, question=question, tools=request.tools, config=request.config
                )
            except InputError as exc:  # the question or image the loop cannot take (parsing caught most)
                raise ApiError(400, str(exc), param="messages") from None
            record = traj.to_dict()
        final = traj.final
        if final is not None and final.reason == "error":
            raise ApiError(502, f"the run failed: {traj.error}", type_="server_error")
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
            pieces=(traj.text,) if request.stream else (),
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
    on_ready=None,
    **backend_options: Any,
) -> None:
    """Load `model` (transformers backend) and serve the loop until SIGINT or SIGTERM."""
    from thyme.httpd import check_port, serve_until_signal

    check_port(port)
    agent = Agent.from_pretrained(model, config=config, sandbox_config=sandbox_config, **backend_options)
    _ = agent.sandbox  # start the pool now: a missing confinement layer fails here, not on the first request
    server = AgentServer(agent, host, port, token, model_name=model_name or model)
    serve_until_signal(server, on_ready, also_close=agent.close)
