"""`thyme train sft` as users run it: one process, two processes under accelerate, and bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

THYME = [sys.executable, "-m", "thyme"]


def write_config(tmp_path: Path, model: Path, data: Path, out: Path, **extra) -> Path:
    lines = [
        f"model: {model}",
        f"output_dir: {out}",
        "data:",
        f"  - path: {data}",
        "    variants: [gold, direct]",
        "max_steps: 4",
        "batch_size: 4",
        "learning_rate: 3.0e-3",
        "logging_steps: 1",
        "freeze_vision: false",
        "report_to: [none]",
        "device: cpu",
        "max_length: 2048",
    ] + [f"{k}: {v}" for k, v in extra.items()]
    path = tmp_path / f"{out.name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=240, env=env, **kw)


def curve(out: Path) -> list[float]:
    summary = json.loads((out / "thyme_sft.json").read_text())
    return [h["loss"] for h in summary["log_history"] if "loss" in h]


def test_train_sft_runs_and_reports(tiny_model_dir, compute_data, tmp_path):
    cfg = write_config(tmp_path, tiny_model_dir, compute_data, tmp_path / "out")
    done = run([*THYME, "train", "sft", str(cfg), "--set", "max_steps=3"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained 3 steps on 48 samples" in done.stderr
    assert len(curve(tmp_path / "out")) == 3
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "tokenizer.json").is_file()
    # the model is the user's to keep and share: the umask's modes (safetensors alone writes 0600)
    mask = os.umask(0)
    os.umask(mask)
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "out").glob("*.*")} == {0o666 & ~mask}


def test_check_stops_before_loading(tiny_model_dir, compute_data, tmp_path):
    cfg = write_config(tmp_path, tiny_model_dir, compute_data, tmp_path / "out")
    done = run([*THYME, "train", "sft", str(cfg), "--check"])
    assert done.returncode == 0 and "config ok" in done.stderr and "a fresh run" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learnig_rate=1"], "error: unknown config key 'learnig_rate'; did you mean 'learning_rate'?"),
        (["data.0.path=/no/such/dir"], "error: data: /no/such/dir does not exist"),
        (["model=/no/such/model"], "error: model: /no/such/model holds no config.json"),
        (["precision=bf16"], "error: precision: bf16 needs a GPU"),
        (["resume=/tmp"], "is not a checkpoint directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_model_dir, compute_data, tmp_path, overrides, message):
    cfg = write_config(tmp_path, tiny_model_dir, compute_data, tmp_path / "out")
    args = [*THYME, "train", "sft", str(cfg)]
    for item in overrides:
        args += ["--set", item]
    done = run(args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_missing_config_file(tmp_path):
    done = run([*THYME, "train", "sft", str(tmp_path / "absent.yaml")])
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_accelerate_without_multi_gpu_on_a_cpu_is_refused(tiny_model_dir, compute_data, tmp_path):
    """Without GPUs, `accelerate launch --num_processes 2` runs ONE process: say so instead of training."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    cfg = write_config(tmp_path, tiny_model_dir, compute_data, tmp_path / "out")
    done = run(
        [accelerate, "launch", "--num_processes", "2", "-m", "thyme", "train", "sft", str(cfg), "--check"]
    )
    assert done.returncode != 0  # accelerate reports our exit status 2 as its own failure
    assert "error: accelerate launch started one process" in done.stderr and "--multi_gpu" in done.stderr


