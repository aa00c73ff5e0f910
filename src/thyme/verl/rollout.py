"""One Thyme trajectory for verl: the dataset row's question and image, the episode, the sandbox service.

verl hands an agent loop the row's fields (`raw_prompt`: chat messages whose image items hold PIL images or
paths; `extra_info`: anything the data set stored). The Thyme prompt is not the row's chat formatting: it is
built by the configured prompt preset, exactly as `thyme.agent` builds it, from the question and the image.

The trajectory itself is `thyme.agent.episode.Episode` (the project's one loop) driven the way `Agent.arun`
drives it: generation through an async backend (`ServerManagerBackend` over verl's server manager), code
through a `thyme sandbox serve` session (`RemoteSession.arun`). The only addition is bookkeeping of the
engine's log-probs per model piece, which a `Trajectory` does not store.

    question, image = prompt_inputs(raw_prompt=row["raw_prompt"], extra_info=row["extra_info"])
    traj, logprobs = await run_episode(prompt, backend=backend, session=session, config=..., artifacts=dir)
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from thyme.agent.backends.base import BackendError
from thyme.agent.config import AgentConfig
from thyme.agent.conversation import Piece
from thyme.agent.episode import Episode, Prompt
from thyme.agent.trajectory import Trajectory
from thyme.protocol import direct_preset, get_preset


class RowError(ValueError):
    """A verl data row the Thyme loop cannot use (no question, or an image it cannot read)."""


def prompt_inputs(
    raw_prompt: Sequence[Mapping[str, Any]], extra_info: Mapping[str, Any] | None = None
) -> tuple[str, Any]:
    """The question and the image of a verl row.

    question: `extra_info["question"]` when the data set stored it (recommended: the chat text may carry
              a template's wording), else the text items of the last user message (`<image>` removed).
    image:    the first image item of the user messages (`{"type": "image", "image": PIL | path}`, or
              `{"bytes": ...}`), or None for a text-only row.
    """
    users = [m for m in raw_prompt if m.get("role") == "user"]
    if not users:
        raise RowError("the row's raw_prompt has no user message; give [{'role': 'user', 'content': ...}]")
    image = None
    for message in users:
        for item in _items(message.get("content")):
            if item.get("type") == "image" and image is None:
                image = item.get("image", item.get("bytes"))
    question = (extra_info or {}).get("question")
    if not question:
        texts = [i.get("text", "") for i in _items(users[-1].get("content")) if i.get("type") == "text"]
        question = "".join(texts).replace("<image>", "").strip()
    if not question:
        raise RowError("the row has no question: no text in the user message and no extra_info.question")
    return str(question), image


def _items(content: Any) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [dict(item) for item in content or []]


def image_file(image: Any, directory: Path) -> Path | None:
    """The row's image as a file the sandbox can take as input (PIL images and bytes are saved as PNG)."""
    if image is None:
        return None
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise RowError(f"the row's image {str(image)!r} is not a readable file")
        return path
    if isinstance(image, dict):
        image = image.get("bytes")
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    if not isinstance(image, Image.Image):
        raise RowError(
            f"cannot use an image of type {type(image).__name__}; give a PIL image, bytes or a path"
        )
    path = directory / "input.png"
    image.convert("RGB").save(path)
    return path


async def run_episode(
    prompt: Prompt,
    *,
    backend,
    session,
    config: AgentConfig,
    artifacts: Path,
) -> tuple[Trajectory, list[tuple[float, ...] | None]]:
    """Run one trajectory; return it with each model piece's sampling log-probs (None where unknown).

    backend: a backend with `agenerate` (`ServerManagerBackend`); its generations may carry `logprobs`.
    session: a sandbox session with `arun` (one per trajectory; the caller closes it).
    """
    preset = get_preset(config.preset or backend.default_preset)
    direct = get_preset(config.direct_preset) if config.direct_preset else direct_preset(preset)
    episode = Episode(
        prompt, preset=preset, direct_preset=direct, config=config, tools=True, artifacts=artifacts
    )
    scored: list[tuple[Piece, tuple[float, ...] | None]] = []
    while (request := episode.request()) is not None:
        try:
            generation = await backend.agenerate(request)
        except BackendError as exc:
            episode.on_error(exc)
            break
        before = len(episode.conversation.assistant)
        episode.on_generation(generation)
        pieces = episode.conversation.assistant
        if len(pieces) > before and pieces[-1].token_ids == generation.token_ids:
            scored.append((pieces[-1], getattr(generation, "logprobs", None)))
        if episode.pending_code is not None:
            try:
                result = await session.arun(episode.pending_code)
            except Exception as exc:  # the sandbox service failed (not the code): end, say why
                episode.on_error(exc)
                break
            episode.on_result(result)
    trajectory = Trajectory(
        question=prompt.question,
        image=prompt.image,
        conversation=episode.conversation,
        events=list(episode.events),
        model=backend.model_id,
        backend=backend.name,
        preset=episode.preset.name,
        tools=True,
        user_text=episode.user_text,
        config=dataclasses.asdict(config),
        timings=dict(episode.timings),
        root=artifacts,
    )
    # A resample rolls pieces back, so match the pieces that stayed by identity, not by position.
    logprobs = [
        next((lp for p, lp in scored if p is piece), None)
        for piece in episode.conversation.assistant
        if piece.source == "model"
    ]
    return trajectory, logprobs
