"""Agent-loop benchmark: loop overhead per step, tokens/s of tiny models, KV reuse on a 3-step trajectory.

    python benchmarks/agent_bench.py [--runs 5] [--json out.json]

All figures come from one run on this machine, side by side:
- loop overhead per step: the scripted tiny model (`thyme.testing.scripted`) answers its questions through
  `Agent.run` with the real sandbox; per step, wall time minus generation minus sandbox time is what the loop
  itself costs (prompt building, parsing, feedback rendering, image copies, events). Also the episode's own
  bookkeeping time (`timings["overhead_s"]`).
- tokens/s: greedy decoding of 128 new tokens (no stop strings) by the random `tiny` (0.9M) and `small`
  (6.4M) models at batch 1 and batch 8.
- KV reuse: a 3-step trajectory with the released prompt (generate 32 tokens, feed back an image, generate,
  feed back an image, generate), with the KV cache kept between steps and without (the prompt re-encoded
  each step). Both give the same tokens (tested in tests/agent); the figure is the wall time of the three
  steps, per model size.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import tempfile
import time

import numpy as np
from PIL import Image
from sandbox_bench import report

from thyme.agent import Agent, AgentConfig, Conversation, GenerationRequest, SamplingParams
from thyme.agent.backends.transformers import TransformersBackend
from thyme.models import build_tiny
from thyme.protocol import ImagePart, TextPart, get_preset, render_feedback
from thyme.sandbox import Sandbox, SandboxConfig
from thyme.testing.scripted import SCRIPTS, build_scripted


def noise_image(path: pathlib.Path, size: tuple[int, int], seed: int) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def loop_overhead(root: pathlib.Path, image: pathlib.Path, sandbox, runs: int) -> dict:
    model_dir = build_scripted(root / "scripted", image, sandbox=sandbox)
    backend = TransformersBackend.from_pretrained(str(model_dir))
    config = AgentConfig(sampling=SamplingParams(max_new_tokens=200))
    per_step, bookkeeping, steps_total = [], [], 0
    with Agent(backend, config=config, sandbox=sandbox) as agent:
        agent.run(image=image, question="What is six times seven?")  # warm up
        for _ in range(runs):
            for question in SCRIPTS:
                start = time.perf_counter()
                traj = agent.run(image=image, question=question)
                wall = time.perf_counter() - start
                t = traj.timings
                steps = max(traj.steps, 1)
                steps_total += steps
                per_step.append((wall - t["generation_s"] - t["sandbox_s"]) / steps)
                bookkeeping.append(t["overhead_s"] / steps)
    return {
        "loop overhead per step, p50 (ms)": statistics.median(per_step) * 1e3,
        "loop overhead per step, max (ms)": max(per_step) * 1e3,
        "episode bookkeeping per step, p50 (ms)": statistics.median(bookkeeping) * 1e3,
        "trajectories / steps measured": f"{len(per_step)} / {steps_total}",
    }


def tokens_per_second(backend: TransformersBackend, image: pathlib.Path, batch: int, new: int = 128) -> float:
    conv = Conversation("You are a helpful assistant.", (ImagePart(image), TextPart("Describe the image.")))
    params = SamplingParams(max_new_tokens=new)
    requests = [GenerationRequest(conv, params, stops=(), repetition_threshold=None)] * batch
    backend.generate(requests[:1])  # warm up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        out = backend.generate(requests)
        best = min(best, time.perf_counter() - start)
    return sum(g.completion_tokens for g in out) / best


def three_steps(backend: TransformersBackend, image: pathlib.Path, crops: list[pathlib.Path], reuse: bool):
    preset = get_preset("released")  # the released prompt: a realistic prompt length
    text = preset.user_text("Look closer, twice.", image_path="/data/scene.png", image_size=(448, 448))
    conv = Conversation(preset.system, (ImagePart(image), TextPart(text)))
    params = SamplingParams(max_new_tokens=32)
    state, ids = None, []
    start = time.perf_counter()
    for step in range(3):
        request = GenerationRequest(conv, params, stops=(), state=state, reuse_cache=reuse)
        gen = backend.generate([request])[0]
        ids.append(gen.token_ids)
        conv.add_model(gen.text, gen.token_ids)
        state = gen.state if reuse else (dataclasses.replace(gen.state, cache=None) if gen.state else None)
        if step < 2:
            conv.add_feedback(render_feedback("", [crops[step]]))
    return time.perf_counter() - start, ids, gen.prompt_tokens


def kv_reuse(root: pathlib.Path, image: pathlib.Path, crops: list[pathlib.Path], runs: int) -> dict:
    results = {}
    for size in ("tiny", "small"):
        backend = TransformersBackend.from_pretrained(str(build_tiny(root / f"kv-{size}", size=size)))
        results[f"{size}: tokens/s, batch 1"] = tokens_per_second(backend, image, 1)
        results[f"{size}: tokens/s, batch 8 (all rows)"] = tokens_per_second(backend, image, 8)
        three_steps(backend, image, crops, True)  # warm up
        times = {True: [], False: []}
        for _ in range(runs):
            for reuse in (False, True):
                elapsed, ids, prompt_tokens = three_steps(backend, image, crops, reuse)
                times[reuse].append(elapsed)
                times.setdefault(("ids", reuse), ids)
        assert times[("ids", True)] == times[("ids", False)], "KV reuse changed the tokens"
        without, with_ = statistics.median(times[False]), statistics.median(times[True])
        results[f"{size}: 3-step trajectory without KV reuse (ms)"] = without * 1e3
        results[f"{size}: 3-step trajectory with KV reuse (ms)"] = with_ * 1e3
        results[f"{size}: speed-up from KV reuse"] = without / with_
        results[f"{size}: prompt tokens at step 3"] = prompt_tokens
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions of each measurement")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="thyme-agent-bench-") as tmp, Sandbox(SandboxConfig()) as sandbox:
        root = pathlib.Path(tmp)
        image = noise_image(root / "scene.png", (448, 448), 0)
        crops = [noise_image(root / f"crop{i}.png", (224, 224), i + 1) for i in range(2)]
        results = loop_overhead(root, noise_image(root / "small.png", (320, 240), 9), sandbox, args.runs)
        results.update(kv_reuse(root, image, crops, args.runs))
    report(results, args.json)


if __name__ == "__main__":
    main()