@pytest.mark.slow
def test_two_processes_give_the_loss_curve_of_one(tiny_model_dir, compute_data, tmp_path):
    """accelerate launch --num_processes 2 (gloo on the CPU) with batch 2 per process == one process with
    batch 4, step by step (same samples per step, loss normalised by the tokens of the whole batch)."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate is installed with the train extra"
    one = write_config(tmp_path, tiny_model_dir, compute_data, tmp_path / "one")
    two = write_config(tmp_path, tiny_model_dir, compute_data, tmp_path / "two", batch_size=2)
    assert run([*THYME, "train", "sft", str(one)]).returncode == 0
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "thyme", "train", "sft", str(two)]
    done = run(launch)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("INFO thyme.train.sft: training on cpu") == 2  # really two processes
    assert curve(tmp_path / "two") == pytest.approx(curve(tmp_path / "one"), rel=1e-4)


def grpo_config(scripted_model, images, tmp_path, **extra) -> Path:
    """Prompts the scripted model answers with code, and a small GRPO config over them."""
    from thyme.data.sample import Sample
    from thyme.data.store import SampleStore
    from thyme.protocol import ImagePart, TextPart

    store = SampleStore(tmp_path / "prompts")
    image = store.add_image(images[0])
    store.append(
        Sample(f"q{i}", "", (ImagePart(image), TextPart(q)), (), answer=a, meta={"question": q})
        for i, (q, a) in enumerate([("What is six times seven?", "42"), ("Zoom in on the corner.", "blue")])
    )
    settings = {
        "model": scripted_model,
        "output_dir": tmp_path / "out",
        "num_generations": 2,
        "batch_size": 4,
        "grad_accum": 1,
        "max_steps": 2,
        "max_turns": 3,
        "max_new_tokens": 96,
        "learning_rate": "1.0e-4",
        "beta": 0.0,
        "report_to": "[none]",
        "device": "cpu",
        "save_steps": 100,
        **extra,
    }
    cfg = tmp_path / "grpo.yaml"
    lines = [f"data:\n  - path: {tmp_path / 'prompts'}"] + [f"{k}: {v}" for k, v in settings.items()]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def grpo_log(out: Path) -> list[dict]:
    summary = json.loads((out / "thyme_grpo.json").read_text())
    assert summary["rollout_minutes"] > 0
    return [h for h in summary["log_history"] if "reward" in h]


def test_train_grpo_runs_from_the_shell(scripted_model, images, tmp_path):
    """`thyme train grpo` on prompts the scripted model answers with code, rewarded by the default reward."""
    cfg = grpo_config(scripted_model, images, tmp_path)
    check = run([*THYME, "train", "grpo", str(cfg), "--check"])
    assert (
        check.returncode == 0
        and "2 prompts x 2 rollouts" in check.stderr
        and "greedy code (ATS)" in check.stderr
    )
    done = run([*THYME, "train", "grpo", str(cfg)])
    assert done.returncode == 0, done.stderr[-3000:]
    logged = grpo_log(tmp_path / "out")
    # "42" is right (1 + 0.5 format), "red" is not "blue" (0.5 format only): the mean reward is 1.0
    assert len(logged) == 2 and logged[0]["reward"] == pytest.approx(1.0)
    assert logged[0]["tools/code_call_rate"] == 1.0
    assert "thyme/format" in logged[0] and logged[0]["thyme/format"] == 1.0
    bad = run([*THYME, "train", "grpo", str(cfg), "--set", "reward=bogus"])
    assert bad.returncode == 2 and "reward: 'bogus' is not registered" in bad.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["device=cpu"], "use_vllm: true needs a CUDA GPU"),
        (["device=auto", "vllm_mode=server"], "vllm_mode: server needs vllm_server_base_url"),
        (
            ["device=auto", "vllm_mode=server", "vllm_server_base_url=http://gpu-node:8000"],
            "vLLM is not installed" if importlib.util.find_spec("vllm") is None else None,
        ),
        (["device=auto"], "vLLM is not installed" if importlib.util.find_spec("vllm") is None else None),
    ],
)
def test_train_grpo_checks_its_vllm_settings_before_loading(
    scripted_model, images, tmp_path, overrides, message
):
    cfg = grpo_config(scripted_model, images, tmp_path)
    sets = [arg for o in ["use_vllm=true", *overrides] for arg in ("--set", o)]
    check = run([*THYME, "train", "grpo", str(cfg), *sets, "--check"])
    if message is None:  # vLLM is installed here: the settings pass this check
        assert "vLLM is not installed" not in check.stderr
    else:
        assert check.returncode == 2 and message in check.stderr and "Traceback" not in check.stderr


def test_trl_runs_colocated_vllm_without_importance_sampling_correction():
    """What TRL is told with use_vllm: a colocated engine per GPU, no sampling-log-prob correction."""
    from thyme.train.grpo_config import GRPOConfig
    from thyme.train.grpo_run import trl_grpo_arguments

    config = GRPOConfig(model="m", output_dir=Path("out"), data=[{"path": "x"}], use_vllm=True,
                        vllm_enable_sleep_mode=True, vllm_max_model_len=8192, grad_accum=4,
                        report_to=("none",))  # fmt: skip
    args = trl_grpo_arguments(config)
    assert (args.use_vllm, args.vllm_mode, args.vllm_tensor_parallel_size) == (True, "colocate", 1)
    assert args.vllm_importance_sampling_correction is False and args.vllm_enable_sleep_mode is True
    assert (args.vllm_max_model_length, args.vllm_gpu_memory_utilization) == (8192, 0.3)
    server = GRPOConfig(model="m", output_dir=Path("out"), data=[{"path": "x"}], use_vllm=True,
                        vllm_mode="server", vllm_server_base_url="http://gpu-node:8000",
                        vllm_group_port=51300, grad_accum=4, report_to=("none",))  # fmt: skip
    args = trl_grpo_arguments(server)
    assert (args.vllm_mode, args.vllm_server_base_url, args.vllm_group_port) == (
        "server",
        "http://gpu-node:8000",
        51300,
    )
    assert args.vllm_server_timeout == 240.0 and args.vllm_importance_sampling_correction is False


@pytest.mark.slow
def test_train_grpo_under_two_accelerate_processes(scripted_model, images, tmp_path):
    """Two gloo processes, batch 2 each: rollouts per process, rewards and advantages over both."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    cfg = grpo_config(scripted_model, images, tmp_path, batch_size=2)
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "thyme", "train", "grpo", str(cfg)]
    done = run(launch)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("trained 2 steps on 2 prompts") == 2
    logged = grpo_log(tmp_path / "out")
    assert len(logged) == 2 and logged[0]["reward"] == pytest.approx(1.0)


def test_vllm_outside_the_range_trl_supports_is_refused():
    from thyme.config import ConfigError
    from thyme.train.grpo_run import VLLM_RANGE, check_vllm_version

    check_vllm_version(VLLM_RANGE[0])
    check_vllm_version("0.31.0+cu128")
    for version in ("0.19.1", "0.32.0"):
        with pytest.raises(ConfigError, match=r"need vLLM 0\.22\.0 to 0\.31\.0"):
            check_vllm_version(version)
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'vllm = ["vllm>={VLLM_RANGE[0]},<={VLLM_RANGE[1]}"]' in pyproject
