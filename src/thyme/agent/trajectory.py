"""`Trajectory`: everything one run of the loop produced, serialisable to versioned JSON and to HTML.

What is recorded is what evaluation, SFT and GRPO need later without re-running anything: the prompt (system
text, user text, the image), every typed event, the assistant turn as pieces marked "model" or "sandbox" (with
token ids where the backend had them), images in the order the model saw them, timings split into
generation / sandbox / loop overhead, token counts, and the sandbox repairs.

Images are referenced by path relative to `root` (the directory the trajectory's images live in), so a saved
trajectory directory can be moved or archived whole:

    traj = agent.run(image="cat.jpg", question="What colour is the label?")
    traj.answer, traj.events[-1].reason
    traj.save("runs/cat")            # runs/cat/trajectory.json + runs/cat/images/...
    Trajectory.load("runs/cat/trajectory.json")
    traj.to_html("runs/cat/index.html")
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from thyme.agent.conversation import Conversation, Piece
from thyme.agent.events import Error, Event, Final, ModelText, Observation, event_from_dict
from thyme.files import atomic_copy, atomic_write
from thyme.protocol import ImagePart, TextPart

SCHEMA = "thyme.trajectory/1"


@dataclass
class Trajectory:
    """One question answered (or not) by the loop.

    root: the directory image paths are relative to in JSON (None: paths are written as they are).
    timings: seconds; `generation_s`, `sandbox_s`, `overhead_s` (the loop's own work), `total_s`.
    """

    question: str
    image: Path | None
    conversation: Conversation
    events: list[Event] = field(default_factory=list)
    model: str = ""
    backend: str = ""
    preset: str = ""
    tools: bool = True
    user_text: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    root: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # -- summaries --------------------------------------------------------------------------------------
    @property
    def final(self) -> Final | None:
        last = self.events[-1] if self.events else None
        return last if isinstance(last, Final) else None

    @property
    def answer(self) -> str | None:
        final = self.final
        return final.answer if final else None

    @property
    def error(self) -> str | None:
        """The first loop-level error message, when the run failed."""
        return next((e.message for e in self.events if isinstance(e, Error)), None)

    @property
    def text(self) -> str:
        """The assistant turn as text, `<image>` per fed-back image."""
        return self.conversation.assistant_text

    @property
    def steps(self) -> int:
        """Generation steps of the final trajectory (rolled-back attempts and the fallback not counted)."""
        final = self.final
        return final.steps if final else sum(1 for e in self.events if isinstance(e, ModelText))

    @property
    def observations(self) -> list[Observation]:
        return [e for e in self.events if isinstance(e, Observation)]

    @property
    def repairs(self) -> list[str]:
        return [r for o in self.observations for r in o.repairs]

    @property
    def tokens(self) -> dict[str, int]:
        """Tokens processed: "prompt" sums every step's prompt (a shared prefix counts once per step, as a
        backend without a KV cache processes it), "completion" the generated tokens."""
        return self._tokens()

    def _tokens(self) -> dict[str, int]:
        texts = [e for e in self.events if isinstance(e, ModelText)]
        return {
            "prompt": sum(e.prompt_tokens for e in texts),
            "completion": sum(e.completion_tokens for e in texts),
        }

    # -- JSON -------------------------------------------------------------------------------------------
    def _rel(self, path: Path | None) -> str | None:
        if path is None:
            return None
        if self.root is not None:
            try:
                return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                pass
        return str(path)

    def to_dict(self) -> dict[str, Any]:
        events = []
        for event in self.events:
            d = event.to_dict()
            if isinstance(event, Observation):
                d["images"] = [self._rel(p) for p in event.images]
            events.append(d)
        return {
            "schema": SCHEMA,
            "answer": self.answer,
            "question": self.question,
            "image": self._rel(self.image),
            "model": self.model,
            "backend": self.backend,
            "preset": self.preset,
            "tools": self.tools,
            "system": self.conversation.system,
            "user_text": self.user_text,
            "assistant": [self._piece(p) for p in self.conversation.assistant],
            "events": events,
            "timings": self.timings,
            "tokens": self.tokens,
            "repairs": self.repairs,
            "config": self.config,
            "meta": self.meta,
        }

    def _piece(self, piece: Piece) -> dict[str, Any]:
        d: dict[str, Any] = {"source": piece.source}
        if isinstance(piece.part, ImagePart):
            d["image"] = self._rel(piece.part.path)
        else:
            d["text"] = piece.part.text
        if piece.token_ids is not None:
            d["token_ids"] = list(piece.token_ids)
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Path | None = None) -> Trajectory:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} trajectory (schema={data.get('schema')!r})")

        def path(p: str | None) -> Path | None:
            if p is None:
                return None
            return root / p if root is not None and not os.path.isabs(p) else Path(p)

        user: list[Any] = []
        if data["image"] is not None:
            user.append(ImagePart(path(data["image"])))
        user.append(TextPart(data["user_text"]))
        conv = Conversation(system=data["system"], user=tuple(user))
        for p in data["assistant"]:
            part = ImagePart(path(p["image"])) if "image" in p else TextPart(p["text"])
            ids = tuple(p["token_ids"]) if "token_ids" in p else None
            conv.assistant.append(Piece(part, p["source"], ids))
        events = []
        for d in data["events"]:
            if d["kind"] == "observation":
                d = {**d, "images": [str(path(p)) for p in d["images"]]}
            events.append(event_from_dict(d))
        return cls(
            question=data["question"],
            image=path(data["image"]),
            conversation=conv,
            events=events,
            model=data["model"],
            backend=data["backend"],
            preset=data["preset"],
            tools=data["tools"],
            user_text=data["user_text"],
            config=data["config"],
            timings=data["timings"],
            root=root,
            meta=data.get("meta", {}),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trajectory:
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), root=path.parent)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write `directory/trajectory.json` and copy every image into `directory/images/`; atomic per file.

        Returns the JSON path. The saved trajectory's image paths are relative to `directory`.
        """
        directory = Path(directory)
        images_dir = directory / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
        mapping: dict[Path, Path] = {}
        sources = [self.image] if self.image is not None else []
        sources += self.conversation.feedback_images
        sources += [p for o in self.observations for p in o.images]
        missing = []
        for src in sources:
            if src is None or src in mapping:
                continue
            if not Path(src).is_file():  # deleted since (a closed agent's artifacts): keep the path, say so
                missing.append(str(src))
                continue
            dst = images_dir / f"{len(mapping):03d}{Path(src).suffix.lower() or '.png'}"
            atomic_copy(Path(src), dst)
            mapping[src] = dst
        saved = _remap(self, mapping, directory)
        if missing:
            saved.meta = {**saved.meta, "missing_images": missing}
        target = directory / "trajectory.json"
        atomic_write(target, saved.to_json(indent=1))
        return target

    def to_html(self, path: str | os.PathLike[str] | None = None) -> str:
        """A self-contained HTML page (images inlined); written to `path` when given, returned either way."""
        from thyme.agent.html import render_html

        page = render_html(self)
        if path is not None:
            atomic_write(Path(path), page)
        return page


def _remap(traj: Trajectory, mapping: dict[Path, Path], root: Path) -> Trajectory:
    def move(p: Path | None) -> Path | None:
        return mapping.get(p, p) if p is not None else None

    conv = Conversation(traj.conversation.system, tuple(_move_part(p, move) for p in traj.conversation.user))
    conv.assistant = [
        Piece(_move_part(p.part, move), p.source, p.token_ids) for p in traj.conversation.assistant
    ]
    events: list[Event] = []
    for e in traj.events:
        if isinstance(e, Observation):
            e = Observation(**{**e.__dict__, "images": tuple(move(p) for p in e.images)})
        events.append(e)
    return replace(traj, image=move(traj.image), conversation=conv, events=events, root=root)


def _move_part(part, move):
    return ImagePart(move(part.path)) if isinstance(part, ImagePart) else part
