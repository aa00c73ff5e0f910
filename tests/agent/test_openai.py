"""The OpenAI-compatible path end to end: `thyme.serve.generation` serving a real tiny Qwen2.5-VL (trained on
the scripts) on 127.0.0.1, `OpenAIBackend` talking to it, the agent loop and the real sandbox on top.

Misbehaving endpoints (500s, rejected continuation) are small stdlib proxies in front of the real server, so
every reply the client parses comes from the real model; nothing inside the client is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from thyme.agent import Agent, AgentConfig, Conversation, GenerationRequest, SamplingParams
from thyme.agent.backends.base import AuthenticationError, BackendError, EndpointError, ModelNotFoundError
from thyme.agent.backends.openai import OpenAIBackend
from thyme.agent.backends.openai_http import chat_messages, image_data_url
from thyme.agent.backends.transformers import TransformersBackend
from thyme.agent.episode import Prompt, user_parts
from thyme.protocol import STOP_STRINGS, TextPart, get_preset, render_feedback
from thyme.serve.generation import GenerationServer
from thyme.testing.scripted import SCRIPTS

TOKEN = "test-token"
MODEL = "tiny-scripted"  # not "thyme-...": that would name a released checkpoint
COMPUTE = "What is six times seven?"
COMPUTE_CODE_STEP = "<think>Multiply with code. <code>\n```python\nprint(6 * 7)\n```\n</code>"
LAUGH = "Laugh."  # a script that loops: the repetition guard's case
LAUGH_TEXT = SCRIPTS[LAUGH][0]
STEP = SamplingParams(max_new_tokens=96)


# -- fixtures (the shared ones of tests/agent/conftest.py under the names used here) -------------------------
@pytest.fixture(scope="module")
def image(noise_png) -> Path:
    return noise_png


@pytest.fixture(scope="module")
def sandbox(agent_sandbox):
    return agent_sandbox


@pytest.fixture(scope="module")
def model_dir(scripted_model_dir) -> Path:
    """A tiny Qwen2.5-VL that learned `thyme.testing.scripted.SCRIPTS`, the looping "Laugh." included."""
    return scripted_model_dir


@pytest.fixture(scope="module")
def local(model_dir) -> TransformersBackend:
    return TransformersBackend.from_pretrained(str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def server(model_dir):
    backend = TransformersBackend.from_pretrained(str(model_dir), device="cpu")
    with GenerationServer(backend, "127.0.0.1", 0, token=TOKEN, model_name=MODEL) as srv:
        srv.start()
        yield srv


def client(base_url: str, **options) -> OpenAIBackend:
    options.setdefault("api_key", TOKEN)
    return OpenAIBackend.from_pretrained(MODEL, base_url=base_url, **options)


@pytest.fixture(scope="module")
def remote(server) -> OpenAIBackend:
    backend = client(server.url + "/v1")
    yield backend
    backend.close()


def new_conversation(image: Path, question: str) -> Conversation:
    preset = get_preset("default")
    parts, _ = user_parts(preset, Prompt(question, image, (320, 240), "/mnt/data/noise.png"))
    return Conversation(preset.system, parts)


def post(server, payload: dict, *, token: str | None = TOKEN, path: str = "/v1/chat/completions"):
    """(status, parsed JSON or raw text) of one request to the server."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps(payload).encode() if payload is not None else None
    conn.request("POST" if payload is not None else "GET", path, body, headers)
    response = conn.getresponse()
    data = response.read().decode()
    conn.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(data)
    return response.status, data


def compute_messages(image: Path) -> list[dict]:
    return chat_messages(new_conversation(image, COMPUTE), continuation=False)


# -- a misbehaving endpoint in front of the real one -------------------------------------------------------
Policy = Callable[[int, dict], "tuple[int, dict] | None"]


