"""A stand-in reward judge over real HTTP: a stdlib server on 127.0.0.1 that speaks the OpenAI
chat-completions protocol and answers both reward questions (correctness, consistency) the way a large model
would, so the rewards talk to it through the same `RewardJudge` -> `Judge` -> `OpenAIBackend` path as to a
real endpoint.

Modes: "json" (a normal reply), "garbage" (a reply with no verdict), "error" (HTTP 500), "broken" (HTTP 200
whose body is not a chat completion).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from thyme.eval.judge import JUDGE_SYSTEM
from thyme.rewards.judge import CONSISTENCY_SYSTEM

MODEL = "judge-72b"
KEY = "reward-judge-key"
# What the stand-in knows beyond string equality.
EQUIVALENT = {("0.5", "one half"), ("Paris", "the capital of France")}


class RewardJudgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = "json"
        self.lock = threading.Lock()
        self.asked: list[tuple[str, str]] = []  # (question kind, the prompt's subject) per request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.asked]


class _Handler(BaseHTTPRequestHandler):
    server: RewardJudgeServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._send(401, {"error": {"message": "bad key"}})
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        if system == JUDGE_SYSTEM:
            gold = _between(user, "Reference answer:\n", "\n\nGenerated answer:")
            said = _between(user, "Generated answer:\n", "\n\nThe generated")
            kind, key, verdict = "correct", "Correctness", _correct(gold, said)
        elif system == CONSISTENCY_SYSTEM:
            reasoning = _between(user, "End of the reasoning:\n", "\n\nFinal answer:")
            answer = _between(user, "Final answer:\n", "\n\nDecide")
            # The reasoning's conclusion is what it ends with.
            kind, key, verdict = "consistent", "Consistency", reasoning.rstrip(" .").endswith(answer)
            said = answer
        else:
            return self._send(400, {"error": {"message": "unknown question"}})
        with self.server.lock:
            self.server.asked.append((kind, said))
        if self.server.mode == "error":
            return self._send(500, {"error": {"message": "the judge is overloaded"}})
        if self.server.mode == "broken":
            return self._send(200, {"unexpected": "shape"})
        content = "I cannot tell." if self.server.mode == "garbage" else json.dumps({key: int(verdict)})
        message = {"role": "assistant", "content": content}
        self._send(
            200,
            {
                "id": "cmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 8, "total_tokens": 58},
            },
        )

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args) -> None:
        pass


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def _correct(gold: str, said: str) -> bool:
    return gold.strip().lower() == said.strip().lower() or (gold.strip(), said.strip()) in EQUIVALENT
