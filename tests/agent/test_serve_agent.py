"""`thyme serve`: the whole loop behind an OpenAI-compatible endpoint, on the scripted tiny model and the
real sandbox, reached over real HTTP on 127.0.0.1 (in-process server, and the CLI as a subprocess); streaming
through the official `openai` client and through urllib (which sends `Connection: close`)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import signal
import subprocess
import sys
import time
import urllib.request

import openai
import pytest
from PIL import Image

from thyme.agent import Agent, AgentConfig, SamplingParams
from thyme.serve.agent import AgentServer


@pytest.fixture(scope="module")
def server(scripted_backend, agent_sandbox):
    agent = Agent(scripted_backend, config=AgentConfig(sampling=SamplingParams(max_new_tokens=160)),
                  sandbox=agent_sandbox)  # fmt: skip
    with AgentServer(agent, "127.0.0.1", 0, token="t0k", model_name="scripted") as srv:
        srv.start()
        yield srv
    agent.close()


def post(url: str, payload: dict, token: str | None = "t0k") -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request("POST", "/v1/chat/completions", json.dumps(payload), headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def ask(image, question: str, **extra) -> dict:
    url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    return {"model": "scripted", "messages": [{"role": "user", "content": content}], **extra}


def test_the_server_runs_the_loop(server, noise_png):
    status, body = post(server.url, ask(noise_png, "What is six times seven?"))
    assert status == 200, body
    content = body["choices"][0]["message"]["content"]
    assert "</code><sandbox_output>42</sandbox_output>" in content and content.endswith("</answer>")
    assert body["thyme"]["answer"] == "42" and body["thyme"]["tool_calls"] == 1
    assert body["thyme"]["trajectory"]["schema"] == "thyme.trajectory/1"
    assert body["usage"]["completion_tokens"] > 0


def test_image_feedback_and_options(server, noise_png):
    _, zoom = post(server.url, ask(noise_png, "Zoom in on the corner."))
    assert zoom["thyme"]["answer"] == "red"
    assert "<sandbox_output><image></sandbox_output>" in zoom["choices"][0]["message"]["content"]
    _, direct = post(server.url, ask(noise_png, "What is six times seven?", thyme={"tools": False}))
    assert direct["thyme"]["tool_calls"] == 0
    assert (direct["thyme"]["trajectory"]["tools"], direct["thyme"]["trajectory"]["preset"]) == (
        False,
        "direct",
    )
    _, capped = post(server.url, ask(noise_png, "Count forever.", thyme={"max_steps": 2}))
    assert capped["thyme"]["reason"] == "fallback"


def test_bad_requests(server, noise_png):
    two = ask(noise_png, "q")
    two["messages"][0]["content"].insert(0, two["messages"][0]["content"][0])
    assert post(server.url, two)[0] == 400
    assert post(server.url, ask(noise_png, "q", thyme={"explode": 1}))[0] == 400
    assert post(server.url, ask(noise_png, "q"), token="wrong")[0] == 401
    status, body = post(server.url, {"model": "scripted", "messages": [{"role": "user", "content": " "}]})
    assert status == 400 and "question" in body["error"]["message"]


def test_thyme_serve_cli(scripted_model_dir, noise_png, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "thyme", "serve", "--model", str(scripted_model_dir), "--port", "0",
         "--token-file", str(token), "--served-model-name", "scripted"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://"), (
            proc.stderr.read() if proc.poll() is not None else line
        )
        url = line.split()[-1]
        status, body = post(url, ask(noise_png, "What is six times seven?", max_tokens=160), token="s3cret")
        assert status == 200 and body["thyme"]["answer"] == "42"
        # Requests the loop cannot take are 400s that say why, never 500s.
        wide = tmp_path / "wide.png"
        Image.new("RGB", (8000, 1)).save(wide)
        garbage = tmp_path / "garbage.png"
        garbage.write_bytes(b"no image here")
        text_only = {
            "model": "scripted",
            "messages": [{"role": "user", "content": "What is six times seven?"}],
        }
        for payload, reason in [
            (text_only, "send exactly one image with the question (got 0)"),
            (ask(wide, "q"), "uploaded image 1 is 8000x1: its long side is over 200 times its short side"),
            (
                ask(garbage, "q"),
                "uploaded image 1 is not a readable image (not an image format PIL can read)",
            ),
        ]:
            status, body = post(url, payload, token="s3cret")
            assert status == 400, body
            assert body["error"]["type"] == "invalid_request_error" and reason in body["error"]["message"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


# -- streaming -----------------------------------------------------------------------------------------
def stream_chunks(server, payload: dict, on_chunk=None) -> list[tuple[dict | None, str, object]]:
    """The stream of `payload` through the official client: (thyme object, content delta, chunk) each."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="t0k", max_retries=0)
    extra = {k: payload[k] for k in ("thyme",) if k in payload}
    with client.chat.completions.create(
        model="scripted", messages=payload["messages"], stream=True,
        stream_options={"include_usage": True}, extra_body=extra or None,
    ) as stream:  # fmt: skip
        seen = []
        for chunk in stream:
            thyme = (chunk.model_extra or {}).get("thyme")
            delta = chunk.choices[0].delta.content if chunk.choices else None
            seen.append((thyme, delta or "", chunk))
            if on_chunk is not None:
                on_chunk(thyme)
    return seen