class Proxy:
    """Records every chat request; `policy(index, body)` answers it (status, JSON) or None to forward it."""

    def __init__(self, upstream: str, policy: Policy) -> None:
        self.bodies: list[dict] = []
        host, port = upstream.removeprefix("http://").split(":")
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = json.loads(raw)
                proxy.bodies.append(body)
                answer = policy(len(proxy.bodies) - 1, body)
                if answer is None:
                    self._forward(raw)
                else:
                    self._reply(answer[0], json.dumps(answer[1]).encode(), "application/json")

            def _forward(self, raw: bytes | None) -> None:
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                headers = {k: v for k, v in self.headers.items() if k in ("Authorization", "Content-Type")}
                conn.request(self.command, self.path, raw, headers)
                response = conn.getresponse()
                self._reply(response.status, response.read(), response.getheader("Content-Type", ""))
                conn.close()

            def _reply(self, status: int, data: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# -- (a) the server, raw ------------------------------------------------------------------------------------
def test_completion_with_an_image_drops_the_stop_string_and_reports_it(server, image):
    status, reply = post(
        server,
        {"model": MODEL, "messages": compute_messages(image), "temperature": 0, "stop": list(STOP_STRINGS)},
    )
    assert status == 200, reply
    choice = reply["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": COMPUTE_CODE_STEP.removesuffix("</code>")}
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "</code>")
    usage = reply["usage"]
    assert usage["prompt_tokens"] > 100 and usage["completion_tokens"] > 10
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert reply["object"] == "chat.completion" and reply["model"] == MODEL


def test_string_content_and_the_token_budget_give_length(server):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say ha."}]
    status, reply = post(server, {"model": MODEL, "messages": messages, "max_tokens": 5, "temperature": 0})
    assert status == 200, reply
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["choices"][0]["stop_reason"] is None
    assert reply["usage"]["completion_tokens"] == 5


def test_continue_final_message_continues_the_assistant_turn(server, image):
    messages = [
        *compute_messages(image),
        {"role": "assistant", "content": "<think>Multiply with code. <code>"},
    ]
    payload = {"model": MODEL, "messages": messages, "temperature": 0, "stop": ["</code>"]}
    status, reply = post(server, {**payload, "continue_final_message": True, "add_generation_prompt": False})
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"] == "\n```python\nprint(6 * 7)\n```\n"
    status, reply = post(
        server, {**payload, "continue_final_message": True, "include_stop_str_in_output": True}
    )
    assert reply["choices"][0]["message"]["content"] == "\n```python\nprint(6 * 7)\n```\n</code>"
    status, reply = post(server, {**payload, "continue_final_message": True, "add_generation_prompt": True})
    assert status == 400 and "add_generation_prompt" in reply["error"]["message"]


