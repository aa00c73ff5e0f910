"""`Agent`: a model backend, a sandbox, and the drivers that run episodes through them.

The semantics of a trajectory live in `thyme.agent.episode`; this module only moves data between an
episode, the backend and the sandbox, in three ways:

- `run` / `stream`: one trajectory, step by step (the CLI, the demo, a server request);
- `run_batch`: many trajectories in lock-step rounds, one batched `generate()` per round and the round's code
  run concurrently in the shared sandbox pool (local models: evaluation, RL rollouts);
- `arun` / `arun_many`: asyncio, for HTTP backends where many requests are in flight at once.

    with Agent.from_pretrained("models/tiny") as agent:
        traj = agent.run(image="scene.jpg", question="What number is on the label?")
        print(traj.answer)
        for event in agent.stream(image="scene.jpg", question="..."):
            print(event.kind)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from thyme.agent.backends.base import Backend, BackendError, TokenCallback, TokenStreaming, load_backend
from thyme.agent.config import AgentConfig
from thyme.agent.episode import Episode, Prompt
from thyme.agent.events import Event
from thyme.agent.trajectory import Trajectory
from thyme.errors import image_error
from thyme.protocol import direct_preset, get_preset

EventCallback = Callable[[int, Event], None]


@dataclass(frozen=True)
class Task:
    """One question about one image (`image=None` for text-only questions)."""

    question: str
    image: str | os.PathLike[str] | None = None


class InputError(ValueError):
    """The user's input cannot be used (missing or unreadable image, empty question)."""


