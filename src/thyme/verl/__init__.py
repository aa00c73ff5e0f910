"""Thyme on verl: the agent loop as a verl `AgentLoopBase` named "thyme", for RL beyond one node.

Rooms:
- `convert`:    `trajectory_to_agent_output`, a trajectory as verl's `AgentLoopOutput` fields (pure, no verl).
- `backend`:    `ServerManagerBackend`, verl's server manager as a `thyme.agent` backend (token ids in and
                out, segment-wise ATS, log-probs); no verl import.
- `rollout`:    the row's question and image, and `run_episode` (`thyme.agent.Episode` driven with that
                backend and a `thyme sandbox serve` session); no verl import.
- `config`:     `VerlLoopConfig`, the loop's options from verl's agent-loop YAML.
- `agent_loop`: `ThymeAgentLoop`, the verl class (importing it imports verl).
- `reward`:     `compute_score`, the Thyme reward as a verl custom reward function (no verl import).

verl pins transformers >=5.5.3,<5.11, so it lives in its own environment (README, "Training on verl").
Nothing here is imported until used: `import thyme.verl` works without verl, torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "trajectory_to_agent_output": "thyme.verl.convert",
    "VerlRollout": "thyme.verl.convert",
    "ServerManagerBackend": "thyme.verl.backend",
    "VerlLoopConfig": "thyme.verl.config",
    "ThymeAgentLoop": "thyme.verl.agent_loop",
    "compute_score": "thyme.verl.reward",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'thyme.verl' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("verl"):
            raise
        raise ImportError(
            f"{name} needs verl, which is not installed; it has its own environment (verl pins "
            "transformers <5.11): see the README section 'Training on verl'"
        ) from exc
