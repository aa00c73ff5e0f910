"""One run of the agent for the page: `Agent.run` in a worker thread, its output on an asyncio queue.

The page's handler is an async generator on Gradio's event loop; the loop itself is blocking code (a local
model generates on the CPU or GPU, the sandbox runs code). So each run gets a thread that calls
`Agent.run` with callbacks that post what happens (each typed event; with a token-streaming backend, the
text as it is generated) onto the handler's queue, then saves the trajectory for download.

Stopping: the Stop button calls `stop()`: the run ends at its next token (the step is cut there) or event
(`Agent.run` ends, its session closes), and the handler, told so, shows what the run had done and ends
normally. (Gradio's own cancelling is not used for this: it races with the handler's last update.) A page
that is closed cancels the handler, which calls `abandon()`, which stops the run too.

Files: a finished run's trajectory is saved under its folder (JSON with its images, and HTML); `abandon()`
removes that folder and the loop's own image folder once the page has been sent them (Gradio serves its
copies), or at once when the page went away first. The agent's images are all gone when it closes anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
from pathlib import Path

from thyme.agent import Agent, InputError
from thyme.agent.backends.base import TokenStreaming
from thyme.agent.events import Event
from thyme.agent.trajectory import Trajectory
from thyme.errors import first_line
from thyme.protocol import STOP_STRINGS
from thyme.web.steps import StepView

log = logging.getLogger(__name__)


class RunFailed(Exception):
    """The run could not start or failed outside the loop (the message is for the page, one line)."""


class _Stopped(Exception):
    """Raised from the event callback to end a run the page no longer shows."""


class PageRun:
    """One `Agent.run` in a worker thread; `next_update` applies what it produced to a `StepView`.

    gate:   a semaphore shared by the page's runs: a run waits for it before touching the agent (see
            `thyme.web.app.build_app` on why local models run one at a time).
    folder: where the finished trajectory is saved (created by the run, removed by `abandon`).
    stop:   set it to stop the run where it is (the Stop button); `next_update` then reports it over.
    files:  once it is over, the saved trajectory.json and trajectory.html (None when it was stopped).
    """

    def __init__(
        self, agent: Agent, gate: threading.Semaphore, folder: Path, loop: asyncio.AbstractEventLoop
    ):
        self.agent, self.gate, self.folder, self.loop = agent, gate, folder, loop
        self.queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        self._trajectory: Trajectory | None = None
        self._live = None  # the current step's `LiveText` (token-streaming backends)
        self.files: tuple[str, str] | None = None

    def start(self, image: str, question: str, tools: bool) -> None:
        args = (image, question, tools)
        threading.Thread(target=self._work, args=args, name="thyme-web-run", daemon=True).start()

    # -- the page's side --------------------------------------------------------------------------------
    async def next_update(self, view: StepView) -> bool:
        """Wait for what the run produced next and apply all of it that has arrived to `view`; True once the
        run is over: then `files` holds the saved JSON and HTML paths, or None when it was stopped.
        `RunFailed` when it failed."""
        items = [await self.queue.get()]
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        for kind, payload in items:
            if kind == "event":
                view.add(payload)  # type: ignore[arg-type]
            elif kind == "text":
                view.add_text(payload)  # type: ignore[arg-type]
            elif kind == "queued":
                view.status = "waiting for the run before this one to finish"
            elif kind == "failed":
                raise RunFailed(str(payload))
            elif kind == "stopped":
                view.stopped()
                return True
            elif kind == "done":
                self.files = payload  # type: ignore[assignment]
                return True
        return False

    def abandon(self) -> None:
        """The page is done with this run (finished, failed, stopped or gone): stop it, remove its files."""
        self.stop.set()
        with self._lock:
            self._abandoned = True
            trajectory, self._trajectory = self._trajectory, None
        if trajectory is not None:
            self._remove(trajectory)

    # -- the worker thread ------------------------------------------------------------------------------
    def _post(self, kind: str, payload: object = None) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop closed: the server is shutting down
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))

    def _work(self, image: str, question: str, tools: bool) -> None:
        if not self.gate.acquire(blocking=False):
            self._post("queued")
            while not self.gate.acquire(timeout=0.5):
                if self.stop.is_set():
                    self._post("stopped")
                    return
        try:  # the agent is this run's until its files are handed over or removed
            self._run(image, question, tools)
        finally:
            self.gate.release()

    def _run(self, image: str, question: str, tools: bool) -> None:
        trajectory = None
        try:
            streaming = isinstance(self.agent.backend, TokenStreaming)
            hooks = {"on_tokens": self._on_tokens} if streaming else {}
            trajectory = self.agent.run(
                image=image, question=question, tools=tools, on_event=self._on_event, **hooks
            )
            paths = self._save(trajectory)
        except _Stopped:  # `Agent.run` removed the run's images itself
            self._post("stopped")
            return
        except InputError as exc:
            self._post("failed", str(exc))
            return
        except Exception as exc:  # the sandbox could not start, a file could not be written: say so
            log.exception("a page run failed")
            if trajectory is not None:
                self._remove(trajectory)
            self._post("failed", f"the run failed: {first_line(exc)}")
            return
        with self._lock:
            keep = not self._abandoned
            if keep:
                self._trajectory = trajectory
        if keep:
            self._post("done", paths)
        else:
            self._remove(trajectory)

    def _on_event(self, _index: int, event: Event) -> None:
        if self.stop.is_set():
            raise _Stopped
        self._live = None
        self._post("event", event)

    def _on_tokens(self, ids: list[int]) -> bool:
        if self.stop.is_set():
            return False
        if self._live is None:
            from thyme.serve.generation import LiveText

            self._live = LiveText(self.agent.backend, STOP_STRINGS, True, self._on_text)
        return self._live.on_tokens(ids)

    def _on_text(self, delta: str) -> bool:
        if delta:
            self._post("text", delta)
        return not self.stop.is_set()

    def _save(self, trajectory: Trajectory) -> tuple[str, str]:
        """trajectory.json (with its images, as `Trajectory.save` writes them) and trajectory.html."""
        json_path = trajectory.save(self.folder)
        html_path = self.folder / "trajectory.html"
        trajectory.to_html(html_path)
        return str(json_path), str(html_path)

    def _remove(self, trajectory: Trajectory) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if trajectory.root is not None:
            shutil.rmtree(trajectory.root, ignore_errors=True)
