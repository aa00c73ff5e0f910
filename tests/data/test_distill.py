"""`thyme data distill` end to end: a real tiny model (taught `thyme.testing.scripted.SCRIPTS`) served over
OpenAI-compatible HTTP on 127.0.0.1, the agent loop and the real sandbox; nothing is mocked.

The scripted model answers "What is six times seven?" with code `print(6 * 7)` and 42, "Zoom in on the
corner." with a crop and "red", and "Divide one by zero." with code that fails; with a wrong gold answer the
first is rejected as wrong, and the last is rejected for its failed code whatever the gold.
"""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from thyme.agent import Agent, Conversation, Final, ModelText, Observation, Trajectory
from thyme.data.distill import DistillConfig, distill, distill_command
from thyme.data.distill_checks import Question, is_right, rejection
from thyme.data.rows import Row
from thyme.data.sample import read_samples
from thyme.data.store import Shard

MODEL = "tiny-scripted"
COMPUTE, ZOOM, FAIL = "What is six times seven?", "Zoom in on the corner.", "Divide one by zero."


@pytest.fixture(scope="module")
def noise_png(tmp_path_factory) -> Path:
    """The image the scripts were taught with (the same pixels as tests/agent's)."""
    path = tmp_path_factory.mktemp("distill-inputs") / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, toy_sandbox, noise_png):
    from thyme.agent.backends.transformers import TransformersBackend
    from thyme.serve.generation import GenerationServer
    from thyme.testing.scripted import build_scripted

    model_dir = build_scripted(
        tmp_path_factory.mktemp("distill-model") / "scripted", noise_png, sandbox=toy_sandbox
    )
    backend = TransformersBackend.from_pretrained(str(model_dir), device="cpu")
    with GenerationServer(backend, "127.0.0.1", 0, model_name=MODEL) as srv:
        srv.start()
        yield srv


def agent_for(server, sandbox, config: DistillConfig) -> Agent:
    return Agent.from_pretrained(
        MODEL, backend="openai", base_url=server.url + "/v1", sandbox=sandbox, config=config.agent_config()
    )


def questions(path: Path, image: Path, rows: list[tuple]) -> Path:
    """rows: (question, answer) or (question, answer, id)."""
    lines = []
    for row in rows:
        record = {"image": image.name, "question": row[0], "answer": row[1]}
        if len(row) > 2:
            record["id"] = row[2]
        lines.append(json.dumps(record) + "\n")
    path.write_text("".join(lines))
    return path


@pytest.fixture
def qfile(tmp_path, noise_png) -> Path:
    (tmp_path / "noise.png").write_bytes(noise_png.read_bytes())
    rows = [
        (COMPUTE, "42", "compute"),
        (COMPUTE, "41", "wrong"),
        (FAIL, "undefined", "fails"),
        (ZOOM, "red", "zoom"),
    ]
    return questions(tmp_path / "questions.jsonl", tmp_path / "noise.png", rows)


GREEDY = DistillConfig(attempts=2, temperature=0.0, concurrency=2, max_new_tokens=96)


def outcomes(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (out / "distill.jsonl").read_text().splitlines())}


def test_right_answers_with_clean_code_are_kept_and_the_rest_rejected(server, toy_sandbox, qfile, tmp_path):
    out = tmp_path / "out"
    with agent_for(server, toy_sandbox, GREEDY) as agent:
        result = distill(qfile, out, GREEDY, agent)
    assert (result.total, result.recorded, result.kept, result.new) == (4, 4, 2, 4)
    assert result.rejections == {"code_failed": 2, "wrong": 2} and result.attempts == 1 + 2 + 2 + 1
    records = outcomes(out)
    assert records["compute"] == {"id": "compute", "kept": True, "attempts": 1, "rejections": [],
                                  "last_answer": "42"}  # fmt: skip
    assert records["wrong"]["rejections"] == ["wrong", "wrong"] and not records["wrong"]["kept"]
    assert records["fails"]["rejections"] == ["code_failed", "code_failed"]
    samples = {s.id: s for s in read_samples(out)}
    assert sorted(samples) == ["compute", "zoom"]
    compute, zoom = samples["compute"], samples["zoom"]
    assert compute.origin == "distill" and compute.answer == "42" and compute.meta["teacher"] == MODEL
    assert compute.code_rounds == 1 and "print(6 * 7)" in compute.response and "42" in compute.response
    assert [p.source for p in compute.assistant] == ["model", "sandbox", "sandbox", "sandbox", "model"]
    # Images live in the store under their content hash: the user's and the fed-back crop.
    assert len(zoom.images) == 2 and all(out / "images" in p.parents for p in zoom.images)
    assert zoom.images[0].read_bytes() == qfile.with_name("noise.png").read_bytes()
    with Image.open(zoom.images[1]) as crop:
        assert crop.size == (192, 192)
    assert "<sandbox_output><image></sandbox_output>" in zoom.response
    # Nothing of the agent's scratch space is left behind.
    assert not any(agent.artifacts_dir.glob("t*"))


