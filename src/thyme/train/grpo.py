"""`thyme train grpo`: GRPO-ATS on TRL's `GRPOTrainer`, with rollouts from the agent loop itself.

    thyme train grpo configs/grpo/tiny-cpu.yaml --set max_steps=20

TRL's own generation paths do not fit Thyme (REFERENCE.md section 3): its tools start a new turn, and images
made during a rollout never reach its training forward. `ThymeGRPOTrainer` overrides one method,
`_generate_and_score_completions`, and keeps everything else of TRL: the batch buffering across gradient
accumulation, the log-probs (temperature 1, fused head), the clipped loss, KL, the optimizer and checkpoints.

One rollout batch, as the override runs it:
1. The policy generates through `thyme.agent.Agent.run_batch` (the one agent loop of the project) with a
   transformers backend over the unwrapped training model (`trl.models.unwrap_model_for_generation`): text at
   `temperature`, code greedy (ATS, one `generate()` call with a per-row logits processor), the repetition
   guard on, the code run in a shared sandbox, one session per rollout, its output fed back inside the turn.
   With `use_vllm` the same loop runs on the vLLM backend over TRL's colocated engine, or on the OpenAI
   backend over a `vllm serve` node (`vllm_mode: server`), the policy's weights pushed in by TRL before each
   step's rollouts (`thyme.train.vllm_rollouts`).
2. Each trajectory is encoded by the generation encoder (`thyme.train.rollout`): exact generated ids, the
   sandbox's tokens and images inside the completion with `tool_mask = 0`, `mm_token_type_ids` over prompt and
   completion so TRL's forward computes 3-D positions, every image's pixels in sequence order.
3. Rewards through TRL's `_calculate_rewards` (our reward functions receive the dataset's columns and a
   `rollout` dict of tool facts per row); group advantages (`thyme.train.advantages`); old and reference
   log-probs when TRL would compute them.
4. Logs: code-call rate, execution success, steps per rollout, repetition stops, completion lengths, each
   reward part, rollout seconds; a warning when the code-call rate falls below `code_call_floor`.

Log-probs are taken at temperature 1 for every token, code tokens included, though code was decoded greedily
(the reference's choice). No sampling log-probs are used: on the first pass over a rollout batch the
importance ratio is exactly 1, and later passes (`num_iterations > 1`) use the old log-probs TRL's forward
computed, so greedy tokens need no special case.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from trl import GRPOTrainer

from thyme.train.advantages import group_advantages
from thyme.train.rollout import RolloutFacts, encode_rollouts
from thyme.train.trainer import checkpoints_in_model_layout

log = logging.getLogger(__name__)


class ThymeGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose rollouts come from `thyme.agent` (see the module docstring).

    agent_config: `thyme.agent.AgentConfig` of the rollouts (sampling, turns, repetition guard).
    sandbox:      a running `thyme.sandbox.Sandbox` shared by every rollout.
    encoder:      `thyme.models.encoding.Encoder` (the processor and pixel bounds generation uses).
    scale:        advantage scaling ("group", "batch", "none").
    code_call_floor: warn when the share of rollouts that call code falls below this.
    """

    def __init__(
        self,
        *args: Any,
        agent_config,
        sandbox,
        encoder,
        scale: str = "group",
        code_call_floor: float = 0.05,
        **kwargs: Any,
    ) -> None:
        self.agent_config = agent_config
        self.sandbox = sandbox
        self.encoder = encoder
        self.scale = scale
        self.code_call_floor = code_call_floor
        self._artifacts = Path(tempfile.mkdtemp(prefix="thyme-grpo-"))
        self.rollout_seconds = 0.0  # wall time spent generating rollouts (the rest of a step is updates)
        super().__init__(*args, **kwargs)
        checkpoints_in_model_layout(self.model)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """TRL's training loop; the folder of fed-back images goes when it ends, however it ends."""
        try:
            return super().train(*args, **kwargs)
        finally:
            shutil.rmtree(self._artifacts, ignore_errors=True)

    # -- the one overridden seam ------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        device = self.accelerator.device
        self._artifacts.mkdir(parents=True, exist_ok=True)  # gone after an earlier train()
        mode = "train" if self.model.training else "eval"
        started = time.perf_counter()
        trajectories = self._rollouts(inputs)
        rollout_s = time.perf_counter() - started
        self.rollout_seconds += rollout_s
        try:
            batch = encode_rollouts(trajectories, self.encoder, pad_id=self._pad_id)
        finally:
            shutil.rmtree(self._artifacts, ignore_errors=True)  # encoded: the fed-back image files can go
            self._artifacts.mkdir(parents=True, exist_ok=True)
        out = batch.tensors(device)
        loss_mask = out["completion_mask"] * out["tool_mask"]
        out["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        self._log_probs(out, mode)

        facts = [RolloutFacts.of(t) for t in trajectories]
        rows = [{**row, "rollout": f.as_dict()} for row, f in zip(inputs, facts, strict=True)]
        prompts = [row["prompt"] for row in inputs]
        completions = [t.text for t in trajectories]
        rewards_per_func = self._calculate_rewards(rows, prompts, completions, batch.completion_ids)
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[unscorable] = torch.nan
        group = self.num_generations if mode == "train" else self.num_generations_eval
        advantages = group_advantages(rewards, group, self.scale)
        local = len(inputs)
        start = self.accelerator.process_index * local
        out["advantages"] = advantages[start : start + local].to(device)
        self._log_rollouts(mode, facts, batch, rewards, rewards_per_func, advantages, rollout_s)
        self._flush_reward_logs(mode)
        return out

    # -- pieces -----------------------------------------------------------------------------------------
    @property
    def _pad_id(self) -> int:
        tokenizer = self._tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _rollouts(self, inputs: list[dict[str, Any]]) -> list:
        """One trajectory per row, in row order, generated by the current policy."""
        from thyme.agent import Task

        tasks = [Task(row["question"], row["image"]) for row in inputs]
        if self.use_vllm:
            with self._vllm().ready(self) as backend:
                trajectories = self._run_batch(backend, tasks)
        else:
            trajectories = self._transformers_rollouts(tasks)
        if len(trajectories) != len(tasks):
            raise RuntimeError(f"{len(tasks)} prompts gave {len(trajectories)} rollouts")
        return trajectories

    def _run_batch(self, backend, tasks: list) -> list:
        """The agent loop over `backend`, every task in one `run_batch`, in the shared sandbox."""
        from thyme.agent import Agent

        agent = Agent(backend, config=self.agent_config, sandbox=self.sandbox, artifacts_dir=self._artifacts)
        return agent.run_batch(tasks, max_batch=len(tasks))

    def _transformers_rollouts(self, tasks: list) -> list:
        """Rollouts on the transformers backend over the unwrapped policy (ZeRO-3 parameters gathered)."""
        from trl.models import unwrap_model_for_generation

        from thyme.agent.backends.transformers import TransformersBackend

        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
            ) as unwrapped,
            torch.no_grad(),
        ):
            was_training = unwrapped.training
            bounds = self.encoder.pixel_bounds
            backend = TransformersBackend(
                unwrapped,
                self.processing_class,
                model_id=str(getattr(unwrapped, "name_or_path", "")),
                default_preset=self.agent_config.preset or "default",
                min_pixels=bounds["min_pixels"],
                max_pixels=bounds["max_pixels"],
            )
            try:
                return self._run_batch(backend, tasks)
            finally:
                unwrapped.train(was_training)

    def _vllm(self):
        """The rollouts' vLLM backend, made on first use (`thyme.train.vllm_rollouts`): over TRL's colocated
        engine, or over the `vllm serve` node TRL syncs (`vllm_mode: server`)."""
        if getattr(self, "_vllm_rollouts", None) is None:
            from thyme.train.vllm_rollouts import ColocatedRollouts, ServerRollouts

            preset = self.agent_config.preset or "default"
            if self.vllm_generation.mode == "server":
                self._vllm_rollouts = ServerRollouts(
                    self.vllm_generation, preset=preset, timeout_s=self.args.vllm_server_timeout
                )
            else:
                self._vllm_rollouts = ColocatedRollouts(
                    self.vllm_generation,
                    self.processing_class,
                    self.accelerator.unwrap_model(self.model).config,
                    preset=preset,
                    pixel_bounds=self.encoder.pixel_bounds,
                    max_images=self.agent_config.max_images + 1,
                    eos_token_ids=list(self.eos_token_ids),
                    model_id=str(getattr(self.model, "name_or_path", "")),
                )
        return self._vllm_rollouts

    def _log_probs(self, out: dict[str, Any], mode: str) -> None:
        """Old and reference log-probs, under the conditions TRL's own method computes them."""
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        keep = out["completion_ids"].size(1)
        vision = {k: out[k] for k in ("pixel_values", "image_grid_thw", "num_images") if k in out}
        batch_size = (
            self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        )
        kwargs = dict(batch_size=batch_size, mm_token_type_ids=out["mm_token_type_ids"], **vision)
        logps = self._get_per_token_logps_and_entropies
        with torch.no_grad():
            every = self.args.steps_per_generation * self.num_iterations
            if self.args.gradient_accumulation_steps % every != 0:
                out["old_per_token_logps"] = logps(self.model, input_ids, attention, keep, **kwargs)[0]
            if self.beta != 0.0:
                if self.ref_model is not None:
                    ref = logps(self.ref_model, input_ids, attention, keep, **kwargs)
                else:  # PEFT: the reference is the base model with the adapters switched off
                    with self.accelerator.unwrap_model(self.model).disable_adapter():
                        ref = logps(self.model, input_ids, attention, keep, **kwargs)
                out["ref_per_token_logps"] = ref[0]

    def _log_rollouts(self, mode, facts, batch, rewards, rewards_per_func, advantages, rollout_s) -> None:
        """What the base method logs, plus the tool statistics of Thyme (gathered over processes)."""
        from accelerate.utils import gather_object
        from trl.trainer.utils import nanstd

        metrics = self._metrics[mode]
        every = gather_object([f.as_dict() for f in facts])
        n = max(1, len(every))
        calls = [f["code_calls"] for f in every]
        called = sum(1 for c in calls if c > 0) / n
        metrics["tools/code_call_rate"].append(called)
        total_calls = sum(calls)
        errors = sum(f["code_errors"] for f in every)
        metrics["tools/execution_success"].append(
            (total_calls - errors) / total_calls if total_calls else float("nan")
        )
        metrics["tools/calls_per_rollout"].append(total_calls / n)
        metrics["rollouts/steps"].append(sum(f["steps"] for f in every) / n)
        metrics["rollouts/repetition_stops"].append(sum(1 for f in every if f["repetition_stopped"]) / n)
        metrics["rollouts/truncated"].append(sum(1 for f in every if f["truncated"]) / n)
        metrics["rollouts/seconds"].append(rollout_s)
        lengths = self.accelerator.gather(
            torch.tensor(batch.loss_tokens, device=self.accelerator.device)
        ).float()
        metrics["completions/mean_length"].append(lengths.mean().item())
        metrics["completions/max_length"].append(lengths.max().item())
        for i, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"].append(torch.nanmean(rewards_per_func[:, i]).item())
            metrics[f"rewards/{name}/std"].append(nanstd(rewards_per_func[:, i]).item())
        metrics["reward"].append(torch.nanmean(rewards).item())
        metrics["reward_std"].append(nanstd(rewards).item())
        if mode == "train":
            seen = int(self.accelerator.gather(torch.tensor(sum(map(len, batch.examples)))).sum())
            self.state.num_input_tokens_seen += seen
        metrics["num_tokens"] = [self.state.num_input_tokens_seen]
        self._logs["advantages"].extend(advantages.tolist())
        if mode == "train" and called < self.code_call_floor:
            log.warning(
                "code-call rate %.1f%% is below code_call_floor %.1f%%: the policy is no longer writing code",
                100 * called,
                100 * self.code_call_floor,
            )

    def _flush_reward_logs(self, mode: str) -> None:
        """What reward functions logged through `log_metric` / `log_extra`, averaged over processes (as TRL's
        own method flushes them)."""
        from accelerate.utils import gather_object

        device = self.accelerator.device
        for column in sorted(set(gather_object(list(self._pending_extra_logs)))):
            values = self._pending_extra_logs.get(column, [])
            self._logs["extra"][column].extend(gather_object(values))
        self._pending_extra_logs.clear()
        for name in sorted(set(gather_object(list(self._pending_metrics)))):
            values = self._pending_metrics.get(name, [])
            local = torch.tensor([sum(values), len(values)], dtype=torch.float32, device=device)
            total, count = self.accelerator.gather(local).view(-1, 2).sum(dim=0).tolist()
            self._metrics[mode][name].append(total / max(count, 1))
        self._pending_metrics.clear()
