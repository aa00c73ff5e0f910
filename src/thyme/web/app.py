"""The Gradio page over the agent loop: upload an image (or draw a toy-world one), ask, watch it stream.

One loop serves everything: the page calls `Agent.run` in a worker thread and passes its events (and, with a
token-streaming backend such as transformers, the text as it is generated) through a queue to an async
generator handler, which redraws the transcript (`thyme.web.steps.StepView`) as they arrive. At the end the
trajectory is offered as JSON and as self-contained HTML.

    from thyme.agent import Agent
    from thyme.web import WebServer
    with Agent.from_pretrained("thyme-tiny") as agent, WebServer(agent, port=0) as server:
        print(server.url)                 # open it in a browser; `thyme web` does this until Ctrl-C

The page works offline: Gradio's telemetry is off, its default theme's fonts are bundled, nothing is
fetched from a CDN. Its files (toy-world examples, trajectories to download) live in a temporary folder the
server owns and removes on close. Gradio's own cache (uploads, copies of what it serves, in $GRADIO_TEMP_DIR)
is emptied on close, except for the examples' copies, which Gradio keeps; `thyme web` gives Gradio a cache
folder of its own and removes it at exit.
"""

from __future__ import annotations

import os

# Before Gradio is imported: its telemetry and version check read this (the page must work offline).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import asyncio
import random
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from thyme.agent import Agent
from thyme.data.toyworld import SPLIT_SPAN, draft_sample, get_task
from thyme.web.run import PageRun, RunFailed
from thyme.web.steps import StepView

# Toy-world samples offered as examples: (task, level, test seed); thyme-tiny's training targets.
EXAMPLES = (("zoom", "find", 2), ("compute", "mul-text", 3), ("compute", "add-text", 5), ("zoom", "find", 7))
NEW_EXAMPLE_LEVELS = (("zoom", "find"), ("compute", "mul-text"), ("compute", "add-text"))
UPDATE_EVERY_S = 0.1  # the page is redrawn at most this often while tokens stream
CSS = """
#thyme-answer textarea { font-size: 1.5em; font-weight: 600; }
#thyme-steps button[aria-label="Share"] { display: none; }  /* posts to Hugging Face; offline, it fails */
"""


def toy_example(task: str, level: str, seed: int) -> tuple[object, str, str]:
    """(PIL image, question, description with the gold answer) of a toy-world test-split sample."""
    _, _, draft = draft_sample(get_task(task), SPLIT_SPAN + seed, level)  # test split: never trained on
    info = f"toy world {task}/{level}, test seed {seed}; gold answer: {draft.answer}"
    return draft.image, draft.question, info


def build_app(
    agent: Agent, workdir: str | os.PathLike[str], *, model_name: str | None = None, title: str = "thyme"
) -> gr.Blocks:
    """The page for `agent`; `workdir` (an existing folder the caller owns) holds its files; `model_name` is
    how the page names the model (default: the backend's model id, a path for local checkpoints).

    A local model is one engine that runs one generation at a time (calling it from several threads at once
    is not safe), so runs queue one behind another (concurrency 1); an HTTP backend takes several at once.
    """
    workdir = Path(workdir)
    examples_dir = workdir / "examples"
    examples_dir.mkdir(exist_ok=True)
    examples = []
    for task, level, seed in EXAMPLES:
        image, question, info = toy_example(task, level, seed)
        path = examples_dir / f"{task}-{level}-{seed}.png"
        image.save(path)
        examples.append([str(path), question, info])
    limit = 1 if agent.backend.batched else 8
    runs = _Runs(agent, workdir / "runs", limit)

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(
            f"## thyme: thinking with images\nModel **{model_name or agent.backend.model_id}** "
            f"({agent.backend.name}). "
            "Ask a question about an image: the model reasons, writes Python that crops, zooms or computes, "
            "a sandbox runs it, the result goes back to the model, until it answers."
        )
        with gr.Row():
            with gr.Column(scale=2):
                image = gr.Image(  # the file as uploaded (`image_mode=None`), pasted images as PNG
                    type="filepath",
                    image_mode=None,
                    format="png",
                    label="image",
                    sources=["upload", "clipboard"],
                    elem_id="thyme-image",
                    height=360,
                )
                example_info = gr.Markdown(elem_id="thyme-example-info")
                question = gr.Textbox(label="question", lines=2, elem_id="thyme-question")
                tools = gr.Checkbox(True, label="tools: the model may write code that the sandbox runs")
                with gr.Row():
                    ask = gr.Button("Ask", variant="primary", elem_id="thyme-ask")
                    stop = gr.Button("Stop", variant="stop", elem_id="thyme-stop")
                new_example = gr.Button("New toy-world example", elem_id="thyme-new-example")
                gr.Examples(
                    examples,
                    inputs=[image, question, example_info],
                    label="toy-world examples",
                    visible_columns=[0, 1],
                )
            with gr.Column(scale=3):
                status = gr.Markdown("ready", elem_id="thyme-status")
                answer = gr.Textbox(label="answer", interactive=False, elem_id="thyme-answer")
                steps = gr.Chatbot(
                    label="steps",
                    height=860,
                    layout="panel",
                    elem_id="thyme-steps",
                    buttons=["copy"],
                    feedback_options=None,
                    allow_file_downloads=False,
                )
                gallery = gr.Gallery(
                    label="images the code produced",
                    columns=4,
                    height=220,
                    preview=False,
                    fit_columns=False,
                    object_fit="contain",
                    elem_id="thyme-images",
                )
                with gr.Row():
                    json_file = gr.DownloadButton("trajectory.json", visible=False, elem_id="thyme-json")
                    html_file = gr.DownloadButton("trajectory.html", visible=False, elem_id="thyme-html")
        outputs = [steps, gallery, answer, status, json_file, html_file]

        async def run(image_path: str | None, question_text: str, use_tools: bool, request: gr.Request):
            if not image_path:
                raise gr.Error("upload an image or pick a toy-world example first")
            if not (question_text or "").strip():
                raise gr.Error("type a question about the image")
            view = StepView(question_text.strip())
            hidden = gr.update(visible=False)
            run = runs.start(request.session_hash, image_path, question_text.strip(), use_tools)
            try:
                yield _show(view, hidden, hidden)
                try:
                    while not await run.next_update(view):
                        yield _show(view, hidden, hidden)
                        await asyncio.sleep(UPDATE_EVERY_S)  # streamed text gathers: fewer, larger redraws
                except RunFailed as exc:
                    view.status = f"failed: {exc}"
                    yield _show(view, hidden, hidden)
                    raise gr.Error(str(exc)) from None
                if run.files is None:  # stopped
                    yield _show(view, hidden, hidden)
                else:
                    json_path, html_path = run.files
                    shown = gr.update(value=json_path, visible=True), gr.update(value=html_path, visible=True)
                    yield _show(view, *shown)
            finally:  # done, failed, stopped, or the page went away: the run's files go
                runs.finish(request.session_hash, run)

        def _show(view: StepView, json_update, html_update) -> dict:
            return {
                steps: view.chat(),
                gallery: view.images,
                answer: view.answer or "",
                status: view.status,
                json_file: json_update,
                html_file: html_update,
            }

        def draw_example():
            task, level = random.choice(NEW_EXAMPLE_LEVELS)
            return toy_example(task, level, random.randrange(SPLIT_SPAN))

        # Asking by button or by Enter: one queue of runs. Stop signals this page's run (see thyme.web.run)
        # and never waits in a queue.
        ask_options = {"concurrency_limit": limit, "concurrency_id": "thyme-run", "show_progress": "minimal"}
        ask.click(run, [image, question, tools], outputs, **ask_options)
        question.submit(run, [image, question, tools], outputs, **ask_options)

        def stop_run(request: gr.Request) -> None:
            runs.stop(request.session_hash)

        stop.click(stop_run, concurrency_limit=None)
        new_example.click(draw_example, outputs=[image, question, example_info])
        image.upload(lambda: "", outputs=example_info)  # the user's own image: no gold answer to show
    return page


