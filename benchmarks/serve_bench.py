"""`thyme serve` latency: the loop over HTTP against a direct `Agent.run`, and what streaming shows when.

    python benchmarks/serve_bench.py [--runs 10] [--json out.json]

The scripted tiny model (`thyme.testing.scripted`) answers "What is six times seven?" (one code step, the real
sandbox, then the answer) in three ways, alternating, on the same agent:
- direct: `Agent.run` in this process;
- http: a non-streamed request to an in-process `AgentServer` on 127.0.0.1 (one keep-alive connection);
- stream: the same request with `stream: true`, read as server-sent events: when the first text, the code
  block, the sandbox output and the final chunk arrive, measured from sending the request.
Medians over `--runs`; `http_overhead_ms` is http minus direct (parsing, the image's round trip through
PNG, the trajectory's JSON, HTTP).

Then throughput: `--requests` requests (default 32) sent by 1, 8 and 32 concurrent clients (`--clients`), to a
server whose concurrent steps share batched generation (`max_batch` 32, the default) and to one that runs
each step alone (`max_batch` 1), side by side in this run: requests/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import pathlib
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image
from sandbox_bench import report

from thyme.agent import Agent, AgentConfig, SamplingParams
from thyme.agent.backends.transformers import TransformersBackend
from thyme.sandbox import Sandbox, SandboxConfig
from thyme.serve.agent import AgentServer
from thyme.testing.scripted import build_scripted

QUESTION = "What is six times seven?"


def request_body(image: pathlib.Path, stream: bool) -> bytes:
    url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    payload = {"model": "scripted", "messages": [{"role": "user", "content": content}], "stream": stream}
    return json.dumps(payload).encode()


def timed_stream(conn: http.client.HTTPConnection, body: bytes) -> dict[str, float]:
    """Seconds from sending the request to the first chunk of each kind (text, code, observation, final)."""
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    arrived: dict[str, float] = {}
    while line := response.readline():
        if line.startswith(b"data: {"):
            kind = (json.loads(line[6:]).get("thyme") or {}).get("type")
            if kind is not None:
                arrived.setdefault(kind, time.perf_counter() - start)
        elif line.startswith(b"data: [DONE]"):
            response.read()
            break
    return arrived


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=32, help="requests per throughput measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, Sandbox(SandboxConfig(timeout_s=15)) as sandbox:
        root = pathlib.Path(tmp_name)
        image = root / "noise.png"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)).save(image)
        backend = TransformersBackend.from_pretrained(
            str(build_scripted(root / "scripted", image, sandbox=sandbox))
        )
        agent = Agent(
            backend, config=AgentConfig(sampling=SamplingParams(max_new_tokens=160)), sandbox=sandbox
        )
        direct, over_http, streamed = [], [], []
        with AgentServer(agent, "127.0.0.1", 0, model_name="scripted") as server:
            server.start()
            host, port = server.url.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=120)
            plain, stream = request_body(image, False), request_body(image, True)
            for _ in range(args.runs + 1):  # the first round warms up and is dropped
                start = time.perf_counter()
                assert agent.run(image=image, question=QUESTION).answer == "42"
                direct.append(time.perf_counter() - start)
                start = time.perf_counter()
                conn.request("POST", "/v1/chat/completions", plain, {"Content-Type": "application/json"})
                reply = json.loads(conn.getresponse().read())
                over_http.append(time.perf_counter() - start)
                assert reply["thyme"]["answer"] == "42"
                streamed.append(timed_stream(conn, stream))
            conn.close()
        throughput = {}
        for clients in (int(c) for c in args.clients.split(",")):
            for max_batch in (32, 1):
                with AgentServer(agent, "127.0.0.1", 0, model_name="scripted", max_batch=max_batch) as srv:
                    srv.start()
                    throughput[(clients, max_batch)] = requests_per_second(
                        srv.url, plain, clients, args.requests
                    )
        agent.close()
    direct, over_http, streamed = direct[1:], over_http[1:], streamed[1:]
    results: dict = {"runs": args.runs, "direct_ms": statistics.median(direct) * 1e3}
    results["http_ms"] = statistics.median(over_http) * 1e3
    results["http_overhead_ms"] = results["http_ms"] - results["direct_ms"]
    for kind in ("text", "code", "observation", "final"):
        results[f"stream_first_{kind}_ms"] = statistics.median(s[kind] for s in streamed) * 1e3
    for (clients, max_batch), rate in throughput.items():
        results[f"rps_{clients}_clients_{'shared' if max_batch > 1 else 'alone'}"] = rate
        if max_batch == 1:
            results[f"rps_{clients}_clients_ratio"] = throughput[(clients, 32)] / rate
    report(results, args.json)


def requests_per_second(url: str, body: bytes, clients: int, total: int) -> float:
    """`total` non-streamed requests from `clients` threads, one keep-alive connection each; requests/s."""
    host, port = url.removeprefix("http://").split(":")
    share = [total // clients + (i < total % clients) for i in range(clients)]

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        for _ in range(n):
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            reply = json.loads(conn.getresponse().read())
            assert reply["thyme"]["answer"] == "42", reply
        conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, [n for n in share if n]))
    return total / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
