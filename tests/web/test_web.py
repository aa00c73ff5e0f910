"""`thyme web`: the page over the agent loop, through its parts and in a real headless Chromium.

- `StepView` turns a real thyme-tiny run (real sandbox) into what the page shows, and shows model-written
  text as text, never as markup;
- `PageRun` runs the loop in a thread for the page: the text streams, the trajectory is saved for download,
  Stop ends the run and frees the agent, and its files go;
- `thyme web` as users start it: bad flags are one line before the model loads; SIGTERM stops it cleanly;
- the page in Debian's Chromium, driven by Playwright (never a downloaded browser): upload, ask, see the
  answer and the image the code produced, download the trajectory; a toy-world example with tools off; no
  request leaves loopback. The screenshot is kept in build/test-artifacts/web.png.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from thyme.agent import CodeCall, ModelText, Trajectory
from thyme.web.run import PageRun
from thyme.web.steps import StepView

THYME = [sys.executable, "-m", "thyme"]
CHROMIUM = os.environ.get("THYME_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
# Gradio's queue calls pandas in a way pandas 3 deprecates: theirs to change, not a sign of anything here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing")
RUN_TIMEOUT_MS = 120_000  # one thyme-tiny run takes seconds; a busy 2-core machine may take many more


def titled(view: StepView, title: str) -> dict:
    return next(m for m in view.messages if m.get("metadata", {}).get("title") == title)


# -- what the page shows of a run ---------------------------------------------------------------------------
def test_a_real_run_becomes_reasoning_code_sandbox_images_and_answer(agent, toy):
    image, question = toy
    view = StepView(question)
    trajectory = agent.run(image=image, question=question, on_event=lambda _i, event: view.add(event))
    assert view.messages[0] == {"role": "user", "content": question}
    reasoning = titled(view, "step 1 · reasoning")
    assert reasoning["content"].strip() and "tokens" in reasoning["metadata"]["log"]
    code = next(e for e in trajectory.events if isinstance(e, CodeCall)).code
    assert titled(view, "step 1 · code")["content"] == f"```python\n{code.rstrip()}\n```"
    observation = trajectory.observations[0]
    sandbox = titled(view, "step 1 · sandbox")
    assert f"{len(observation.images)} image" in sandbox["content"]
    after = view.messages[view.messages.index(sandbox) + 1 :][: len(observation.images)]
    assert after == [{"role": "assistant", "content": {"path": str(p)}} for p in observation.images]
    produced = [p for o in trajectory.observations for p in o.images]
    assert produced and [path for path, _ in view.images] == [str(p) for p in produced]
    assert all(Path(path).is_file() for path, _ in view.images)
    assert view.done and view.answer == trajectory.answer
    assert view.status.startswith("answered")
    assert view.messages[-1] == {"role": "assistant", "content": f"**Answer: {trajectory.answer}**"}
    assert view.chat() == view.messages  # nothing half-generated is left


def test_without_tools_there_is_no_code_and_no_image(agent, toy):
    image, question = toy
    view = StepView(question)
    agent.run(image=image, question=question, tools=False, on_event=lambda _i, event: view.add(event))
    titles = [m.get("metadata", {}).get("title", "") for m in view.messages]
    assert not any("code" in t or "sandbox" in t for t in titles), titles
    assert view.images == [] and view.done and "0 tool calls" in view.status


def test_the_step_being_generated_shows_until_its_event_arrives():
    view = StepView("What is 2 + 3?")
    view.add_text("<think>Add")
    view.add_text(" them.")
    live = view.chat()[-1]
    assert live["metadata"]["title"] == "step 1 · generating" and "<think>Add them." in live["content"]
    view.add(ModelText(step=1, text="<think>Add them.</think> <answer>5</answer>", finish_reason="stop"))
    assert view.live == "" and view.chat() == view.messages
    assert titled(view, "step 1 · reasoning")["content"] == "Add them.\n\n**answer:** 5"
    assert view.step == 2


def test_what_the_model_wrote_is_shown_as_text_never_as_markup():
    view = StepView("q")
    text = '<think><img src=x onerror="alert(1)"> look</think><code>\n```python\nprint("```")\n```\n</code>'
    view.add(ModelText(step=1, text=text, finish_reason="stop", stop="</code>"))
    view.add(CodeCall(step=1, code='print("```")'))
    reasoning = titled(view, "step 1 · reasoning")["content"]
    assert "<img" not in reasoning and "&lt;img" in reasoning
    assert titled(view, "step 1 · code")["content"] == '````python\nprint("```")\n````'  # a longer fence


# -- one run for the page: a worker thread, a queue ---------------------------------------------------------
def test_a_page_run_streams_text_saves_the_trajectory_and_removes_its_files(agent, toy, tmp_path):
    image, question = toy
    folder = tmp_path / "run"
    texts: list[str] = []

    async def go():
        run = PageRun(agent, threading.Semaphore(1), folder, asyncio.get_running_loop())
        view = StepView(question)
        add_text = view.add_text
        view.add_text = lambda delta: (texts.append(delta), add_text(delta))
        run.start(str(image), question, True)
        while not await run.next_update(view):
            pass
        return run, view

    run, view = asyncio.run(go())
    json_path, html_path = run.files
    assert texts, "the transformers backend streams tokens: the step's text should arrive as it grows"
    saved = Trajectory.load(json_path)
    assert saved.answer == view.answer and saved.question == question
    assert all(p.is_file() and p.is_relative_to(folder) for o in saved.observations for p in o.images)
    page = Path(html_path).read_text(encoding="utf-8")
    assert "data:image/" in page and str(view.answer) in page
    root = run._trajectory.root
    run.abandon()
    assert not folder.exists() and not root.exists()


def test_stop_ends_a_page_run_where_it_is_and_frees_the_agent(agent, toy, tmp_path):
    image, question = toy
    gate = threading.Semaphore(1)
    before = set(agent.artifacts_dir.iterdir())

    async def go():
        run = PageRun(agent, gate, tmp_path / "run", asyncio.get_running_loop())
        view = StepView(question)
        run.start(str(image), question, True)
        await run.next_update(view)  # it started producing
        run.stop.set()  # the Stop button
        while not await run.next_update(view):
            pass
        run.abandon()
        return run, view

    run, view = asyncio.run(go())
    assert run.files is None and view.done and view.status.startswith("stopped at step")
    assert view.answer is None
    assert gate.acquire(timeout=60), "the stopped run still holds the agent"
    gate.release()
    assert not (tmp_path / "run").exists()
    assert set(agent.artifacts_dir.iterdir()) == before  # the stopped run's images went with it


def test_a_page_that_goes_away_stops_its_run(agent, toy, tmp_path):
    image, question = toy
    gate = threading.Semaphore(1)
    before = set(agent.artifacts_dir.iterdir())

    async def go():
        run = PageRun(agent, gate, tmp_path / "run", asyncio.get_running_loop())
        run.start(str(image), question, True)
        await run.next_update(StepView(question))
        run.abandon()  # the handler was cancelled: nobody reads the queue any more

    asyncio.run(go())
    assert gate.acquire(timeout=60), "the abandoned run still holds the agent"
    gate.release()
    assert not (tmp_path / "run").exists()
    assert set(agent.artifacts_dir.iterdir()) == before


# -- the command ----------------------------------------------------------------------------------------
def test_help_says_what_the_page_does_and_how_to_reach_a_model():
    done = subprocess.run([*THYME, "web", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    for words in ("web page", "--base-url", "--port", "--share", "thyme-tiny", "Ctrl-C"):
        assert words in done.stdout, words
    listed = subprocess.run([*THYME, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert " web " in listed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port 70000 is not a TCP port"),
        (["--share", "yes"], "--share 'yes'"),
        (["--backend", "openai"], "the openai backend needs --base-url"),
        (
            ["--base-url", "http://127.0.0.1:9/v1", "--backend", "vllm"],
            "--base-url is for the openai backend",
        ),
        (["--max-steps", "0"], "--max-steps must be >= 1"),
    ],
)
def test_bad_flags_are_one_line_before_the_model_loads(args, message):
    done = subprocess.run([*THYME, "web", *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "loading" not in done.stdout


def test_a_port_in_use_is_one_line_before_the_model_loads():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run([*THYME, "web", "--port", port], capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip
    assert done.returncode == 2 and "cannot listen on 127.0.0.1:" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_thyme_web_serves_the_page_until_sigterm_and_leaves_nothing_behind(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [*THYME, "web", "--port", "0", "--device", "cpu"], env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = _listening(proc, deadline=time.monotonic() + 180)
        with urllib.request.urlopen(url, timeout=30) as reply:
            assert reply.status == 200 and "thyme" in reply.read().decode()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert list(tmp.glob("thyme-*")) == []  # the page's folder, the agent's, the sandbox's
    assert [p for p in tmp.rglob("*") if p.is_file()] == []  # nor a file in Gradio's cache


def _listening(proc: subprocess.Popen, deadline: float) -> str:
    """The URL from the `listening on URL` line the command prints once it serves."""
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("listening on "):
                return line.split()[-1]
    raise AssertionError("thyme web did not print `listening on URL` in time")


# -- the page in a real browser ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's chromium package (apt-get install -y chromium) "
            "or set THYME_CHROMIUM to a Chromium binary",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def open_page(browser, url: str):
    """A fresh tab on the page at `url`; every request that would leave loopback is refused and recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    outside: list[str] = []

    def only_loopback(route):
        if route.request.url.startswith((url + "/", "data:", "blob:")) or route.request.url == url:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    tab.goto(url)
    tab.wait_for_selector("#thyme-ask")
    try:
        yield tab
    finally:
        context.close()
    assert outside == [], f"the page asked for something off this machine: {outside}"


