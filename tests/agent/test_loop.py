"""The agent loop end to end: a real tiny Qwen2.5-VL (trained on scripts), the transformers backend, the real
sandbox. Every expectation here is something the loop must do with a model that writes code."""

from __future__ import annotations

import asyncio
import html
import json
import re

import pytest

from thyme.agent import (
    Agent,
    AgentConfig,
    CodeCall,
    Error,
    Final,
    InputError,
    ModelText,
    Observation,
    Resample,
    SamplingParams,
    Trajectory,
)
from thyme.protocol import ImagePart

STEP_TOKENS = 160


def make_agent(backend, sandbox, **config) -> Agent:
    config.setdefault("sampling", SamplingParams(max_new_tokens=STEP_TOKENS))
    return Agent(backend, config=AgentConfig(**config), sandbox=sandbox)


def kinds(traj: Trajectory) -> list[str]:
    return [e.kind for e in traj.events]


def test_compute_question_runs_code_and_answers(scripted_backend, agent_sandbox, noise_png):
    with make_agent(scripted_backend, agent_sandbox) as agent:
        traj = agent.run(image=noise_png, question="What is six times seven?")
    assert traj.answer == "42"
    assert kinds(traj) == ["model_text", "code_call", "observation", "model_text", "final"]
    first, call, obs, second, final = traj.events
    assert first.stop == "</code>" and first.text.endswith("</code>")
    assert call.code == "print(6 * 7)"
    assert obs.stdout.strip() == "42" and obs.ok and obs.fed_back
    assert second.stop == "</answer>"
    assert (final.reason, final.steps, final.tool_calls) == ("answer", 2, 1)
    sources = [p.source for p in traj.conversation.assistant]
    assert sources == ["model", "sandbox", "sandbox", "sandbox", "model"]
    assert "</code><sandbox_output>42</sandbox_output>The product" in traj.text
    # token ids of model pieces are recorded (training needs them)
    assert all(p.token_ids for p in traj.conversation.assistant if p.source == "model")


def test_zoom_feeds_the_produced_image_back(scripted_backend, agent_sandbox, noise_png):
    with make_agent(scripted_backend, agent_sandbox) as agent:
        traj = agent.run(image=noise_png, question="Zoom in on the corner.")
        obs = traj.observations[0]
        assert len(obs.images) == 1 and obs.images[0].is_file()
        fed = [p.part for p in traj.conversation.assistant if isinstance(p.part, ImagePart)]
        assert fed == [ImagePart(obs.images[0])]
        assert obs.images[0].is_relative_to(agent.artifacts_dir)  # kept after the session closed
    assert traj.answer == "red"
    assert "<sandbox_output><image></sandbox_output>" in traj.text


def test_execution_error_is_fed_back(scripted_backend, agent_sandbox, noise_png):
    with make_agent(scripted_backend, agent_sandbox) as agent:
        traj = agent.run(image=noise_png, question="Divide one by zero.")
    obs = traj.observations[0]
    assert "ZeroDivisionError" in obs.error and obs.fed_back
    assert "ZeroDivisionError: division by zero</sandbox_output>" in traj.text
    assert traj.answer == "undefined"


def test_resample_policy_rolls_back_then_feeds_back(scripted_backend, agent_sandbox, noise_png):
    with make_agent(scripted_backend, agent_sandbox, on_error="resample", max_resamples=1) as agent:
        traj = agent.run(image=noise_png, question="Divide one by zero.")
    assert kinds(traj)[:6] == [
        "model_text",
        "code_call",
        "observation",
        "resample",
        "model_text",
        "code_call",
    ]
    rolled_back, fed = traj.observations
    assert not rolled_back.fed_back and fed.fed_back
    assert isinstance(traj.events[3], Resample) and "ZeroDivisionError" in traj.events[3].reason
    # the rolled-back step left no trace in the conversation: one code block, one sandbox output
    assert traj.text.count("<code>") == 1 and traj.text.count("<sandbox_output>") == 1
    assert traj.answer == "undefined"


def test_step_limit_then_direct_fallback(scripted_backend, agent_sandbox, noise_png):
    with make_agent(scripted_backend, agent_sandbox, max_steps=2) as agent:
        traj = agent.run(image=noise_png, question="Count forever.")
        assert traj.final.reason == "fallback"
        assert traj.final.extra["fallback_from"] == "max_steps"
        assert traj.final.tool_calls == 1  # the second block was not run: no step left to read its output
        direct = [e for e in traj.events if isinstance(e, ModelText)][-1]
        assert direct.step == 3
    with make_agent(scripted_backend, agent_sandbox, max_steps=2, fallback=False) as agent:
        traj = agent.run(image=noise_png, question="Count forever.")
    assert (traj.final.reason, traj.answer) == ("max_steps", None)