def test_streaming_reassembles_to_the_same_completion(server, image):
    payload = {"model": MODEL, "messages": compute_messages(image), "temperature": 0, "stop": ["</code>"]}
    _, whole = post(server, payload)
    status, text = post(server, {**payload, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert len(deltas) > 10  # token by token
    assert "".join(deltas) == whole["choices"][0]["message"]["content"]
    last = next(c for c in reversed(chunks) if c["choices"])["choices"][0]
    assert (last["finish_reason"], last["stop_reason"]) == ("stop", "</code>")
    assert chunks[-1]["usage"] == whole["usage"]


@pytest.mark.parametrize(
    ("stop", "include_stop"),
    [
        ([], False),
        (["</code>"], True),
        (["* 7"], False),
        (["* 7", "python"], True),
        (["7\n```"], False),
        (["<think>Multiply with code"], False),  # longer than the text before it: all of it held back
    ],
)
def test_streamed_pieces_join_to_the_content_whatever_the_stops(server, image, stop, include_stop):
    """Text that may still grow into a stop string is held back, never sent and then taken back."""
    payload = {"model": MODEL, "messages": compute_messages(image), "temperature": 0, "stop": stop}
    payload["include_stop_str_in_output"] = include_stop
    _, whole = post(server, payload)
    _, text = post(server, {**payload, "stream": True})
    chunks = [json.loads(e.removeprefix("data: ")) for e in text.split("\n\n") if e and "[DONE]" not in e]
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert "".join(deltas) == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def _open_stream(server, payload: dict):
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    conn.request("POST", "/v1/chat/completions", json.dumps({**payload, "stream": True}).encode(), headers)
    return conn, conn.getresponse()


def _next_text(response) -> str:
    """Read events until one carries text; that text."""
    while line := response.readline():
        if line.startswith(b"data: {"):
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if delta:
                return delta
    raise AssertionError("the stream ended without text")


def laugh_payload(image: Path) -> dict:
    messages = chat_messages(new_conversation(image, LAUGH), continuation=False)
    return {
        "model": MODEL,
        "messages": messages,
        "temperature": 0,
        "max_tokens": 400,
        "stop": ["</answer>"],
        "include_stop_str_in_output": True,
    }


def test_stream_sends_text_while_the_model_is_still_generating(server, image):
    conn, response = _open_stream(server, laugh_payload(image))
    try:
        first = _next_text(response)
        assert server._lock.locked(), "the first text arrived only after the generation had ended"
        rest = response.read().decode()
    finally:
        conn.close()
    assert LAUGH_TEXT.startswith(first) and rest.rstrip().endswith("data: [DONE]")


def test_a_client_that_leaves_mid_stream_stops_the_generation(server, image):
    stats = server.backend.stats
    before = stats["decode_steps"]
    status, whole = post(server, laugh_payload(image))
    assert status == 200 and whole["choices"][0]["message"]["content"] == LAUGH_TEXT
    full = stats["decode_steps"] - before
    conn, response = _open_stream(server, laugh_payload(image))
    _next_text(response)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    with server._lock:  # the generation has ended
        left = stats["decode_steps"] - before - full
    assert left < full // 2, f"the generation ran {left} of {full} steps for a client that had gone"
    status, again = post(server, laugh_payload(image))  # the server is fine
    assert status == 200 and again["choices"][0]["message"]["content"] == LAUGH_TEXT


def test_a_stream_to_a_client_sending_connection_close_arrives_whole(server, image):
    """urllib sends `Connection: close`; the live stream must still come, whole, and end with [DONE]."""
    request = urllib.request.Request(
        server.url + "/v1/chat/completions",
        data=json.dumps({**laugh_payload(image), "stream": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200 and response.headers["Connection"] == "close"
        events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == LAUGH_TEXT
    assert len(chunks) > 10  # token by token, not in one piece


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://example.com/cat.png", "only data URLs"),
        ("data:image/png;base64,@@not-base64@@", "not valid base64"),
        ("data:image/png;base64," + base64.b64encode(b"no image here").decode(), "not a readable image"),
    ],
)
def test_bad_images_are_400_with_a_reason(server, url, words):
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]
    status, reply = post(server, {"model": MODEL, "messages": [{"role": "user", "content": content}]})
    assert status == 400
    assert words in reply["error"]["message"] and reply["error"]["type"] == "invalid_request_error"


def test_a_prompt_over_the_context_is_an_openai_context_error(server):
    messages = [{"role": "user", "content": "ha " * 5000}]
    status, reply = post(server, {"model": MODEL, "messages": messages, "max_tokens": 4})
    assert status == 400
    assert reply["error"]["code"] == "context_length_exceeded"
    assert reply["error"]["type"] == "invalid_request_error"
    assert "maximum context length is 4096 tokens" in reply["error"]["message"]


def test_request_body_limit_is_413(server):
    with GenerationServer(server.backend, "127.0.0.1", 0, max_request_bytes=1000) as small:
        small.start()
        status, reply = post(small, {"model": MODEL, "messages": [{"role": "user", "content": "x" * 2000}]})
    assert status == 413 and "limit of 1000 bytes" in reply["error"]["message"]


def test_token_model_and_route_errors(server):
    messages = [{"role": "user", "content": "hi"}]
    assert post(server, {"model": MODEL, "messages": messages}, token=None)[0] == 401
    status, reply = post(server, {"model": MODEL, "messages": messages}, token="wrong")
    assert status == 401 and reply["error"]["code"] == "invalid_api_key"
    status, reply = post(server, {"model": "gpt-9", "messages": messages, "max_tokens": 1})
    assert status == 404 and reply["error"]["code"] == "model_not_found"
    assert post(server, None, token=None, path="/health")[0] == 200
    status, models = post(server, None, path="/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == [MODEL]
    assert post(server, None, path="/v2/nothing")[0] == 404


# -- (b) the agent through the server ----------------------------------------------------------------------
@pytest.mark.parametrize("question", [COMPUTE, "Zoom in on the corner.", "Divide one by zero."])
def test_agent_over_http_matches_the_local_backend(local, remote, sandbox, image, question):
    config = AgentConfig(sampling=STEP)
    local_traj = Agent(local, config=config, sandbox=sandbox).run(image, question)
    http_traj = Agent(remote, config=config, sandbox=sandbox).run(image, question)
    assert http_traj.answer == local_traj.answer == SCRIPTS[question][-1].split("<answer>")[1][:-9]
    assert http_traj.text == local_traj.text  # the same turn, fed-back images included
    assert [e.kind for e in http_traj.events] == [e.kind for e in local_traj.events]
    first = http_traj.events[0]
    assert first.stop == "</code>" and first.prompt_tokens > 100 and first.completion_tokens > 10


def test_agent_over_http_without_streaming_and_the_zoom_image(remote, sandbox, image):
    agent = Agent(remote, config=AgentConfig(sampling=STEP, repetition_threshold=None), sandbox=sandbox)
    traj = agent.run(image, "Zoom in on the corner.")
    assert traj.answer == "red"
    assert len(traj.observations[0].images) == 1
    assert "<sandbox_output><image></sandbox_output>" in traj.text


def test_many_trajectories_at_once_through_agenerate(remote, sandbox, image):
    agent = Agent(remote, config=AgentConfig(sampling=STEP), sandbox=sandbox)
    tasks = [(COMPUTE, image), ("Zoom in on the corner.", image), (COMPUTE, image)]
    trajectories = asyncio.run(agent.arun_many(tasks, concurrency=3))
    assert [t.answer for t in trajectories] == ["42", "red", "42"]


def test_from_pretrained_by_name_through_the_agent(server, sandbox, image):
    with Agent.from_pretrained(
        MODEL, backend="openai", base_url=server.url + "/v1", api_key=TOKEN, sandbox=sandbox
    ) as agent:
        assert agent.backend.name == "openai" and agent.preset.name == "default"
        assert agent.run(image, COMPUTE).answer == "42"


# -- (c) continuation and turn-based messages --------------------------------------------------------------
def test_messages_for_continuation_and_for_turns(image, tmp_path):
    crop = tmp_path / "crop.png"
    Image.new("RGB", (8, 8), "red").save(crop)
    conv = new_conversation(image, COMPUTE)
    conv.add_model("<think>Crop. <code>x</code>")
    conv.add_feedback(render_feedback("", [crop]))
    conv.add_model("Red.")
    png = image_data_url(image)
    assert png.startswith("data:image/png;base64,")
    system, user, *rest = chat_messages(conv, continuation=True)
    assert system == {"role": "system", "content": conv.system}
    assert user["role"] == "user" and user["content"][0] == {"type": "image_url", "image_url": {"url": png}}
    assert user["content"][1]["type"] == "text" and COMPUTE in user["content"][1]["text"]
    crop_url = {"type": "image_url", "image_url": {"url": image_data_url(crop)}}
    assert rest == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "<think>Crop. <code>x</code><sandbox_output>"},
                crop_url,
                {"type": "text", "text": "</sandbox_output>Red."},
            ],
        }
    ]
    turns = chat_messages(conv, continuation=False)[2:]
    assert turns == [
        {"role": "assistant", "content": "<think>Crop. <code>x</code>"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<sandbox_output>"},
                crop_url,
                {"type": "text", "text": "</sandbox_output>"},
            ],
        },
        {"role": "assistant", "content": "Red."},
    ]
    text_only = new_conversation(image, COMPUTE)
    text_only.add_model("<think>")
    text_only.add_feedback([TextPart("<sandbox_output>"), TextPart("42"), TextPart("</sandbox_output>")])
    assert chat_messages(text_only, continuation=False)[3] == {
        "role": "user",
        "content": "<sandbox_output>42</sandbox_output>",
    }