def test_openai_client_streams_each_step_live(server, scripted_backend, noise_png):
    payload = ask(noise_png, "What is six times seven?")
    _, whole = post(server.url, payload)
    live = []  # for each text chunk: was the model still generating when it arrived?

    def note_text(thyme) -> None:
        if thyme and thyme["type"] == "text":
            live.append(scripted_backend._lock.locked())

    seen = stream_chunks(server, payload, note_text)
    kinds = [t["type"] for t, _, _ in seen if t]
    # text as generated (many pieces), the code, the sandbox output, the next step's text, the answer
    assert kinds[0] == "text" and kinds[-1] == "final"
    code_at, obs_at = kinds.index("code"), kinds.index("observation")
    assert set(kinds[:code_at]) == {"text"} and code_at > 3 and obs_at == code_at + 1
    assert set(kinds[obs_at + 1 : -1]) == {"text"}
    assert live[0], "the first text arrived only after the step's generation had ended"
    # the pieces join to exactly the non-streamed turn
    assert "".join(delta for _, delta, _ in seen) == whole["choices"][0]["message"]["content"]
    by_kind = {t["type"]: (t, delta) for t, delta, _ in seen if t}
    assert by_kind["code"][0]["code"] == "print(6 * 7)" and by_kind["code"][1] == ""
    observation, fed = by_kind["observation"]
    assert fed == "<sandbox_output>42</sandbox_output>" and observation["stdout"].strip() == "42"
    assert observation["images"] == [] and observation["error"] is None
    final = by_kind["final"][0]
    assert (final["answer"], final["reason"], final["tool_calls"]) == ("42", "answer", 1)
    assert final["trajectory"]["schema"] == "thyme.trajectory/1"
    final_chunk = next(c for t, _, c in seen if t and t["type"] == "final")
    assert final_chunk.choices[0].finish_reason == "stop"
    usage = seen[-1][2]
    assert usage.choices == [] and usage.usage.completion_tokens == whole["usage"]["completion_tokens"]


def test_streamed_observations_carry_their_images(server, noise_png):
    seen = stream_chunks(server, ask(noise_png, "Zoom in on the corner."))
    observation, fed = next((t, d) for t, d, _ in seen if t and t["type"] == "observation")
    assert fed == "<sandbox_output><image></sandbox_output>" and len(observation["images"]) == 1
    url = observation["images"][0]
    assert url.startswith("data:image/png;base64,")
    crop = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert crop.size[0] > 0 and crop.size[1] > 0
    assert next(t for t, _, _ in seen if t and t["type"] == "final")["answer"] == "red"