def test_the_page_of_a_fallback_run_shows_the_fallback(scripted_backend, agent_sandbox, noise_png, tmp_path):
    with make_agent(scripted_backend, agent_sandbox, max_steps=2) as agent:
        traj = agent.run(image=noise_png, question="Count forever.")
        traj.to_html(tmp_path / "t.html")
    page = (tmp_path / "t.html").read_text(encoding="utf-8")
    direct = [e for e in traj.events if isinstance(e, ModelText)][-1]
    assert traj.final.reason == "fallback" and direct.text.strip()
    assert "<th>steps</th><td>2 + fallback</td>" in page  # the tool steps, and the fallback besides
    steps_table = page.split("<h2>Steps</h2>", 1)[1]
    assert [re.sub(r"<.*?>", "", row) for row in re.findall(r"<tr><td>(.*?)</td>", steps_table)] == [
        "1", "2", "fallback"
    ]  # fmt: skip
    assert "fallback: asked again for a direct answer (the tool turn ended by max_steps)" in page
    assert f"<summary>fallback text</summary><pre>{html.escape(direct.text)}</pre>" in steps_table


def test_more_steps_reach_the_answer(scripted_backend, agent_sandbox, noise_png):
    with make_agent(scripted_backend, agent_sandbox, max_steps=5) as agent:
        traj = agent.run(image=noise_png, question="Count forever.")
    assert [o.stdout.strip() for o in traj.observations] == ["1", "2", "3"]
    assert traj.answer == "3" and traj.final.steps == 4


def test_no_tools_is_one_direct_step_without_code(scripted_backend, agent_sandbox, noise_png):
    with make_agent(scripted_backend, agent_sandbox) as agent:
        traj = agent.run(image=noise_png, question="What is six times seven?", tools=False)
    assert traj.preset == "direct" and not traj.tools
    assert not any(isinstance(e, (CodeCall, Observation)) for e in traj.events)
    assert sum(isinstance(e, ModelText) for e in traj.events) == 1
    assert isinstance(traj.events[-1], Final)


def test_image_limit_withholds_images_with_a_note(scripted_backend, agent_sandbox, noise_png):
    with make_agent(scripted_backend, agent_sandbox, max_images=0) as agent:
        traj = agent.run(image=noise_png, question="Zoom in on the corner.")
    obs = traj.observations[0]
    assert obs.images == () and "limit of 0" in obs.note
    assert not traj.conversation.feedback_images
    assert "limit of 0 was reached" in traj.text


def test_repetition_guard_stops_a_looping_step(scripted_backend, agent_sandbox, noise_png):
    with make_agent(scripted_backend, agent_sandbox, fallback=False) as agent:
        guarded = agent.run(image=noise_png, question="Laugh.")
    with make_agent(scripted_backend, agent_sandbox, repetition_threshold=None) as agent:
        free = agent.run(image=noise_png, question="Laugh.")
    assert guarded.events[0].finish_reason == "repetition"
    assert (guarded.final.reason, guarded.answer) == ("repetition", None)
    assert free.answer == "ha"


def test_context_budget_ends_the_trajectory(scripted_backend, agent_sandbox, noise_png):
    with make_agent(scripted_backend, agent_sandbox, max_context_tokens=100, fallback=False) as agent:
        traj = agent.run(image=noise_png, question="Count forever.")
    assert traj.final.reason == "context" and traj.final.tool_calls == 0


def test_model_context_overflow_is_a_finish_reason_not_a_crash(scripted_model_dir, agent_sandbox, noise_png):
    from thyme.agent.backends.transformers import TransformersBackend

    backend = TransformersBackend.from_pretrained(str(scripted_model_dir))
    backend.context_length = 40  # shorter than the prompt
    with make_agent(backend, agent_sandbox) as agent:
        traj = agent.run(image=noise_png, question="What is six times seven?")
    first = traj.events[0]
    assert first.finish_reason == "context" and first.prompt_tokens > 40
    assert traj.final.reason == "fallback" and traj.final.extra["fallback_from"] == "context"


def test_kv_reuse_gives_the_same_trajectories(scripted_model_dir, agent_sandbox, noise_png):
    from thyme.agent.backends.transformers import TransformersBackend

    runs = {}
    for reuse in (False, True):
        backend = TransformersBackend.from_pretrained(str(scripted_model_dir))
        with make_agent(backend, agent_sandbox, kv_reuse=reuse) as agent:
            texts = [
                agent.run(image=noise_png, question=q).text
                for q in ("Zoom in on the corner.", "Count forever.")
            ]
        runs[reuse] = (texts, dict(backend.stats))
    assert runs[True][0] == runs[False][0]
    assert runs[False][1]["cached_tokens"] == 0
    assert runs[True][1]["cached_tokens"] > runs[True][1]["prefill_tokens"]


