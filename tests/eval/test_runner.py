"""The eval runner on a real tiny model, the real sandbox and the transformers backend: results and scores,
the protocol card, resume (after --limit, after a torn last line), card mismatch refusal, unusable inputs,
and samples that fail in the backend (an endpoint that is not there) being retried rather than scored.

The model is the tiny Qwen2.5-VL that learned `thyme.testing.scripted.SCRIPTS`; the task registered here asks
exactly those questions, so its tool trajectories are real (code written, run, fed back) and predictable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from scripted_eval import scripted_model, scripted_task

import thyme
from thyme.agent import Agent, AgentConfig, SamplingParams
from thyme.eval import EvalSample
from thyme.eval.runner import EvalAborted, ProtocolMismatch, run_eval, trajectory_dirname
from thyme.jsonl import JsonlRecords
from thyme.protocol import get_preset

EXPECTED = {"s0": 1.0, "s1": 1.0, "s2": 1.0, "s3": 1.0, "s4": 0.0}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return scripted_model(tmp_path_factory)


@pytest.fixture(scope="module")
def backend(model):
    from thyme.agent.backends.transformers import TransformersBackend

    return TransformersBackend.from_pretrained(str(model[0]), device="cpu")


@pytest.fixture(scope="module")
def sandbox():
    from thyme.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(timeout_s=15, pool_size=2)) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def task(model):
    return scripted_task("eval-runner-scripted", model[1])


def make_agent(backend, sandbox, **config) -> Agent:
    config.setdefault("sampling", SamplingParams(max_new_tokens=128))
    return Agent(backend, config=AgentConfig(**config), sandbox=sandbox)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(task, backend, sandbox, tmp_path_factory):
    """One uninterrupted tools run of the five samples (the reference for the other tests)."""
    out = tmp_path_factory.mktemp("eval-full")
    data = out / "data.tsv"
    data.write_text("index\tquestion\n0\tsix times seven\n")
    result = run_eval(task, make_agent(backend, sandbox), data=data, out_dir=out, concurrency=4)
    return out, data, result


def test_results_and_scores(full_run):
    out, _, result = full_run
    assert (result.mode, result.total, result.scored, result.new, result.errors) == ("tools", 5, 5, 5, [])
    assert result.accuracy == pytest.approx(0.8)
    records = {r["id"]: r for r in lines(out / "tools" / "results.jsonl")}
    assert {i: r["score"] for i, r in records.items()} == EXPECTED
    six, zoom, divide, count, trick = (records[f"s{i}"] for i in range(5))
    assert (six["prediction"], six["answer"], six["reason"], six["steps"], six["tool_calls"]) == (
        "42",
        "42",
        "answer",
        2,
        1,
    )
    assert (six["code_ok"], six["code_total"], six["question"]) == (1, 1, "What is six times seven?")
    assert six["tokens"]["completion"] > 0 and six["timings"]["generation_s"] > 0
    assert (divide["code_ok"], divide["code_total"], divide["prediction"]) == (0, 1, "undefined")
    assert (count["tool_calls"], count["steps"], count["code_ok"]) == (3, 4, 3)
    assert zoom["prediction"] == "red" and zoom["category"] == "zoom"
    assert trick["prediction"] == "42" and trick["score"] == 0.0
    assert 0 < result.sandbox_share < 1 and 0 < result.generation_share <= 1


def test_trajectories_are_saved_with_html(full_run):
    out, _, _ = full_run
    for record in lines(out / "tools" / "results.jsonl"):
        folder = out / "tools" / record["trajectory"]
        saved = json.loads((folder / "trajectory.json").read_text())
        assert saved["answer"] == record["response"]
        assert (folder / saved["image"]).is_file()
        assert "<html" in (folder / "index.html").read_text().lower()
    zoom = json.loads((out / "tools" / "trajectories" / "s1" / "trajectory.json").read_text())
    fed_back = [p for e in zoom["events"] if e["kind"] == "observation" for p in e["images"]]
    assert fed_back and all((out / "tools" / "trajectories" / "s1" / p).is_file() for p in fed_back)


def test_protocol_card(full_run, model):
    out, data, _ = full_run
    card = json.loads((out / "tools" / "protocol.json").read_text())
    p, env, run = card["protocol"], card["environment"], card["run"]
    assert (p["task"], p["task_version"], p["mode"]) == ("eval-runner-scripted", "1", "tools")
    assert p["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest() and run["data"] == str(data)
    assert (p["model"], p["backend"]) == (str(model[0]), "transformers")
    default = get_preset("default")
    assert p["preset"] == {
        "name": "default",
        "system_sha256": hashlib.sha256(default.system.encode()).hexdigest(),
        "user_template_sha256": hashlib.sha256(default.user_template.encode()).hexdigest(),
    }
    assert p["direct_preset"]["name"] == "direct"
    assert (p["min_pixels"], p["max_pixels"]) == (3136, 12544)  # the tiny model's processor defaults
    assert p["decoding"]["max_new_tokens"] == 128 and p["decoding"]["temperature"] == 0.0
    assert (p["max_steps"], p["on_error"], p["judge"], p["scoring"]) == (5, "feedback", None, {})
    assert env["packages"]["thyme-vl"] == importlib.metadata.version("thyme-vl")
    assert env["packages"]["torch"] == importlib.metadata.version("torch")
    package = Path(thyme.__file__).parent
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=package, capture_output=True
    )
    if tracked.returncode == 0:  # an editable checkout: the card names its commit
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True)
        assert env["git_commit"].removesuffix("+dirty") == head.stdout.strip()
    else:
        assert env["git_commit"] is None
    assert env["python"].count(".") == 2 and env["platform"] and run["started"].endswith("+00:00")


def test_protocol_card_records_scoring_choices(backend, sandbox):
    from thyme.eval import configure_task, get_task
    from thyme.eval.card import build_card

    agent = make_agent(backend, sandbox)
    default = build_card(get_task("vstar"), agent, data=None, tools=True)["protocol"]
    lenient = configure_task(get_task("vstar"), mcq_matching="lenient")
    chosen = build_card(lenient, agent, data=None, tools=True)["protocol"]
    assert default["scoring"] == {"mcq_matching": "vlmevalkit"}
    assert chosen["scoring"] == {"mcq_matching": "lenient"}


def test_limit_then_resume_adds_the_rest_once(task, backend, sandbox, full_run, tmp_path):
    agent = make_agent(backend, sandbox)
    first = run_eval(task, agent, data=None, out_dir=tmp_path, limit=2, concurrency=4)
    assert (first.total, first.scored) == (2, 2)
    assert [r["id"] for r in lines(tmp_path / "tools" / "results.jsonl")] == ["s0", "s1"]
    second = run_eval(task, agent, data=None, out_dir=tmp_path, concurrency=4)
    assert (second.total, second.scored, second.new) == (5, 5, 3)
    records = lines(tmp_path / "tools" / "results.jsonl")
    assert sorted(r["id"] for r in records) == [f"s{i}" for i in range(5)]
    assert {r["id"]: r["score"] for r in records} == EXPECTED
    again = run_eval(task, agent, data=None, out_dir=tmp_path, concurrency=4)
    assert again.new == 0 and len(lines(tmp_path / "tools" / "results.jsonl")) == 5
    card = json.loads((tmp_path / "tools" / "protocol.json").read_text())
    assert [r["limit"] for r in card["run"]["resumed"]] == [None, None] and card["run"]["limit"] == 2


def test_torn_last_line_is_dropped_and_rerun(task, backend, sandbox, full_run, tmp_path, caplog):
    source = full_run[0] / "tools"
    (tmp_path / "tools").mkdir()
    shutil.copy(source / "protocol.json", tmp_path / "tools" / "protocol.json")
    kept = (source / "results.jsonl").read_text().splitlines(keepends=True)[:2]
    torn = kept[0][: len(kept[0]) // 2].replace('"s0"', '"s9"')
    (tmp_path / "tools" / "results.jsonl").write_text("".join(kept) + torn)
    with caplog.at_level(logging.WARNING, logger="thyme.eval.runner"):
        result = run_eval(
            task, make_agent(backend, sandbox), data=full_run[1], out_dir=tmp_path, concurrency=4
        )
    assert any("torn last line" in r.getMessage() for r in caplog.records)
    assert (result.scored, result.new) == (5, 3)
    records = lines(tmp_path / "tools" / "results.jsonl")  # every line parses: the torn one is gone
    assert sorted(r["id"] for r in records) == [f"s{i}" for i in range(5)]
    assert {r["id"]: r["score"] for r in records} == EXPECTED


def test_card_mismatch_is_refused_unless_forced(task, backend, sandbox, model, tmp_path):
    run_eval(task, make_agent(backend, sandbox), data=None, out_dir=tmp_path, limit=1)
    with pytest.raises(ProtocolMismatch, match=r"max_steps: 5 -> 3.*--force"):
        run_eval(task, make_agent(backend, sandbox, max_steps=3), data=None, out_dir=tmp_path, limit=1)
    bumped = scripted_task(task.name, model[1], version="2")
    with pytest.raises(ProtocolMismatch, match="task_version: '1' -> '2'"):
        run_eval(bumped, make_agent(backend, sandbox), data=None, out_dir=tmp_path, limit=1)
    hotter = make_agent(backend, sandbox, sampling=SamplingParams(max_new_tokens=128, temperature=0.7))
    with pytest.raises(ProtocolMismatch, match=r"decoding\.temperature: 0\.0 -> 0\.7"):
        run_eval(task, hotter, data=None, out_dir=tmp_path, limit=1)
    forced = run_eval(
        task, make_agent(backend, sandbox, max_steps=3), data=None, out_dir=tmp_path, limit=2, force=True
    )
    assert forced.new == 1
    card = json.loads((tmp_path / "tools" / "protocol.json").read_text())
    assert card["protocol"]["max_steps"] == 3 and card["run"]["previous"]["protocol"]["max_steps"] == 5


def test_results_without_a_card_are_refused(task, backend, sandbox, tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "results.jsonl").write_text('{"id": "s0", "score": 1.0}\n')
    with pytest.raises(ProtocolMismatch, match=r"no protocol\.json"):
        run_eval(task, make_agent(backend, sandbox), data=None, out_dir=tmp_path, limit=1)


def test_direct_mode_runs_no_code(task, backend, sandbox, tmp_path):
    result = run_eval(task, make_agent(backend, sandbox), data=None, out_dir=tmp_path, tools=False, limit=2)
    records = lines(tmp_path / "direct" / "results.jsonl")
    assert result.mode == "direct" and len(records) == 2
    assert all(r["tool_calls"] == 0 and r["code_total"] == 0 for r in records)
    card = json.loads((tmp_path / "direct" / "protocol.json").read_text())
    assert card["protocol"]["mode"] == "direct" and card["protocol"]["preset"]["name"] == "direct"


def test_unusable_images_are_scored_zero_with_the_reason(backend, sandbox, model, tmp_path):
    good = scripted_task("eval-runner-images", model[1], n=2)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad = [
        EvalSample("gone", "What is six times seven?", "42", image=tmp_path / "gone.png"),
        EvalSample("corrupt", "What is six times seven?", "42", image=corrupt),
        EvalSample("cut", "What is six times seven?", "42", error="row 9: the image is corrupt (truncated)"),
    ]

    def load(data, cache_dir):
        yield from good.load(data, cache_dir)
        yield from bad

    task = dataclasses.replace(good, load=load)
    result = run_eval(task, make_agent(backend, sandbox), data=None, out_dir=tmp_path)
    records = {r["id"]: r for r in lines(tmp_path / "tools" / "results.jsonl")}
    assert result.scored == 5 and records["s0"]["score"] == 1.0 and records["s1"]["score"] == 1.0
    assert records["gone"]["reason"] == records["corrupt"]["reason"] == "input_error"
    cut = records["cut"]  # an error found at load time: scored 0, never run
    assert (cut["reason"], cut["score"], cut["steps"], cut["trajectory"]) == ("input_error", 0.0, 0, None)
    assert cut["error"] == "row 9: the image is corrupt (truncated)"
    assert records["gone"]["score"] == records["corrupt"]["score"] == 0.0
    assert "does not exist" in records["gone"]["error"]
    assert "not a readable image" in records["corrupt"]["error"]


def dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_backend_failures_are_not_scored_and_stop_a_streak(model, sandbox, tmp_path):
    from thyme.agent.backends.openai import OpenAIBackend

    remote = OpenAIBackend("scripted", base_url=dead_endpoint(), max_retries=0, timeout_s=2)
    agent = Agent(remote, config=AgentConfig(), sandbox=sandbox)
    few = scripted_task("eval-runner-dead", model[1], n=3)
    result = run_eval(few, agent, data=None, out_dir=tmp_path, concurrency=2)
    assert (result.scored, result.new, len(result.errors)) == (0, 0, 3)
    assert not (tmp_path / "tools" / "results.jsonl").exists()
    many = scripted_task("eval-runner-dead", model[1], n=12)
    with pytest.raises(EvalAborted, match="8 samples in a row failed"):
        run_eval(many, agent, data=None, out_dir=tmp_path, concurrency=2)


class AlwaysCorrect(BaseHTTPRequestHandler):
    """A judge endpoint (OpenAI chat completions) that finds every answer correct."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        message = {"role": "assistant", "content": '{"Correctness": 1}'}
        body = json.dumps({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), AlwaysCorrect)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_judge_credits_what_the_rules_missed_and_is_on_the_card(task, backend, sandbox, judge_url, tmp_path):
    from thyme.eval.judge import Judge

    judged = dataclasses.replace(task, name="eval-runner-judged", judge=True)
    with Judge(judge_url, "judge-model", cache_path=tmp_path / "judge.jsonl") as judge:
        result = run_eval(judged, make_agent(backend, sandbox), data=None, out_dir=tmp_path, judge=judge)
        description = judge.describe()
    records = {r["id"]: r for r in lines(tmp_path / "tools" / "results.jsonl")}
    assert records["s4"]["prediction"] == "42" and records["s4"]["answer"] == "41"
    assert (records["s4"]["score"], records["s4"]["judged"]) == (1.0, True)  # the rules said 0
    assert (records["s0"]["score"], records["s0"]["judged"]) == (1.0, False)  # the rules sufficed
    assert result.accuracy == 1.0
    card = json.loads((tmp_path / "tools" / "protocol.json").read_text())
    assert card["protocol"]["judge"] == description and description["model"] == "judge-model"
    with (
        Judge(judge_url, "another-judge") as other,
        pytest.raises(ProtocolMismatch, match=r"judge\.model: .judge-model. -> .another-judge."),
    ):
        run_eval(judged, make_agent(backend, sandbox), data=None, out_dir=tmp_path, judge=other)


def test_results_file_reads_without_repair(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "a", "score": 1.0}\n{"id": "b", "sc')
    assert list(JsonlRecords(path).load(repair=False)) == ["a"]
    assert path.read_text().endswith('"sc')  # untouched
    assert list(JsonlRecords(path).load()) == ["a"]
    assert path.read_text() == '{"id": "a", "score": 1.0}\n'


def test_trajectory_dirnames_are_safe_and_distinct():
    assert trajectory_dirname("s0") == "s0"
    names = {trajectory_dirname(i) for i in ("a/b", "a_b", "a:b", "..", "x" * 300)}
    assert len(names) == 5 and "a_b" in names
    assert all("/" not in n and n not in (".", "..") and len(n) < 100 for n in names)