def test_data_urls_carry_the_format(tmp_path):
    jpeg = tmp_path / "a.jpg"
    Image.new("RGB", (4, 4)).save(jpeg)
    url = image_data_url(jpeg)
    assert url.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).format == "JPEG"
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(BackendError, match="cannot read image"):
        image_data_url(tmp_path / "bad.png")


def test_turn_based_mode_runs_against_the_server(server, sandbox, image):
    backend = client(server.url + "/v1", continuation="never")
    traj = Agent(backend, config=AgentConfig(sampling=STEP), sandbox=sandbox).run(image, COMPUTE)
    assert traj.observations[0].stdout.strip() == "42"
    assert traj.final is not None and not [e for e in traj.events if e.kind == "error"]
    assert not backend.continues


def test_auto_mode_falls_back_to_turns_when_continuation_is_rejected(server, sandbox, image):
    def refuse_continuation(index: int, body: dict):
        if body.get("continue_final_message"):
            return 400, {"error": {"message": "Unrecognized request argument: continue_final_message"}}
        return None

    with Proxy(server.url, refuse_continuation) as proxy:
        backend = client(proxy.url + "/v1")
        traj = Agent(backend, config=AgentConfig(sampling=STEP), sandbox=sandbox).run(image, COMPUTE)
    assert not backend.continues
    assert traj.observations[0].stdout.strip() == "42" and traj.final is not None
    continued = [b.get("continue_final_message", False) for b in proxy.bodies]
    assert continued[:3] == [False, True, False]  # fresh step, refused continuation, the same step as turns
    assert proxy.bodies[2]["messages"][-1]["role"] == "user"  # the sandbox output as a user turn