class _Runs:
    """The page's runs of one agent: at most `limit` use it at a time (a run whose page went away may still
    be finishing its step in its thread), each with a folder for its files under `root`, each findable by
    the browser session that started it (for Stop)."""

    def __init__(self, agent: Agent, root: Path, limit: int) -> None:
        self.agent, self.root = agent, root
        self.gate = threading.BoundedSemaphore(limit)
        self._count = 0
        self._active: dict[str | None, PageRun] = {}
        self._lock = threading.Lock()

    def start(self, session: str | None, image: str, question: str, tools: bool) -> PageRun:
        with self._lock:
            self._count += 1
            run = PageRun(self.agent, self.gate, self.root / f"{self._count:06d}", asyncio.get_running_loop())
            self._active[session] = run
        run.start(image, question, tools)
        return run

    def stop(self, session: str | None) -> None:
        """Stop the run this session started, if one is going (the Stop button)."""
        with self._lock:
            run = self._active.get(session)
        if run is not None:
            run.stop.set()

    def finish(self, session: str | None, run: PageRun) -> None:
        with self._lock:
            if self._active.get(session) is run:
                del self._active[session]
        run.abandon()


def free_port(host: str) -> int:
    """A TCP port nobody listens on at `host` now (Gradio needs a number; it cannot report port 0's pick)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class WebServer:
    """The page for `agent`, served by Gradio in a background thread: `start()`, `url`, `close()` (what
    `thyme.asgi.serve_until_signal` drives, and what the tests start). Port 0 picks a free port. Owns a
    temporary folder for the page's files, removed on close; the caller owns the agent."""

    def __init__(
        self,
        agent: Agent,
        host: str = "127.0.0.1",
        port: int = 7860,
        *,
        share: bool = False,
        model_name: str | None = None,
    ) -> None:
        self.host, self.port, self.share = host, port, share
        self.workdir = Path(tempfile.mkdtemp(prefix="thyme-web-"))
        try:
            self.page = build_app(agent, self.workdir, model_name=model_name)
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.url = ""
        self.share_url: str | None = None

    def start(self) -> WebServer:
        port = self.port or free_port(self.host)
        _, url, self.share_url = self.page.launch(
            server_name=self.host,
            server_port=port,
            share=self.share,
            prevent_thread_lock=True,
            quiet=True,
            ssr_mode=False,
            mcp_server=False,
            allowed_paths=[str(self.workdir)],
            show_error=True,
            css=CSS,
            footer_links=["api", "settings"],
        )
        self.url = url.rstrip("/")
        return self

    def close(self) -> None:
        """Stop serving (Gradio deletes its cached copies) and remove the page's folder. Idempotent."""
        self.page.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def launch(
    agent: Agent,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    share: bool = False,
    model_name: str | None = None,
    on_ready: Callable[[WebServer], None] | None = None,
) -> None:
    """Serve the page for `agent` until SIGINT or SIGTERM (`thyme web`); `on_ready(server)` once it listens
    (`server.url`, and `server.share_url` with `share`). Must run in the main thread (signal handlers)."""
    from thyme.asgi import serve_until_signal

    server = WebServer(agent, host, port, share=share, model_name=model_name)
    serve_until_signal(server, None if on_ready is None else lambda _url: on_ready(server))
