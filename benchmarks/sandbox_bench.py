"""Sandbox benchmark: every figure measured side by side in one run, printed as a table (and JSON).

    python benchmarks/sandbox_bench.py [--calls 60] [--sessions 200] [--filesystem auto|view] [--json F]

Figures:
- per-call time of a crop-and-save snippet on a 2000x1500 JPEG, in a sandbox session vs `exec` of the same
  snippet in this process (interleaved, medians), and their ratio (goal <= 1.2x);
- session start p50/p99 (a warm pool, as a rollout would see it), fork p50/p99 (the forked session handed
  back; its cgroup placement finishes on a helper thread), fork plus the fork's first call p50/p99, close;
- a stateful 256x256 crop-and-save on the already-loaded image: in-process vs sandbox, calls per second in
  one session and with one session per core in parallel (asyncio).

PNG encoding dominates the crop snippets, so every in-process vs sandbox pair runs at one zlib level on both
sides. The `*_pil_default_*` figures use PIL's level 6 in both (a sandbox with `png_compress_level=None`);
the others use the sandbox's default level (`SandboxConfig.png_compress_level`, 1), applied to this process
too for the in-process side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from thyme.sandbox import Sandbox, SandboxConfig
from thyme.sandbox.config import FILESYSTEMS
from thyme.sandbox.worker import set_png_compression

SNIPPET = """\
from PIL import Image
img = Image.open(image_path)
crop = img.crop((600, 400, 1400, 1000))
processed_path = os.path.join(output_dir, "crop_%d.png" % step)
crop.save(processed_path)
print(processed_path)
"""

# The stateful variant: the image was opened by an earlier block of the same episode (state persists),
# each call crops a 256x256 region and saves it, as a model zooming around one picture does.
STATEFUL_SETUP = "import os\nfrom PIL import Image\nimg = Image.open(image_path)\nimg.load()\nstep = 0"
STATEFUL_SNIPPET = """\
x = (step * 97) % 1700
crop = img.crop((x, 300, x + 256, 556))
processed_path = os.path.join(output_dir, "zoom_%d.png" % step)
crop.save(processed_path)
print(processed_path)
"""


def make_jpeg(path: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1500, 0:2000]
    base = np.stack([(x * 255 // 2000), (y * 255 // 1500), ((x + y) * 255 // 3500)], axis=-1)
    noise = rng.integers(0, 40, size=base.shape)
    Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(path, quality=90)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def compare(sandbox: Sandbox, image: pathlib.Path, tmp: pathlib.Path, setup: str, snippet: str, calls: int):
    """Interleave in-process `exec` and sandbox calls of the same code; return per-call seconds of each."""
    ns = {"image_path": str(image), "output_dir": str(tmp)}
    exec(setup, ns)
    local = compile(snippet, "<bench>", "exec")
    in_proc, boxed = [], []
    with sandbox.session(inputs=[image]) as session:
        assert session.run(setup).ok
        for i in range(calls + 5):  # the first 5 of each are warm-up
            ns["step"] = i
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the sandbox captures stdout too
                exec(local, ns)
            dt_local = time.perf_counter() - t
            t = time.perf_counter()
            result = session.run(f"step = {i}\n" + snippet)
            dt_box = time.perf_counter() - t
            assert result.ok and len(result.images) == 1, result
            if i >= 5:
                in_proc.append(dt_local)
                boxed.append(dt_box)
    return in_proc, boxed


def bench_calls(sandbox: Sandbox, image: pathlib.Path, tmp: pathlib.Path, calls: int, tag: str = "") -> dict:
    in_proc, boxed = compare(sandbox, image, tmp, "import os", SNIPPET, calls)
    s_in, s_box = compare(sandbox, image, tmp, STATEFUL_SETUP, STATEFUL_SNIPPET, calls * 3)
    med = statistics.median
    return {
        f"crop_save{tag}_in_process_ms_p50": med(in_proc) * 1e3,
        f"crop_save{tag}_sandbox_ms_p50": med(boxed) * 1e3,
        f"crop_save{tag}_sandbox_ms_p99": pct(boxed, 99) * 1e3,
        f"crop_save{tag}_ratio_p50": med(boxed) / med(in_proc),
        f"stateful_crop{tag}_in_process_ms_p50": med(s_in) * 1e3,
        f"stateful_crop{tag}_sandbox_ms_p50": med(s_box) * 1e3,
        f"stateful_crop{tag}_ratio_p50": med(s_box) / med(s_in),
        f"stateful_crop{tag}_overhead_ms_p50": (med(s_box) - med(s_in)) * 1e3,
        f"stateful_crop{tag}_calls_per_s_one_session": 1 / med(s_box),
        f"stateful_crop{tag}_calls_per_s_in_process": 1 / med(s_in),  # the snippet's own ceiling
    }


def bench_lifecycle(sandbox: Sandbox, image: pathlib.Path, n: int) -> dict:
    starts, forks, firsts, closes = [], [], [], []
    for _ in range(n):
        time.sleep(0.01)  # a rollout does work between episodes; lets the pool refill as it would
        t = time.perf_counter()
        session = sandbox.session(inputs=[image])
        starts.append(time.perf_counter() - t)
        session.run("x = 1")
        t = time.perf_counter()
        child = session.fork()
        forks.append(time.perf_counter() - t)
        child.run("y = x")  # the fork's first call waits for anything its start left running (cgroup)
        firsts.append(time.perf_counter() - t)
        t = time.perf_counter()
        child.close()
        session.close()
        closes.append((time.perf_counter() - t) / 2)
    ms = lambda v: v * 1e3  # noqa: E731
    return {
        "session_start_ms_p50": ms(statistics.median(starts)),
        "session_start_ms_p99": ms(pct(starts, 99)),
        "fork_ms_p50": ms(statistics.median(forks)),
        "fork_ms_p99": ms(pct(forks, 99)),
        "fork_and_first_call_ms_p50": ms(statistics.median(firsts)),
        "fork_and_first_call_ms_p99": ms(pct(firsts, 99)),
        "close_ms_p50": ms(statistics.median(closes)),
    }


def bench_parallel(sandbox: Sandbox, image: pathlib.Path, calls: int) -> dict:
    cores = os.cpu_count() or 1

    async def drive(session, k: int) -> None:
        await session.arun(STATEFUL_SETUP)
        for i in range(calls):
            r = await session.arun(f"step = {k * 100000 + i}\n" + STATEFUL_SNIPPET)
            assert r.ok and len(r.images) == 1, r

    sessions = [sandbox.session(inputs=[image]) for _ in range(cores)]
    t = time.perf_counter()

    async def main() -> None:
        await asyncio.gather(*(drive(s, k) for k, s in enumerate(sessions)))

    asyncio.run(main())
    elapsed = time.perf_counter() - t
    for s in sessions:
        s.close()
    rate = cores * calls / elapsed
    return {
        "parallel_sessions": cores,
        "stateful_crop_calls_per_s_parallel": rate,
        "stateful_crop_calls_per_s_per_core": rate / cores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument(
        "--filesystem", choices=FILESYSTEMS, default="auto", help="Landlock, or the filesystem view"
    )
    args = parser.parse_args()
    config = SandboxConfig(pool_size=2, filesystem=args.filesystem)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        image = tmp / "input.jpg"
        make_jpeg(image)
        results = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "filesystem": args.filesystem}
        with Sandbox(dataclasses.replace(config, png_compress_level=None)) as sandbox:
            results.update(bench_calls(sandbox, image, tmp, args.calls, tag="_pil_default"))
        results["png_compress_level"] = config.png_compress_level
        set_png_compression(config.png_compress_level)  # from here the in-process side encodes as the sandbox
        with Sandbox(config) as sandbox:
            results.update(bench_calls(sandbox, image, tmp, args.calls))
            results.update(bench_lifecycle(sandbox, image, args.sessions))
            results.update(bench_parallel(sandbox, image, args.calls * 3))
    report(results, args.json)


def report(results: dict, json_path: pathlib.Path | None) -> None:
    """Print the figures as an aligned table, and write them as JSON when asked."""
    width = max(map(len, results))
    for key, value in results.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if json_path:
        json_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