def test_a_rerun_resumes_without_asking_again_or_writing_twice(server, toy_sandbox, qfile, tmp_path):
    out = tmp_path / "out"
    with agent_for(server, toy_sandbox, GREEDY) as agent:
        distill(qfile, out, GREEDY, agent)
        lines = (out / "distill.jsonl").read_text().splitlines()
        # A kill after a sample was written but before its outcome line: the sample is not written twice.
        kept = next(i for i, line in enumerate(lines) if json.loads(line)["kept"])
        (out / "distill.jsonl").write_text("".join(f"{line}\n" for i, line in enumerate(lines) if i != kept))
        again = distill(qfile, out, GREEDY, agent)
    assert again.new == 0 and again.recorded == 3
    ids = [json.loads(line)["id"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted(ids) == ["compute", "zoom"]


def test_sampled_attempts_keep_the_first_that_passes(server, toy_sandbox, qfile, tmp_path):
    config = DistillConfig(attempts=8, temperature=1.0, max_new_tokens=96, limit=1)
    with agent_for(server, toy_sandbox, config) as agent:
        result = distill(qfile, tmp_path / "out", config, agent)
    record = outcomes(tmp_path / "out")["compute"]
    assert result.kept == 1 and record["kept"] and len(record["rejections"]) == record["attempts"] - 1


def test_shards_split_the_questions(server, toy_sandbox, qfile, tmp_path):
    kept = []
    with agent_for(server, toy_sandbox, GREEDY) as agent:
        for index in (0, 1):
            config = DistillConfig(attempts=1, temperature=0.0, max_new_tokens=96, shard=Shard(index, 2))
            result = distill(qfile, tmp_path / "out", config, agent)
            assert result.total == 2 and result.outcomes_path.name == f"distill-0000{index}-of-00002.jsonl"
            kept.append([s.id for s in read_samples(result.samples_path)])
    assert kept == [["compute"], ["zoom"]]  # questions 1 and 3, then 2 and 4


def test_the_command_checks_the_endpoint_first_and_says_so_in_one_line(qfile, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    buffer = io.StringIO()
    status = distill_command(
        qfile, tmp_path / "out", {}, base_url=f"http://127.0.0.1:{port}/v1", model=MODEL,
        console=Console(file=buffer, width=400),
    )  # fmt: skip
    lines = buffer.getvalue().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: cannot reach the endpoint")
    assert "--base-url" in lines[0] and not (tmp_path / "out" / "distill.jsonl").exists()


def test_the_command_names_the_served_models_and_refuses_bad_input(server, qfile, tmp_path):
    buffer = io.StringIO()
    status = distill_command(qfile, tmp_path / "out", {}, base_url=server.url + "/v1", model="other",
                             console=Console(file=buffer, width=400))  # fmt: skip
    assert status == 2 and f"it serves {MODEL}" in buffer.getvalue()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "noise.png", "question": "q", "answer": "z", "choices": ["x", "y"]}))
    buffer = io.StringIO()
    status = distill_command(bad, tmp_path / "out", {}, base_url=server.url + "/v1", model=MODEL,
                             console=Console(file=buffer, width=400))  # fmt: skip
    assert (
        status == 2
        and buffer.getvalue() == "error: bad.jsonl:1: the answer 'z' is none of the choices A, B\n"
    )


