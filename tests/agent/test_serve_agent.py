"""`thyme serve`: the whole loop behind an OpenAI-compatible endpoint, on the scripted tiny model and the
real sandbox, reached over real HTTP on 127.0.0.1 (in-process server, and the CLI as a subprocess)."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import subprocess
import sys

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