# -- (d) ATS -----------------------------------------------------------------------------------------------
def test_ats_decodes_the_code_leg_greedily_whatever_the_seed(server, image):
    with Proxy(server.url, lambda i, body: None) as proxy:
        backend = client(proxy.url + "/v1")
        texts = []
        for seed in range(3):
            params = SamplingParams(temperature=1.0, code_temperature=0.0, seed=seed, max_new_tokens=96)
            gen = backend.generate([GenerationRequest(new_conversation(image, COMPUTE), params)])[0]
            assert gen.code_greedy and (gen.finish_reason, gen.stop) == ("stop", "</code>")
            texts.append(gen.text)
    assert texts == [COMPUTE_CODE_STEP] * 3
    text_leg, code_leg = proxy.bodies[:2]
    assert text_leg["temperature"] == 1.0 and "<code>" in text_leg["stop"]
    assert code_leg["temperature"] == 0.0 and "<code>" not in code_leg["stop"]
    assert code_leg["continue_final_message"] and code_leg["messages"][-1]["content"].endswith("<code>")


def test_ats_code_is_greedy_where_plain_sampling_varies(remote, image):
    conv = new_conversation(image, COMPUTE)
    conv.add_model("<think>Multiply with code. <code>\n```python\n")

    def sample(seed: int, code_temperature: float | None) -> str:
        params = SamplingParams(
            temperature=3.0, code_temperature=code_temperature, seed=seed, max_new_tokens=24
        )
        return remote.generate([GenerationRequest(conv, params)])[0].text

    assert {sample(seed, 0.0) for seed in range(3)} == {"print(6 * 7)\n```\n</code>"}
    assert len({sample(seed, None) for seed in range(3)}) > 1  # the control: the same text leg, sampled


def test_ats_needs_continuation(server, image):
    backend = client(server.url + "/v1", continuation="never")
    params = SamplingParams(temperature=1.0, code_temperature=0.0, max_new_tokens=16)
    with pytest.raises(BackendError, match="continue"):
        backend.generate([GenerationRequest(new_conversation(image, COMPUTE), params)])