def test_thyme_data_distill_runs_from_the_command_line(server, qfile, tmp_path):
    from thyme.cli import app

    out = tmp_path / "out"
    args = ["data", "distill", str(qfile), "--base-url", server.url + "/v1", "--model", MODEL,
            "--out", str(out), "--attempts", "1", "--temperature", "0", "--limit", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "kept 1/1 questions (100.0%) in 1 attempts" in result.output
    assert [s.id for s in read_samples(out)] == ["compute"]


# -- the verdict on typed trajectories (what no scripted answer covers) ------------------------------------
def trajectory(answer: str | None, *, code_error: str | None = "", reason: str = "answer") -> Trajectory:
    events: list = [ModelText(step=1, text="t", finish_reason="stop", stop=None, prompt_tokens=1,
                              completion_tokens=1, duration_s=0.0)]  # fmt: skip
    if code_error != "":
        events.append(Observation(step=1, stdout="", error=code_error, timed_out=False, images=(), repairs=(),
                                  duration_s=0.0, fed_back=True))  # fmt: skip
    events.append(Final(answer=answer, reason=reason, steps=1, tool_calls=int(code_error != ""), text=""))
    return Trajectory(question="q", image=None, conversation=Conversation("s", ()), events=events)


def question(answer: str, choices=None) -> Question:
    return Question(Row(Path("x.png"), "q", answer, "id", "f:1"), "q", choices)


@pytest.mark.parametrize(
    ("traj", "require_code", "reason"),
    [
        (trajectory("42", code_error=None), True, None),
        (trajectory("42"), True, "no_code"),
        (trajectory("42"), False, None),
        (trajectory("42", code_error="ZeroDivisionError"), True, "code_failed"),
        (trajectory(None, code_error=None, reason="max_steps"), True, "no_answer"),
        (trajectory(None, code_error=None, reason="error"), True, "error"),
        (trajectory("41", code_error=None), True, "wrong"),
    ],
)  # fmt: skip
def test_why_an_attempt_is_rejected(traj, require_code, reason):
    assert rejection(traj, question("42"), require_code) == reason


@pytest.mark.parametrize(
    ("answer", "gold", "choices", "right"),
    [
        ("B", "B", {"A": "cat", "B": "dog"}, True),
        ("dog", "B", {"A": "cat", "B": "dog"}, True),
        ("A or B", "B", {"A": "cat", "B": "dog"}, False),
        ("Yes, it is.", "yes", None, True),
        ("no", "Yes", None, False),
        ("1,234.0", "1234", None, True),
        ("[10, 10, 50, 50]", "[12, 12, 50, 50]", None, True),
        ("The red car.", "red car", None, True),
        ("blue car", "red car", None, False),
        ("1", "1", None, True),
    ],
)  # fmt: skip
def test_right_answers_follow_the_evaluation_rules(answer, gold, choices, right):
    assert is_right(answer, gold, choices) is right


def test_a_prompt_that_states_the_image_path_is_made_portable(server, toy_sandbox, noise_png, tmp_path):
    """Released-preset prompts name the sandbox's own copy of the image; the sample names the stored file."""
    from thyme.agent import AgentConfig, SamplingParams
    from thyme.data.distill_checks import portable
    from thyme.data.sample import Sample
    from thyme.data.store import SampleStore
    from thyme.protocol import get_preset

    config = AgentConfig(
        preset="released", max_steps=1, fallback=False, sampling=SamplingParams(max_new_tokens=8)
    )
    with Agent.from_pretrained(MODEL, backend="openai", base_url=server.url + "/v1", sandbox=toy_sandbox,
                               config=config) as agent:  # fmt: skip
        traj = agent.run(noise_png, COMPUTE)
        sample = portable(Sample.from_trajectory(traj), traj, SampleStore(tmp_path))
    stored = sample.images[0]
    assert stored.parent.parent == tmp_path / "images" and stored.read_bytes() == noise_png.read_bytes()
    expected = get_preset("released").user_text(
        COMPUTE, image_path=f"/mnt/data/{stored.name}", image_size=(320, 240)
    )
    assert traj.user_text != expected and sample.user[1].text == expected