def test_streamed_direct_answers_and_request_errors(server, noise_png):
    seen = stream_chunks(server, ask(noise_png, "What is six times seven?", thyme={"tools": False}))
    kinds = {t["type"] for t, _, _ in seen if t}
    assert kinds == {"text", "final"}
    text_only = {"model": "scripted", "messages": [{"role": "user", "content": "What is six times seven?"}]}
    with pytest.raises(openai.BadRequestError, match="exactly one image"):
        stream_chunks(server, text_only)  # refused before anything streamed: a plain 400


def test_a_stream_to_a_client_sending_connection_close_arrives_whole(server, noise_png):
    """urllib sends `Connection: close`; the stream must still come, whole, and end with [DONE]."""
    body = json.dumps({**ask(noise_png, "What is six times seven?"), "stream": True}).encode()
    request = urllib.request.Request(
        server.url + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": "Bearer t0k"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["thyme"]["answer"] == "42"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).endswith("</answer>")


def test_a_client_that_leaves_mid_stream_ends_the_run(server, scripted_backend, noise_png):
    stats = scripted_backend.stats
    before = stats["decode_steps"]
    status, whole = post(server.url, ask(noise_png, "Count forever."))
    assert status == 200 and whole["thyme"]["tool_calls"] == 3
    full = stats["decode_steps"] - before
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="t0k", max_retries=0)
    payload = ask(noise_png, "Count forever.")
    stream = client.chat.completions.create(model="scripted", messages=payload["messages"], stream=True)
    for chunk in stream:
        if (chunk.model_extra or {}).get("thyme", {}).get("type") == "text":
            break
    stream.close()
    client.close()
    artifacts = server.agent.artifacts_dir
    deadline = time.monotonic() + 30
    while any(artifacts.iterdir()):  # the aborted run removes its trajectory's folder when it ends
        assert time.monotonic() < deadline, "the run went on for a client that had gone"
        time.sleep(0.05)
    left = stats["decode_steps"] - before - full
    assert left < full // 2, f"the run generated {left} of {full} tokens for a client that had gone"
    status, again = post(server.url, ask(noise_png, "What is six times seven?"))  # the server is fine
    assert status == 200 and again["thyme"]["answer"] == "42"


def test_a_run_that_fails_mid_stream_ends_with_an_openai_error(scripted_backend, agent_sandbox, noise_png):
    """The backend refuses this agent's sampling (ATS with a sampled code leg) at its first step: the stream
    has begun, so the failure comes as an `error` chunk and then an OpenAI error event (the client raises)."""
    sampling = SamplingParams(temperature=1.0, code_temperature=0.7, max_new_tokens=160)
    agent = Agent(scripted_backend, config=AgentConfig(sampling=sampling), sandbox=agent_sandbox)
    kinds = []
    with AgentServer(agent, "127.0.0.1", 0, token="t0k", model_name="scripted") as srv:
        srv.start()
        with pytest.raises(openai.APIError, match=r"the run failed: .*greedy code only"):
            stream_chunks(
                srv, ask(noise_png, "What is six times seven?"), lambda t: kinds.append(t and t["type"])
            )
        status, body = post(srv.url, ask(noise_png, "What is six times seven?"))  # not streamed: a 502
        assert status == 502 and "greedy code only" in body["error"]["message"]
    assert kinds == [None, "error"]  # the role chunk, then what went wrong