@pytest.fixture
def page(browser, web_server):
    with open_page(browser, web_server.url) as tab:
        yield tab


def test_upload_ask_and_see_the_answer_and_the_image_the_code_made(page, toy, expected):
    from playwright.sync_api import expect

    image, question = toy
    page.locator("#thyme-image input[type=file]").set_input_files(str(image))
    expect(page.locator("#thyme-image img")).to_be_visible()
    page.fill("#thyme-question textarea", question)
    page.click("#thyme-ask")

    expect(page.locator("#thyme-answer textarea")).to_have_value(expected.answer, timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#thyme-status")).to_contain_text("answered")
    expect(page.locator("#thyme-json")).to_be_visible()  # the last update of the run has arrived
    produced = [p for o in expected.observations for p in o.images]
    gallery = page.locator("#thyme-images img")
    expect(gallery).to_have_count(len(produced))
    page.wait_for_function(  # every image loaded, in the gallery and in the steps
        "() => [...document.querySelectorAll('#thyme-images img, #thyme-steps img')]"
        ".every(i => i.complete && i.naturalWidth)"
    )
    with Image.open(produced[0]) as made:  # the gallery shows the file the sandbox made, not a stand-in
        assert gallery.first.evaluate("i => [i.naturalWidth, i.naturalHeight]") == list(made.size)
    steps = page.locator("#thyme-steps")
    code = next(e for e in expected.events if isinstance(e, CodeCall)).code
    expect(steps).to_contain_text("step 1 · code")
    expect(steps.get_by_text(code.splitlines()[-1].strip())).to_be_visible()  # its box is open
    expect(steps).to_contain_text(f"Answer: {expected.answer}")
    expect(steps.locator("img").first).to_be_visible()  # the sandbox's image inline, in its step

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    steps.locator("[role=log]").evaluate("log => log.scrollTo(0, 0)")  # the steps from the question on
    page.screenshot(path=str(ARTIFACTS / "web.png"), full_page=True, animations="disabled")

    with page.expect_download() as download:
        page.click("#thyme-json")
    saved = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert saved["answer"] == expected.answer and saved["question"] == question
    with page.expect_download() as download:
        page.click("#thyme-html")
    assert expected.answer in Path(download.value.path()).read_text(encoding="utf-8")


def test_a_new_toy_world_example_and_a_listed_one_without_tools(page):
    from playwright.sync_api import expect

    question = page.locator("#thyme-question textarea")
    page.click("#thyme-new-example")
    expect(question).not_to_have_value("")
    expect(page.locator("#thyme-image img")).to_be_visible()
    expect(page.locator("#thyme-example-info")).to_contain_text("gold answer")

    page.get_by_text("What is the product of 450 and 82?").click()  # a listed example
    expect(question).to_have_value("What is the product of 450 and 82?")
    expect(page.locator("#thyme-example-info")).to_contain_text("compute/mul-text")
    page.get_by_label("tools: the model may write code that the sandbox runs").uncheck()
    page.click("#thyme-ask")
    expect(page.locator("#thyme-status")).to_contain_text("0 tool calls", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#thyme-steps")).to_contain_text("step 1 · reasoning")
    expect(page.locator("#thyme-steps")).not_to_contain_text("· code")
    expect(page.locator("#thyme-images img")).to_have_count(0)


class _Slowed:
    """thyme-tiny, each token 50 ms late: a run long enough to press Stop in (otherwise the real backend)."""

    def __init__(self, backend):
        self.backend = backend

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def generate(self, requests, on_tokens=None):
        def late(ids):
            time.sleep(0.05)
            return True if on_tokens is None else on_tokens(ids)

        return self.backend.generate(requests, on_tokens=late)


def test_stop_ends_a_run_and_the_page_asks_again(browser, agent, gradio_cache):
    from playwright.sync_api import expect

    from thyme.web import WebServer

    slowed = agent.sharing(_Slowed(agent.backend))
    before = set(agent.artifacts_dir.iterdir())
    with WebServer(slowed, port=0) as server, open_page(browser, server.url) as page:
        page.get_by_text("What is the product of 450 and 82?").click()
        page.click("#thyme-ask")
        expect(page.locator("#thyme-steps")).to_contain_text("step 1 · generating")
        page.click("#thyme-stop")
        status = page.locator("#thyme-status")
        expect(status).to_contain_text("stopped at step")
        stopped = status.inner_text().strip()
        expect(page.locator("#thyme-steps")).to_contain_text("· stopped here")  # the cut step's text stays
        time.sleep(1)  # a run that went on would show its next step by now
        expect(status).to_have_text(stopped)
        expect(page.locator("#thyme-answer textarea")).to_have_value("")
        expect(page.locator("#thyme-json")).to_be_hidden()
        page.click("#thyme-ask")  # the stopped run let go of the model: this one runs to its answer
        expect(page.locator("#thyme-status")).to_contain_text("answered", timeout=RUN_TIMEOUT_MS)
        expect(page.locator("#thyme-answer textarea")).not_to_have_value("")
    deadline = time.monotonic() + 30  # the finished run's images go once the page has been sent them
    while set(agent.artifacts_dir.iterdir()) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(agent.artifacts_dir.iterdir()) == before  # neither run left its images behind
