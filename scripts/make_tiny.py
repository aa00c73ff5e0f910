"""Reproduce thyme-tiny end to end on a CPU: data, SFT, GRPO-ATS, evaluation, and the bundled copy.

    make tiny                                  # = python scripts/make_tiny.py
    python scripts/make_tiny.py --work runs/tiny --no-install

Every stage is a `thyme` command a user can run by hand (printed before it runs), and every stage whose
output already exists is skipped, so an interrupted run resumes where it stopped (the trainers resume from
their last checkpoint too). The stages:

1. `thyme models tiny --size small`: a random Qwen2.5-VL (6.4M parameters) with our offline tokenizer.
2. `thyme synth`: the toy-world training sets (zoom `find`, compute `add-text` and `mul-text`) and held-out
   test sets (`--split test`, seeds that training never sees).
3. `thyme train sft configs/tiny/sft-compute.yaml` (compute only: where copying numbers is learnt), then
   `thyme train sft configs/tiny/sft.yaml` (every task, from that model), then 4. `thyme train grpo
   configs/tiny/grpo.yaml`.
5. `thyme eval --both` of the SFT and the GRPO model on each test set (greedy, with and without tools).
6. The GRPO model (weights, tokenizer, processor, thyme.json) is copied to `src/thyme/models/thyme-tiny/`
   with `results.json` (the numbers and the minutes); `--no-install` leaves the package alone.

At the end it prints the minutes spent in SFT and in RL and the accuracy table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "src" / "thyme" / "models" / "thyme-tiny"
# (name, task, level, train n, train seed, test n): the data of configs/tiny/*.yaml.
SETS = (
    ("find", "zoom", "find", 3000, 0, 200),
    ("add", "compute", "add-text", 6000, 0, 200),
    ("mul", "compute", "mul-text", 6000, 100000, 200),
)
EVAL_TASK = {"zoom": "toyworld_zoom", "compute": "toyworld_compute"}
# What the bundled copy keeps of a trained model directory (no checkpoints, logs or training summaries).
KEEP = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "processor_config.json",
    "preprocessor_config.json",
    "thyme.json",
)


def thyme(*args: str) -> None:
    """Run one `thyme` command (the same executable as this Python), echoing it; stop on failure."""
    command = [sys.executable, "-m", "thyme", *args]
    print("$ thyme " + shlex.join(args), flush=True)
    done = subprocess.run(command, cwd=ROOT, check=False)
    if done.returncode:
        raise SystemExit(f"`thyme {shlex.join(args)}` failed (exit {done.returncode}); fix it and re-run")


def done(path: Path, marker: str) -> bool:
    return (path / marker).exists()


def generated(out: Path, count: int) -> bool:
    """Whether `out` holds `count` samples from this toy-world generator (older data is made again)."""
    from thyme.data.toyworld import GENERATOR_VERSION

    manifest = out / "manifest.json"
    if not manifest.exists():
        return False
    made = json.loads(manifest.read_text())
    return made.get("n") == count and made.get("generator_version") == GENERATOR_VERSION


# (command, config, output folder): each stage starts from the previous one's model (the first from init).
STAGES = (
    ("sft", "configs/tiny/sft-compute.yaml", "sft-compute"),
    ("sft", "configs/tiny/sft.yaml", "sft"),
    ("grpo", "configs/tiny/grpo.yaml", "grpo"),
)


def train(command: str, config: str, folder: str, work: Path) -> float:
    """Run `thyme train COMMAND CONFIG` unless its final model exists; return the minutes it reported."""
    out = work / folder
    summary = out / f"thyme_{command}.json"
    if not summary.exists():
        sets = [arg for key, value in _moved(config, work).items() for arg in ("--set", f"{key}={value}")]
        thyme("train", command, config, *sets)
    return float(json.loads(summary.read_text())["minutes"])


def _moved(config: str, work: Path) -> dict[str, str]:
    """The configs name paths under runs/tiny/; a different --work moves each of them under it."""
    import yaml

    default = "runs/tiny"
    if work == ROOT / default:
        return {}

    def move(path: str) -> str:
        return str(work / Path(path).relative_to(default)) if path.startswith(default + "/") else path

    raw = yaml.safe_load((ROOT / config).read_text())
    out = {key: move(raw[key]) for key in ("model", "output_dir") if key in raw}
    for key in ("data", "eval_data"):
        if raw.get(key):
            out[key] = json.dumps([{**entry, "path": move(entry["path"])} for entry in raw[key]])
    return out


def evaluate(model: Path, work: Path, tag: str, limit: int) -> dict[str, dict[str, float]]:
    """Accuracy with and without tools (and the code-call rate) of `model` on each test set (the first
    `limit` samples of each)."""
    from thyme.eval.report import load_modes, tool_stats

    table: dict[str, dict[str, float]] = {}
    for name, task, _level, _n, _seed, n_test in SETS:
        out = work / "eval" / tag / name
        thyme(
            "eval", "--task", EVAL_TASK[task], "--model", str(model), "--data", str(work / "test" / name),
            "--out", str(out), "--both", "--limit", str(min(limit, n_test)), "--device", "cpu",
            "--max-steps", "3", "--max-new-tokens", "320", "--concurrency", "16",
        )  # fmt: skip
        row: dict[str, float] = {}
        for mode in load_modes(out):
            scores = [r["score"] for r in mode.records]
            row[mode.mode] = 100 * sum(scores) / len(scores) if scores else float("nan")
            if mode.mode == "tools":
                row["code_call_rate"] = 100 * tool_stats(mode.records)["code_call_rate"]
        table[name] = row
    return table


def install(model: Path, results: dict) -> None:
    """Copy the model's files (and results.json) into the package, replacing the bundled copy."""
    staging = BUNDLE.with_name("thyme-tiny.new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in KEEP:
        if (model / name).exists():
            shutil.copy2(model / name, staging / name)
    (staging / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    shutil.rmtree(BUNDLE, ignore_errors=True)
    staging.rename(BUNDLE)
    size = sum(p.stat().st_size for p in BUNDLE.iterdir()) / 2**20
    print(f"installed {BUNDLE.relative_to(ROOT)} ({size:.1f} MiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "tiny", help="working directory")
    parser.add_argument("--no-install", action="store_true", help="leave src/thyme/models/thyme-tiny alone")
    parser.add_argument("--eval-limit", type=int, default=200, help="held-out samples per test set (max 200)")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    started = time.perf_counter()

    if not done(work / "init", "config.json"):
        thyme("models", "tiny", "--size", "small", "--seed", "0", "--out", str(work / "init"), "--overwrite")
    for name, task, level, n, seed, n_test in SETS:
        for split, count, first, folder in (("train", n, seed, "toy"), ("test", n_test, 0, "test")):
            out = work / folder / name
            if not generated(out, count):
                thyme(
                    "synth", "--task", task, "--level", level, "--n", str(count), "--seed", str(first),
                    "--split", split, "--out", str(out), "--overwrite",
                )  # fmt: skip

    sft_minutes = rl_minutes = 0.0
    for command, config, folder in STAGES:
        spent = train(command, config, folder, work)
        if command == "sft":
            sft_minutes += spent
        else:
            rl_minutes += spent
    results = {
        "sft_minutes": round(sft_minutes, 1),
        "rl_minutes": round(rl_minutes, 1),
        "eval_samples": min(args.eval_limit, min(n for *_, n in SETS)),
        "sft": evaluate(work / "sft", work, "sft", args.eval_limit),
        "grpo": evaluate(work / "grpo", work, "grpo", args.eval_limit),
    }
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_install:
        install(work / "grpo", results)

    print(f"\nthyme-tiny: {sft_minutes:.1f} minutes of SFT, {rl_minutes:.1f} minutes of RL "
          f"({(time.perf_counter() - started) / 60:.1f} minutes in this run)")  # fmt: skip
    print(f"{'test set':<10}{'model':<7}{'tools %':>9}{'direct %':>10}{'code %':>8}")
    for stage in ("sft", "grpo"):
        for name, row in results[stage].items():
            print(
                f"{name:<10}{stage:<7}{row.get('tools', float('nan')):>9.1f}"
                f"{row.get('direct', float('nan')):>10.1f}{row.get('code_call_rate', float('nan')):>8.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