# -- (e) the repetition guard over a stream ----------------------------------------------------------------
def test_repetition_guard_closes_the_stream_early(remote, image):
    conv = new_conversation(image, LAUGH)
    params = SamplingParams(max_new_tokens=120)
    whole = remote.generate([GenerationRequest(conv, params, repetition_threshold=None)])[0]
    assert whole.text == LAUGH_TEXT and whole.finish_reason == "stop"
    guarded = remote.generate([GenerationRequest(conv, params, repetition_threshold=0.5)])[0]
    assert guarded.finish_reason == "repetition"
    assert 64 <= len(guarded.text) < len(whole.text) and whole.text.startswith(guarded.text)
    # the connection it closed is not reused: the next request works
    assert (
        remote.generate([GenerationRequest(new_conversation(image, COMPUTE), STEP)])[0].text
        == COMPUTE_CODE_STEP
    )


# -- (f) errors --------------------------------------------------------------------------------------------
def test_unreachable_endpoint_is_an_endpoint_error_quickly(image):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = client(f"http://127.0.0.1:{port}/v1", max_retries=1, backoff_s=0.01)
    started = time.perf_counter()
    with pytest.raises(EndpointError, match=f"127.0.0.1:{port}/v1/chat/completions after 2 attempt"):
        backend.generate([GenerationRequest(new_conversation(image, COMPUTE), STEP)])
    assert time.perf_counter() - started < 5


def test_wrong_key_unknown_model_and_wrong_base_url(server, image):
    request = GenerationRequest(new_conversation(image, COMPUTE), STEP)
    with pytest.raises(AuthenticationError, match="api-key"):
        client(server.url + "/v1", api_key="wrong").generate([request])
    with pytest.raises(ModelNotFoundError, match=f"it serves {MODEL}"):
        OpenAIBackend.from_pretrained("gpt-9", base_url=server.url + "/v1", api_key=TOKEN).generate([request])
    with pytest.raises(EndpointError, match="base-url"):
        client(server.url).generate([request])


def test_context_overflow_is_a_generation_not_an_exception(remote, image):
    conv = new_conversation(image, "ha " * 5000)
    gen = remote.generate([GenerationRequest(conv, STEP)])[0]
    assert (gen.finish_reason, gen.text) == ("context", "")


def test_server_errors_are_retried_and_client_errors_are_not(server, image):
    request = GenerationRequest(new_conversation(image, COMPUTE), SamplingParams(max_new_tokens=48))

    def flaky(index: int, body: dict):
        return (500, {"error": {"message": "engine restarting"}}) if index < 2 else None

    with Proxy(server.url, flaky) as proxy:
        gen = client(proxy.url + "/v1", backoff_s=0.01).generate([request])[0]
        assert gen.text == COMPUTE_CODE_STEP and len(proxy.bodies) == 3
    with Proxy(server.url, flaky) as proxy, pytest.raises(EndpointError, match="HTTP 500 after 2 attempt"):
        client(proxy.url + "/v1", backoff_s=0.01, max_retries=1).generate([request])
    with Proxy(server.url, lambda i, body: (400, {"error": {"message": "bad field"}})) as proxy:
        with pytest.raises(BackendError, match="bad field"):
            client(proxy.url + "/v1", backoff_s=0.01).generate([request])
        assert len(proxy.bodies) == 1


def test_a_keepalive_connection_the_server_closed_is_replaced_without_a_retry(server, image):
    request = GenerationRequest(new_conversation(image, COMPUTE), SamplingParams(max_new_tokens=8))
    with GenerationServer(
        server.backend, "127.0.0.1", 0, token=TOKEN, model_name=MODEL, keepalive_s=0.2
    ) as srv:
        srv.start()
        backend = client(srv.url + "/v1", max_retries=0)
        first = backend.generate([request])[0]
        time.sleep(0.6)  # the server drops the idle connection
        assert backend.generate([request])[0].text == first.text


def test_agent_run_reports_an_unreachable_endpoint_as_a_final_error(sandbox, image):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = client(f"http://127.0.0.1:{port}/v1", max_retries=0)
    traj = Agent(backend, config=AgentConfig(sampling=STEP), sandbox=sandbox).run(image, COMPUTE)
    assert traj.final.reason == "error" and traj.answer is None
    assert any(e.kind == "error" and "cannot reach" in e.message for e in traj.events)