class Agent:
    """Runs the Thyme loop with one backend and one sandbox pool.

    backend:        a `thyme.agent.backends.Backend` (see `Agent.from_pretrained` to build one by name).
    config:         `AgentConfig` (steps, limits, error policy, sampling).
    sandbox:        a running `thyme.sandbox.Sandbox` to share; by default the agent starts its own on the
                    first tool call (with `sandbox_config`) and closes it on `close()`.
    artifacts_dir:  where fed-back images are kept for the trajectories; a temporary directory by default,
                    removed on `close()` (save the trajectories you keep with `Trajectory.save`).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        config: AgentConfig | None = None,
        sandbox=None,
        sandbox_config=None,
        artifacts_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.backend = backend
        self.config = config or AgentConfig()
        self._sandbox = sandbox
        self._own_sandbox = sandbox is None
        self._sandbox_config = sandbox_config
        self._sandbox_lock = threading.Lock()
        self._own_artifacts = artifacts_dir is None
        self.artifacts_dir = Path(artifacts_dir or tempfile.mkdtemp(prefix="thyme-agent-"))
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self._ids = itertools.count()
        self._sandbox_owner: Agent | None = None  # set on views made by `sharing`
        self.preset = get_preset(self.config.preset or backend.default_preset)
        self.direct_preset = (
            get_preset(self.config.direct_preset) if self.config.direct_preset else direct_preset(self.preset)
        )

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        *,
        backend: str = "transformers",
        config: AgentConfig | None = None,
        sandbox=None,
        sandbox_config=None,
        **backend_options: Any,
    ) -> Agent:
        """An agent over `model` served by the backend registered as `backend`.

        model: a checkpoint directory or hub id (transformers, vllm), or the served model name (openai, with
               `base_url=`). "thyme-tiny" names the checkpoint bundled with the package.
        """
        backend_impl = load_backend(
            backend, resolve_model(model) if backend != "openai" else model, **backend_options
        )
        return cls(backend_impl, config=config, sandbox=sandbox, sandbox_config=sandbox_config)

    def sharing(self, backend: Backend) -> Agent:
        """An agent over `backend` (a wrapper of this one's, say) that shares everything else with this one:
        configuration, sandbox (still started on first use, and owned by this agent), artifacts folder and
        trajectory numbering. Closing it closes `backend` only."""
        view = Agent(backend, config=self.config, artifacts_dir=self.artifacts_dir)
        view._own_sandbox = False
        view._sandbox_owner = self
        view._ids = self._ids
        return view

    # -- lifecycle --------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._own_sandbox and self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
        self.backend.close()
        if self._own_artifacts:
            shutil.rmtree(self.artifacts_dir, ignore_errors=True)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sandbox(self):
        """The sandbox pool (started on first use)."""
        if self._sandbox_owner is not None:
            return self._sandbox_owner.sandbox
        with self._sandbox_lock:
            if self._sandbox is None:
                from thyme.sandbox import Sandbox, SandboxConfig

                self._sandbox = Sandbox(self._sandbox_config or SandboxConfig())
            return self._sandbox

    # -- one trajectory ---------------------------------------------------------------------------------
    def run(
        self,
        image: str | os.PathLike[str] | None = None,
        question: str = "",
        *,
        tools: bool = True,
        on_event: EventCallback | None = None,
        config: AgentConfig | None = None,
        on_tokens: TokenCallback | None = None,
    ) -> Trajectory:
        """Answer `question` about `image`; `tools=False` asks for a direct answer without code.

        config:    this run's `AgentConfig` instead of the agent's (a server's per-request sampling, say).
        on_tokens: live text: called after every generated token with the ids this step has generated so
                   far (a new step starts from none); returning False ends the step there. Needs a backend
                   that streams tokens (`thyme.agent.backends.base.TokenStreaming`: transformers).
        An exception raised by `on_event` ends the run (the session is closed) and propagates.
        """
        if on_tokens is not None and not isinstance(self.backend, TokenStreaming):
            raise TypeError(f"the {self.backend.name} backend does not stream tokens; leave on_tokens out")
        episode, session = self._open(Task(question, image), tools, config)
        try:
            with self._closing(session):
                for event in self._drive(episode, session, on_tokens):
                    if on_event is not None:
                        on_event(0, event)
        except BaseException:
            shutil.rmtree(episode.artifacts, ignore_errors=True)  # no trajectory will reference them
            raise
        return self._trajectory(episode)

    def stream(
        self, image: str | os.PathLike[str] | None = None, question: str = "", *, tools: bool = True
    ) -> Iterator[Event]:
        """`run`, yielding each event as it happens (the last one is always `Final`)."""
        episode, session = self._open(Task(question, image), tools)
        with self._closing(session):
            yield from self._drive(episode, session)

    def _drive(self, episode: Episode, session, on_tokens: TokenCallback | None = None) -> Iterator[Event]:
        while (request := episode.request()) is not None:
            try:
                if on_tokens is None:
                    generation = self.backend.generate([request])[0]
                else:
                    generation = self.backend.generate([request], on_tokens=on_tokens)[0]
            except BackendError as exc:
                yield from episode.on_error(exc)
                return
            yield from episode.on_generation(generation)
            if episode.pending_code is not None:
                try:
                    result = session.run(episode.pending_code)
                except Exception as exc:  # the sandbox itself failed (not the code): end, say why
                    yield from episode.on_error(exc)
                    return
                yield from episode.on_result(result)

    # -- many trajectories ------------------------------------------------------------------------------
    def run_batch(
        self,
        tasks: Sequence[Task | tuple],
        *,
        tools: bool = True,
        on_event: EventCallback | None = None,
        max_batch: int = 16,
        on_done: Callable[[int, Trajectory], None] | None = None,
        on_input_error: Callable[[int, InputError], None] | None = None,
    ) -> list[Trajectory]:
        """Run `tasks` in lock-step rounds: one batched `generate()` per round, code run concurrently.

        At most `max_batch` trajectories are open at once; the next starts as soon as one finishes.
        on_event(index, event): each event as it happens (index into `tasks`).
        on_done(index, trajectory): each trajectory the moment it ends (write results as they come).
        on_input_error(index, error): a task whose image cannot be used is reported and skipped instead of
                        raising; skipped tasks are left out of the returned list.
        """
        tasks = [t if isinstance(t, Task) else Task(*t) for t in tasks]
        results: list[Trajectory | None] = [None] * len(tasks)
        waiting = list(range(len(tasks)))[::-1]
        open_: dict[int, tuple[Episode, Any]] = {}
        workers = max(1, min(max_batch, os.cpu_count() or 1) * 2)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="thyme-code") as pool:
            try:
                while waiting or open_:
                    while waiting and len(open_) < max_batch:
                        i = waiting.pop()
                        try:
                            open_[i] = self._open(tasks[i], tools)
                        except InputError as exc:
                            if on_input_error is None:
                                raise
                            on_input_error(i, exc)
                    self._round(open_, pool, on_event)
                    for i in [i for i, (ep, _) in open_.items() if ep.done]:
                        episode, session = open_.pop(i)
                        self._close_session(session)
                        results[i] = self._trajectory(episode)
                        if on_done is not None:
                            on_done(i, results[i])
            finally:
                for _, session in open_.values():
                    self._close_session(session)
        return [r for r in results if r is not None]

    def _round(self, open_: dict[int, tuple[Episode, Any]], pool, on_event: EventCallback | None) -> None:
        def emit(i: int, events: list[Event]) -> None:
            if on_event is not None:
                for event in events:
                    on_event(i, event)

        asking = [(i, ep.request()) for i, (ep, _) in open_.items()]
        asking = [(i, r) for i, r in asking if r is not None]
        if asking:
            try:
                generations = self.backend.generate([r for _, r in asking])
            except BackendError as exc:
                for i, _ in asking:
                    emit(i, open_[i][0].on_error(exc))
                return
            for (i, _), generation in zip(asking, generations, strict=True):
                emit(i, open_[i][0].on_generation(generation))
        running = [(i, ep, session) for i, (ep, session) in open_.items() if ep.pending_code is not None]
        futures = [(i, ep, pool.submit(session.run, ep.pending_code)) for i, ep, session in running]
        for i, ep, future in futures:
            try:
                emit(i, ep.on_result(future.result()))
            except Exception as exc:
                emit(i, ep.on_error(exc))

    # -- asyncio ----------------------------------------------------------------------------------------
    async def arun(
        self, image: str | os.PathLike[str] | None = None, question: str = "", *, tools: bool = True
    ) -> Trajectory:
        """`run` for asyncio callers: generation through `backend.agenerate`, code through `session.arun`."""
        episode, session = await asyncio.to_thread(self._open, Task(question, image), tools)
        try:
            while (request := episode.request()) is not None:
                try:
                    generation = await self.backend.agenerate(request)
                except BackendError as exc:
                    episode.on_error(exc)
                    break
                episode.on_generation(generation)
                if episode.pending_code is not None:
                    try:
                        result = await session.arun(episode.pending_code)
                    except Exception as exc:
                        episode.on_error(exc)
                        break
                    episode.on_result(result)
        finally:
            await asyncio.to_thread(self._close_session, session)
        return self._trajectory(episode)

    async def arun_many(
        self, tasks: Sequence[Task | tuple], *, tools: bool = True, concurrency: int = 16
    ) -> list[Trajectory]:
        """Many `arun`s with at most `concurrency` in flight; results in the order of `tasks`."""
        gate = asyncio.Semaphore(concurrency)
        tasks = [t if isinstance(t, Task) else Task(*t) for t in tasks]

        async def one(task: Task) -> Trajectory:
            async with gate:
                return await self.arun(task.image, task.question, tools=tools)

        return list(await asyncio.gather(*(one(t) for t in tasks)))

    # -- plumbing ---------------------------------------------------------------------------------------
    def _open(self, task: Task, tools: bool, config: AgentConfig | None = None) -> tuple[Episode, Any]:
        """Validate the inputs, open a sandbox session (tool runs) and build the episode."""
        if not task.question or not task.question.strip():
            raise InputError("the question is empty; pass the question text")
        image, size = check_image(task.image)
        artifacts = self.artifacts_dir / f"t{next(self._ids):06d}"
        artifacts.mkdir()
        session = None
        sandbox_path = None
        if tools:
            session = self.sandbox.session(inputs=[image] if image is not None else [])
            sandbox_path = session.inputs[0] if image is not None else None
        prompt = Prompt(task.question, image, size, sandbox_path)
        episode = Episode(
            prompt,
            preset=self.preset,
            direct_preset=self.direct_preset,
            config=config or self.config,
            tools=tools,
            artifacts=artifacts,
        )
        return episode, session

    @staticmethod
    def _close_session(session) -> None:
        if session is not None:
            session.discard_images()
            session.close()

    @contextlib.contextmanager
    def _closing(self, session):
        try:
            yield
        finally:
            self._close_session(session)

    def _trajectory(self, episode: Episode) -> Trajectory:
        return Trajectory(
            question=episode.prompt.question,
            image=episode.prompt.image,
            conversation=episode.conversation,
            events=list(episode.events),
            model=self.backend.model_id,
            backend=self.backend.name,
            preset=episode.preset.name,
            tools=episode.tools,
            user_text=episode.user_text,
            config=dataclasses.asdict(episode.config),
            timings=dict(episode.timings),
            root=episode.artifacts,
        )


# Qwen2-VL's processor refuses images whose long side exceeds this many times the short side.
MAX_ASPECT_RATIO = 200


def check_image(image: str | os.PathLike[str] | None) -> tuple[Path | None, tuple[int, int] | None]:
    """The image's resolved path and size; a one-line `InputError` when it is missing, not an image,
    truncated, too large to decode safely, or shaped so that the model cannot take it."""
    if image is None:
        return None, None
    path = Path(image).expanduser()
    name = repr(str(image))
    if not path.is_file():
        raise InputError(f"image {name} does not exist or is not a file; check the path")
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()  # decodes every pixel: a truncated file fails here, not later in the model backend
            size = img.size
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"image {name} has too many pixels to decode safely ({str(exc).rstrip('.')}); downscale it"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(
            f"image {name} is not a readable image ({image_error(exc)}); pass a PNG or JPEG file"
        ) from None
    check_image_shape(*size, name=f"image {name}")
    return path.resolve(), size


def check_image_shape(width: int, height: int, *, name: str) -> None:
    """A one-line `InputError` when an image of `width` x `height` is too elongated for the model."""
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InputError(
            f"{name} is {width}x{height}: its long side is over {MAX_ASPECT_RATIO} times its short side, "
            "which the model cannot take; crop or pad it"
        )


def bundled_tiny() -> str | None:
    """The path of the thyme-tiny checkpoint bundled with the package, or None when there is none."""
    from importlib import resources

    bundled = resources.files("thyme.models").joinpath("thyme-tiny")
    return str(bundled) if bundled.joinpath("config.json").is_file() else None


def resolve_model(model: str) -> str:
    """Resolve model names the package knows ("thyme-tiny") to a checkpoint path; other names pass through."""
    if model == "thyme-tiny":
        bundled = bundled_tiny()
        if bundled is None:
            raise BackendError(
                "thyme-tiny is not bundled with this version yet; build a random test model with "
                "`thyme models tiny --out DIR` and pass --model DIR"
            )
        return bundled
    return model