def test_batch_equals_single_runs(scripted_backend, agent_sandbox, noise_png):
    questions = [
        "What is six times seven?",
        "Zoom in on the corner.",
        "Divide one by zero.",
        "Count forever.",
    ]
    seen = []
    with make_agent(scripted_backend, agent_sandbox) as agent:
        single = [agent.run(image=noise_png, question=q) for q in questions]
        batch = agent.run_batch(
            [(q, noise_png) for q in questions], on_event=lambda i, e: seen.append((i, e.kind)), max_batch=3
        )
    assert [t.answer for t in batch] == [t.answer for t in single] == ["42", "red", "undefined", "3"]
    assert [t.text for t in batch] == [t.text for t in single]
    assert sorted({i for i, _ in seen}) == [0, 1, 2, 3]
    assert sum(kind == "final" for _, kind in seen) == 4


def test_stream_yields_events_as_they_happen(scripted_backend, agent_sandbox, noise_png):
    with make_agent(scripted_backend, agent_sandbox) as agent:
        stream = agent.stream(image=noise_png, question="What is six times seven?")
        first = next(stream)
        assert isinstance(first, ModelText) and first.stop == "</code>"
        rest = list(stream)
    assert isinstance(rest[-1], Final) and rest[-1].answer == "42"


def test_arun_many_runs_concurrently(scripted_backend, agent_sandbox, noise_png):
    with make_agent(scripted_backend, agent_sandbox) as agent:
        trajs = asyncio.run(
            agent.arun_many([("What is six times seven?", noise_png), ("Zoom in on the corner.", noise_png)])
        )
    assert [t.answer for t in trajs] == ["42", "red"]


def test_trajectory_json_and_save_roundtrip(scripted_backend, agent_sandbox, noise_png, tmp_path):
    with make_agent(scripted_backend, agent_sandbox) as agent:
        traj = agent.run(image=noise_png, question="Zoom in on the corner.")
        data = json.loads(traj.to_json())
        path = traj.save(tmp_path / "run")
    assert data["schema"] == "thyme.trajectory/1" and data["answer"] == "red"
    assert [e["kind"] for e in data["events"]] == kinds(traj)
    assert data["tokens"]["completion"] > 0 and data["timings"]["total_s"] > 0
    # after the agent closed (its artifacts are gone) the saved copy is complete and relative
    saved = json.loads(path.read_text())
    assert saved["image"] == "images/000.png"
    assert all(not p["image"].startswith("/") for p in saved["assistant"] if "image" in p)
    loaded = Trajectory.load(path)
    assert loaded.answer == "red" and kinds(loaded) == kinds(traj)
    assert all(p.is_file() for p in loaded.conversation.images)
    assert loaded.text == traj.text

    def shape(pieces):  # images are copies under the saved directory now: compare all but their paths
        return [(p.source, p.token_ids, None if isinstance(p.part, ImagePart) else p.part) for p in pieces]

    assert shape(loaded.conversation.assistant) == shape(traj.conversation.assistant)


def test_bad_inputs_are_one_line_errors(scripted_backend, agent_sandbox, noise_png, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with make_agent(scripted_backend, agent_sandbox) as agent:
        with pytest.raises(InputError, match="does not exist"):
            agent.run(image=tmp_path / "missing.png", question="q")
        with pytest.raises(InputError, match="not a readable image"):
            agent.run(image=corrupt, question="q")
        with pytest.raises(InputError, match="question is empty"):
            agent.run(image=noise_png, question="  ")
        assert list(agent.artifacts_dir.iterdir()) == []  # nothing half-made


def test_unknown_model_is_a_clear_error(tmp_path, monkeypatch):
    import thyme.agent.loop
    from thyme.agent import BackendError

    with pytest.raises(BackendError, match="cannot load model"):
        Agent.from_pretrained(str(tmp_path / "nope"))
    monkeypatch.setattr(thyme.agent.loop, "bundled_tiny", lambda: None)  # a checkout before `make tiny`
    with pytest.raises(BackendError, match="thyme models tiny"):
        Agent.from_pretrained("thyme-tiny")


def test_sandbox_failure_becomes_an_error_event(scripted_backend, noise_png):
    from thyme.sandbox import Sandbox, SandboxConfig

    sandbox = Sandbox(SandboxConfig(timeout_s=5, pool_size=1))
    with make_agent(scripted_backend, sandbox) as agent:
        stream = agent.stream(image=noise_png, question="What is six times seven?")
        next(stream)  # the model wrote its code block
        next(stream)  # CodeCall
        sandbox.close()  # the sandbox goes away before the code runs
        rest = list(stream)
    assert isinstance(rest[0], Error) and rest[0].category == "sandbox"
    assert isinstance(rest[-1], Final) and rest[-1].reason == "error"
