"""Shared generation: requests a server runs concurrently join the same batched `generate()` calls.

`thyme serve` runs each request's agent loop in its own thread; every step asks the backend for one
generation. A local backend computes one batch at a time (its lock), so without this, eight concurrent
requests wait for each other step by step. `SharedGeneration` wraps the backend: callers enqueue their
requests and wait; one dispatcher thread takes everything queued (up to `max_batch` requests) and makes one
`generate()` call for it, so while a batch runs, new steps queue up and go together in the next one. A
request that arrives while the backend is idle starts at once (after `window_s`, a few milliseconds in
which requests sent together can join it). This is the loop's `run_batch` idea (one batched call per round)
without lock-step rounds: each request keeps its own pace.

What stays per request: its sampling settings (the backend batches equal settings together and runs the
others in turn within the call), its result and its errors (a `BackendError` reaches every request of
that call, as `run_batch` reports it to every trajectory). A lone request keeps the backend's KV-cache
reuse (it only applies to one-request calls); token streaming (`on_tokens`, `stream: true`) bypasses the
queue, as it streams one request.

Backends that are not `batched` (HTTP ones: each request is its own call already) are not wrapped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from thyme.agent.backends.base import Backend, Generation, GenerationRequest, TokenCallback

DEFAULT_MAX_BATCH = 32
DEFAULT_WINDOW_S = 0.002


class SharedGeneration:
    """A `Backend` over `backend` whose concurrent `generate()` calls are merged (see the module docstring).

    Other attributes (`tokenizer`, `eos_ids`, `stats`, ...) are the wrapped backend's. `close()` stops the
    dispatcher; the wrapped backend stays open (its owner closes it).
    """

    def __init__(
        self, backend: Backend, max_batch: int = DEFAULT_MAX_BATCH, window_s: float = DEFAULT_WINDOW_S
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.backend = backend
        self.max_batch = max_batch
        self.window_s = window_s
        self.calls = 0  # generate() calls made to the backend
        self.requests = 0  # requests they carried
        self.largest = 0  # the largest batch so far
        self._queue: list[tuple[list[GenerationRequest], Future]] = []
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._dispatch, name="thyme-shared-generation", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:  # only for what this class does not define
        return getattr(self.__dict__["backend"], name)

    # Named here, not only through __getattr__: `isinstance(x, TokenStreaming)` looks attributes up
    # statically from Python 3.12 on. (Only consulted when the wrapped backend streams tokens.)
    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer  # type: ignore[attr-defined]

    @property
    def eos_ids(self) -> set[int]:
        return self.backend.eos_ids  # type: ignore[attr-defined]

    def generate(
        self, requests: Sequence[GenerationRequest], on_tokens: TokenCallback | None = None
    ) -> list[Generation]:
        """The generations of `requests`, made in a call shared with whatever else is queued."""
        if on_tokens is not None:
            return self.backend.generate(requests, on_tokens=on_tokens)
        if not requests:
            return []
        done: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the shared generation queue is closed")
            self._queue.append((list(requests), done))
            self._ready.notify()
        return done.result()

    async def agenerate(self, request: GenerationRequest) -> Generation:
        import asyncio

        return (await asyncio.to_thread(self.generate, [request]))[0]

    def close(self) -> None:
        """Stop the dispatcher once the queue is empty; later `generate()` calls raise."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    # -- the dispatcher ---------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
            if self.window_s > 0:
                time.sleep(self.window_s)  # requests sent together join the first call
            with self._ready:
                taken = self._take()
            self._run(taken)

    def _take(self) -> list[tuple[list[GenerationRequest], Future]]:
        """Queued callers, oldest first, up to `max_batch` requests (a caller's requests stay together)."""
        taken, size = [], 0
        while self._queue and (not taken or size + len(self._queue[0][0]) <= self.max_batch):
            requests, done = self._queue.pop(0)
            taken.append((requests, done))
            size += len(requests)
        return taken

    def _run(self, taken: list[tuple[list[GenerationRequest], Future]]) -> None:
        batch = [request for requests, _ in taken for request in requests]
        try:
            generations = self.backend.generate(batch)
        except BaseException as exc:  # every caller of this call learns it (BackendError or worse)
            for _, done in taken:
                done.set_exception(exc)
            return
        self.calls += 1
        self.requests += len(batch)
        self.largest = max(self.largest, len(batch))
        start = 0
        for requests, done in taken:
            done.set_result(generations[start : start + len(requests)])
            start += len(requests)
