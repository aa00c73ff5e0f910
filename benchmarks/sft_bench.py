"""SFT throughput on this machine, and one process against two under accelerate, measured side by side.

    python benchmarks/sft_bench.py [--steps 30] [--json out.json] [--no-accelerate]

For the `tiny` and `small` random models (thyme.models.build_tiny) on toy-world data (compute add-text,
gold and direct variants: text-only turns; zoom colour gold turns: one 1792 px image plus one crop), runs
`thyme.train.sft.run_sft` for --steps optimizer steps at batch 8 and prints steps/s and samples/s from
TRL's own `train_runtime` (the model load and the data scan are outside it). Then the same short run as one
process with batch 4 and as `accelerate launch --num_processes 2` with batch 2 per process, and the largest
relative difference between their per-step losses (they see the same samples per step).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-accelerate", action="store_true", help="skip the 1-vs-2 process comparison")
    args = parser.parse_args()

    from thyme.data.toyworld import generate
    from thyme.models import build_tiny
    from thyme.train.config import DataSource, SFTConfig
    from thyme.train.sft import run_sft

    work = Path(tempfile.mkdtemp(prefix="thyme-sft-bench-"))
    results: dict[str, object] = {}
    try:
        data = {
            "compute": (work / "compute", ("gold", "direct")),
            "zoom": (work / "zoom", ("gold",)),
        }
        generate("compute", 64, 0, data["compute"][0], level="add-text", verify=False)
        generate("zoom", 64, 0, data["zoom"][0], level="colour", verify=False)
        for size in ("tiny", "small"):
            model = build_tiny(work / f"model-{size}", seed=0, size=size)
            for name, (path, variants) in data.items():
                out = work / f"run-{size}-{name}"
                cfg = SFTConfig(
                    model=str(model),
                    output_dir=str(out),
                    data=(DataSource(str(path), variants=variants),),
                    max_steps=args.steps,
                    batch_size=8,
                    learning_rate=1e-3,
                    freeze_vision=False,
                    report_to=("none",),
                    logging_steps=args.steps,
                    save_steps=10**6,
                    max_length=4096,
                    device="cpu",
                )
                result = run_sft(cfg)
                runtime = next(h["train_runtime"] for h in result.log_history if "train_runtime" in h)
                key = f"{size}/{name}"
                results[key] = {
                    "steps_per_s": args.steps / runtime,
                    "samples_per_s": args.steps * 8 / runtime,
                    "train_runtime_s": runtime,
                }
                rate = args.steps / runtime
                print(f"{key:14s} {rate:6.2f} steps/s  {rate * 8:7.1f} samples/s")
                shutil.rmtree(out)
        if not args.no_accelerate:
            results["one_vs_two_processes"] = compare_processes(work, work / "model-tiny", data["compute"][0])
            print(f"1 vs 2 processes: {results['one_vs_two_processes']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def compare_processes(work: Path, model: Path, data: Path, steps: int = 8) -> dict[str, object]:
    """Per-step losses of one process (batch 4) and of two accelerate processes (batch 2 each)."""
    curves = {}
    for name, batch, launch in (("one", 4, False), ("two", 2, True)):
        out = work / f"proc-{name}"
        cfg = work / f"proc-{name}.yaml"
        cfg.write_text(
            f"model: {model}\noutput_dir: {out}\ndata:\n  - path: {data}\n    variants: [gold, direct]\n"
            f"max_steps: {steps}\nbatch_size: {batch}\nlearning_rate: 3.0e-3\nlogging_steps: 1\n"
            "freeze_vision: false\nreport_to: [none]\ndevice: cpu\nmax_length: 4096\n"
        )
        if launch:
            bindir = Path(sys.executable).parent
            command = [str(bindir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2"]
            command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
            command += ["-m", "thyme", "train", "sft", str(cfg)]
        else:
            command = [sys.executable, "-m", "thyme", "train", "sft", str(cfg)]
        subprocess.run(command, check=True, capture_output=True)
        summary = json.loads((out / "thyme_sft.json").read_text())
        curves[name] = [h["loss"] for h in summary["log_history"] if "loss" in h]
    worst = max(abs(a - b) / abs(a) for a, b in zip(curves["one"], curves["two"], strict=True))
    return {"steps": steps, "max_relative_difference": worst, **curves}


if __name__ == "__main__":
    main()
