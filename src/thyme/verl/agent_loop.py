"""`ThymeAgentLoop`: the Thyme loop as a verl agent loop, registered under the name "thyme".

Importing this module needs verl (tested with 0.9.1); `import thyme.verl` does not. In verl, point the
rollout at a YAML file listing the loop and its options (`thyme.verl.config.VerlLoopConfig`):

    actor_rollout_ref.rollout.agent.agent_loop_config_path=thyme_agent.yaml
    actor_rollout_ref.rollout.agent.default_agent_loop=thyme       # or an `agent_name` column in the data

    # thyme_agent.yaml
    - name: thyme
      _target_: thyme.verl.agent_loop.ThymeAgentLoop
      sandbox_url: http://sandbox-host:8765
      sandbox_token_file: /etc/thyme/sandbox-token

What one `run` does: the row's question and image (`thyme.verl.rollout.prompt_inputs`) become a Thyme prompt
of the configured preset; a session of the sandbox service receives the image; `thyme.agent.Episode` runs
the trajectory with verl's server manager as its backend (`ServerManagerBackend`: token ids in and out, ATS
as a text leg then a greedy code leg); the trajectory is converted by `trajectory_to_agent_output`. verl
creates one instance per trajectory, so the constructor only validates the options and wraps the processor.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register

from thyme.agent.episode import Prompt
from thyme.agent.loop import check_image
from thyme.models.encoding import Encoder
from thyme.sandbox.client import SandboxClient
from thyme.verl.backend import ServerManagerBackend
from thyme.verl.config import VerlLoopConfig, sampling_from_verl
from thyme.verl.convert import trajectory_to_agent_output
from thyme.verl.rollout import image_file, prompt_inputs, run_episode

log = logging.getLogger(__name__)

AGENT_NAME = "thyme"


@register(AGENT_NAME)
class ThymeAgentLoop(AgentLoopBase):
    """verl's `AgentLoopBase` running `thyme.agent.Episode` with the sandbox service (see the module doc).

    options: the keys of this loop's YAML entry, validated by `VerlLoopConfig.from_options` (`name` is
             verl's registry key and `tools` verl's tool list; both are ignored).
    """

    def __init__(self, *args: Any, name: str | None = None, tools: Any = None, **kwargs: Any) -> None:
        base = ("trainer_config", "server_manager", "tokenizer", "processor", "dataset_cls", "data_config")
        verl_kwargs = {k: kwargs.pop(k) for k in (*base, "hf_model_type") if k in kwargs}
        super().__init__(*args, **verl_kwargs)
        self.options = VerlLoopConfig.from_options(kwargs)
        if self.processor is None:
            raise ValueError("the thyme agent loop needs a vision-language model with a processor")
        data_bounds = dict(self.mm_processor_kwargs or {})
        self.encoder = Encoder(
            self.processor,
            min_pixels=self.options.min_pixels or data_bounds.get("min_pixels"),
            max_pixels=self.options.max_pixels or data_bounds.get("max_pixels"),
        )

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        """One trajectory for the row in `kwargs` (`raw_prompt`, `extra_info`, ...)."""
        rollout = self.rollout_config
        options = self.options
        sampling = sampling_from_verl(sampling_params, options.max_new_tokens or rollout.response_length)
        config = options.agent_config(sampling)
        question, image = prompt_inputs(list(kwargs["raw_prompt"]), kwargs.get("extra_info"))
        backend = ServerManagerBackend(
            self.server_manager,
            self.encoder,
            request_id=uuid4().hex,
            logprobs=bool(sampling_params.get("logprobs", False)),
            prompt_length=rollout.prompt_length,
            response_length=rollout.response_length,
            default_preset=options.preset,
        )
        artifacts = Path(tempfile.mkdtemp(prefix="thyme-verl-"))
        client = SandboxClient(
            options.sandbox_url,
            token=options.token(),
            images_dir=artifacts / "sandbox",
            timeout_s=options.sandbox_timeout_s,
        )
        session = None
        try:
            path, size = check_image(image_file(image, artifacts))
            session = await asyncio.to_thread(client.session, [path] if path is not None else [])
            episode_dir = artifacts / "episode"
            episode_dir.mkdir()
            prompt = Prompt(question, path, size, session.inputs[0] if path is not None else None)
            trajectory, logprobs = await run_episode(
                prompt, backend=backend, session=session, config=config, artifacts=episode_dir
            )
            fields = await asyncio.to_thread(
                trajectory_to_agent_output,
                trajectory,
                self.encoder,
                logprobs=logprobs if backend.logprobs else None,
                response_length=rollout.response_length,
            )
        finally:
            if session is not None:
                await asyncio.to_thread(session.close)
            client.close()
            shutil.rmtree(artifacts, ignore_errors=True)
        if fields.logprobs_unknown:
            log.debug("%d model tokens without a sampling log-prob (re-tokenised)", fields.logprobs_unknown)
        return AgentLoopOutput(**fields.as_kwargs())