# -- sandbox hosts ---------------------------------------------------------------------------------------
def test_the_loop_runs_its_code_on_remote_sandbox_hosts(scripted_backend, agent_sandbox, noise_png):
    """`thyme serve --sandbox-url A,B`: the agent's sessions live on `thyme sandbox serve` hosts (two real
    servers on loopback here), answers and fed-back images come through them, streamed or not."""
    from thyme.sandbox.server import SandboxServer, ServerConfig
    from thyme.serve.agent import remote_sandbox

    with (
        SandboxServer(agent_sandbox, ServerConfig(port=0, token="sb")) as host_a,
        SandboxServer(agent_sandbox, ServerConfig(port=0, token="sb")) as host_b,
    ):
        host_a.start()
        host_b.start()
        remote = remote_sandbox(f"{host_a.url},{host_b.url}", "sb")
        config = AgentConfig(sampling=SamplingParams(max_new_tokens=160))
        agent = Agent(scripted_backend, config=config, sandbox=remote)
        try:
            with AgentServer(agent, "127.0.0.1", 0, token="t0k", model_name="scripted") as srv:
                srv.start()
                status, body = post(srv.url, ask(noise_png, "What is six times seven?"))
                assert status == 200 and body["thyme"]["answer"] == "42", body
                seen = stream_chunks(srv, ask(noise_png, "Zoom in on the corner."))
                observation = next(t for t, _, _ in seen if t and t["type"] == "observation")
                assert len(observation["images"]) == 1 and seen[-2][0]["answer"] == "red"
            assert all(h["sessions"] == 0 for h in remote.hosts())  # every session was closed
            assert host_a.service.health()["sessions"] == host_b.service.health()["sessions"] == 0
        finally:
            agent.close()
            remote.close()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--sandbox-url", "http://127.0.0.1:1", "--sandbox-url", "http://127.0.0.1:2"], "no sandbox host"),
        (["--sandbox-url", "http://127.0.0.1:1,nope"], "a sandbox URL must look like http://host:port"),
        (["--raw", "--sandbox-url", "http://127.0.0.1:1"], "--sandbox-url is for the loop"),
    ],
)
def test_thyme_serve_refuses_sandbox_hosts_it_cannot_use(flags, words):
    result = subprocess.run(
        [sys.executable, "-m", "thyme", "serve", "--model", "unused", "--port", "0", *flags],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and words in result.stderr, result.stderr


# -- shared generation -------------------------------------------------------------------------------------
def test_concurrent_requests_share_batched_generation(scripted_backend, agent_sandbox, noise_png):
    """Eight clients at once: every answer right, and their steps went to the model in shared batches (fewer
    generate() calls than steps), where max_batch=1 makes one call per step."""
    from concurrent.futures import ThreadPoolExecutor

    config = AgentConfig(sampling=SamplingParams(max_new_tokens=160))
    counts = {}
    for max_batch in (32, 1):
        agent = Agent(scripted_backend, config=config, sandbox=agent_sandbox)
        with AgentServer(agent, "127.0.0.1", 0, model_name="scripted", max_batch=max_batch) as srv:
            srv.start()
            # The agent's own runs and the server's share its artifacts folder and trajectory numbering.
            assert agent.run(image=noise_png, question="What is six times seven?").answer == "42"
            calls_before = scripted_backend.stats["generate_calls"]
            payloads = [ask(noise_png, "What is six times seven?")] * 8
            with ThreadPoolExecutor(8) as pool:
                replies = list(pool.map(post, [srv.url] * 8, payloads, [None] * 8))
            assert all(status == 200 and body["thyme"]["answer"] == "42" for status, body in replies), replies
            steps = sum(body["thyme"]["steps"] for _, body in replies)
            counts[max_batch] = (scripted_backend.stats["generate_calls"] - calls_before, steps, srv.shared)
        agent.close()
    calls, steps, shared = counts[32]
    assert shared is not None and shared.largest > 1 and calls < steps, (calls, steps, shared.largest)
    assert shared.requests == steps
    calls, steps, shared = counts[1]
    assert shared is None and calls == steps


def test_shared_generation_reports_a_failed_call_to_each_of_its_callers(scripted_backend):
    """A BackendError of one shared call (here: ATS with sampled code, which this backend refuses) reaches
    every caller whose request was in it; the queue goes on serving afterwards."""
    import threading

    from thyme.agent import BackendError
    from thyme.agent.backends.base import GenerationRequest
    from thyme.agent.conversation import Conversation
    from thyme.protocol import TextPart
    from thyme.serve.batching import SharedGeneration

    conversation = Conversation(system="", user=(TextPart("What is six times seven?"),))
    bad = GenerationRequest(conversation, SamplingParams(temperature=1.0, code_temperature=0.5))
    good = GenerationRequest(conversation, SamplingParams(max_new_tokens=4))
    shared = SharedGeneration(scripted_backend, max_batch=8, window_s=0.2)  # a wide window: one call
    errors = []

    def call() -> None:
        try:
            shared.generate([bad])
        except BackendError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(errors) == 3 and shared.calls == 0
    (generation,) = shared.generate([good])
    assert generation.completion_tokens > 0 and shared.calls == 1
    shared.close()
    with pytest.raises(RuntimeError, match="closed"):
        shared.generate([good])


# -- the HTTP layer (FastAPI): schema errors, /docs, graceful shutdown --------------------------------------
def test_schema_errors_are_openai_400s_that_name_the_field(server, noise_png):
    status, body = post(server.url, ask(noise_png, "q", temperature="hot"))
    assert status == 400 and body["error"]["param"] == "temperature"
    assert (
        body["error"]["message"].startswith("temperature: ")
        and body["error"]["type"] == "invalid_request_error"
    )
    status, body = post(server.url, ask(noise_png, "q", thyme={"max_steps": 0}))
    assert status == 400 and body["error"]["message"].startswith("thyme.max_steps: ")
    status, body = post(server.url, {"model": "scripted", "messages": [{"role": "robot", "content": "hi"}]})
    assert status == 400 and body["error"]["message"].startswith("messages[0].role: ")
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v1/chat/completions", b"{not json", {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 400 and "not valid JSON" in json.loads(response.read())["error"]["message"]


def test_docs_and_schema_are_served(server):
    with urllib.request.urlopen(server.url + "/docs", timeout=30) as response:
        assert response.status == 200 and b"swagger" in response.read().lower()
    with urllib.request.urlopen(server.url + "/openapi.json", timeout=30) as response:
        schema = json.loads(response.read())
    assert "/v1/chat/completions" in schema["paths"]
    assert "thyme" in schema["components"]["schemas"]["AgentChatRequest"]["properties"]


def test_sigterm_lets_the_request_in_flight_finish(scripted_model_dir, noise_png):
    """SIGTERM while a stream is in flight: the stream still ends whole with [DONE], then the server exits 0
    and no longer accepts connections."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "thyme", "serve", "--model", str(scripted_model_dir), "--port", "0",
         "--served-model-name", "scripted"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://"), (
            proc.stderr.read() if proc.poll() is not None else line
        )
        host, port = line.split()[-1].removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        payload = {**ask(noise_png, "Zoom in on the corner.", max_tokens=160), "stream": True}
        conn.request(
            "POST", "/v1/chat/completions", json.dumps(payload), {"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        assert response.status == 200
        first = response.readline()
        assert first.startswith(b"data: ")
        proc.send_signal(signal.SIGTERM)
        rest = response.read().decode()
        events = [first.decode()[6:].strip()] + [x[6:] for x in rest.splitlines() if x.startswith("data: ")]
        assert events[-1] == "[DONE]"
        final = json.loads(events[-2])["thyme"]
        assert final["type"] == "final" and final["answer"] == "red"
        assert proc.wait(timeout=30) == 0
        with pytest.raises(OSError):
            http.client.HTTPConnection(host, int(port), timeout=5).request("GET", "/health")
    finally:
        if proc.poll() is None:
            proc.kill()
