"""A short GRPO-ATS run on the toy world, start to finish, and its curve: the figures issue 11 asks for.

    python benchmarks/grpo_curve.py [--sft-steps 300] [--grpo-steps 20] [--json out.json]

1. `thyme synth`: toy-world compute prompts (level add-text), train seeds for SFT, other seeds for RL.
2. SFT of the tiny random model on the gold and direct turns (`thyme.train.sft.run_sft`), so that the policy
   writes code at least sometimes and GRPO has rewards that differ within a group.
3. GRPO-ATS from that checkpoint (`thyme.train.grpo_run.run_grpo`): 8 rollouts per step (2 prompts x 4),
   the default reward, rollouts through the agent loop with the real sandbox.

Prints seconds per step, rollout vs update seconds, and per step the mean reward, the code-call rate and the
execution success; --json writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--grpo-steps", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the work directory here")
    args = parser.parse_args()

    from thyme.data.toyworld import generate
    from thyme.models import build_tiny
    from thyme.train.config import DataSource, SFTConfig
    from thyme.train.grpo_config import GRPOConfig
    from thyme.train.grpo_run import run_grpo
    from thyme.train.sft import run_sft

    work = args.keep or Path(tempfile.mkdtemp(prefix="thyme-grpo-curve-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        generate("compute", 400, 0, work / "sft-data", level="add-text", verify=False, overwrite=True)
        generate("compute", 64, 500_000, work / "rl-data", level="add-text", verify=False, overwrite=True)
        model = build_tiny(work / "tiny", seed=0, overwrite=True)
        sft = run_sft(
            SFTConfig(
                model=str(model),
                output_dir=str(work / "sft"),
                data=(DataSource(str(work / "sft-data"), variants=("gold", "direct")),),
                max_steps=args.sft_steps,
                batch_size=8,
                learning_rate=3e-3,
                lr_scheduler="constant_with_warmup",
                weight_decay=0.0,
                adam_beta2=0.999,
                freeze_vision=False,
                report_to=("none",),
                logging_steps=50,
                save_steps=10**6,
                max_length=2048,
                device="cpu",
            )
        )
        print(f"SFT: {sft.steps} steps, {sft.minutes:.1f} min, last loss {sft.log_history[-2].get('loss')}")
        result = run_grpo(
            GRPOConfig(
                model=str(work / "sft"),
                output_dir=str(work / "grpo"),
                data=(DataSource(str(work / "rl-data")),),
                num_generations=4,
                batch_size=8,
                grad_accum=1,
                max_steps=args.grpo_steps,
                max_turns=3,
                max_new_tokens=160,
                learning_rate=1e-5,
                warmup_ratio=0.0,
                beta=0.0,
                freeze_vision=False,
                report_to=("none",),
                device="cpu",
                save_steps=10**6,
            )
        )
        steps = [h for h in result.log_history if "reward" in h]
        curve = [
            {
                "step": h["step"],
                "reward": h["reward"],
                "code_call_rate": h["tools/code_call_rate"],
                "execution_success": h["tools/execution_success"],
                "step_s": h.get("step_time"),
                "rollout_s": h["rollouts/seconds"],
            }
            for h in steps
        ]
        seconds = result.minutes * 60
        rollout = result.rollout_minutes * 60
        print(
            f"GRPO: {result.steps} steps in {seconds:.0f} s, rollouts {rollout:.0f} s, updates and the rest "
            f"{seconds - rollout:.0f} s ({seconds / max(1, result.steps):.1f} s per step)"
        )
        for row in curve:
            print(
                f"step {row['step']:3d}  reward {row['reward']:.3f}  "
                f"code-call rate {row['code_call_rate']:.2f}  "
                f"execution success {row['execution_success']:.2f}  rollout {row['rollout_s']:.1f} s"
            )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "sft_minutes": sft.minutes,
                        "grpo_seconds": seconds,
                        "rollout_seconds": rollout,
                        "curve": curve,
                    },
                    indent=1,
                )
            )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
